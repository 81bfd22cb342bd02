#pragma once
// A small, self-contained SVG line chart (no scripts, fonts or links to
// anything outside the file), and the figure `braid plan --svg` draws:
// compute utilisation against WAN bandwidth for the three cross-site modes.
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "plan/cross_site.hpp"

namespace braid::plan {

struct ChartSeries {
  std::string name;
  std::string color;  // "#1f77b4"
  std::string dash;   // SVG stroke-dasharray, "" for solid
  std::vector<std::pair<double, double>> points;
  // Points to circle and label on the line (e.g. where it reaches the target).
  std::vector<std::pair<std::pair<double, double>, std::string>> marks;
};

struct LineChart {
  std::string title;
  std::string subtitle;
  std::string x_label;
  std::string y_label;
  double x_min = 1, x_max = 10;  // x is drawn on a log scale
  double y_min = 0, y_max = 1;   // y is linear, labelled in percent
  std::function<std::string(double)> x_tick_label;
  std::vector<ChartSeries> series;
  std::vector<std::pair<double, std::string>> x_markers;  // vertical dashed lines
  std::vector<std::pair<double, std::string>> y_markers;  // horizontal dashed lines
  int width = 900;
  int height = 620;
};

std::string render_svg(const LineChart& chart);

// Utilisation (0..100 %) against WAN bandwidth per site (bit/s, log scale).
LineChart cross_site_chart(const CrossSiteAnalysis& a, const std::string& title);

// Escapes &, <, >, " and ' for XML text and attributes.
std::string xml_escape(const std::string& text);

}  // namespace braid::plan
