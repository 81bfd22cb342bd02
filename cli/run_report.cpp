#include "cli/run_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/bytes.hpp"
#include "core/error.hpp"

namespace braid::cli {
namespace {
namespace fs = std::filesystem;

std::optional<std::string> read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// Round numbers for an axis: about `target` ticks over [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  if (!(hi > lo)) hi = lo + 1;
  double raw = (hi - lo) / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push_back(t);
  return ticks;
}

std::string tick_label(double v) {
  double a = std::abs(v);
  if (a >= 1e6) return fmt::format("{:.3g}M", v / 1e6);
  if (a >= 1e3) return fmt::format("{:.3g}k", v / 1e3);
  if (a == 0) return "0";
  return fmt::format("{:.3g}", v);
}

struct Series {
  std::string name;
  std::string color;
  std::vector<std::pair<double, double>> points;
  bool dots = false;
  double width = 1.6;
};

struct Frame {
  static constexpr double W = 880, H = 300, left = 66, right = 18, top = 52, bottom = 42;
  double x0, x1, y0, y1;
  double px(double x) const { return left + (x - x0) / (x1 - x0) * (W - left - right); }
  double py(double y) const { return H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom); }
};

std::string axes(const Frame& f, const std::string& title, const std::string& xlabel, const std::string& ylabel) {
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {0} {1}\" width=\"{0}\" height=\"{1}\" "
      "role=\"img\" aria-label=\"{2}\">\n"
      "<rect x=\"0\" y=\"0\" width=\"{0}\" height=\"{1}\" fill=\"#fff\"/>\n"
      "<text x=\"{3}\" y=\"20\" class=\"title\">{2}</text>\n",
      Frame::W, Frame::H, escape(title), Frame::left);
  for (double t : nice_ticks(f.y0, f.y1)) {
    double y = f.py(t);
    s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" class=\"grid\"/>"
                     "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"tick\" text-anchor=\"end\">{}</text>\n",
                     Frame::left, y, Frame::W - Frame::right, y, Frame::left - 6, y + 4, tick_label(t));
  }
  for (double t : nice_ticks(f.x0, f.x1, 8)) {
    double x = f.px(t);
    s += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" class=\"grid\"/>"
                     "<text x=\"{0:.1f}\" y=\"{3:.1f}\" class=\"tick\" text-anchor=\"middle\">{4}</text>\n",
                     x, Frame::top, Frame::H - Frame::bottom, Frame::H - Frame::bottom + 16, tick_label(t));
  }
  s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" class=\"frame\"/>\n",
                   Frame::left, Frame::top, Frame::W - Frame::left - Frame::right,
                   Frame::H - Frame::top - Frame::bottom);
  s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"axis\" text-anchor=\"middle\">{}</text>\n",
                   (Frame::left + Frame::W - Frame::right) / 2, Frame::H - 6, escape(xlabel));
  s += fmt::format("<text transform=\"translate(14 {:.1f}) rotate(-90)\" class=\"axis\" "
                   "text-anchor=\"middle\">{}</text>\n",
                   (Frame::top + Frame::H - Frame::bottom) / 2, escape(ylabel));
  return s;
}

// One row of keys under the title, left to right.
std::string legend(const std::vector<std::pair<std::string, std::string>>& items) {
  std::string s;
  double x = Frame::left;
  for (const auto& [name, color] : items) {
    s += fmt::format("<rect x=\"{:.1f}\" y=\"30\" width=\"12\" height=\"12\" fill=\"{}\"/>"
                     "<text x=\"{:.1f}\" y=\"40\" class=\"legend\">{}</text>\n",
                     x, color, x + 16, escape(name));
    x += 16 + 6.5 * static_cast<double>(name.size()) + 22;
  }
  return s;
}

std::string line_chart(const std::string& title, const std::string& ylabel, const std::vector<Series>& series,
                       bool y_from_zero) {
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  if (x0 > x1) return "<p class=\"empty\">" + escape(title) + ": no data</p>\n";
  if (x1 <= x0) x1 = x0 + 1;
  if (y_from_zero) y0 = std::min(0.0, y0);
  double pad = (y1 - y0) * 0.06;
  if (pad <= 0) pad = std::max(std::abs(y1) * 0.1, 1e-9);
  Frame f{x0, x1, y_from_zero && y0 >= 0 ? y0 : y0 - pad, y1 + pad};
  std::string s = axes(f, title, "step", ylabel);
  std::vector<std::pair<std::string, std::string>> keys;
  for (const auto& ser : series) {
    if (ser.points.empty()) continue;
    keys.emplace_back(ser.name, ser.color);
    std::string pts;
    for (auto [x, y] : ser.points)
      if (std::isfinite(y)) pts += fmt::format("{:.1f},{:.1f} ", f.px(x), f.py(y));
    s += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" points=\"{}\"/>\n", ser.color,
                     ser.width, pts);
    if (ser.dots)
      for (auto [x, y] : ser.points)
        if (std::isfinite(y))
          s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.2\" fill=\"{}\"/>\n", f.px(x), f.py(y),
                           ser.color);
  }
  s += legend(keys);
  return s + "</svg>\n";
}

struct Layer {
  std::string name;
  std::string color;
  std::vector<double> values;  // one per step
};

// Stacked bars per step (binned when there are many steps).
std::string stacked_bars(const std::string& title, const std::string& ylabel, const std::vector<int64_t>& steps,
                         const std::vector<Layer>& layers) {
  if (steps.empty()) return "<p class=\"empty\">" + escape(title) + ": no data</p>\n";
  const size_t n = steps.size();
  const size_t bins = std::min<size_t>(n, 300);
  std::vector<std::vector<double>> binned(layers.size(), std::vector<double>(bins, 0.0));
  std::vector<double> bin_x(bins, 0.0);
  std::vector<int> count(bins, 0);
  for (size_t i = 0; i < n; ++i) {
    size_t b = i * bins / n;
    bin_x[b] += static_cast<double>(steps[i]);
    ++count[b];
    for (size_t l = 0; l < layers.size(); ++l) binned[l][b] += std::max(0.0, layers[l].values[i]);
  }
  double ymax = 0;
  for (size_t b = 0; b < bins; ++b) {
    double total = 0;
    bin_x[b] /= count[b];
    for (size_t l = 0; l < layers.size(); ++l) total += (binned[l][b] /= count[b]);
    ymax = std::max(ymax, total);
  }
  double x0 = static_cast<double>(steps.front()) - 0.5, x1 = static_cast<double>(steps.back()) + 0.5;
  if (x1 <= x0) x1 = x0 + 1;
  Frame f{x0, x1, 0, ymax > 0 ? ymax * 1.08 : 1};
  std::string s = axes(f, title, "step", ylabel);
  double bar_w = std::max(0.8, (Frame::W - Frame::left - Frame::right) / static_cast<double>(bins) * 0.85);
  for (size_t b = 0; b < bins; ++b) {
    double base = 0;
    double x = f.px(bin_x[b]) - bar_w / 2;
    for (size_t l = 0; l < layers.size(); ++l) {
      double v = binned[l][b];
      if (v <= 0) continue;
      double top = f.py(base + v), bottom = f.py(base);
      s += fmt::format("<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"/>", x, top,
                       bar_w, bottom - top, layers[l].color);
      base += v;
    }
    s += "\n";
  }
  std::vector<std::pair<std::string, std::string>> keys;
  for (const auto& l : layers) keys.emplace_back(l.name, l.color);
  s += legend(keys);
  return s + "</svg>\n";
}

double get_number(const nlohmann::json& j, const char* key, bool required, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw CorruptData(fmt::format("{}: field '{}' is missing", where, key),
                                    "metrics.jsonl must come from `braid train`");
    return 0;
  }
  if (!it->is_number()) throw CorruptData(fmt::format("{}: field '{}' is not a number", where, key));
  return it->get<double>();
}

}  // namespace

RunReport RunReport::load(const std::string& dir) {
  if (!fs::is_directory(dir))
    throw ConfigError(fmt::format("'{}' is not a directory", dir),
                      "pass the run directory that `braid train` printed (runs/<name>-<time>)");
  RunReport r;
  r.dir = dir;
  std::string metrics_path = dir + "/metrics.jsonl";
  std::ifstream f(metrics_path);
  if (!f)
    throw ConfigError(fmt::format("'{}' has no metrics.jsonl", dir),
                      "pass the run directory that `braid train` printed (runs/<name>-<time>)");
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string where = fmt::format("{}:{}", metrics_path, lineno);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw CorruptData(fmt::format("{}: not JSON ({})", where, e.what()),
                        "the file was cut or edited; remove the damaged line");
    }
    RunStep s;
    s.step = static_cast<int64_t>(get_number(j, "step", true, where));
    s.loss = get_number(j, "loss", true, where);
    if (j.contains("val_loss")) s.val_loss = get_number(j, "val_loss", true, where);
    s.lr = get_number(j, "lr", false, where);
    s.grad_norm = get_number(j, "grad_norm", false, where);
    s.tokens_per_s = get_number(j, "tokens_per_s", false, where);
    s.mfu = get_number(j, "mfu", false, where);
    s.step_s = get_number(j, "step_s", false, where);
    s.compute_s = get_number(j, "compute_s", false, where);
    s.comm_s = get_number(j, "comm_s", false, where);
    s.comm_exposed_s = get_number(j, "comm_exposed_s", false, where);
    s.bytes_sent = static_cast<uint64_t>(get_number(j, "bytes_sent", false, where));
    if (s.step_s == 0) s.step_s = s.compute_s + s.comm_exposed_s;
    r.steps.push_back(s);
  }
  if (r.steps.empty())
    throw ConfigError(fmt::format("'{}' is empty", metrics_path), "the run has not finished a step yet");
  r.summary_json = read_text(dir + "/summary.json").value_or("");
  r.config_toml = read_text(dir + "/config.toml").value_or("");
  r.sample = read_text(dir + "/sample.txt").value_or("");
  return r;
}

std::string RunReport::to_html() const {
  Series train{"train loss", "#1f77b4", {}, false, 1.4};
  Series val{"validation loss", "#e6550d", {}, true, 2.0};
  Series tput{"tokens/s", "#9ecae1", {}, false, 1.0};
  Series tput_avg{"tokens/s, mean of 10 steps", "#08519c", {}, false, 2.0};
  std::vector<int64_t> steps;
  Layer compute_only{"compute", "#9e9e9e", {}};
  Layer hidden{"communication hidden behind compute", "#31a354", {}};
  Layer exposed{"exposed communication", "#de2d26", {}};
  double total_comm = 0, total_exposed = 0, total_time = 0, total_tokens = 0;
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < this->steps.size(); ++i) {
    const auto& s = this->steps[i];
    double x = static_cast<double>(s.step);
    train.points.emplace_back(x, s.loss);
    if (s.val_loss) val.points.emplace_back(x, *s.val_loss);
    tput.points.emplace_back(x, s.tokens_per_s);
    double sum = 0;
    size_t from = i >= 9 ? i - 9 : 0;
    for (size_t k = from; k <= i; ++k) sum += this->steps[k].tokens_per_s;
    tput_avg.points.emplace_back(x, sum / static_cast<double>(i - from + 1));
    steps.push_back(s.step);
    double hid = std::max(0.0, s.comm_s - s.comm_exposed_s);
    hidden.values.push_back(hid);
    compute_only.values.push_back(std::max(0.0, s.compute_s - hid));
    exposed.values.push_back(s.comm_exposed_s);
    total_comm += s.comm_s;
    total_exposed += s.comm_exposed_s;
    total_time += s.step_s;
    total_tokens += s.tokens_per_s * s.step_s;
    total_bytes += s.bytes_sent;
  }

  std::vector<std::pair<std::string, std::string>> rows;
  rows.emplace_back("run directory", dir);
  rows.emplace_back("steps", std::to_string(this->steps.back().step));
  rows.emplace_back("final training loss", fmt::format("{:.4f} nats/token", this->steps.back().loss));
  if (!val.points.empty())
    rows.emplace_back("final validation loss", fmt::format("{:.4f} nats/token", val.points.back().second));
  rows.emplace_back("throughput", fmt::format("{:.0f} tokens/s (all steps)", total_time > 0 ? total_tokens / total_time : 0));
  rows.emplace_back("communication", total_comm > 0
                                         ? fmt::format("{:.1f}% hidden behind compute, {:.1f}% of step time exposed, "
                                                       "{} sent by rank 0",
                                                       100.0 * std::max(0.0, 1.0 - total_exposed / total_comm),
                                                       total_time > 0 ? 100.0 * total_exposed / total_time : 0.0,
                                                       human_bytes(static_cast<double>(total_bytes)))
                                         : std::string("none (one worker)"));
  if (!summary_json.empty()) {
    try {
      auto j = nlohmann::json::parse(summary_json);
      if (j.contains("world_size")) rows.emplace_back("workers", j["world_size"].dump());
      if (j.contains("parameters"))
        rows.emplace_back("parameters", fmt::format("{:.3f} M", j["parameters"].get<double>() * 1e-6));
      if (j.contains("mfu") && j.contains("peak_description"))
        rows.emplace_back("MFU", fmt::format("{:.1f}% of the measured matmul peak, {} per worker (PaLM FLOP formula)",
                                             j["mfu"].get<double>() * 100, j["peak_description"].get<std::string>()));
      if (j.contains("wall_s")) rows.emplace_back("wall time", fmt::format("{:.1f} s", j["wall_s"].get<double>()));
    } catch (const nlohmann::json::exception&) {
      rows.emplace_back("summary.json", "unreadable");
    }
  }

  std::string html;
  html += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  html += "<title>braid run " + escape(fs::path(dir).filename().string()) + "</title>\n";
  html += R"(<style>
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 900px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 26px 0 6px; }
table { border-collapse: collapse; font-size: 14px; } td { padding: 3px 14px 3px 0; vertical-align: top; }
td:first-child { color: #555; white-space: nowrap; }
svg { display: block; margin: 6px 0; border: 1px solid #ddd; }
svg .title { font-size: 14px; font-weight: bold; fill: #222; }
svg .tick, svg .legend { font-size: 11px; fill: #444; } svg .axis { font-size: 12px; fill: #444; }
svg .grid { stroke: #eee; stroke-width: 1; } svg .frame { fill: none; stroke: #999; stroke-width: 1; }
pre { background: #f6f6f6; padding: 10px; font-size: 12px; white-space: pre-wrap; word-break: break-word; }
p.note { font-size: 13px; color: #555; }
</style></head><body>
)";
  html += "<h1>braid training run</h1>\n<table>\n";
  for (const auto& [k, v] : rows) html += "<tr><td>" + escape(k) + "</td><td>" + escape(v) + "</td></tr>\n";
  html += "</table>\n";
  html += "<h2>Loss</h2>\n" + line_chart("Loss (nats per token)", "loss", {train, val}, false);
  html += "<h2>Throughput</h2>\n" + line_chart("Tokens per second, all workers", "tokens/s", {tput, tput_avg}, true);
  html += "<h2>Where the step time goes</h2>\n";
  html += stacked_bars("Step time: compute, hidden and exposed communication", "seconds", steps,
                       {compute_only, hidden, exposed});
  html += "<p class=\"note\">Hidden communication ran while backward was computing (bucket all-reduces "
          "launched from gradient hooks); exposed communication is the time the step waited for it after "
          "backward. Bars show rank 0.</p>\n";
  if (!sample.empty()) html += "<h2>Sample from the model</h2>\n<pre>" + escape(sample) + "</pre>\n";
  if (!config_toml.empty())
    html += "<h2>Configuration</h2>\n<details><summary>config.toml</summary><pre>" + escape(config_toml) +
            "</pre></details>\n";
  html += "</body></html>\n";
  return html;
}

}  // namespace braid::cli
