#pragma once
// Step time, throughput and memory of one training plan on one cluster.
//
// Cost model (docs/plan.md, "Step time"); m micro-batches per replica, p
// pipeline stages, v virtual stages per GPU, t_mb the compute of one
// micro-batch on the slowest stage:
//   compute        m · t_mb, with t_mb = FLOPs of the stage / (peak · efficiency)
//   bubble         (p-1)/v · t_mb  (GPipe and 1F1B: v = 1; Narayanan et al. 2021)
//   tensor par.    4 all-reduces of b·s·h·2 bytes per layer and micro-batch (6 with full
//                  recomputation), exposed by (1 - overlap_tp), on the pipeline's
//                  critical path of m + (p-1)/v micro-batch slots
//   pipeline p2p   2·v sends of b·s·h·2/t bytes per micro-batch slot over the slowest
//                  stage boundary, exposed by (1 - overlap_pp)
//   data parallel  gradient all-reduce (ZeRO-0) or reduce-scatter + parameter
//                  all-gather (ZeRO-1/2), hierarchical over the tiers the DP group
//                  spans, hidden behind the last micro-batch's backward and the first
//                  one's forward; ZeRO-3 gathers weights for every micro-batch and
//                  hides behind all compute
//   DiLoCo         the outer synchronisation, amortised over its H inner steps
#include <cstdint>
#include <string>
#include <vector>

#include "plan/cluster_spec.hpp"
#include "plan/collective_cost.hpp"
#include "plan/diloco_model.hpp"
#include "plan/model_spec.hpp"

namespace braid::plan {

enum class Schedule { GPipe, OneFOneB, Interleaved };
// Which parallel dimension is outermost in the GPU order (TP is always
// innermost, in the scale-up domain). DpOuter is Llama 3's [TP, CP, PP, DP];
// PpOuter is Megatron-LM's default tp-dp-pp.
enum class MeshOrder { DpOuter, PpOuter };

std::string to_string(Schedule s);
Schedule parse_schedule(const std::string& text);
std::string to_string(MeshOrder o);
MeshOrder parse_mesh_order(const std::string& text);

struct Overlap {
  double tp = 0;  // fraction of tensor-parallel communication hidden behind compute
  double pp = 0;  // fraction of pipeline sends hidden
  double dp = 1;  // fraction of the overlap window the DP collectives can use
};

struct ParallelPlan {
  int64_t dp = 0;  // 0: every GPU of the cluster not used by tp·pp
  int64_t tp = 1;
  int64_t pp = 1;
  int zero = 1;
  int64_t micro_batch = 1;     // sequences
  int64_t global_batch = 0;    // sequences; 0: 4·pp micro-batches per replica (1 without PP)
  int64_t seq_len = 0;         // 0: the model's context
  Recompute recompute = Recompute::Selective;
  Schedule schedule = Schedule::OneFOneB;
  int64_t virtual_stages = 1;  // interleaved only
  int grad_bits = 32;          // precision of the gradient reduction (FP32 as Megatron and Llama 3)
  bool sequence_parallel = true;
  bool flash_attention = true;
  MeshOrder order = MeshOrder::DpOuter;
  Overlap overlap;
  DilocoOptions diloco;

  std::string describe() const;  // "dp 128 × tp 8 × pp 16, ZeRO-1, ..."
};

// One row of exposed communication.
struct CommRow {
  std::string dimension;  // "tensor parallel", "pipeline p2p", "data parallel", "DiLoCo outer sync"
  std::string route;      // algorithm and tiers
  double total = 0;       // seconds of communication per step
  double exposed = 0;     // seconds it adds to the step
  std::string overlap;    // the overlap assumed, in words
};

struct MemoryBreakdown {
  std::string stage;  // which pipeline stage is the worst ("first", "last", "only")
  double params = 0;  // parameters held by one GPU of that stage (before ZeRO)
  double weights = 0;
  double gradients = 0;
  double optimizer = 0;
  double activations = 0;
  double logits = 0;
  double in_flight = 0;  // micro-batches whose activations are alive at once
  double total = 0;
  double capacity = 0;   // usable bytes
  bool fits = false;
};

struct StepEstimate {
  ModelSpec model;
  ClusterSpec cluster;
  ParallelPlan plan;  // with defaults resolved (dp, global batch, seq_len)
  int64_t gpus = 0;
  int64_t sites_used = 1;
  int64_t micro_batches = 0;  // per replica per step
  double tokens_per_step = 0;
  double stage_layers = 0;    // layers on the slowest stage
  double model_flops_per_step = 0;     // PaLM
  double hardware_flops_per_step = 0;  // with recomputation
  double compute = 0;
  double bubble = 0;
  std::vector<CommRow> comm;
  double step_time = 0;
  double mfu = 0;
  double hfu = 0;
  double tokens_per_second = 0;
  double model_flops_per_gpu = 0;  // achieved model FLOP/s per GPU
  MemoryBreakdown memory;
  std::vector<std::string> warnings;

  double exposed_comm() const;
};

// Throws ConfigError for a plan that cannot run (tp not dividing heads, a
// batch that does not split into micro-batches, too few GPUs, ...).
StepEstimate estimate_step(const ModelSpec& model, const ClusterSpec& cluster, ParallelPlan plan);

struct TokenBudget {
  double tokens = 0;
  double steps = 0;
  double seconds = 0;
  double gpu_hours = 0;
  double flops_6nd = 0;   // 6·N·D
  double flops_palm = 0;  // PaLM model FLOPs
};
TokenBudget budget_for_tokens(const StepEstimate& e, double tokens);

// How the GPUs of a parallel group are spread over the cluster's tiers:
// `stride` apart in GPU order, `count` of them.
std::vector<GroupLevel> group_levels(const ClusterSpec& c, int64_t job_gpus, int64_t sites_used,
                                     int64_t stride, int64_t count);

}  // namespace braid::plan
