#pragma once
// A Store kept in a directory: one file per key, written atomically (write to
// a temporary file, then rename). Works for processes that share a
// filesystem but not a network — forked test ranks, ranks in different
// network namespaces, or hosts with a shared NFS directory — and needs no
// server. `add` is serialized with flock() on a lock file.
#include <string>

#include "net/store.hpp"

namespace braid::net {

class FileStore : public Store {
 public:
  // Creates the directory if needed.
  explicit FileStore(std::string dir);

  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, const Deadline& deadline) override;
  int64_t add(const std::string& key, int64_t delta) override;
  bool try_get(const std::string& key, std::string& value) override;
  void erase(const std::string& key) override;

  const std::string& dir() const { return dir_; }

 private:
  std::string path_for(const std::string& key) const;
  std::string dir_;
};

}  // namespace braid::net
