// Gloo baseline for `braid bench comm --vs gloo`: Gloo's own algorithms over
// its TCP transport (ring-chunked and halving-doubling all-reduce,
// halving-doubling reduce-scatter, ring all-gather, one-to-all broadcast),
// with the same sizes, iterations, timing and checks as braid's worker.
// Ranks come from BRAID_RANK / BRAID_WORLD_SIZE; rendezvous through a Gloo
// FileStore directory shared by the ranks.
#include <gloo/algorithm.h>
#include <gloo/allgather_ring.h>
#include <gloo/allreduce_halving_doubling.h>
#include <gloo/allreduce_ring_chunked.h>
#include <gloo/barrier_all_to_one.h>
#include <gloo/broadcast_one_to_all.h>
#include <gloo/reduce_scatter.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <memory>

#include "bench/baseline/common.hpp"

using namespace braid::benchcommon;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename T>
void run(const Args& a, const std::shared_ptr<gloo::Context>& ctx) {
  int rank = ctx->rank, n = ctx->size;
  for (size_t s = 0; s < a.sizes.size(); ++s) {
    uint64_t count = elements(a.op, a.sizes[s], sizeof(T), n);
    uint64_t in_count = a.op == "reduce_scatter" ? count * n : count;
    uint64_t out_count = a.op == "all_gather" ? count * n : count;
    std::vector<T> in(std::max<uint64_t>(in_count, 1)), out(std::max<uint64_t>(out_count, 1));
    auto fill = [&] {
      for (uint64_t i = 0; i < in_count; ++i) in[i] = static_cast<T>(input_value(rank, i));
      if (a.op == "broadcast" && rank != 0) std::fill(in.begin(), in.end(), T(0));
    };
    std::string algo;
    std::unique_ptr<gloo::Algorithm> alg;
    int c = static_cast<int>(count);
    if (a.op == "allreduce") {
      // Gloo reduces in place; the timed buffer is `in`, refilled before the check.
      if (a.algo == "rhd" || a.algo == "halving_doubling") {
        alg = std::make_unique<gloo::AllreduceHalvingDoubling<T>>(ctx, std::vector<T*>{in.data()}, c);
        algo = "halving_doubling";
      } else {
        alg = std::make_unique<gloo::AllreduceRingChunked<T>>(ctx, std::vector<T*>{in.data()}, c);
        algo = "ring_chunked";
      }
    } else if (a.op == "reduce_scatter") {
      alg = std::make_unique<gloo::ReduceScatterHalvingDoubling<T>>(
          ctx, std::vector<T*>{in.data()}, static_cast<int>(in_count), std::vector<int>(n, c));
      algo = "halving_doubling";
    } else if (a.op == "all_gather") {
      alg = std::make_unique<gloo::AllgatherRing<T>>(ctx, std::vector<const T*>{in.data()}, out.data(), c);
      algo = "ring";
    } else {
      alg = std::make_unique<gloo::BroadcastOneToAll<T>>(ctx, std::vector<T*>{in.data()}, count, 0, 0);
      algo = "one_to_all";
    }
    gloo::BarrierAllToOne barrier(ctx);
    fill();
    uint64_t warm = a.iters[s] / 5 + 2;
    for (uint64_t i = 0; i < warm; ++i) alg->run();
    barrier.run();
    double t0 = now();
    for (uint64_t i = 0; i < a.iters[s]; ++i) alg->run();
    double el = (now() - t0) / static_cast<double>(a.iters[s]);
    // Slowest rank's time, and the number of wrong elements, gathered by max/sum all-reduces.
    double tmax = el;
    gloo::AllreduceRingChunked<double> red_t(ctx, {&tmax}, 1, gloo::ReductionFunction<double>::max);
    red_t.run();
    fill();
    std::fill(out.begin(), out.end(), T(0));
    // Gloo writes straight into the peer's registered buffer: a faster peer
    // must not send before this rank has refilled and cleared its buffers.
    barrier.run();
    alg->run();
    const std::vector<T>& res = (a.op == "all_gather") ? out : in;
    uint64_t res_count = a.op == "all_gather" ? out_count : count;
    double wrong = 0;
    for (uint64_t i = 0; i < res_count; ++i)
      if (static_cast<double>(res[i]) != expected_value(a.op, rank, n, i, count)) wrong += 1;
    gloo::AllreduceRingChunked<double> red_w(ctx, {&wrong}, 1);
    red_w.run();
    if (rank == 0) print_row("gloo", a, n, a.sizes[s], tmax, static_cast<uint64_t>(wrong), algo);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse_args(argc, argv);
  a.transport = "tcp";
  const char* r = std::getenv("BRAID_RANK");
  const char* w = std::getenv("BRAID_WORLD_SIZE");
  if (!r || !w || a.store.empty()) {
    std::fprintf(stderr, "gloo baseline: needs BRAID_RANK, BRAID_WORLD_SIZE and --store DIR\n");
    return 2;
  }
  int rank = std::atoi(r), n = std::atoi(w);
  gloo::transport::tcp::attr attr;
  attr.hostname = a.iface;
  auto dev = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(a.store);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, n);
  ctx->setTimeout(std::chrono::seconds(120));
  ctx->connectFullMesh(store, dev);
  if (a.dtype == "f32") run<float>(a, ctx);
  else if (a.dtype == "f64") run<double>(a, ctx);
  else if (rank == 0) std::fprintf(stderr, "gloo baseline: dtype %s not supported\n", a.dtype.c_str());
  return 0;
}
