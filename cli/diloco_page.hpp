#pragma once
// The DiLoCo experiment's page: validation loss against tokens and against
// bytes across sites for every configuration of `braid bench diloco`, with
// the summary table. Written by the bench beside its results.json, and by
// `braid report DIR` from that results.json. No LibTorch here.
#include <cstdint>
#include <string>
#include <vector>

namespace braid::cli {

struct DilocoCurvePoint {
  int64_t step = 0;
  double tokens = 0;
  double bytes_wan = 0;
  double val_loss = 0;
};

struct DilocoRow {
  std::string name;
  double final_val_loss = 0;
  double bytes_wan = 0;
  double wall_s = 0;
  double utilization = 0;  // 0..1
  std::vector<DilocoCurvePoint> curve;
};

struct DilocoResults {
  std::string setup;
  std::vector<DilocoRow> rows;
};

// One self-contained HTML page (inline SVG).
std::string diloco_html_page(const DilocoResults& results);
// The page's two plots side by side with a legend and the setup line, as
// one standalone SVG file (for README.md and other documents).
std::string diloco_svg_figure(const DilocoResults& results);
// Writes both (IoError naming the file that could not be written).
void write_diloco_pages(const DilocoResults& results, const std::string& html_path, const std::string& svg_path);

// Whether `path` (a file) looks like bench diloco's results.json.
bool is_diloco_results(const std::string& path);
// Reads bench diloco's results.json; ConfigError naming the file and the
// field when it is not one.
DilocoResults read_diloco_results(const std::string& path);

}  // namespace braid::cli
