#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"
#include "plan/cross_site.hpp"
#include "plan/diloco_model.hpp"
#include "plan/svg_chart.hpp"

using namespace braid;
using namespace braid::plan;

TEST(DilocoModel, SyncBytesAndTime) {
  // Two sites, 405B values of 16 bits: each site sends 2·(1/2)·N·2 bytes.
  EXPECT_DOUBLE_EQ(outer_sync_bytes_per_site(405e9, 16, 2), 810e9);
  // Four sites in a ring: 2·(3/4) of the payload.
  EXPECT_DOUBLE_EQ(outer_sync_bytes_per_site(1e9, 8, 4), 1.5e9);
  EXPECT_DOUBLE_EQ(outer_sync_bytes_per_site(1e9, 8, 1), 0);
  EXPECT_DOUBLE_EQ(outer_sync_time(405e9, 16, 2, 1e9, 0.01), 810.0 + 2 * 0.01);
}

TEST(DilocoModel, BlockingDilocoUtilisation) {
  DilocoOptions d;
  d.inner_steps = 500;
  d.bits = 16;
  // 500 steps of 6 s against a 810 s sync: 3000 / 3810.
  EXPECT_DOUBLE_EQ(diloco_utilisation(d, 6.0, 405e9, 2, 1e9, 0), 3000.0 / 3810.0);
  EXPECT_DOUBLE_EQ(diloco_utilisation(d, 6.0, 405e9, 1, 1e9, 0), 1.0);
}

TEST(DilocoModel, StreamingOverlapsFragments) {
  DilocoOptions d;
  d.inner_steps = 100;
  d.bits = 16;
  d.streaming = true;
  d.fragments = 4;
  d.overlap_steps = 5;
  EXPECT_DOUBLE_EQ(d.tau(), 5);
  const double t = 2.0, n = 1e9;  // 2 GB per sync, 500 MB per fragment
  // Fast link: each fragment (0.05 s) hides behind 5 steps.
  EXPECT_DOUBLE_EQ(diloco_utilisation(d, t, n, 2, 10e9, 0), 1.0);
  // 100 MB/s: a fragment takes 5 s, hidden 10 s: still free.
  EXPECT_DOUBLE_EQ(diloco_utilisation(d, t, n, 2, 100e6, 0), 1.0);
  // 20 MB/s: 25 s per fragment, 15 s of it exposed, four times per 200 s.
  EXPECT_DOUBLE_EQ(diloco_utilisation(d, t, n, 2, 20e6, 0), 200.0 / 260.0);
  // 5 MB/s: 100 s per fragment, 90 s of it exposed, four times.
  EXPECT_DOUBLE_EQ(diloco_utilisation(d, t, n, 2, 5e6, 0), 200.0 / 560.0);
  // Default tau: the whole gap between fragment starts, H/F; then the link,
  // busy 400 s per 200 s of compute, sets the pace.
  d.overlap_steps = -1;
  EXPECT_DOUBLE_EQ(d.tau(), 25);
  EXPECT_DOUBLE_EQ(diloco_utilisation(d, t, n, 2, 5e6, 0), 200.0 / 400.0);
  // Overlapping more than the gap cannot beat the link.
  d.overlap_steps = 100;
  EXPECT_DOUBLE_EQ(diloco_utilisation(d, t, n, 2, 5e6, 0), 200.0 / 400.0);
  d.overlap_steps = -1;
  // Streaming never needs more bandwidth than blocking DiLoCo for the same utilisation.
  DilocoOptions blocking = d;
  blocking.streaming = false;
  for (double bw : {1e6, 1e7, 1e8, 1e9})
    EXPECT_GE(diloco_utilisation(d, t, n, 2, bw, 0.01), diloco_utilisation(blocking, t, n, 2, bw, 0.01));
}

TEST(CrossSite, DataParallelWanBytes) {
  ParallelPlan p;
  p.grad_bits = 32;
  p.zero = 0;
  EXPECT_DOUBLE_EQ(dp_wan_bytes_per_site(1e9, p, 4, 2), 4e9);  // all-reduce: 2·(1/2)·4 B
  p.zero = 1;
  EXPECT_DOUBLE_EQ(dp_wan_bytes_per_site(1e9, p, 4, 2), 3e9);  // (1/2)·(4 B + 2 B)
  p.zero = 3;
  EXPECT_DOUBLE_EQ(dp_wan_bytes_per_site(1e9, p, 4, 2), 0.5 * 4 * (4e9 + 2 * 2e9));
  EXPECT_DOUBLE_EQ(dp_wan_bytes_per_site(1e9, p, 4, 1), 0);
}

namespace {

CrossSiteAnalysis analyse_70b(double target = 0.9) {
  auto m = load_model("llama3-70b");
  auto c = load_cluster("h100-2sites-16k");
  ParallelPlan p;
  p.tp = 8;
  p.pp = 4;
  p.global_batch = 2048;
  CrossSiteOptions o;
  o.diloco.inner_steps = 100;
  o.target = target;
  return analyse_cross_site(m, c, p, o);
}

}  // namespace

TEST(CrossSite, CurvesRiseAndNeedsMeetTheTarget) {
  auto a = analyse_70b();
  EXPECT_EQ(a.sites, 2);
  EXPECT_FALSE(a.hypothetical);
  ASSERT_EQ(a.modes.size(), 3u);
  ASSERT_FALSE(a.curve.empty());
  for (int k = 0; k < 3; ++k) {
    for (size_t i = 1; i < a.curve.size(); ++i)
      EXPECT_GE(a.curve[i].utilisation[k], a.curve[i - 1].utilisation[k] - 1e-12) << k;
    EXPECT_LT(a.curve.front().utilisation[k], 0.5) << k;
    // Not quite 1: the WAN's latency stays when its bandwidth is unlimited.
    EXPECT_GT(a.curve.back().utilisation[k], 0.95) << k;
  }
  // Data parallel needs far more than DiLoCo, which needs more than streaming DiLoCo.
  EXPECT_GT(a.modes[0].needed_bandwidth, 10 * a.modes[1].needed_bandwidth);
  EXPECT_GE(a.modes[1].needed_bandwidth, a.modes[2].needed_bandwidth);
  // The needed bandwidth is the threshold: just below it falls short of the target.
  auto m = load_model("llama3-70b");
  auto c = load_cluster("h100-2sites-16k");
  ParallelPlan p = a.plan;
  c.wan.bandwidth = a.modes[0].needed_bandwidth * 1.01;
  auto fast = estimate_step(m, c, p);
  c.wan.bandwidth = a.modes[0].needed_bandwidth * 0.95;
  auto slow = estimate_step(m, c, p);
  double local = a.modes[0].local_step_time;
  EXPECT_GE(local / fast.step_time, 0.9);
  EXPECT_LT(local / slow.step_time, 0.9);
  // DiLoCo: the same check through its own formula.
  DilocoOptions d = a.diloco;
  d.streaming = false;
  double t = a.modes[1].local_step_time;
  EXPECT_GE(diloco_utilisation(d, t, a.params, 2, a.modes[1].needed_bandwidth * 1.001, a.wan_latency), 0.9);
  EXPECT_LT(diloco_utilisation(d, t, a.params, 2, a.modes[1].needed_bandwidth * 0.99, a.wan_latency), 0.9);
  // A higher target needs more bandwidth.
  auto strict = analyse_70b(0.99);
  for (int k = 0; k < 3; ++k) EXPECT_GT(strict.modes[k].needed_bandwidth, a.modes[k].needed_bandwidth);
}

TEST(CrossSite, SingleSiteClusterIsSplitForTheAnalysis) {
  auto m = load_model("llama3-8b");
  auto c = default_cluster(hardware_preset("h100"), 64);
  ParallelPlan p;
  p.tp = 8;
  p.global_batch = 64;
  CrossSiteOptions o;
  auto a = analyse_cross_site(m, c, p, o);
  EXPECT_TRUE(a.hypothetical);
  EXPECT_EQ(a.sites, 2);
  EXPECT_LT(a.modes[0].utilisation_at_wan, 0);  // no WAN to evaluate
  p.dp = 3;  // 3 replicas do not split over 2 sites
  p.tp = 8;
  EXPECT_THROW(analyse_cross_site(m, c, p, o), ConfigError);
  o.target = 1.5;
  p.dp = 0;
  EXPECT_THROW(analyse_cross_site(m, c, p, o), ConfigError);
}

TEST(SvgChart, SelfContainedAndLabelled) {
  auto a = analyse_70b();
  auto svg = render_svg(cross_site_chart(a, "llama3-70b <two sites> & DiLoCo"));
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("llama3-70b &lt;two sites&gt; &amp; DiLoCo"), std::string::npos);
  size_t lines = 0;
  for (size_t pos = 0; (pos = svg.find("<polyline", pos)) != std::string::npos; ++pos) ++lines;
  EXPECT_EQ(lines, 3u);
  EXPECT_NE(svg.find("compute utilisation"), std::string::npos);
  EXPECT_NE(svg.find("WAN bandwidth"), std::string::npos);
  EXPECT_NE(svg.find("data parallel"), std::string::npos);
  EXPECT_NE(svg.find("streaming DiLoCo"), std::string::npos);
  EXPECT_NE(svg.find("this cluster: 1 Tbit/s"), std::string::npos);
  EXPECT_NE(svg.find("target 90%"), std::string::npos);
  // Nothing outside the file: no scripts, no links, no external images or fonts.
  EXPECT_EQ(svg.find("<script"), std::string::npos);
  EXPECT_EQ(svg.find("href"), std::string::npos);
  EXPECT_EQ(svg.find("url("), std::string::npos);
  EXPECT_EQ(svg.find("@import"), std::string::npos);
  // Every opened tag is closed (a cheap well-formedness check).
  size_t opened = 0, closed = 0;
  for (size_t i = 0; i + 1 < svg.size(); ++i) {
    if (svg[i] == '<' && svg[i + 1] != '/') ++opened;
    if ((svg[i] == '<' && svg[i + 1] == '/') || (svg[i] == '/' && svg[i + 1] == '>')) ++closed;
  }
  EXPECT_EQ(opened, closed);
  EXPECT_EQ(xml_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
}
