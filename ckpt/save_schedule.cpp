#include "ckpt/save_schedule.hpp"

#include <signal.h>

namespace braid::ckpt {

namespace {
std::atomic<int> g_stop_signal{0};

void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) == sig) {
    // Second identical signal: give the user the default behaviour back.
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
}
}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

bool stop_requested() { return g_stop_signal.load() != 0; }
int stop_signal() { return g_stop_signal.load(); }

}  // namespace braid::ckpt
