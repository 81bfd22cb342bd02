#include "core/error.hpp"

namespace braid {

Error::Error(const std::string& what, std::string hint)
    : std::runtime_error(what), hint_(std::move(hint)) {}

std::string Error::describe() const {
  std::string s = what();
  if (!hint_.empty()) s += "\n  hint: " + hint_;
  return s;
}

}  // namespace braid
