#include "plan/plan_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/bytes.hpp"
#include "plan/units.hpp"

namespace braid::plan {

std::string format_table(const std::vector<std::vector<std::string>>& rows,
                         const std::vector<bool>& right, const std::string& indent) {
  std::vector<size_t> width;
  auto display_width = [](const std::string& s) {
    // Count code points, not bytes, so "×" and "τ" line up.
    size_t n = 0;
    for (unsigned char c : s)
      if ((c & 0xC0) != 0x80) ++n;
    return n;
  };
  for (auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], display_width(row[i]));
    }
  std::string out;
  for (auto& row : rows) {
    std::string line = indent;
    for (size_t i = 0; i < row.size(); ++i) {
      size_t pad = width[i] - display_width(row[i]);
      bool r = i < right.size() && right[i];
      if (r) line += std::string(pad, ' ') + row[i];
      else line += row[i] + (i + 1 < row.size() ? std::string(pad, ' ') : "");
      if (i + 1 < row.size()) line += "  ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

namespace {

std::string percent(double x) { return fmt::format("{:.1f}%", x * 100); }
// Binary units that suit the size: "71.3 GiB", "1.57 MiB".
std::string gib(double bytes) { return human_bytes(bytes); }

std::string cross_site_text(const CrossSiteAnalysis& a) {
  std::string s;
  s += fmt::format("\nbetween sites: {} sites of {} GPUs{}, WAN latency {}\n", a.sites,
                   format_thousands(a.gpus / a.sites),
                   a.hypothetical ? " (the cluster has one site; its job is split for this analysis)" : "",
                   format_duration(a.wan_latency));
  std::string at = a.wan_bandwidth > 0 ? "at " + format_bits_per_s(a.wan_bandwidth) : "";
  std::vector<std::vector<std::string>> rows{{"mode", "sent per site", "every", "average rate",
                                              fmt::format("needed for {:.0f}%", a.target * 100)}};
  if (!at.empty()) rows[0].push_back(at);
  for (auto& m : a.modes) {
    std::vector<std::string> row{m.label, format_size(m.bytes_per_sync),
                                 fmt::format("{} step{}", format_sig3(m.steps_per_sync),
                                             m.steps_per_sync == 1 ? "" : "s"),
                                 format_bits_per_s(m.average_rate),
                                 std::isfinite(m.needed_bandwidth) ? format_bits_per_s(m.needed_bandwidth)
                                                                   : "unreachable"};
    if (!at.empty()) row.push_back(percent(m.utilisation_at_wan));
    rows.push_back(row);
  }
  s += format_table(rows, {false, true, true, true, true, true});
  s += fmt::format("  (sent per site: each direction; average rate: bytes per sync / time between "
                   "syncs; utilisation relative to an unlimited WAN; local step {})\n",
                   format_duration(a.modes.front().local_step_time));
  return s;
}

nlohmann::json cross_site_json(const CrossSiteAnalysis& a) {
  nlohmann::json j;
  j["sites"] = a.sites;
  j["hypothetical_split"] = a.hypothetical;
  j["gpus"] = a.gpus;
  j["wan_bandwidth_bits_per_s"] = a.wan_bandwidth * 8;
  j["wan_latency_s"] = a.wan_latency;
  j["target_utilisation"] = a.target;
  j["diloco"] = {{"inner_steps", a.diloco.inner_steps},
                 {"bits", a.diloco.bits},
                 {"fragments", a.diloco.fragments},
                 {"overlap_steps", a.diloco.tau()}};
  for (auto& m : a.modes) {
    nlohmann::json mj;
    mj["mode"] = to_string(m.mode);
    mj["label"] = m.label;
    mj["bytes_per_sync_per_site"] = m.bytes_per_sync;
    mj["steps_per_sync"] = m.steps_per_sync;
    mj["local_step_time_s"] = m.local_step_time;
    mj["average_rate_bits_per_s"] = m.average_rate * 8;
    mj["needed_bits_per_s"] =
        std::isfinite(m.needed_bandwidth) ? nlohmann::json(m.needed_bandwidth * 8) : nlohmann::json(nullptr);
    if (m.utilisation_at_wan >= 0) mj["utilisation_at_wan"] = m.utilisation_at_wan;
    j["modes"].push_back(mj);
  }
  for (auto& pt : a.curve)
    j["curve"].push_back({{"bits_per_s", pt.bandwidth * 8},
                          {"data_parallel", pt.utilisation[0]},
                          {"diloco", pt.utilisation[1]},
                          {"streaming_diloco", pt.utilisation[2]}});
  return j;
}

std::string memory_text(const StepEstimate& e) {
  const auto& m = e.memory;
  const auto& p = e.plan;
  std::string where = m.stage == "only" ? "one stage" : m.stage + " pipeline stage";
  std::string s = fmt::format("\nmemory per GPU ({}: {} parameters per GPU, {} micro-batch{} in flight)\n",
                              where, format_count(m.params), format_sig3(m.in_flight),
                              m.in_flight == 1 ? "" : "es");
  int64_t shard = p.diloco.enabled ? p.dp / e.sites_used : p.dp;
  auto zero_note = [&](int stage) {
    return p.zero >= stage ? fmt::format("ZeRO-{}: / {}", p.zero, shard) : std::string();
  };
  std::vector<std::vector<std::string>> rows{
      {"weights (BF16, 2 B/param)", gib(m.weights), zero_note(3)},
      {"gradients (BF16, 2 B/param)", gib(m.gradients), zero_note(2)},
      {"optimizer (FP32 weights, Adam m, v: 12 B/param)", gib(m.optimizer), zero_note(1)},
      {fmt::format("activations (recompute {}{})", to_string(p.recompute),
                   p.sequence_parallel && p.tp > 1 ? ", sequence parallel" : ""),
       gib(m.activations), ""},
  };
  if (m.logits > 0) rows.push_back({"logits (FP32, for the loss)", gib(m.logits), ""});
  rows.push_back({"total", gib(m.total),
                  fmt::format("{} usable ({} × {:.0f}%): {}", gib(m.capacity),
                              gib(e.cluster.hardware.memory),
                              e.cluster.hardware.usable_memory * 100,
                              m.fits ? "fits" : "DOES NOT FIT")});
  s += format_table(rows, {false, true, false});
  return s;
}

}  // namespace

std::string format_report(const StepEstimate& e, const std::optional<TokenBudget>& budget,
                          const std::optional<CrossSiteAnalysis>& cross_site) {
  const auto& m = e.model;
  const auto& c = e.cluster;
  const auto& hw = c.hardware;
  const auto& p = e.plan;
  std::string s;
  s += fmt::format("braid plan: {} ({} parameters) on {} × {} of {}\n", m.name,
                   format_count(m.total_params()), format_thousands(e.gpus), hw.name, c.name);
  std::vector<std::vector<std::string>> head{
      {"layout", p.describe()},
      {"batch", fmt::format("{} sequences × {} tokens = {} tokens per step; micro-batch {}, {} per "
                            "replica",
                            format_thousands(p.global_batch), format_thousands(p.seq_len),
                            format_count(e.tokens_per_step), p.micro_batch, e.micro_batches)},
      {"hardware", fmt::format("{} peak × {} efficiency = {} sustained; {} memory",
                               format_flops(hw.peak_flops), format_sig3(hw.efficiency),
                               format_flops(hw.sustained_flops()), format_size_gib(hw.memory))},
  };
  if (c.calibration.present)
    head.push_back({"calibrated", fmt::format("{} on {} ({})", c.calibration.date, c.calibration.host,
                                              c.calibration.tool)});
  if (p.diloco.enabled)
    head.push_back({"DiLoCo", fmt::format("{} sites, H={}, {}-bit outer gradients{}", e.sites_used,
                                          p.diloco.inner_steps, p.diloco.bits,
                                          p.diloco.streaming
                                              ? fmt::format(", streaming: {} fragments, τ={}",
                                                            p.diloco.fragments, format_sig3(p.diloco.tau()))
                                              : "")});
  s += format_table(head, {false, false});

  s += "\nstep time\n";
  std::vector<std::vector<std::string>> rows{{"", "exposed", "share", "of total", "overlap assumed"}};
  auto share = [&](double t) { return percent(t / e.step_time); };
  rows.push_back({"compute", format_duration(e.compute), share(e.compute), "", ""});
  if (p.pp > 1)
    rows.push_back({fmt::format("pipeline bubble ((p-1)/{}m)",
                                p.schedule == Schedule::Interleaved ? "v·" : ""),
                    format_duration(e.bubble), share(e.bubble), "", ""});
  for (auto& r : e.comm)
    rows.push_back({r.dimension, format_duration(r.exposed), share(r.exposed), format_duration(r.total),
                    r.overlap});
  rows.push_back({"total", format_duration(e.step_time), "100%", "", ""});
  // Each communication row is followed by its route, outside the columns.
  std::string table = format_table(rows, {false, true, true, true, false});
  size_t first_comm = rows.size() - 1 - e.comm.size();
  size_t line = 0, pos = 0;
  while (pos < table.size()) {
    size_t end = table.find('\n', pos) + 1;
    s += table.substr(pos, end - pos);
    if (line >= first_comm && line < first_comm + e.comm.size())
      s += "      " + e.comm[line - first_comm].route + "\n";
    pos = end;
    ++line;
  }

  s += fmt::format("\nthroughput  {} tokens/s · MFU {} · HFU {} · {} per GPU (model FLOPs, PaLM)\n",
                   format_count(e.tokens_per_second), percent(e.mfu), percent(e.hfu),
                   format_flops(e.model_flops_per_gpu));
  if (budget)
    s += fmt::format("budget      {} tokens: {} steps, {}, {} GPU-hours; 6ND = {:.3g} FLOPs (PaLM count "
                     "{:.3g})\n",
                     format_count(budget->tokens), format_count(budget->steps),
                     format_duration(budget->seconds), format_count(budget->gpu_hours),
                     budget->flops_6nd, budget->flops_palm);
  s += memory_text(e);
  if (cross_site) s += cross_site_text(*cross_site);
  for (auto& w : e.warnings) s += "\nwarning: " + w;
  if (!e.warnings.empty()) s += "\n";
  return s;
}

nlohmann::json report_json(const StepEstimate& e, const std::optional<TokenBudget>& budget,
                           const std::optional<CrossSiteAnalysis>& cross_site) {
  const auto& m = e.model;
  const auto& c = e.cluster;
  const auto& hw = c.hardware;
  const auto& p = e.plan;
  nlohmann::json j;
  j["model"] = {{"name", m.name},
                {"params", m.total_params()},
                {"layers", m.layers},
                {"d_model", m.d_model},
                {"heads", m.heads},
                {"kv_heads", m.kv_heads},
                {"ffn", m.ffn},
                {"ffn_kind", to_string(m.ffn_kind)},
                {"vocab", m.vocab},
                {"context", m.context}};
  j["cluster"] = {{"name", c.name},
                  {"gpus", c.gpus},
                  {"sites", c.sites},
                  {"domain_size", c.domain_size},
                  {"pod_gpus", c.pod_gpus},
                  {"oversubscription", c.oversubscription},
                  {"scale_up_bytes_per_s", c.scale_up.bandwidth},
                  {"scale_out_bits_per_s", c.scale_out.bandwidth * 8},
                  {"wan_bits_per_s", c.wan.bandwidth * 8},
                  {"hardware",
                   {{"name", hw.name},
                    {"peak_flops", hw.peak_flops},
                    {"efficiency", hw.efficiency},
                    {"memory_bytes", hw.memory},
                    {"usable_memory", hw.usable_memory}}}};
  j["plan"] = {{"dp", p.dp},
               {"tp", p.tp},
               {"pp", p.pp},
               {"zero", p.zero},
               {"micro_batch", p.micro_batch},
               {"global_batch", p.global_batch},
               {"seq_len", p.seq_len},
               {"recompute", to_string(p.recompute)},
               {"schedule", to_string(p.schedule)},
               {"virtual_stages", p.virtual_stages},
               {"order", to_string(p.order)},
               {"grad_bits", p.grad_bits},
               {"sequence_parallel", p.sequence_parallel},
               {"flash_attention", p.flash_attention},
               {"overlap", {{"tp", p.overlap.tp}, {"pp", p.overlap.pp}, {"dp", p.overlap.dp}}}};
  if (p.diloco.enabled)
    j["plan"]["diloco"] = {{"inner_steps", p.diloco.inner_steps},
                           {"bits", p.diloco.bits},
                           {"streaming", p.diloco.streaming},
                           {"fragments", p.diloco.fragments},
                           {"overlap_steps", p.diloco.tau()}};
  j["gpus"] = e.gpus;
  j["sites_used"] = e.sites_used;
  j["micro_batches"] = e.micro_batches;
  j["tokens_per_step"] = e.tokens_per_step;
  j["model_flops_per_step"] = e.model_flops_per_step;
  j["hardware_flops_per_step"] = e.hardware_flops_per_step;
  nlohmann::json comm = nlohmann::json::array();
  for (auto& r : e.comm)
    comm.push_back({{"dimension", r.dimension},
                    {"route", r.route},
                    {"total_s", r.total},
                    {"exposed_s", r.exposed},
                    {"overlap", r.overlap}});
  j["step"] = {{"time_s", e.step_time}, {"compute_s", e.compute}, {"bubble_s", e.bubble}, {"comm", comm}};
  j["throughput"] = {{"tokens_per_s", e.tokens_per_second},
                     {"mfu", e.mfu},
                     {"hfu", e.hfu},
                     {"model_flops_per_gpu", e.model_flops_per_gpu}};
  const auto& mem = e.memory;
  j["memory"] = {{"stage", mem.stage},
                 {"params_per_gpu", mem.params},
                 {"weights_bytes", mem.weights},
                 {"gradients_bytes", mem.gradients},
                 {"optimizer_bytes", mem.optimizer},
                 {"activations_bytes", mem.activations},
                 {"logits_bytes", mem.logits},
                 {"in_flight", mem.in_flight},
                 {"total_bytes", mem.total},
                 {"capacity_bytes", mem.capacity},
                 {"fits", mem.fits}};
  if (budget)
    j["budget"] = {{"tokens", budget->tokens},
                   {"steps", budget->steps},
                   {"seconds", budget->seconds},
                   {"gpu_hours", budget->gpu_hours},
                   {"flops_6nd", budget->flops_6nd},
                   {"flops_palm", budget->flops_palm}};
  if (cross_site) j["cross_site"] = cross_site_json(*cross_site);
  j["warnings"] = e.warnings;
  return j;
}

std::string format_search(const SearchResult& r, const ModelSpec& model, const ClusterSpec& cluster) {
  std::string s;
  int64_t gpus = r.best.empty() ? cluster.gpus : r.best.front().gpus;
  s += fmt::format("braid plan --search: {} on {} × {} of {}\n", model.name, format_thousands(gpus),
                   cluster.hardware.name, cluster.name);
  s += fmt::format("  {} layouts considered: {} invalid, {} too big for memory, {} fit; best {} by step time\n\n",
                   r.considered, r.invalid, r.too_big, r.considered - r.invalid - r.too_big, r.best.size());
  if (r.best.empty()) {
    s += "  no layout fits in memory: use more GPUs, or hardware with more memory\n";
    return s;
  }
  std::vector<std::vector<std::string>> rows{{"#", "dp", "tp", "pp", "ZeRO", "micro", "recompute", "schedule",
                                              "step", "MFU", "tokens/s", "memory/GPU", "exposed comm"}};
  for (size_t i = 0; i < r.best.size(); ++i) {
    const auto& e = r.best[i];
    const auto& p = e.plan;
    std::string sched = p.pp == 1 ? "-"
                        : p.schedule == Schedule::Interleaved
                            ? fmt::format("interleaved v={}", p.virtual_stages)
                            : to_string(p.schedule);
    rows.push_back({std::to_string(i + 1), std::to_string(p.dp), std::to_string(p.tp), std::to_string(p.pp),
                    std::to_string(p.zero), std::to_string(p.micro_batch), to_string(p.recompute), sched,
                    format_duration(e.step_time), percent(e.mfu), format_count(e.tokens_per_second),
                    gib(e.memory.total), format_duration(e.exposed_comm())});
  }
  s += format_table(rows, {true, true, true, true, true, true, false, false, true, true, true, true, true});
  return s;
}

nlohmann::json search_json(const SearchResult& r) {
  nlohmann::json j;
  j["considered"] = r.considered;
  j["invalid"] = r.invalid;
  j["too_big"] = r.too_big;
  j["best"] = nlohmann::json::array();
  for (auto& e : r.best) j["best"].push_back(report_json(e, std::nullopt, std::nullopt));
  return j;
}

}  // namespace braid::plan
