#include "cli/diloco_page.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "core/error.hpp"

namespace braid::cli {
namespace {

std::string color_of(size_t i) {
  static const char* palette[] = {"#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31"};
  return palette[i % (sizeof palette / sizeof *palette)];
}

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '\'') out += "&#39;";
    else out += c;
  }
  return out;
}

// Loss against tokens, or against bytes across sites on a log scale (points
// with no bytes yet are left out there).
std::string svg_plot(const std::vector<DilocoRow>& rs, bool by_bytes, const std::string& title) {
  const double W = 640, H = 360, L = 60, R = 40, T = 30, B = 45;
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& r : rs)
    for (const auto& p : r.curve) {
      double x = by_bytes ? p.bytes_wan : p.tokens;
      if ((by_bytes && x <= 0) || !std::isfinite(p.val_loss)) continue;
      x = by_bytes ? std::log10(x) : x;
      xmin = std::min(xmin, x), xmax = std::max(xmax, x);
      ymin = std::min(ymin, p.val_loss), ymax = std::max(ymax, p.val_loss);
    }
  if (!std::isfinite(xmin)) xmin = 0, xmax = 1;
  if (!std::isfinite(ymin)) ymin = 0, ymax = 1;
  if (!(xmax > xmin)) xmax = xmin + 1;
  if (!(ymax > ymin)) ymax = ymin + 1;
  auto sx = [&](double x) { return L + (x - xmin) / (xmax - xmin) * (W - L - R); };
  auto sy = [&](double y) { return T + (ymax - y) / (ymax - ymin) * (H - T - B); };
  std::string s = fmt::format("<svg width='{}' height='{}' xmlns='http://www.w3.org/2000/svg' font-family='sans-serif' "
                              "font-size='11'><text x='{}' y='18' font-size='13'>{}</text>",
                              W, H, L, escape(title));
  s += fmt::format("<rect x='{}' y='{}' width='{}' height='{}' fill='none' stroke='#999'/>", L, T, W - L - R,
                   H - T - B);
  for (int k = 0; k <= 4; ++k) {
    double y = ymin + (ymax - ymin) * k / 4, x = xmin + (xmax - xmin) * k / 4;
    s += fmt::format("<text x='{}' y='{}' text-anchor='end'>{:.3f}</text>", L - 4, sy(y) + 4, y);
    std::string label = by_bytes ? fmt::format("{:.2g} B", std::pow(10.0, x)) : fmt::format("{:.3g}", x);
    s += fmt::format("<text x='{}' y='{}' text-anchor='middle'>{}</text>", sx(x), H - B + 15, label);
  }
  s += fmt::format("<text x='{}' y='{}' text-anchor='middle'>{}</text>", (L + W - R) / 2, H - 8,
                   by_bytes ? "bytes across sites (log scale)" : "tokens");
  s += fmt::format("<text x='14' y='{}' transform='rotate(-90 14 {})' text-anchor='middle'>validation loss</text>",
                   (T + H - B) / 2, (T + H - B) / 2);
  for (size_t i = 0; i < rs.size(); ++i) {
    std::string pts;
    for (const auto& p : rs[i].curve) {
      if ((by_bytes && p.bytes_wan <= 0) || !std::isfinite(p.val_loss)) continue;
      double x = by_bytes ? std::log10(p.bytes_wan) : p.tokens;
      pts += fmt::format("{:.1f},{:.1f} ", sx(x), sy(p.val_loss));
    }
    s += fmt::format("<polyline fill='none' stroke='{}' stroke-width='1.5' points='{}'><title>{}</title></polyline>",
                     color_of(i), pts, escape(rs[i].name));
  }
  return s + "</svg>";
}

}  // namespace

std::string diloco_html_page(const DilocoResults& results) {
  const auto& rs = results.rows;
  std::string s = "<!doctype html><html><head><meta charset='utf-8'><title>braid bench diloco</title>"
                  "<style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}"
                  "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}</style>"
                  "</head><body><h1>DiLoCo over emulated sites</h1><p>" +
                  escape(results.setup) + "</p>";
  s += svg_plot(rs, false, "validation loss vs tokens") + " " +
       svg_plot(rs, true, "validation loss vs bytes across sites");
  s += "<table><tr><th>configuration</th><th>final val loss</th><th>vs first</th><th>bytes across sites</th>"
       "<th>fewer bytes</th><th>wall s</th><th>compute utilization</th></tr>";
  const DilocoRow* first = rs.empty() ? nullptr : &rs.front();
  for (size_t i = 0; i < rs.size(); ++i)
    s += fmt::format("<tr><td style='text-align:left;color:{}'>&#9632; {}</td><td>{:.4f}</td><td>{:+.1f}%</td>"
                     "<td>{:.3e}</td><td>{:.0f}x</td><td>{:.1f}</td><td>{:.1f}%</td></tr>",
                     color_of(i), escape(rs[i].name), rs[i].final_val_loss,
                     first && first->final_val_loss > 0 ? (rs[i].final_val_loss / first->final_val_loss - 1) * 100 : 0.0,
                     rs[i].bytes_wan, first && rs[i].bytes_wan > 0 ? first->bytes_wan / rs[i].bytes_wan : 0.0,
                     rs[i].wall_s, rs[i].utilization * 100);
  return s + "</table></body></html>\n";
}

std::string diloco_svg_figure(const DilocoResults& results) {
  const auto& rs = results.rows;
  const double plot_w = 640, plot_h = 360, top = 24, per_row = 18;
  const size_t columns = 3, legend_rows = (rs.size() + columns - 1) / columns;
  const double W = 2 * plot_w, H = top + plot_h + 10 + per_row * static_cast<double>(legend_rows) + 8;
  std::string s = fmt::format("<svg width='{}' height='{}' xmlns='http://www.w3.org/2000/svg' font-family='sans-serif' "
                              "font-size='11'><rect width='100%' height='100%' fill='white'/>"
                              "<text x='10' y='16' font-size='12'>{}</text>",
                              W, H, escape(results.setup));
  // Nested <svg> elements place the two plots side by side.
  s += fmt::format("<g transform='translate(0 {})'>{}</g>", top, svg_plot(rs, false, "validation loss vs tokens"));
  s += fmt::format("<g transform='translate({} {})'>{}</g>", plot_w, top,
                   svg_plot(rs, true, "validation loss vs bytes across sites"));
  for (size_t i = 0; i < rs.size(); ++i) {
    const double x = 60 + static_cast<double>(i % columns) * (W - 60) / columns;
    const double y = top + plot_h + 10 + static_cast<double>(i / columns) * per_row;
    s += fmt::format("<rect x='{}' y='{}' width='14' height='4' fill='{}'/><text x='{}' y='{}'>{}</text>", x, y + 4,
                     color_of(i), x + 20, y + 9, escape(rs[i].name));
  }
  return s + "</svg>\n";
}

void write_diloco_pages(const DilocoResults& results, const std::string& html_path, const std::string& svg_path) {
  for (const auto& [path, text] : {std::pair<std::string, std::string>{html_path, diloco_html_page(results)},
                                   std::pair<std::string, std::string>{svg_path, diloco_svg_figure(results)}}) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << text;
    if (!f) throw IoError(fmt::format("cannot write '{}'", path), "choose another path with -o, or free the disk");
  }
}

namespace {
nlohmann::json parse_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError(fmt::format("cannot read '{}'", path));
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(fmt::format("'{}' is not valid JSON: {}", path, e.what()),
                      "point braid report at a directory written by `braid bench diloco`");
  }
}
}  // namespace

bool is_diloco_results(const std::string& path) {
  try {
    auto j = parse_file(path);
    return j.is_object() && j.contains("results") && j["results"].is_array() && !j["results"].empty() &&
           j["results"][0].is_object() && j["results"][0].contains("curve");
  } catch (const Error&) {
    return false;
  }
}

DilocoResults read_diloco_results(const std::string& path) {
  const auto j = parse_file(path);
  DilocoResults out;
  try {
    out.setup = j.value("setup", "");
    for (const auto& e : j.at("results")) {
      DilocoRow r;
      r.name = e.at("name").get<std::string>();
      r.final_val_loss = e.at("final_val_loss").is_number() ? e.at("final_val_loss").get<double>() : NAN;
      r.bytes_wan = e.at("bytes_wan").get<double>();
      r.wall_s = e.at("wall_s").get<double>();
      r.utilization = e.at("compute_utilization").get<double>();
      for (const auto& p : e.at("curve"))
        r.curve.push_back({p.at("step").get<int64_t>(), p.at("tokens").get<double>(), p.at("bytes_wan").get<double>(),
                           p.at("val_loss").is_number() ? p.at("val_loss").get<double>() : NAN});
      out.rows.push_back(std::move(r));
    }
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(fmt::format("'{}' is not a `braid bench diloco` result: {}", path, e.what()),
                      "run `braid bench diloco --out DIR` and pass DIR to braid report");
  }
  if (out.rows.empty())
    throw ConfigError(fmt::format("'{}' lists no configurations", path), "run `braid bench diloco` again");
  return out;
}

}  // namespace braid::cli
