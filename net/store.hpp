#pragma once
// A small key-value store for rendezvous: ranks publish their addresses and
// read each other's. Served by the launcher of node 0 (TcpStoreServer), or in
// memory for ranks that are threads of one process (MemStore).
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <map>
#include <string>
#include <vector>

#include "core/clock.hpp"

namespace braid::net {

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::string& value) = 0;
  // Waits until the key exists; throws braid::Timeout naming the key at the deadline.
  virtual std::string get(const std::string& key, const Deadline& deadline) = 0;
  // Atomically adds delta to an integer key (absent = 0) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Non-blocking lookup: false if absent.
  virtual bool try_get(const std::string& key, std::string& value) = 0;
  virtual void erase(const std::string& key) = 0;
};

// Store shared by threads of one process.
class MemStore : public Store {
 public:
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, const Deadline& deadline) override;
  int64_t add(const std::string& key, int64_t delta) override;
  bool try_get(const std::string& key, std::string& value) override;
  void erase(const std::string& key) override;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> kv_;
};

// A view of another store with every key prefixed ("job/e3/" + key).
class PrefixStore : public Store {
 public:
  PrefixStore(std::shared_ptr<Store> base, std::string prefix)
      : base_(std::move(base)), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const std::string& value) override { base_->set(prefix_ + key, value); }
  std::string get(const std::string& key, const Deadline& d) override { return base_->get(prefix_ + key, d); }
  int64_t add(const std::string& key, int64_t delta) override { return base_->add(prefix_ + key, delta); }
  bool try_get(const std::string& key, std::string& v) override { return base_->try_get(prefix_ + key, v); }
  void erase(const std::string& key) override { base_->erase(prefix_ + key); }

 private:
  std::shared_ptr<Store> base_;
  std::string prefix_;
};

}  // namespace braid::net
