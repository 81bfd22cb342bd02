// Communicator: issue order, the inline fast path, the executor thread,
// deadlines and failure spreading. The algorithms live in comm/algo/.
//
// Execution model. Collectives run one at a time in issue order. An operation
// of at most CommOptions::inline_max_bytes that finds nothing queued runs at
// once in the caller's thread (under the issue lock): no thread hop, no
// allocation by this layer (the Work it returns is empty, i.e. complete).
// Anything else is queued for the communicator's executor thread, started on
// first use, which waits for work by spinning briefly and then sleeping on a
// futex. Waiting for a transfer drives Mesh::progress() (the Request does),
// since shared memory has no progress thread.
//
// Failures. Every operation has a deadline, set when it starts running. The
// first failure of an operation (Timeout, Mismatch, PeerLost, Aborted) is
// recorded in the FailureState shared by this communicator and its
// subgroups and spread with Mesh::abort, so every peer's pending requests
// fail with the same kind and every rank throws the same error; queued and
// later operations fail at once with it. A lost pair reported by the
// transport (Mesh::on_pair_failure) is recorded the same way, so nothing
// new starts; the operation in flight fails through its own requests if it
// needs that peer.
#include "comm/communicator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "comm/algo/algorithms.hpp"
#include "comm/algo/codec_ring.hpp"
#include "comm/algo/collective.hpp"
#include "comm/flight_recorder.hpp"
#include "comm/reduce.hpp"
#include "comm/tuning.hpp"
#include "comm/work.hpp"
#include "core/checksum.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/thread.hpp"

namespace braid::comm {

// --- names ---

ReduceOp parse_reduce_op(const std::string& name) {
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min})
    if (name == reduce_op_name(op)) return op;
  throw ConfigError(fmt::format("unknown reduction '{}'", name), "use one of: sum, avg, max, min");
}

Algo parse_algo(const std::string& name) {
  for (Algo a : {Algo::Auto, Algo::Ring, Algo::Rhd, Algo::Tree, Algo::Hierarchical})
    if (name == algo_name(a)) return a;
  if (name == "hierarchical") return Algo::Hierarchical;
  throw ConfigError(fmt::format("unknown collective algorithm '{}'", name),
                    "use one of: auto, ring, rhd, tree, hier");
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
  }
  return "?";
}

const char* algo_name(Algo a) {
  switch (a) {
    case Algo::Auto: return "auto";
    case Algo::Ring: return "ring";
    case Algo::Rhd: return "rhd";
    case Algo::Tree: return "tree";
    case Algo::Hierarchical: return "hier";
  }
  return "?";
}

namespace {

constexpr size_t kDefaultChunkBytes = 512 << 10;
constexpr int kDefaultWindow = 4;
constexpr uint32_t kP2pMeta = 0x9e3779b9u;

inline uint32_t mix(uint32_t h, uint64_t v) {
  // FNV-1a over the 8 bytes of v: cheap enough for the 8-byte fast path.
  for (int i = 0; i < 8; ++i) {
    h ^= static_cast<uint32_t>((v >> (8 * i)) & 0xff);
    h *= 16777619u;
  }
  return h;
}

// Tag of a point-to-point message: [63: 1][62..46: group][45..32: occurrence
// of (peer, tag) on this side][31..0: user tag].
inline net::Tag p2p_tag(uint32_t group_id, uint32_t user_tag, uint32_t occurrence) {
  return (1ull << 63) | (static_cast<net::Tag>(group_id & 0x1ffffu) << 46) |
         (static_cast<net::Tag>(occurrence & 0x3fffu) << 32) | user_tag;
}

std::string error_text(const std::exception_ptr& e) {
  try {
    if (e) std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
  }
  return "unknown error";
}

bool overlaps(const void* a, size_t alen, const void* b, size_t blen) {
  auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return alen && blen && x < y + blen && y < x + alen;
}

}  // namespace

struct Communicator::Impl {
  std::shared_ptr<net::Mesh> mesh;
  CommOptions options;
  std::vector<int> mesh_ranks;  // group rank -> mesh rank
  int rank = 0;
  int size = 1;
  uint32_t group_id = 0;
  HostLayout layout;
  Topology topology = Topology::SingleHost;
  int local_size = 1;  // ranks on this rank's host (within the group)
  std::shared_ptr<const TuningTable> table;
  std::shared_ptr<FailureState> failure;
  std::shared_ptr<FlightRecorder> recorder = std::make_shared<FlightRecorder>();
  TrafficCounters counters;
  std::atomic<uint64_t> ops{0};
  Scratch scratch;
  size_t chunk_bytes = kDefaultChunkBytes;
  int window = kDefaultWindow;
  bool lend_tcp = false;

  // Issue order and the executor's queue.
  std::mutex mu;
  uint64_t next_seq = 0;
  std::deque<std::shared_ptr<WorkState>> queue;
  size_t pending = 0;  // queued + running on the executor
  bool stopping = false;
  std::thread executor;
  std::atomic<uint32_t> queue_word{0};
  std::atomic<uint32_t> executor_sleeping{0};

  std::mutex p2p_mu;
  std::map<std::pair<int, uint32_t>, uint32_t> sends_made, recvs_made;

  std::mutex sub_mu;
  std::map<std::vector<int>, uint32_t> subgroups_made;

  void init_group(const std::vector<std::string>& host_ids_by_group_rank) {
    layout = HostLayout::from_host_ids(host_ids_by_group_rank);
    topology = layout.hosts > 1 ? Topology::MultiHost : Topology::SingleHost;
    local_size = static_cast<int>(
        std::count(layout.host_of.begin(), layout.host_of.end(), layout.host_of[static_cast<size_t>(rank)]));
    chunk_bytes = options.chunk_bytes ? options.chunk_bytes : kDefaultChunkBytes;
    window = options.chunks_in_flight > 0 ? options.chunks_in_flight : kDefaultWindow;
    // Lent TCP sends (vmsplice; see docs/collectives.md): opt-in, since they
    // showed no end-to-end gain on the 2-core test host. Part of the check
    // value: ranks that disagree would disagree on the ring's closing
    // acknowledgement, so they fail with Mismatch instead of a timeout.
    lend_tcp = env::get_bool("BRAID_TCP_LEND", false);
    if (!(options.timeout_s > 0))
      throw ConfigError(fmt::format("collective timeout must be positive, got {}", options.timeout_s),
                        "set CommOptions::timeout_s to the seconds one collective may take");
  }

  // ---- issuing ----

  double timeout_of(const CollectiveOptions& o) const {
    if (o.timeout_s < 0) return options.timeout_s;
    if (!(o.timeout_s > 0))
      throw ConfigError(fmt::format("collective timeout must be positive, got {}", o.timeout_s),
                        "pass a positive timeout_s, or a negative one for the communicator's default");
    return o.timeout_s;
  }

  size_t vector_bytes(const OpDesc& d) const {
    size_t b = d.count * dtype_size(d.type);
    if (d.kind == OpKind::ReduceScatter || d.kind == OpKind::AllGather) b *= static_cast<size_t>(size);
    return b;
  }

  Work submit(OpDesc d, const CollectiveOptions& o) {
    if (o.codec) {
      // Compressed all-reduce: f32 sum/avg only, always the codec ring.
      if (d.kind != OpKind::AllReduce || d.type != DType::F32 || (d.op != ReduceOp::Sum && d.op != ReduceOp::Avg))
        throw ConfigError(fmt::format("a codec compresses only f32 sum/avg all-reduce, not {} {} {}",
                                      op_kind_name(d.kind), dtype_name(d.type), reduce_op_name(d.op)),
                          "leave CollectiveOptions::codec null for this collective");
      d.codec = o.codec;
    }
    d.timeout_s = timeout_of(o);
    const size_t bytes = vector_bytes(d);
    if (o.algo != Algo::Auto && !algo_supports(d.kind, o.algo))
      throw ConfigError(fmt::format("{} has no '{}' algorithm", op_kind_name(d.kind), algo_name(o.algo)),
                        fmt::format("choose one of: {}", supported_algos(d.kind)));
    d.algo = o.algo != Algo::Auto ? o.algo : table->pick(d.kind, bytes, size, topology);
    if (d.kind == OpKind::Barrier) d.algo = Algo::Tree;  // one implementation; keep the check value stable
    if (d.codec) d.algo = Algo::Ring;  // the codec ring; its kind goes into the check value below
    if (d.algo == Algo::Hierarchical) {
      d.cross_host = table->pick(OpKind::AllReduce, bytes / static_cast<size_t>(local_size), layout.hosts,
                                 Topology::MultiHost);
      if (d.cross_host == Algo::Hierarchical) d.cross_host = Algo::Ring;
    }
    uint32_t h = 2166136261u;
    h = mix(h, static_cast<uint64_t>(d.kind) | (static_cast<uint64_t>(d.type) << 8) |
                   (static_cast<uint64_t>(d.op) << 16) | (static_cast<uint64_t>(d.algo) << 24) |
                   (static_cast<uint64_t>(d.cross_host) << 32) | (static_cast<uint64_t>(d.kind == OpKind::Broadcast ? d.root : 0) << 40));
    h = mix(h, d.count);
    if (d.codec) h = mix(h, 0xc0dec000u | static_cast<uint64_t>(d.codec->kind()));
    h = mix(h, chunk_bytes ^ (static_cast<uint64_t>(window) << 48) ^ (static_cast<uint64_t>(table->fingerprint()) << 16) ^
                   (lend_tcp ? 1ull << 63 : 0));
    d.meta = h;

    std::unique_lock<std::mutex> lock(mu);
    d.seq = next_seq++;
    ops.fetch_add(1, std::memory_order_relaxed);
    d.flight = recorder->issued(op_kind_name(d.kind), std::string(dtype_name(d.type)).c_str(), bytes, d.seq, mesh->epoch(), group_id, rank,
                                size, d.kind == OpKind::Broadcast ? d.root : -1);
    if (std::exception_ptr e = failure->error()) {
      const std::string why = error_text(e);
      recorder->not_run(d.flight, why.c_str());
      recorder->on_failure(why);
      return Work(failed_work(e));
    }
    if (pending == 0 && bytes <= options.inline_max_bytes) {
      recorder->started(d.flight);
      try {
        execute(d);
      } catch (...) {
        std::exception_ptr e = failure->fail(std::current_exception());
        record_failure(d, e);
        return Work(failed_work(e));
      }
      recorder->finished(d.flight, true);
      return Work();
    }
    auto w = std::make_shared<WorkState>();
    w->op = d;
    w->timing.enqueued_ns = now_ns();
    queue.push_back(w);
    ++pending;
    if (!executor.joinable()) executor = std::thread([this] { executor_loop(); });
    lock.unlock();
    notify_executor();
    return Work(w);
  }

  void notify_executor() {
    queue_word.fetch_add(1, std::memory_order_seq_cst);
    if (executor_sleeping.load(std::memory_order_seq_cst)) futex_wake(&queue_word, 1, false);
  }

  void executor_loop() {
    set_thread_name(fmt::format("braid-comm-{}", group_id));
    for (;;) {
      const uint32_t seen = queue_word.load(std::memory_order_seq_cst);
      std::shared_ptr<WorkState> w;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!queue.empty()) {
          w = std::move(queue.front());
          queue.pop_front();
        } else if (stopping) {
          return;
        }
      }
      if (!w) {
        // Spin a little (the next bucket often follows within microseconds),
        // then sleep until the issuer bumps queue_word.
        for (int i = 0; i < 2000 && queue_word.load(std::memory_order_relaxed) == seen; ++i) cpu_relax();
        if (queue_word.load(std::memory_order_seq_cst) == seen) {
          executor_sleeping.store(1, std::memory_order_seq_cst);
          if (queue_word.load(std::memory_order_seq_cst) == seen) futex_wait(&queue_word, seen, 100'000'000, false);
          executor_sleeping.store(0, std::memory_order_seq_cst);
        }
        continue;
      }
      run_queued(*w);
      std::lock_guard<std::mutex> lock(mu);
      --pending;
    }
  }

  void run_queued(WorkState& w) {
    w.timing.started_ns = now_ns();
    if (std::exception_ptr e = failure->error()) {
      w.timing.finished_ns = w.timing.started_ns;
      const std::string why = error_text(e);
      recorder->not_run(w.op.flight, why.c_str());
      recorder->on_failure(why);
      w.fail(e);
      return;
    }
    recorder->started(w.op.flight);
    try {
      execute(w.op);
      w.timing.finished_ns = now_ns();
      recorder->finished(w.op.flight, true);
      w.complete();
    } catch (...) {
      std::exception_ptr e = failure->fail(std::current_exception());
      w.timing.finished_ns = now_ns();
      record_failure(w.op, e);
      w.fail(e);
    }
  }

  // The flight recorder dumps on this rank's first failed collective.
  void record_failure(const OpDesc& d, const std::exception_ptr& e) {
    const std::string why = error_text(e);
    recorder->finished(d.flight, false, why.c_str());
    recorder->on_failure(fmt::format("{} #{} (group {}) failed: {}", op_kind_name(d.kind), d.seq, group_id, why));
  }

  // ---- running one collective ----

  void execute(const OpDesc& d) {
    Collective::Group g{mesh.get(), mesh_ranks.data(), size, rank};
    Collective c(g, collective_tag_base(group_id, d.seq), d.meta, Deadline::in_seconds(d.timeout_s), &scratch,
                 &counters);
    // (chunk_bytes, in the check value, is the configured chunk; the
    // default grows with the vector, the same way on every rank.)
    c.chunk_bytes = options.chunk_bytes ? options.chunk_bytes : default_chunk_bytes(vector_bytes(d));
    c.window = window;
    c.spin_ns = static_cast<int64_t>(options.spin_wait_us * 1000);
    c.lend_sends = lend_tcp;
    c.type = d.type;
    c.elem = dtype_size(d.type);
    c.op = d.op;
    if (d.kind == OpKind::Barrier) {
      dissemination_barrier(c);
      return;
    }
    if (d.count == 0) {
      probe(c);
      return;
    }
    switch (d.kind) {
      case OpKind::AllReduce: all_reduce(c, d); return;
      case OpKind::ReduceScatter: reduce_scatter(c, d); return;
      case OpKind::AllGather: all_gather(c, d); return;
      case OpKind::Broadcast: broadcast(c, d); return;
      case OpKind::Barrier: return;
    }
  }

  // An empty collective still exchanges one empty message around the ring,
  // so that a rank that passed 0 while its neighbour passed more sees the
  // neighbour's first message and fails with Mismatch instead of waiting.
  void probe(const Collective& c) {
    if (size == 1) return;
    net::RequestPtr r = c.recv((rank - 1 + size) % size, nullptr, 0, 0);
    net::RequestPtr s = c.send((rank + 1) % size, nullptr, 0, 0);
    c.wait(r);
    c.wait(s);
  }

  void run_all_reduce(const Collective& c, const OpDesc& d, const void* in, void* out) {
    switch (d.algo) {
      case Algo::Rhd: rhd_all_reduce(c, in, out, d.count); return;
      case Algo::Tree: tree_all_reduce(c, in, out, d.count); return;
      case Algo::Hierarchical: hierarchical_all_reduce(c, in, out, d.count, layout, d.cross_host); return;
      default: ring_all_reduce(c, in, out, d.count); return;
    }
  }

  void all_reduce(Collective& c, const OpDesc& d) {
    if (d.codec) {
      codec_ring_all_reduce(c, *d.codec, static_cast<const float*>(d.in), static_cast<float*>(d.out), d.count,
                            d.op == ReduceOp::Avg);
      return;
    }
    const DType acc = accumulation_type(d.type);
    const int64_t divisor = d.op == ReduceOp::Avg ? size : 0;
    c.type = acc;
    c.elem = dtype_size(acc);
    if (acc == d.type) {
      c.avg_divisor = divisor;
      run_all_reduce(c, d, d.in, d.out);
      return;
    }
    // bf16/f16: reduce in f32 throughout, round once at the end. Every rank
    // holds identical f32 results, so every rank rounds (and divides) to the
    // same bits.
    void* wide = scratch.get(Scratch::kAccum, d.count * c.elem);
    to_accumulation(d.type, wide, d.in, d.count);
    c.avg_divisor = 0;
    run_all_reduce(c, d, wide, wide);
    from_accumulation(d.type, d.out, wide, d.count, divisor > 1 ? divisor : 1);
  }

  void reduce_scatter(Collective& c, const OpDesc& d) {
    const DType acc = accumulation_type(d.type);
    const int64_t divisor = d.op == ReduceOp::Avg ? size : 0;
    c.type = acc;
    c.elem = dtype_size(acc);
    const Partition p = Partition::equal(d.count, size);
    auto run = [&](const void* in, void* out) {
      if (d.algo == Algo::Rhd) rhd_reduce_scatter(c, in, out, p);
      else ring_reduce_scatter(c, in, out, p);
    };
    if (acc == d.type) {
      c.avg_divisor = divisor;
      run(d.in, d.out);
      return;
    }
    void* wide_in = scratch.get(Scratch::kAccum, p.total() * c.elem);
    void* wide_out = scratch.get(Scratch::kAlgo2, d.count * c.elem);
    to_accumulation(d.type, wide_in, d.in, p.total());
    c.avg_divisor = 0;
    run(wide_in, wide_out);
    from_accumulation(d.type, d.out, wide_out, d.count, divisor > 1 ? divisor : 1);
  }

  void all_gather(const Collective& c, const OpDesc& d) {
    const Partition p = Partition::equal(d.count, size);
    if (d.algo == Algo::Rhd) rhd_all_gather(c, d.in, d.out, p);
    else ring_all_gather(c, d.in, d.out, p);
  }

  void broadcast(const Collective& c, const OpDesc& d) {
    if (d.algo == Algo::Ring) ring_broadcast(c, d.out, d.count, d.root);
    else tree_broadcast(c, d.out, d.count, d.root);
  }

  // ---- validation ----

  void check_buffers(const OpDesc& d) const {
    const size_t es = dtype_size(d.type);
    if (d.count == 0) return;
    if ((!d.in && d.kind != OpKind::Broadcast) || !d.out)
      throw ConfigError(fmt::format("{} of {} elements got a null buffer", op_kind_name(d.kind), d.count),
                        "pass buffers that hold the elements (count is per rank)");
    if (d.kind == OpKind::ReduceScatter || d.kind == OpKind::AllGather || d.kind == OpKind::AllReduce) {
      if (d.kind != OpKind::Broadcast && (d.kind == OpKind::AllReduce || d.kind == OpKind::ReduceScatter) &&
          !dtype_reducible(d.type))
        throw ConfigError(fmt::format("{} cannot reduce {} elements", op_kind_name(d.kind), dtype_name(d.type)),
                          "reductions take f32, f64, bf16, f16, i32 or i64");
    }
    const size_t n = static_cast<size_t>(size);
    switch (d.kind) {
      case OpKind::AllReduce:
        if (d.in != d.out && overlaps(d.in, d.count * es, d.out, d.count * es))
          throw ConfigError("all_reduce buffers overlap partially", "pass the same buffer (in place) or disjoint ones");
        break;
      case OpKind::ReduceScatter: {
        const char* own = static_cast<const char*>(d.in) + static_cast<size_t>(rank) * d.count * es;
        if (d.out != own && overlaps(d.in, n * d.count * es, d.out, d.count * es))
          throw ConfigError("reduce_scatter output overlaps its input",
                            "for in place, out must be in + rank*count elements; otherwise use disjoint buffers");
        break;
      }
      case OpKind::AllGather: {
        const char* own = static_cast<const char*>(d.out) + static_cast<size_t>(rank) * d.count * es;
        if (d.in != own && overlaps(d.in, d.count * es, d.out, n * d.count * es))
          throw ConfigError("all_gather input overlaps its output",
                            "for in place, in must be out + rank*count elements; otherwise use disjoint buffers");
        break;
      }
      default: break;
    }
  }

  int check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= size || peer == rank)
      throw ConfigError(fmt::format("{} to rank {} in a group of {} (this is rank {})", what, peer, size, rank),
                        "the peer must be another rank of this communicator");
    return mesh_ranks[static_cast<size_t>(peer)];
  }

  Work p2p_work(net::RequestPtr req, double timeout_s) {
    auto w = std::make_shared<WorkState>();
    w->request = std::move(req);
    w->deadline = Deadline::in_seconds(timeout_s);
    w->failure = failure;
    w->timing.enqueued_ns = w->timing.started_ns = now_ns();
    return Work(w);
  }
};

// --- Communicator ---

Communicator::Communicator(std::shared_ptr<net::Mesh> mesh, CommOptions options) : impl_(std::make_unique<Impl>()) {
  if (!mesh) throw ConfigError("Communicator needs a mesh", "connect one with net::connect_mesh or connect_inproc");
  Impl& m = *impl_;
  m.mesh = std::move(mesh);
  m.options = std::move(options);
  m.rank = m.mesh->rank();
  m.size = m.mesh->size();
  for (int r = 0; r < m.size; ++r) m.mesh_ranks.push_back(r);
  m.init_group(m.mesh->host_ids());
  m.table = std::make_shared<const TuningTable>(m.options.tuning_file.empty() ? TuningTable::builtin()
                                                                              : TuningTable::load(m.options.tuning_file));
  m.failure = std::make_shared<FailureState>(m.mesh);
  std::weak_ptr<FailureState> weak = m.failure;
  m.mesh->on_pair_failure([weak](int peer, std::exception_ptr e) {
    if (auto f = weak.lock()) {
      if (!e) e = std::make_exception_ptr(PeerLost(peer, fmt::format("connection to rank {} failed", peer)));
      f->fail(e, /*spread=*/false);  // see FailureState::fail
    }
  });
}

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Communicator::~Communicator() {
  if (!impl_) return;
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.stopping = true;
  }
  m.notify_executor();
  // The executor finishes what is queued first (each bounded by its deadline).
  if (m.executor.joinable()) m.executor.join();
}

int Communicator::rank() const { return impl_->rank; }
int Communicator::size() const { return impl_->size; }
uint32_t Communicator::epoch() const { return impl_->mesh->epoch(); }
net::Mesh& Communicator::mesh() { return *impl_->mesh; }

Work Communicator::all_reduce(const void* in, void* out, size_t count, DType type, ReduceOp op,
                              const CollectiveOptions& o) {
  OpDesc d;
  d.kind = OpKind::AllReduce;
  d.in = in;
  d.out = out;
  d.count = count;
  d.type = type;
  d.op = op;
  impl_->check_buffers(d);
  return impl_->submit(d, o);
}

Work Communicator::reduce_scatter(const void* in, void* out, size_t count, DType type, ReduceOp op,
                                  const CollectiveOptions& o) {
  OpDesc d;
  d.kind = OpKind::ReduceScatter;
  d.in = in;
  d.out = out;
  d.count = count;
  d.type = type;
  d.op = op;
  impl_->check_buffers(d);
  return impl_->submit(d, o);
}

Work Communicator::all_gather(const void* in, void* out, size_t count, DType type, const CollectiveOptions& o) {
  OpDesc d;
  d.kind = OpKind::AllGather;
  d.in = in;
  d.out = out;
  d.count = count;
  d.type = type;
  impl_->check_buffers(d);
  return impl_->submit(d, o);
}

Work Communicator::broadcast(void* buf, size_t count, DType type, int root, const CollectiveOptions& o) {
  if (root < 0 || root >= impl_->size)
    throw ConfigError(fmt::format("broadcast root {} is outside the group of {}", root, impl_->size),
                      "pass a group rank between 0 and size()-1");
  OpDesc d;
  d.kind = OpKind::Broadcast;
  d.in = buf;
  d.out = buf;
  d.count = count;
  d.type = type;
  d.root = root;
  impl_->check_buffers(d);
  return impl_->submit(d, o);
}

Work Communicator::barrier(const CollectiveOptions& o) {
  OpDesc d;
  d.kind = OpKind::Barrier;
  return impl_->submit(d, o);
}

Work Communicator::send(const void* buf, size_t bytes, int peer, uint32_t tag, const CollectiveOptions& o) {
  Impl& m = *impl_;
  const int mesh_peer = m.check_peer(peer, "send");
  if (!buf && bytes) throw ConfigError("send of a null buffer", "pass the bytes to send");
  const double timeout = m.timeout_of(o);
  if (std::exception_ptr e = m.failure->error()) return Work(failed_work(e));
  uint32_t occurrence;
  {
    std::lock_guard<std::mutex> lock(m.p2p_mu);
    occurrence = m.sends_made[{peer, tag}]++;
  }
  m.counters.bytes_sent.fetch_add(bytes, std::memory_order_relaxed);
  m.ops.fetch_add(1, std::memory_order_relaxed);
  return m.p2p_work(m.mesh->pair(mesh_peer).isend(buf, bytes, p2p_tag(m.group_id, tag, occurrence), kP2pMeta),
                    timeout);
}

Work Communicator::recv(void* buf, size_t bytes, int peer, uint32_t tag, const CollectiveOptions& o) {
  Impl& m = *impl_;
  const int mesh_peer = m.check_peer(peer, "recv");
  if (!buf && bytes) throw ConfigError("recv into a null buffer", "pass a buffer of `bytes` bytes");
  const double timeout = m.timeout_of(o);
  if (std::exception_ptr e = m.failure->error()) return Work(failed_work(e));
  uint32_t occurrence;
  {
    std::lock_guard<std::mutex> lock(m.p2p_mu);
    occurrence = m.recvs_made[{peer, tag}]++;
  }
  m.counters.bytes_received.fetch_add(bytes, std::memory_order_relaxed);
  m.ops.fetch_add(1, std::memory_order_relaxed);
  return m.p2p_work(m.mesh->pair(mesh_peer).irecv(buf, bytes, p2p_tag(m.group_id, tag, occurrence), kP2pMeta),
                    timeout);
}

std::unique_ptr<Communicator> Communicator::subgroup(const std::vector<int>& ranks) {
  Impl& m = *impl_;
  if (ranks.empty()) throw ConfigError("subgroup of no ranks", "list the group ranks of the subgroup, this one included");
  std::vector<int> sorted = ranks;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    throw ConfigError("subgroup lists a rank twice", "list each group rank once");
  if (sorted.front() < 0 || sorted.back() >= m.size)
    throw ConfigError(fmt::format("subgroup names rank {} outside the group of {}",
                                  sorted.front() < 0 ? sorted.front() : sorted.back(), m.size),
                      "use group ranks between 0 and size()-1");
  auto self = std::find(ranks.begin(), ranks.end(), m.rank);
  if (self == ranks.end())
    throw ConfigError(fmt::format("subgroup does not include this rank ({})", m.rank),
                      "only members call subgroup(); each passes the same list");
  uint32_t occurrence;
  {
    std::lock_guard<std::mutex> lock(m.sub_mu);
    occurrence = m.subgroups_made[ranks]++;
  }
  // A group id every member derives alike: parent id, member list, and how
  // many times this list was made before. Distinct ids keep the tags of
  // groups that share pairs apart.
  std::string key = fmt::format("{}|{}|", m.group_id, occurrence);
  for (int r : ranks) key += fmt::format("{},", r);
  uint32_t gid = static_cast<uint32_t>(xxh3_64(key.data(), key.size())) & 0x1ffffu;
  if (gid == m.group_id || gid == 0) gid = (gid + 1) & 0x1ffffu;

  auto sub = std::make_unique<Impl>();
  sub->mesh = m.mesh;
  sub->options = m.options;
  sub->rank = static_cast<int>(self - ranks.begin());
  sub->size = static_cast<int>(ranks.size());
  sub->group_id = gid;
  std::vector<std::string> hosts;
  for (int r : ranks) {
    sub->mesh_ranks.push_back(m.mesh_ranks[static_cast<size_t>(r)]);
    hosts.push_back(m.mesh->host_ids()[static_cast<size_t>(m.mesh_ranks[static_cast<size_t>(r)])]);
  }
  sub->init_group(hosts);
  sub->table = m.table;
  sub->failure = m.failure;
  sub->recorder = m.recorder;
  return std::unique_ptr<Communicator>(new Communicator(std::move(sub)));
}

void Communicator::abort(const std::string& reason) {
  impl_->failure->fail(std::make_exception_ptr(
      Aborted(fmt::format("collectives aborted: {}", reason), "the communicator is unusable; build a new one")));
}

FlightRecorder& Communicator::flight_recorder() { return *impl_->recorder; }

CommStats Communicator::stats() const {
  CommStats s;
  s.ops = impl_->ops.load(std::memory_order_relaxed);
  s.bytes_sent = impl_->counters.bytes_sent.load(std::memory_order_relaxed);
  s.bytes_received = impl_->counters.bytes_received.load(std::memory_order_relaxed);
  return s;
}

}  // namespace braid::comm
