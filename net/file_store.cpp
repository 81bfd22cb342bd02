#include "net/file_store.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.hpp"

namespace braid::net {

FileStore::FileStore(std::string dir) : dir_(std::move(dir)) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (!std::filesystem::is_directory(dir_))
    throw IoError(fmt::format("cannot create the store directory '{}': {}", dir_, ec.message()),
                  "choose a writable directory");
}

std::string FileStore::path_for(const std::string& key) const {
  // Keys contain '/', so escape everything outside [A-Za-z0-9._-].
  std::string name;
  for (unsigned char c : key) {
    if (std::isalnum(c) || c == '.' || c == '_' || c == '-') {
      name.push_back(static_cast<char>(c));
    } else {
      name += fmt::format("%{:02x}", c);
    }
  }
  return dir_ + "/k." + name;
}

void FileStore::set(const std::string& key, const std::string& value) {
  std::string path = path_for(key);
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string tmp = fmt::format("{}.tmp.{}.{:x}", path, getpid(), rng());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << value;
    if (!out) throw IoError(fmt::format("cannot write store key file '{}'", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw IoError(fmt::format("cannot rename '{}' into place: {}", tmp, std::strerror(errno)));
}

bool FileStore::try_get(const std::string& key, std::string& value) {
  std::ifstream in(path_for(key), std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  value = ss.str();
  return true;
}

std::string FileStore::get(const std::string& key, const Deadline& deadline) {
  int sleep_us = 200;
  std::string v;
  while (!try_get(key, v)) {
    if (deadline.expired())
      throw Timeout(fmt::format("store key '{}' did not appear in '{}' before the deadline", key, dir_),
                    "a rank did not start, or uses another store directory");
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    sleep_us = std::min(sleep_us * 2, 20'000);
  }
  return v;
}

int64_t FileStore::add(const std::string& key, int64_t delta) {
  std::string lock_path = dir_ + "/.lock";
  int fd = ::open(lock_path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) throw IoError(fmt::format("cannot open '{}': {}", lock_path, std::strerror(errno)));
  flock(fd, LOCK_EX);
  int64_t v = 0;
  try {
    std::string cur;
    if (try_get(key, cur)) v = std::stoll(cur);
    v += delta;
    set(key, std::to_string(v));
  } catch (...) {
    flock(fd, LOCK_UN);
    ::close(fd);
    throw;
  }
  flock(fd, LOCK_UN);
  ::close(fd);
  return v;
}

void FileStore::erase(const std::string& key) { std::remove(path_for(key).c_str()); }

}  // namespace braid::net
