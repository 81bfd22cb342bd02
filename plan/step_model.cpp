#include "plan/step_model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "plan/memory_model.hpp"
#include "plan/units.hpp"

namespace braid::plan {

std::string to_string(Schedule s) {
  switch (s) {
    case Schedule::GPipe: return "gpipe";
    case Schedule::OneFOneB: return "1f1b";
    case Schedule::Interleaved: return "interleaved";
  }
  return "?";
}

Schedule parse_schedule(const std::string& text) {
  if (text == "gpipe") return Schedule::GPipe;
  if (text == "1f1b") return Schedule::OneFOneB;
  if (text == "interleaved") return Schedule::Interleaved;
  throw ConfigError(fmt::format("unknown pipeline schedule '{}'", text),
                    "use gpipe, 1f1b or interleaved");
}

std::string to_string(MeshOrder o) { return o == MeshOrder::DpOuter ? "tp,pp,dp" : "tp,dp,pp"; }

MeshOrder parse_mesh_order(const std::string& text) {
  if (text == "tp,pp,dp") return MeshOrder::DpOuter;
  if (text == "tp,dp,pp") return MeshOrder::PpOuter;
  throw ConfigError(fmt::format("unknown GPU order '{}'", text),
                    "innermost first: tp,pp,dp (Llama 3: data parallel outermost) or tp,dp,pp "
                    "(Megatron-LM: pipeline outermost)");
}

std::string ParallelPlan::describe() const {
  std::string s = fmt::format("dp {} × tp {} × pp {} (order {}), ZeRO-{}, recompute {}", dp, tp, pp,
                              to_string(order), zero, to_string(recompute));
  if (recompute == Recompute::Selective && flash_attention) s += " (FlashAttention's own)";
  if (pp > 1) {
    s += ", " + to_string(schedule);
    if (schedule == Schedule::Interleaved) s += fmt::format(" (v={})", virtual_stages);
  }
  return s;
}

double StepEstimate::exposed_comm() const {
  double e = 0;
  for (auto& r : comm) e += r.exposed;
  return e;
}

std::vector<GroupLevel> group_levels(const ClusterSpec& c, int64_t job_gpus, int64_t sites_used,
                                     int64_t stride, int64_t count) {
  double st = static_cast<double>(stride);
  double n = static_cast<double>(count);
  auto members_in = [&](double block) {
    if (block >= st * n) return n;
    if (block >= st) return std::floor(block / st);
    return 1.0;
  };
  double site_block = static_cast<double>(job_gpus) / static_cast<double>(sites_used);
  double pod_block = std::min(static_cast<double>(c.pod_gpus), site_block);
  double domain_block = std::min(static_cast<double>(c.domain_size), pod_block);
  double in_domain = members_in(domain_block);
  double in_pod = members_in(pod_block);
  double in_site = members_in(site_block);
  // Every GPU of a site sends its share across the WAN at the same time.
  double wan_per_gpu = c.wan.bandwidth / site_block;
  return {
      {"scale-up", in_domain, c.scale_up.bandwidth, c.scale_up.latency},
      {"scale-out", in_pod / in_domain, c.scale_out.bandwidth, c.scale_out.latency},
      {"between pods", in_site / in_pod, c.scale_out.bandwidth / c.oversubscription,
       c.scale_out.latency},
      {"wan", n / in_site, wan_per_gpu, c.wan.latency},
  };
}

namespace {

[[noreturn]] void bad_plan(const std::string& what, const std::string& hint) {
  throw ConfigError(what, hint);
}

std::string divisors_of(int64_t n, int64_t limit = 1 << 20) {
  std::string s;
  int shown = 0;
  for (int64_t d = 1; d <= n && d <= limit; ++d)
    if (n % d == 0) {
      if (shown++ == 12) {
        s += ", ...";
        break;
      }
      s += (s.empty() ? "" : ", ") + std::to_string(d);
    }
  return s;
}

// Layers per stage when the output layer (head_units layers' worth of work)
// sits on the last stage: the split that makes the slowest stage fastest, as
// Llama 3 did by giving its first and last stages one layer fewer.
struct StagePartition {
  double first_layers;  // the most layers on any stage but the last
  double last_layers;
  double load;          // slowest stage, in layers (output layer included)
};

StagePartition partition_layers(int64_t layers, int64_t pp, double head_units) {
  double l = static_cast<double>(layers);
  if (pp == 1) return {l, l, l + head_units};
  StagePartition best{0, 0, 1e300};
  int64_t most = (layers + pp - 1) / pp;
  for (int64_t last = 0; last <= most; ++last) {
    int64_t others = (layers - last + pp - 2) / (pp - 1);
    double load = std::max(static_cast<double>(others), static_cast<double>(last) + head_units);
    if (load <= best.load) best = {static_cast<double>(others), static_cast<double>(last), load};
  }
  return best;
}

struct Resolved {
  int64_t seq;
  int64_t gpus;
  int64_t sites_used;
  int64_t micro_batches;
};

Resolved resolve_and_check(const ModelSpec& m, const ClusterSpec& c, ParallelPlan& p) {
  if (p.tp < 1 || p.pp < 1 || p.dp < 0)
    bad_plan("dp, tp and pp must be positive", "e.g. --tp 8 --pp 4 (dp defaults to the GPUs left)");
  if (p.dp == 0) {
    if (c.gpus % (p.tp * p.pp) != 0)
      bad_plan(fmt::format("tp {} × pp {} does not divide the cluster's {} GPUs", p.tp, p.pp, c.gpus),
               "give --dp explicitly, or choose tp and pp whose product divides the GPU count");
    p.dp = c.gpus / (p.tp * p.pp);
  }
  Resolved r{};
  r.gpus = p.dp * p.tp * p.pp;
  if (r.gpus > c.gpus)
    bad_plan(fmt::format("dp {} × tp {} × pp {} needs {} GPUs; cluster '{}' has {}", p.dp, p.tp, p.pp,
                         r.gpus, c.name, c.gpus),
             "lower dp, or use a larger cluster (--gpus with the default cluster)");
  r.seq = p.seq_len > 0 ? p.seq_len : m.context;
  p.seq_len = r.seq;

  if (m.heads % p.tp != 0)
    bad_plan(fmt::format("tp {} does not divide the {} attention heads of {}", p.tp, m.heads, m.name),
             fmt::format("tensor parallelism splits heads: use one of {}", divisors_of(m.heads)));
  if (m.kv_heads % p.tp != 0 && p.tp % m.kv_heads != 0)
    bad_plan(fmt::format("tp {} and the {} KV heads of {} neither divide the other", p.tp, m.kv_heads,
                         m.name),
             "each TP rank needs whole KV heads (or a whole multiple of ranks shares one)");
  if (m.ffn % p.tp != 0)
    bad_plan(fmt::format("tp {} does not divide the MLP width {} of {}", p.tp, m.ffn, m.name),
             fmt::format("use one of {}", divisors_of(m.ffn, 4096)));
  if (p.pp > m.layers)
    bad_plan(fmt::format("pp {} is more stages than {} has layers ({})", p.pp, m.name, m.layers),
             "use at most one stage per layer");
  if (p.micro_batch < 1) bad_plan("the micro-batch must be at least 1 sequence", "e.g. --micro-batch 1");
  if (p.zero < 0 || p.zero > 3)
    bad_plan(fmt::format("ZeRO stage {} does not exist", p.zero),
             "use 0 (none), 1 (optimizer), 2 (+ gradients) or 3 (+ weights)");
  if (p.grad_bits != 16 && p.grad_bits != 32)
    bad_plan(fmt::format("gradients reduced in {} bits", p.grad_bits), "use 32 (FP32) or 16 (BF16)");
  if (p.schedule == Schedule::Interleaved) {
    if (p.pp < 2) bad_plan("the interleaved schedule needs pp of at least 2", "use --schedule 1f1b");
    if (p.virtual_stages < 2)
      bad_plan("the interleaved schedule needs at least 2 virtual stages per GPU",
               "e.g. --virtual-stages 2");
    if (p.pp * p.virtual_stages > m.layers)
      bad_plan(fmt::format("pp {} × {} virtual stages is more chunks than {} layers", p.pp,
                           p.virtual_stages, m.layers),
               "use fewer virtual stages");
  } else if (p.virtual_stages != 1) {
    bad_plan("virtual stages are a feature of the interleaved schedule", "add --schedule interleaved");
  }
  for (double o : {p.overlap.tp, p.overlap.pp, p.overlap.dp})
    if (!(o >= 0 && o <= 1)) bad_plan("overlap fractions must be between 0 and 1", "e.g. --overlap-tp 0.5");

  int64_t per_replica = p.dp * p.micro_batch;
  if (p.global_batch == 0) p.global_batch = per_replica * (p.pp > 1 ? 4 * p.pp : 1);
  if (p.global_batch % per_replica != 0) {
    int64_t below = p.global_batch / per_replica * per_replica;
    int64_t above = below + per_replica;
    bad_plan(fmt::format("global batch {} does not split into dp {} × micro-batch {}", p.global_batch,
                         p.dp, p.micro_batch),
             below > 0 ? fmt::format("use a multiple of {}: {} or {}", per_replica, below, above)
                       : fmt::format("use a multiple of {}", per_replica));
  }
  r.micro_batches = p.global_batch / per_replica;
  if (p.schedule == Schedule::Interleaved && r.micro_batches % p.pp != 0)
    bad_plan(fmt::format("the interleaved schedule needs micro-batches per replica ({}) to be a "
                         "multiple of pp ({})",
                         r.micro_batches, p.pp),
             fmt::format("use a global batch that is a multiple of {}", per_replica * p.pp));

  int64_t per_site = c.gpus_per_site();
  r.sites_used = 1;
  if (r.gpus > per_site) {
    r.sites_used = (r.gpus + per_site - 1) / per_site;
    if (r.gpus % r.sites_used != 0)
      bad_plan(fmt::format("{} GPUs do not split evenly over the {} sites they need", r.gpus,
                           r.sites_used),
               "use a GPU count that is a multiple of the number of sites");
  }
  const auto& d = p.diloco;
  if (d.enabled) {
    if (r.sites_used < 2)
      bad_plan("DiLoCo runs one replica per site, but this job fits in one site",
               "use a cluster with several sites, or --sites 2");
    if (p.dp % r.sites_used != 0)
      bad_plan(fmt::format("dp {} does not split over {} sites", p.dp, r.sites_used),
               "DiLoCo needs whole replicas in each site: make dp a multiple of the sites");
    if (p.order != MeshOrder::DpOuter)
      bad_plan("DiLoCo splits data parallelism across sites", "use --order tp,pp,dp");
    if (d.inner_steps < 1) bad_plan("DiLoCo needs H of at least 1 inner step", "e.g. --diloco 100");
    if (d.bits < 1 || d.bits > 32)
      bad_plan(fmt::format("{} bits per outer-gradient value", d.bits), "use 4, 8, 16 or 32");
    if (d.fragments < 1) bad_plan("streaming DiLoCo needs at least 1 fragment", "e.g. --streaming 8");
  }
  return r;
}

}  // namespace

StepEstimate estimate_step(const ModelSpec& m, const ClusterSpec& c, ParallelPlan p) {
  m.validate();
  c.validate();
  auto r = resolve_and_check(m, c, p);
  StepEstimate e;
  e.model = m;
  e.cluster = c;
  e.gpus = r.gpus;
  e.sites_used = r.sites_used;
  e.micro_batches = r.micro_batches;
  const auto& hw = c.hardware;
  const double seq = static_cast<double>(r.seq);
  const double mb_tokens = static_cast<double>(p.micro_batch) * seq;
  const double tp = static_cast<double>(p.tp), pp = static_cast<double>(p.pp);
  const double mbs = static_cast<double>(r.micro_batches);
  const double h = static_cast<double>(m.d_model);

  // --- compute and bubble
  // FlashAttention already recomputes the attention core inside its backward
  // kernel (its cost is in the efficiency factor), so selective recomputation
  // adds nothing on top of it, in FLOPs as in memory.
  Recompute flops_mode =
      p.flash_attention && p.recompute == Recompute::Selective ? Recompute::None : p.recompute;
  double layer_hw = layer_hardware_flops_per_token(m, r.seq, flops_mode);
  double layer_fwd = layer_forward_flops_per_token(m, r.seq);
  double head_hw = 3.0 * output_forward_flops_per_token(m);
  auto part = partition_layers(m.layers, p.pp, head_hw / layer_hw);
  e.stage_layers = std::max(part.first_layers, part.last_layers);
  double t_mb = part.load * layer_hw * mb_tokens / tp / hw.sustained_flops();
  double t_fwd = t_mb * layer_fwd / layer_hw;
  double t_bwd = t_mb - t_fwd;
  double v = p.schedule == Schedule::Interleaved ? static_cast<double>(p.virtual_stages) : 1.0;
  double slots = mbs + (pp - 1) / v;  // micro-batch slots on the critical path
  e.compute = mbs * t_mb;
  e.bubble = (pp - 1) / v * t_mb;

  e.tokens_per_step = static_cast<double>(p.global_batch) * seq;
  e.model_flops_per_step = flops_per_token_palm(m, r.seq) * e.tokens_per_step;
  e.hardware_flops_per_step =
      (static_cast<double>(m.layers) * layer_hw + head_hw) * e.tokens_per_step;

  // --- tensor parallel
  if (p.tp > 1) {
    auto levels = group_levels(c, r.gpus, r.sites_used, 1, p.tp);
    auto ar = hierarchical_all_reduce(mb_tokens * h * 2.0, levels);
    double per_layer = (p.recompute == Recompute::Full ? 6.0 : 4.0) * ar.time;
    double per_slot = per_layer * e.stage_layers;
    e.comm.push_back({"tensor parallel", ar.describe(), slots * per_slot,
                      slots * per_slot * (1 - p.overlap.tp),
                      fmt::format("{:.0f}% hidden (each all-reduce sits between two matmuls)",
                                  p.overlap.tp * 100)});
    if (p.tp > c.domain_size)
      e.warnings.push_back(fmt::format("tp {} is larger than the scale-up domain ({} GPUs): tensor "
                                       "parallelism crosses the scale-out network",
                                       p.tp, c.domain_size));
  }

  // --- pipeline sends between stages
  if (p.pp > 1) {
    int64_t stride = p.order == MeshOrder::DpOuter ? p.tp : p.tp * p.dp;
    auto levels = group_levels(c, r.gpus, r.sites_used, stride, p.pp);
    // The slowest stage boundary: the highest tier the pipeline spans.
    const GroupLevel* slowest = nullptr;
    for (auto& l : levels)
      if (l.members > 1 + 1e-9) slowest = &l;
    GroupLevel link = slowest ? *slowest : levels[0];
    if (link.tier == "wan") {
      // All GPUs of a stage send across the same site link at once.
      link.bandwidth = c.wan.bandwidth / (static_cast<double>(r.gpus) / pp);
      e.warnings.push_back("the pipeline crosses sites: stage boundaries use the WAN");
    }
    double bytes = mb_tokens * h * 2.0 / tp;  // each TP rank sends its slice
    double send = point_to_point_time(bytes, link.bandwidth, link.latency);
    double per_slot = 2.0 * v * send;
    e.comm.push_back({"pipeline p2p",
                      fmt::format("{} sends of {} over {}", static_cast<int>(2 * v),
                                  format_size(bytes), link.tier),
                      slots * per_slot, slots * per_slot * (1 - p.overlap.pp),
                      fmt::format("{:.0f}% hidden", p.overlap.pp * 100)});
  }

  // --- data parallel
  // Parameters per GPU on the largest stage (the embedding and output layer are vocab-parallel).
  double layer_params = m.layer_params();
  double first_params, last_params;
  if (p.pp == 1) {
    first_params = last_params = static_cast<double>(m.layers) * layer_params + m.embedding_params() +
                                 m.output_params() + m.final_norm_params();
  } else {
    first_params = part.first_layers * layer_params + m.embedding_params();
    double output = static_cast<double>(m.vocab) * h;  // a tied embedding is copied to the last stage
    last_params = part.last_layers * layer_params + output + m.final_norm_params();
  }
  double params_gpu = std::max(first_params, last_params) / tp;
  int64_t dp_group = p.diloco.enabled ? p.dp / r.sites_used : p.dp;
  if (dp_group > 1) {
    int64_t stride = p.order == MeshOrder::DpOuter ? p.tp * p.pp : p.tp;
    auto levels = group_levels(c, r.gpus, r.sites_used, stride, dp_group);
    double grad_bytes = params_gpu * p.grad_bits / 8.0;
    double param_bytes = params_gpu * 2.0;
    double o = p.overlap.dp;
    CommRow row;
    row.dimension = "data parallel";
    if (p.zero == 0) {
      auto ar = hierarchical_all_reduce(grad_bytes, levels);
      row.route = "all-reduce " + ar.describe();
      row.total = ar.time;
      row.exposed = std::max(0.0, ar.time - o * t_bwd);
      row.overlap = fmt::format("behind the last micro-batch's backward ({}, {:.0f}% usable)",
                                format_duration(t_bwd), o * 100);
    } else if (p.zero <= 2) {
      auto rs = hierarchical_reduce_scatter(grad_bytes, levels);
      auto ag = hierarchical_reduce_scatter(param_bytes, levels);
      row.route = "reduce-scatter + all-gather " + rs.describe();
      row.total = rs.time + ag.time;
      row.exposed = std::max(0.0, rs.time - o * t_bwd) + std::max(0.0, ag.time - o * t_fwd);
      row.overlap = fmt::format("gradients behind the last backward ({}), weights behind the first "
                                "forward ({}), {:.0f}% usable",
                                format_duration(t_bwd), format_duration(t_fwd), o * 100);
    } else {
      auto rs = hierarchical_reduce_scatter(grad_bytes, levels);
      auto ag = hierarchical_reduce_scatter(param_bytes, levels);
      double gathers = p.recompute == Recompute::Full ? 3.0 : 2.0;
      row.route = "per micro-batch: all-gather weights, reduce-scatter gradients, " + rs.describe();
      row.total = mbs * (gathers * ag.time + rs.time);
      row.exposed = std::max(0.0, row.total - o * e.compute);
      row.overlap = fmt::format("prefetched behind all compute ({}), {:.0f}% usable",
                                format_duration(e.compute), o * 100);
    }
    e.comm.push_back(row);
  }

  // --- step time without DiLoCo's outer sync
  double inner = e.compute + e.bubble + e.exposed_comm();

  // --- DiLoCo's outer synchronisation, amortised over H inner steps
  if (p.diloco.enabled) {
    const auto& d = p.diloco;
    double params = m.total_params();
    double period = diloco_period(d, inner, params, r.sites_used, c.wan.bandwidth, c.wan.latency);
    double h_steps = static_cast<double>(d.inner_steps);
    double sync = outer_sync_time(params, d.bits, r.sites_used, c.wan.bandwidth, c.wan.latency);
    CommRow row;
    row.dimension = d.streaming ? "streaming DiLoCo sync" : "DiLoCo outer sync";
    row.route = fmt::format("{} per site every {} steps at {} bits over wan",
                            format_size(outer_sync_bytes_per_site(params, d.bits, r.sites_used)),
                            d.inner_steps, d.bits);
    row.total = sync / h_steps;
    row.exposed = (period - h_steps * inner) / h_steps;
    row.overlap = d.streaming ? fmt::format("{} fragments, each behind {} inner steps", d.fragments,
                                            format_sig3(d.tau()))
                              : "none (workers wait for the outer step)";
    e.comm.push_back(row);
  }

  e.step_time = e.compute + e.bubble + e.exposed_comm();
  double peak_all = static_cast<double>(r.gpus) * hw.peak_flops;
  e.mfu = e.model_flops_per_step / (peak_all * e.step_time);
  e.hfu = e.hardware_flops_per_step / (peak_all * e.step_time);
  e.tokens_per_second = e.tokens_per_step / e.step_time;
  e.model_flops_per_gpu = e.model_flops_per_step / e.step_time / static_cast<double>(r.gpus);

  // --- memory of the worst stage
  ActivationShape shape{r.seq, p.micro_batch, p.tp, p.sequence_parallel, p.flash_attention, p.recompute};
  double act_layer = activation_bytes_per_layer(m, shape);
  double sp_div = p.sequence_parallel ? tp : 1.0;
  double working = p.recompute == Recompute::Full ? recompute_working_bytes(m, shape) : 0.0;
  double embed_out = mb_tokens * h * (2.0 + (m.dropout ? 1.0 : 0.0)) / sp_div;
  // Micro-batches alive at once (Korthikanti et al. 2022 section 4.2.3).
  double first_in_flight, last_in_flight;
  switch (p.schedule) {
    case Schedule::GPipe: first_in_flight = last_in_flight = mbs; break;
    case Schedule::OneFOneB:
      first_in_flight = std::min(mbs, pp);
      last_in_flight = 1;
      break;
    case Schedule::Interleaved:
    default:
      first_in_flight = std::min(mbs, pp) * (1 + (pp - 1) / (pp * v));
      last_in_flight = first_in_flight;  // every device holds chunks of early virtual stages
      break;
  }
  if (p.pp == 1) first_in_flight = last_in_flight = 1;  // micro-batches run one after another
  auto states_for = [&](double params) {
    return zero_model_state_bytes(params / tp, p.zero, dp_group);
  };
  auto stage_memory = [&](const char* name, double params, double layers, double in_flight,
                          bool has_embedding, bool has_logits) {
    MemoryBreakdown mem;
    mem.stage = name;
    mem.params = params / tp;
    auto s = states_for(params);
    mem.weights = s.weights;
    mem.gradients = s.gradients;
    mem.optimizer = s.optimizer;
    mem.in_flight = in_flight;
    mem.activations = act_layer * layers * in_flight + working + (has_embedding ? embed_out * in_flight : 0);
    mem.logits = has_logits ? logits_bytes(m, r.seq, p.micro_batch, p.tp) : 0;
    mem.total = mem.weights + mem.gradients + mem.optimizer + mem.activations + mem.logits;
    mem.capacity = hw.usable_memory_bytes();
    mem.fits = mem.total <= mem.capacity;
    return mem;
  };
  if (p.pp == 1) {
    e.memory = stage_memory("only", first_params, static_cast<double>(m.layers), 1, true, true);
  } else {
    auto first = stage_memory("first", first_params, part.first_layers, first_in_flight, true, false);
    auto last = stage_memory("last", last_params, part.last_layers, last_in_flight, false, true);
    e.memory = first.total >= last.total ? first : last;
  }
  if (!e.memory.fits)
    e.warnings.push_back(fmt::format("does not fit: {} needed per GPU, {} usable",
                                     format_size_gib(e.memory.total),
                                     format_size_gib(e.memory.capacity)));
  e.plan = p;
  return e;
}

TokenBudget budget_for_tokens(const StepEstimate& e, double tokens) {
  TokenBudget b;
  b.tokens = tokens;
  b.steps = tokens / e.tokens_per_step;
  b.seconds = b.steps * e.step_time;
  b.gpu_hours = b.seconds * static_cast<double>(e.gpus) / 3600.0;
  b.flops_6nd = flops_per_token_6n(e.model) * tokens;
  b.flops_palm = flops_per_token_palm(e.model, e.plan.seq_len) * tokens;
  return b;
}

}  // namespace braid::plan
