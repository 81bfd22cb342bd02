#pragma once
// POSIX file helpers for checkpoints: every failure is an IoError naming the
// path and the system's reason; durability (fsync of files and directories)
// is explicit because the commit protocol depends on it.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace braid::ckpt {

// Owns a file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset();

 private:
  int fd_ = -1;
};

// open(2); throws IoError naming `path`.
UniqueFd open_file(const std::filesystem::path& path, int flags, int mode = 0644);
void write_all(int fd, const void* data, size_t len, const std::filesystem::path& path);
// Reads up to len bytes at offset; returns how many were read (less only at end of file).
size_t pread_full(int fd, void* data, size_t len, uint64_t offset, const std::filesystem::path& path);
void fsync_file(int fd, const std::filesystem::path& path);
// fsync of a directory makes renames and new entries in it durable.
void fsync_dir(const std::filesystem::path& dir);
// close(2) reporting errors (delayed write errors show up here on some filesystems).
void close_file(UniqueFd& fd, const std::filesystem::path& path);

std::string read_text_file(const std::filesystem::path& path);
// Writes `text` to a temporary sibling, fsyncs it, renames it over `path` and
// fsyncs the directory: readers see the old or the new content, never a mix.
void write_file_atomically(const std::filesystem::path& path, const std::string& text, bool durable = true);

// Removes a directory tree; returns false (and fills `why`) instead of throwing.
bool remove_tree(const std::filesystem::path& path, std::string* why = nullptr);

// A 64-bit random value as 16 hex digits, for unique temporary names.
std::string random_token();

}  // namespace braid::ckpt
