// braid bench comm: collectives against Open MPI and Gloo, nccl-tests style.
#include "bench/comm_bench.hpp"
#include "cli/command.hpp"
#include "core/bytes.hpp"
#include "core/error.hpp"

namespace braid::cli {
namespace {

std::function<int()> setup(CLI::App& bench) {
  auto o = std::make_shared<bench::CommBenchOptions>();
  auto worker = std::make_shared<bool>(false);
  auto vs = std::make_shared<std::string>();
  auto iters_text = std::make_shared<std::string>();
  auto netns = std::make_shared<std::string>();
  auto* sub = bench.add_subcommand("comm", "Collectives: braid vs Open MPI and Gloo (algbw/busbw per size)");
  sub->add_option("--np", o->np, "Ranks (local processes)")->capture_default_str();
  sub->add_option("--op", o->op, "allreduce | reduce_scatter | all_gather | broadcast")->capture_default_str();
  sub->add_option("--dtype", o->dtype, "f32 | f64 | bf16 | f16 | i32 | i64")->capture_default_str();
  sub->add_option("--sizes", o->sizes, "Bytes: LOW:HIGH doubling (8:256M) or a list (8,1M,64M)")
      ->capture_default_str();
  sub->add_option("--transport", o->transport, "shm | tcp")->capture_default_str();
  sub->add_option("--algo", o->algo, "auto | ring | rhd | tree | hier")->capture_default_str();
  sub->add_option("--vs", *vs, "Also measure these in the same run: mpi, gloo, or mpi,gloo");
  sub->add_option("--iters", *iters_text, "Timed iterations per size (default: by size)");
  sub->add_option("--streams", o->streams, "TCP connections per peer (default: BRAID_STREAMS or 1)");
  sub->add_option("--netns", *netns, "Run rank i in network namespace i (comma list), e.g. braid-h0,braid-h1");
  sub->add_option("--store-addr", o->bind_addr, "Address for the rendezvous store (with --netns: the bridge)");
  auto tune = std::make_shared<bool>(false);
  sub->add_flag("--tune", *tune, "Measure every algorithm and write the fastest per size as a tuning table");
  sub->add_option("--tune-out", o->tune_out, "Where --tune writes the table (default braid-tuning.json)");
  sub->add_flag("--json", o->json, "One JSON object per row");
  sub->add_flag("--quiet", o->quiet, "Do not echo the workers' log lines");
  sub->add_flag("--worker", *worker, "(internal) run as one rank")->group("");
  return [=] {
    std::vector<std::string> peers;
    for (size_t s = 0; s <= vs->size();) {
      size_t c = vs->find(',', s);
      std::string p = vs->substr(s, c == std::string::npos ? std::string::npos : c - s);
      if (!p.empty()) peers.push_back(p);
      if (c == std::string::npos) break;
      s = c + 1;
    }
    o->vs = peers;
    for (size_t s = 0; s <= netns->size() && !netns->empty();) {
      size_t c = netns->find(',', s);
      o->netns.push_back(netns->substr(s, c == std::string::npos ? std::string::npos : c - s));
      if (c == std::string::npos) break;
      s = c + 1;
    }
    if (*worker) {
      auto sizes = parse_byte_sizes(o->sizes);
      std::vector<uint64_t> iters;
      for (auto v : parse_byte_sizes(iters_text->empty() ? "1" : *iters_text)) iters.push_back(v);
      if (iters.size() == 1 && sizes.size() > 1) iters.assign(sizes.size(), iters[0]);
      if (iters.size() != sizes.size()) throw ConfigError("--iters must give one count per size");
      return bench::run_comm_bench_worker(*o, sizes, iters);
    }
    if (!iters_text->empty()) o->iters = std::stoi(*iters_text);
    if (*tune && o->tune_out.empty()) o->tune_out = "braid-tuning.json";
    auto rows = bench::run_comm_bench(*o);
    bench::print_comm_rows(rows, *o);
    for (auto& r : rows)
      if (r.wrong) return 3;
    return 0;
  };
}

}  // namespace

BRAID_BENCH("comm", 10, setup);

}  // namespace braid::cli
