#include "plan/svg_chart.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "plan/units.hpp"

namespace braid::plan {

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

constexpr const char* kFont = "DejaVu Sans, Helvetica, Arial, sans-serif";

struct Frame {
  double left = 78, right, top = 84, bottom;
  double x0, x1, y0, y1;  // data range (x in log10)
  double px(double x) const { return left + (std::log10(x) - x0) / (x1 - x0) * (right - left); }
  double py(double y) const { return bottom - (y - y0) / (y1 - y0) * (bottom - top); }
};

std::string text(double x, double y, const std::string& s, const char* anchor = "start",
                 int size = 13, const char* extra = "") {
  return fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"{}\" text-anchor=\"{}\"{}>{}</text>\n",
                     x, y, size, anchor, extra, xml_escape(s));
}

}  // namespace

std::string render_svg(const LineChart& c) {
  Frame f;
  f.right = c.width - 30;
  // Room below the plot for tick labels, the axis label and one legend line per series.
  f.bottom = c.height - 70 - 22.0 * static_cast<double>(c.series.size());
  f.x0 = std::log10(c.x_min);
  f.x1 = std::log10(c.x_max);
  f.y0 = c.y_min;
  f.y1 = c.y_max;
  std::string s;
  s += fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
                   "viewBox=\"0 0 {0} {1}\" font-family=\"{2}\" fill=\"#222\">\n",
                   c.width, c.height, kFont);
  s += fmt::format("<title>{}</title>\n", xml_escape(c.title));
  s += fmt::format("<rect width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>\n", c.width, c.height);
  s += text(f.left, 30, c.title, "start", 17, " font-weight=\"bold\"");
  if (!c.subtitle.empty()) s += text(f.left, 52, c.subtitle, "start", 12, " fill=\"#555\"");

  // Grid: every decade labelled, 2..9 as faint lines; y every 10 %.
  s += "<g stroke-width=\"1\">\n";
  for (int d = static_cast<int>(std::floor(f.x0)); d <= static_cast<int>(std::ceil(f.x1)); ++d) {
    for (int k = 1; k <= 9; ++k) {
      double x = k * std::pow(10.0, d);
      double lx = std::log10(x);
      if (lx < f.x0 - 1e-9 || lx > f.x1 + 1e-9) continue;
      s += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"{3}\"/>\n",
                       f.px(x), f.top, f.bottom, k == 1 ? "#d0d0d0" : "#efefef");
    }
  }
  for (int i = 0; i <= 10; ++i) {
    double y = f.y0 + (f.y1 - f.y0) * i / 10.0;
    s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e3e3e3\"/>\n",
                     f.left, f.py(y), f.right, f.py(y));
  }
  s += "</g>\n";
  // Axes and tick labels.
  s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
                   "stroke=\"#444\"/>\n",
                   f.left, f.top, f.right - f.left, f.bottom - f.top);
  for (int d = static_cast<int>(std::ceil(f.x0 - 1e-9)); d <= static_cast<int>(std::floor(f.x1 + 1e-9)); ++d) {
    double x = std::pow(10.0, d);
    std::string label = c.x_tick_label ? c.x_tick_label(x) : format_sig3(x);
    s += text(f.px(x), f.bottom + 18, label, "middle", 12);
  }
  for (int i = 0; i <= 10; i += 2) {
    double y = f.y0 + (f.y1 - f.y0) * i / 10.0;
    s += text(f.left - 8, f.py(y) + 4, fmt::format("{:.0f}%", y * 100), "end", 12);
  }
  s += text((f.left + f.right) / 2, f.bottom + 40, c.x_label, "middle", 13);
  s += fmt::format("<text transform=\"translate(22 {:.1f}) rotate(-90)\" font-size=\"13\" "
                   "text-anchor=\"middle\">{}</text>\n",
                   (f.top + f.bottom) / 2, xml_escape(c.y_label));

  // Reference lines.
  for (auto& [y, label] : c.y_markers) {
    s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#888\" "
                     "stroke-dasharray=\"4 4\"/>\n",
                     f.left, f.py(y), f.right, f.py(y));
    // At the left, where every curve is still low.
    s += text(f.left + 6, f.py(y) - 6, label, "start", 11, " fill=\"#666\"");
  }
  for (auto& [x, label] : c.x_markers) {
    if (std::log10(x) < f.x0 || std::log10(x) > f.x1) continue;
    s += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"#7a4ea3\" "
                     "stroke-dasharray=\"6 3\"/>\n",
                     f.px(x), f.top, f.bottom);
    s += text(f.px(x), f.top - 6, label, "middle", 11, " fill=\"#7a4ea3\"");
  }

  // Series; the labels of their marks are stepped down one line per series so
  // that marks close together stay readable.
  for (size_t si = 0; si < c.series.size(); ++si) {
    const auto& series = c.series[si];
    std::string pts;
    for (auto& [x, y] : series.points)
      pts += fmt::format("{:.1f},{:.1f} ", f.px(x), f.py(std::clamp(y, f.y0, f.y1)));
    s += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\"{} points=\"{}\"/>\n",
                     series.color,
                     series.dash.empty() ? "" : fmt::format(" stroke-dasharray=\"{}\"", series.dash),
                     pts);
    for (auto& [pt, label] : series.marks) {
      if (std::log10(pt.first) < f.x0 || std::log10(pt.first) > f.x1) continue;
      s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"/>\n", f.px(pt.first),
                       f.py(pt.second), series.color);
      s += text(f.px(pt.first) + 7, f.py(pt.second) + 16 + 14.0 * static_cast<double>(si), label, "start", 11,
                fmt::format(" fill=\"{}\"", series.color).c_str());
    }
  }

  // Legend under the axis label, outside the plot, so it never hides a curve.
  for (size_t i = 0; i < c.series.size(); ++i) {
    auto& series = c.series[i];
    double y = f.bottom + 66 + 22.0 * static_cast<double>(i);
    s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
                     "stroke-width=\"2.5\"{}/>\n",
                     f.left, y - 4, f.left + 32, y - 4, series.color,
                     series.dash.empty() ? "" : fmt::format(" stroke-dasharray=\"{}\"", series.dash));
    s += text(f.left + 40, y, series.name, "start", 12);
  }
  s += "</svg>\n";
  return s;
}

LineChart cross_site_chart(const CrossSiteAnalysis& a, const std::string& title) {
  LineChart c;
  c.title = title;
  c.subtitle = fmt::format("{} GPUs over {} sites{}, WAN latency {}; utilisation = time with an "
                           "unlimited WAN / time with this WAN",
                           format_thousands(a.gpus), a.sites, a.hypothetical ? " (one site split for this figure)" : "",
                           format_duration(a.wan_latency));
  c.x_label = "WAN bandwidth per site, each direction";
  c.y_label = "compute utilisation";
  c.x_min = a.curve.front().bandwidth * 8;
  c.x_max = a.curve.back().bandwidth * 8;
  c.x_tick_label = [](double bits) { return format_bits_per_s(bits / 8); };
  const char* colors[3] = {"#c0392b", "#1f6fb2", "#2e8b3d"};
  const char* dashes[3] = {"", "9 5", "2 4"};
  for (size_t k = 0; k < a.modes.size() && k < 3; ++k) {
    ChartSeries series;
    series.name = a.modes[k].label;
    series.color = colors[k];
    series.dash = dashes[k];
    for (auto& pt : a.curve) series.points.emplace_back(pt.bandwidth * 8, pt.utilisation[k]);
    if (std::isfinite(a.modes[k].needed_bandwidth))
      series.marks.push_back({{a.modes[k].needed_bandwidth * 8, a.target},
                              format_bits_per_s(a.modes[k].needed_bandwidth)});
    c.series.push_back(series);
  }
  c.y_markers.emplace_back(a.target, fmt::format("target {:.0f}%", a.target * 100));
  if (a.wan_bandwidth > 0)
    c.x_markers.emplace_back(a.wan_bandwidth * 8, "this cluster: " + format_bits_per_s(a.wan_bandwidth));
  return c;
}

}  // namespace braid::plan
