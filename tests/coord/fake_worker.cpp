// A worker process without a model: the training loop of coord/client.hpp
// with the step's work replaced by a sleep and "healing" by taking the step
// from the quorum. Prints one line per event for the tests to read:
//   QUORUM epoch=E world=W rank=R step=S changed=0|1 rejoined=0|1
//   HEAL from=R step=S old=S0
//   COMMIT step=S epoch=E world=W      DISCARD step=S epoch=E world=W
//   DONE step=S                        ERROR message
// Usage: coord_fake_worker [--steps N] [--step-ms M] [--stop-file PATH]
//                          [--die-at-step S --die-replica R]  (SIGKILLs itself once, before restarts)
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "coord/client.hpp"
#include "core/error.hpp"

using namespace braid;

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  int64_t steps = 1'000'000;
  int step_ms = 10;
  std::string stop_file, die_replica;
  int64_t die_at = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--step-ms")) step_ms = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--stop-file")) stop_file = argv[i + 1];
    else if (!std::strcmp(argv[i], "--die-at-step")) die_at = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--die-replica")) die_replica = argv[i + 1];
  }
  auto stop_requested = [&] {
    struct stat st;
    return !stop_file.empty() && stat(stop_file.c_str(), &st) == 0;
  };
  try {
    coord::Client client(coord::ClientOptions::from_env());
    int64_t step = 0;
    while (step < steps && !stop_requested()) {
      coord::Quorum q = client.quorum(step);
      std::printf("QUORUM epoch=%u world=%d rank=%d step=%lld changed=%d rejoined=%d\n", q.epoch(), q.world_size(),
                  q.rank(), static_cast<long long>(q.step()), q.changed ? 1 : 0, q.rejoined ? 1 : 0);
      if (q.heal) {
        std::printf("HEAL from=%d step=%lld old=%lld\n", q.heal_source, static_cast<long long>(q.step()),
                    static_cast<long long>(step));
        step = q.step();
      }
      usleep(static_cast<useconds_t>(step_ms) * 1000);
      if (step == die_at && client.options().replica_id == die_replica && client.options().restart_count == 0) {
        std::printf("DYING step=%lld\n", static_cast<long long>(step));
        raise(SIGKILL);
      }
      bool ok = client.commit(step, q.epoch(), true);
      std::printf("%s step=%lld epoch=%u world=%d\n", ok ? "COMMIT" : "DISCARD", static_cast<long long>(step),
                  q.epoch(), q.world_size());
      if (ok) ++step;
    }
    client.leave();
    std::printf("DONE step=%lld\n", static_cast<long long>(step));
    return 0;
  } catch (const Error& e) {
    std::printf("ERROR %s\n", e.describe().c_str());
    return 1;
  }
}
