#include "net/store.hpp"

#include "core/error.hpp"

namespace braid::net {

void MemStore::set(const std::string& key, const std::string& value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    kv_[key] = value;
  }
  cv_.notify_all();
}

std::string MemStore::get(const std::string& key, const Deadline& deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    auto it = kv_.find(key);
    if (it != kv_.end()) return it->second;
    if (deadline.expired())
      throw Timeout("rendezvous key '" + key + "' did not appear before the deadline",
                    "a rank did not start or could not reach the store");
    auto wait = std::chrono::nanoseconds(std::min<int64_t>(deadline.remaining_ns(), 100'000'000));
    cv_.wait_for(lock, wait);
  }
}

int64_t MemStore::add(const std::string& key, int64_t delta) {
  int64_t v;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = kv_.find(key);
    v = (it == kv_.end() ? 0 : std::stoll(it->second)) + delta;
    kv_[key] = std::to_string(v);
  }
  cv_.notify_all();
  return v;
}

bool MemStore::try_get(const std::string& key, std::string& value) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = kv_.find(key);
  if (it == kv_.end()) return false;
  value = it->second;
  return true;
}

void MemStore::erase(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  kv_.erase(key);
}

}  // namespace braid::net
