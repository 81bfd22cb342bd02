#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"
#include "plan/memory_model.hpp"
#include "plan/step_model.hpp"

using namespace braid;
using namespace braid::plan;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.describe();
  }
  return "";
}

const CommRow* row(const StepEstimate& e, const std::string& dim) {
  for (auto& r : e.comm)
    if (r.dimension == dim) return &r;
  return nullptr;
}

ParallelPlan plan_of(int64_t dp, int64_t tp, int64_t pp, int64_t global_batch) {
  ParallelPlan p;
  p.dp = dp;
  p.tp = tp;
  p.pp = pp;
  p.global_batch = global_batch;
  return p;
}

}  // namespace

// The DP group of Llama 3's layout ([TP, PP, DP], DP outermost): 128 ranks
// 128 GPUs apart, 24 in each 3,072-GPU pod, spanning 5.33 pods.
TEST(StepModel, GroupLevelsFollowTheTopology) {
  auto c = load_cluster("meta-h100-24k");
  auto dp = group_levels(c, 16384, 1, 128, 128);
  ASSERT_EQ(dp.size(), 4u);
  EXPECT_DOUBLE_EQ(dp[0].members, 1);   // scale-up
  EXPECT_DOUBLE_EQ(dp[1].members, 24);  // scale-out inside a pod
  EXPECT_NEAR(dp[2].members, 128.0 / 24, 1e-12);
  EXPECT_DOUBLE_EQ(dp[2].bandwidth, 50e9 / 7);  // 1:7 between pods
  EXPECT_DOUBLE_EQ(dp[3].members, 1);   // one site
  auto tp = group_levels(c, 16384, 1, 1, 8);
  EXPECT_DOUBLE_EQ(tp[0].members, 8);
  EXPECT_DOUBLE_EQ(tp[0].bandwidth, 450e9);
  EXPECT_DOUBLE_EQ(tp[1].members, 1);
  // Over two sites every GPU of a site shares the site's WAN link.
  auto two = with_sites(c, 2);
  two.wan.bandwidth = 1e12;
  auto dp2 = group_levels(two, 16384, 2, 128, 128);
  EXPECT_DOUBLE_EQ(dp2[3].members, 2);
  EXPECT_DOUBLE_EQ(dp2[3].bandwidth, 1e12 / 8192);
}

// One GPU, no parallelism: compute is the hardware FLOPs over the sustained rate.
TEST(StepModel, SingleGpuComputeIsFlopsOverSustainedRate) {
  auto m = load_model("gpt2-124m");
  auto c = default_cluster(hardware_preset("h100"), 1);
  auto e = estimate_step(m, c, plan_of(1, 1, 1, 8));
  double tokens = 8.0 * 1024;
  // Selective recomputation (the default) is what FlashAttention does anyway: no extra FLOPs.
  double flops = tokens * (12 * layer_hardware_flops_per_token(m, 1024, Recompute::None) +
                           3 * output_forward_flops_per_token(m));
  EXPECT_DOUBLE_EQ(e.hardware_flops_per_step, flops);
  EXPECT_NEAR(e.compute, flops / (989e12 * 0.6), 1e-12);
  EXPECT_EQ(e.bubble, 0);
  EXPECT_TRUE(e.comm.empty());
  EXPECT_DOUBLE_EQ(e.step_time, e.compute);
  EXPECT_DOUBLE_EQ(e.mfu, e.model_flops_per_step / (989e12 * e.step_time));
  EXPECT_DOUBLE_EQ(e.tokens_per_second, tokens / e.step_time);
  EXPECT_EQ(e.micro_batches, 8);
}

// Without FlashAttention, selective recomputation re-runs the attention core:
// 4·s·(heads·head_dim) FLOPs per token and layer more, and stores no scores.
TEST(StepModel, SelectiveRecomputeWithEagerAttention) {
  auto m = load_model("gpt2-124m");
  auto c = default_cluster(hardware_preset("h100"), 1);
  auto p = plan_of(1, 1, 1, 8);
  p.flash_attention = false;
  p.recompute = Recompute::None;
  auto none = estimate_step(m, c, p);
  p.recompute = Recompute::Selective;
  auto selective = estimate_step(m, c, p);
  EXPECT_DOUBLE_EQ(selective.hardware_flops_per_step - none.hardware_flops_per_step,
                   8.0 * 1024 * 12 * 4.0 * 1024 * 768);
  EXPECT_DOUBLE_EQ(selective.model_flops_per_step, none.model_flops_per_step);
  EXPECT_LT(selective.memory.activations, none.memory.activations);
  p.flash_attention = true;  // with FlashAttention the two are the same plan
  auto flash = estimate_step(m, c, p);
  p.recompute = Recompute::None;
  EXPECT_DOUBLE_EQ(flash.hardware_flops_per_step, estimate_step(m, c, p).hardware_flops_per_step);
}

// Bubble over compute is (p-1)/m, and (p-1)/(v·m) interleaved.
TEST(StepModel, PipelineBubble) {
  auto m = load_model("llama3-8b");
  auto c = default_cluster(hardware_preset("h100"), 32);
  for (int64_t mbs : {4, 8, 16}) {
    auto p = plan_of(2, 4, 4, 2 * mbs);
    auto e = estimate_step(m, c, p);
    EXPECT_NEAR(e.bubble / e.compute, 3.0 / static_cast<double>(mbs), 1e-12) << mbs;
    p.schedule = Schedule::Interleaved;
    p.virtual_stages = 2;
    auto ei = estimate_step(m, c, p);
    EXPECT_NEAR(ei.bubble / ei.compute, 3.0 / (2.0 * static_cast<double>(mbs)), 1e-12) << mbs;
    EXPECT_DOUBLE_EQ(ei.compute, e.compute);
  }
}

// Layers split so the slowest stage is fastest: 126 layers on 16 stages put 7
// on the last stage next to the output layer and at most 8 on the others.
TEST(StepModel, StagesBalanceTheOutputLayer) {
  auto m = load_model("llama3-405b");
  auto c = load_cluster("meta-h100-24k");
  auto p = plan_of(128, 8, 16, 2048);
  auto e = estimate_step(m, c, p);
  EXPECT_DOUBLE_EQ(e.stage_layers, 8);
  EXPECT_EQ(e.memory.stage, "first");
  double first_params = (8 * m.layer_params() + m.embedding_params()) / 8;
  EXPECT_DOUBLE_EQ(e.memory.params, first_params);
}

TEST(StepModel, TensorParallelTraffic) {
  auto m = load_model("llama3-8b");
  auto c = default_cluster(hardware_preset("h100"), 8);
  auto p = plan_of(1, 8, 1, 4);
  auto e = estimate_step(m, c, p);
  auto* tp = row(e, "tensor parallel");
  ASSERT_NE(tp, nullptr);
  // 4 all-reduces of b·s·h·2 bytes per layer per micro-batch, ring over 8 NVLink GPUs.
  double ar = hierarchical_all_reduce(8192.0 * 4096 * 2, {{"scale-up", 8, 450e9, 2e-6}}).time;
  EXPECT_NEAR(tp->total, 4 * 32 * 4 * ar, 1e-12);
  EXPECT_DOUBLE_EQ(tp->exposed, tp->total);  // no overlap assumed by default
  p.overlap.tp = 0.5;
  EXPECT_NEAR(row(estimate_step(m, c, p), "tensor parallel")->exposed, tp->total / 2, 1e-12);
  p.overlap.tp = 0;
  p.recompute = Recompute::Full;  // the re-run forward repeats its two all-reduces
  EXPECT_NEAR(row(estimate_step(m, c, p), "tensor parallel")->total, tp->total * 6 / 4, 1e-12);
}

TEST(StepModel, DataParallelHidesBehindBackward) {
  auto m = load_model("llama3-8b");
  auto c = default_cluster(hardware_preset("h100"), 64);
  auto p = plan_of(64, 1, 1, 64);
  p.zero = 0;
  // Hierarchical all-reduce of FP32 gradients: 8 GPUs on NVLink, then 8 nodes.
  double grads = m.total_params() * 4;
  double ar = 2 * (7.0 / 8) * grads / 450e9 + 2 * 7 * 2e-6 + 2 * (7.0 / 8) * (grads / 8) / 50e9 + 2 * 7 * 5e-6;
  // The window is the backward of the (only) micro-batch.
  auto e = estimate_step(m, c, p);
  double t_bwd = e.compute * (1 - layer_forward_flops_per_token(m, 8192) /
                                      layer_hardware_flops_per_token(m, 8192, Recompute::None));
  for (double o : {1.0, 0.2, 0.0}) {
    p.overlap.dp = o;
    auto with_overlap = estimate_step(m, c, p);
    auto* dp = row(with_overlap, "data parallel");
    ASSERT_NE(dp, nullptr);
    EXPECT_NEAR(dp->total, ar, 1e-9);
    EXPECT_NEAR(dp->exposed, std::max(0.0, ar - o * t_bwd), 1e-9) << o;
  }
  EXPECT_EQ(row(e, "data parallel")->exposed, 0);  // fully hidden at o = 1
  // ZeRO-3 gathers weights for every micro-batch: more traffic than ZeRO-1.
  p.overlap.dp = 1;
  p.zero = 1;
  p.global_batch = 256;
  double z1 = row(estimate_step(m, c, p), "data parallel")->total;
  p.zero = 3;
  double z3 = row(estimate_step(m, c, p), "data parallel")->total;
  EXPECT_GT(z3, 4 * z1 * 0.9);
}

TEST(StepModel, MemoryFollowsZeroAndRecompute) {
  auto m = load_model("llama3-8b");
  auto c = default_cluster(hardware_preset("h100"), 64);
  auto p = plan_of(16, 4, 1, 64);
  double last = 1e300;
  for (int z = 0; z <= 3; ++z) {
    p.zero = z;
    double total = estimate_step(m, c, p).memory.total;
    EXPECT_LT(total, last) << "ZeRO-" << z;
    last = total;
  }
  p.zero = 1;
  p.flash_attention = false;
  p.recompute = Recompute::None;
  double none = estimate_step(m, c, p).memory.activations;
  p.recompute = Recompute::Selective;
  double selective = estimate_step(m, c, p).memory.activations;
  p.recompute = Recompute::Full;
  double full = estimate_step(m, c, p).memory.activations;
  EXPECT_GT(none, selective);
  EXPECT_GT(selective, full);
  // GPipe keeps every micro-batch alive; 1F1B at most pp of them.
  auto q = plan_of(2, 1, 4, 32);
  auto one_f = estimate_step(m, c, q);
  q.schedule = Schedule::GPipe;
  auto gpipe = estimate_step(m, c, q);
  EXPECT_DOUBLE_EQ(one_f.memory.in_flight, 4);
  EXPECT_DOUBLE_EQ(gpipe.memory.in_flight, 16);
  EXPECT_GT(gpipe.memory.activations, 3 * one_f.memory.activations);
}

TEST(StepModel, FitsOrNot) {
  auto c = default_cluster(hardware_preset("h100"), 8);
  auto p = plan_of(8, 1, 1, 8);
  auto big_activations = estimate_step(load_model("llama3-8b"), c, p);
  EXPECT_FALSE(big_activations.memory.fits);  // 8B with selective recompute: ~79 GiB
  p.zero = 3;
  p.recompute = Recompute::Full;
  auto small = estimate_step(load_model("llama3-8b"), c, p);
  EXPECT_TRUE(small.memory.fits);
  EXPECT_LE(small.memory.total, small.memory.capacity);
  auto big = estimate_step(load_model("llama3-405b"), c, plan_of(1, 8, 1, 1));
  EXPECT_FALSE(big.memory.fits);
  EXPECT_FALSE(big.warnings.empty());
}

TEST(StepModel, JobLargerThanASiteSpansSites) {
  auto c = with_sites(load_cluster("meta-h100-24k"), 2);
  c.wan.bandwidth = 1.25e12;  // 10 Tbit/s
  auto m = load_model("llama3-70b");
  auto p = plan_of(256, 8, 8, 2048);  // 16,384 GPUs > 12,288 per site
  auto e = estimate_step(m, c, p);
  EXPECT_EQ(e.sites_used, 2);
  EXPECT_NE(row(e, "data parallel")->route.find("wan"), std::string::npos);
  c.wan.bandwidth = 1.25e9;  // 10 Gbit/s: the step waits for the WAN
  EXPECT_GT(estimate_step(m, c, p).step_time, 2 * e.step_time);
}

TEST(StepModel, BadPlansAreExplained) {
  auto m = load_model("llama3-8b");
  auto c = default_cluster(hardware_preset("h100"), 64);
  auto msg = error_of([&] { estimate_step(m, c, plan_of(16, 3, 1, 64)); });
  EXPECT_NE(msg.find("tp 3 does not divide the 32 attention heads"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1, 2, 4, 8, 16, 32"), std::string::npos) << msg;
  msg = error_of([&] { estimate_step(m, c, plan_of(64, 1, 1, 100)); });
  EXPECT_NE(msg.find("global batch 100"), std::string::npos) << msg;
  EXPECT_NE(msg.find("64 or 128"), std::string::npos) << msg;
  msg = error_of([&] { estimate_step(m, c, plan_of(128, 1, 1, 128)); });
  EXPECT_NE(msg.find("needs 128 GPUs"), std::string::npos) << msg;
  msg = error_of([&] { estimate_step(m, c, plan_of(1, 1, 64, 64)); });
  EXPECT_NE(msg.find("more stages than"), std::string::npos) << msg;
  auto p = plan_of(4, 1, 4, 8);  // 2 micro-batches per replica, not a multiple of pp
  p.schedule = Schedule::Interleaved;
  p.virtual_stages = 2;
  msg = error_of([&] { estimate_step(m, c, p); });
  EXPECT_NE(msg.find("multiple of pp"), std::string::npos) << msg;
  p = plan_of(64, 1, 1, 64);
  p.zero = 4;
  EXPECT_NE(error_of([&] { estimate_step(m, c, p); }).find("ZeRO stage 4"), std::string::npos);
  p.zero = 1;
  p.diloco.enabled = true;
  EXPECT_NE(error_of([&] { estimate_step(m, c, p); }).find("one site"), std::string::npos);
  p.diloco.enabled = false;
  p.virtual_stages = 2;
  EXPECT_NE(error_of([&] { estimate_step(m, c, p); }).find("interleaved"), std::string::npos);
  EXPECT_THROW(parse_schedule("zigzag"), ConfigError);
  EXPECT_THROW(parse_mesh_order("dp,tp,pp"), ConfigError);
}

TEST(StepModel, DefaultsAreResolved) {
  auto m = load_model("llama3-8b");
  auto c = default_cluster(hardware_preset("h100"), 64);
  ParallelPlan p;
  p.tp = 8;
  p.pp = 2;
  auto e = estimate_step(m, c, p);
  EXPECT_EQ(e.plan.dp, 4);
  EXPECT_EQ(e.plan.seq_len, 8192);
  EXPECT_EQ(e.micro_batches, 8);  // 4·pp by default
  EXPECT_EQ(e.plan.global_batch, 32);
  auto budget = budget_for_tokens(e, 1e12);
  EXPECT_DOUBLE_EQ(budget.steps, 1e12 / e.tokens_per_step);
  EXPECT_DOUBLE_EQ(budget.gpu_hours, budget.seconds * 64 / 3600);
  EXPECT_DOUBLE_EQ(budget.flops_6nd, 6 * m.total_params() * 1e12);
}

// The example job on a calibrated host (what `braid bench plan` will compare
// with measured steps): data parallel over 1 and 2 workers on shared memory.
TEST(StepModel, CalibratedHostRunsTheExampleShapes) {
  ClusterSpec host = default_cluster(hardware_preset("h100"), 2);
  host.hardware.peak_flops = 80e9;
  host.hardware.efficiency = 0.7;
  host.hardware.memory = 12.0 * (1 << 30);
  host.domain_size = 2;
  host.scale_up = {"shm", 3e9, 5e-6};
  host.scale_out = {"tcp", 1e9, 40e-6};
  ModelSpec m;
  m.name = "tiny";
  m.layers = 4;
  m.d_model = 256;
  m.heads = 4;
  m.kv_heads = 4;
  m.ffn = 1024;
  m.vocab = 4096;
  m.context = 256;
  auto one = estimate_step(m, host, plan_of(1, 1, 1, 16));
  auto two = estimate_step(m, host, plan_of(2, 1, 1, 16));
  EXPECT_NEAR(two.compute, one.compute / 2, 1e-15);
  ASSERT_NE(row(two, "data parallel"), nullptr);
  EXPECT_NEAR(row(two, "data parallel")->total,
              ring_reduce_scatter_time(m.total_params() * 4, 2, 3e9, 5e-6) +
                  ring_reduce_scatter_time(m.total_params() * 2, 2, 3e9, 5e-6),
              1e-12);
  auto tp2 = estimate_step(m, host, plan_of(1, 2, 1, 16));
  EXPECT_NE(row(tp2, "tensor parallel"), nullptr);
  auto pp2 = estimate_step(m, host, plan_of(1, 1, 2, 16));
  EXPECT_GT(pp2.bubble, 0);
}
