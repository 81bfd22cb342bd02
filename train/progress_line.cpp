#include "train/progress_line.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>

namespace braid::train {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  auto total = static_cast<int64_t>(std::llround(s));
  if (total >= 3600) return fmt::format("{}h{:02}m", total / 3600, (total % 3600) / 60);
  if (total >= 60) return fmt::format("{}m{:02}s", total / 60, total % 60);
  return fmt::format("{}s", total);
}

ProgressLine::ProgressLine(std::FILE* out, int64_t total_steps, int64_t every)
    : out_(out), total_(total_steps), every_(every), live_(out && isatty(fileno(out))) {}

void ProgressLine::update(const StepMetrics& m) {
  if (!out_) return;
  if (m.val_loss) last_val_ = m.val_loss;
  window_.push_back(m);
  if (window_.size() > 20) window_.pop_front();
  bool last = m.step >= total_;
  if (!live_ && !(m.step % every_ == 0 || m.step == 1 || last || m.val_loss)) return;

  double time = 0, exposed = 0, tokens = 0, mfu = 0;
  for (const auto& w : window_) {
    time += w.step_s;
    exposed += w.comm_exposed_s;
    tokens += w.tokens_per_s * w.step_s;
    mfu += w.mfu * w.step_s;
  }
  double tok_s = time > 0 ? tokens / time : 0;
  std::string tok = tok_s >= 1e6 ? fmt::format("{:.2f}M", tok_s * 1e-6)
                  : tok_s >= 1e3 ? fmt::format("{:.1f}k", tok_s * 1e-3)
                                 : fmt::format("{:.0f}", tok_s);
  double eta = time / static_cast<double>(window_.size()) * static_cast<double>(total_ - m.step);
  std::string line = fmt::format("step {}/{} | loss {:.3f}", m.step, total_, m.loss);
  if (last_val_) line += fmt::format(" | val {:.3f}", *last_val_);
  line += fmt::format(" | {} tok/s | MFU {:.1f}% | comm exposed {:.0f}% | ETA {}", tok, mfu / std::max(time, 1e-12) * 100,
                      time > 0 ? exposed / time * 100 : 0.0, format_duration(eta));
  if (live_) {
    std::fprintf(out_, "\r\033[K%s", line.c_str());
    dirty_ = true;
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressLine::finish() {
  if (live_ && dirty_) std::fprintf(out_, "\n");
  dirty_ = false;
  if (out_) std::fflush(out_);
}

}  // namespace braid::train
