#include "ckpt/file_io.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "core/checksum.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"

namespace braid::ckpt {
namespace fs = std::filesystem;

namespace {
[[noreturn]] void throw_errno(const std::string& what, const fs::path& path, int err) {
  std::string hint;
  if (err == ENOSPC || err == EDQUOT) hint = "the disk is full: free space or keep fewer checkpoints (keep_last)";
  else if (err == EACCES || err == EPERM || err == EROFS) hint = "check the permissions of the checkpoint directory";
  else if (err == ENOENT) hint = "the file or one of its directories does not exist";
  throw IoError(fmt::format("{} {}: {}", what, path.string(), std::strerror(err)), hint);
}
}  // namespace

void UniqueFd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

UniqueFd open_file(const fs::path& path, int flags, int mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) throw_errno("cannot open", path, errno);
  return UniqueFd(fd);
}

void write_all(int fd, const void* data, size_t len, const fs::path& path) {
  auto* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot write", path, errno);
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
}

size_t pread_full(int fd, void* data, size_t len, uint64_t offset, const fs::path& path) {
  auto* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, p + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read", path, errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

void fsync_file(int fd, const fs::path& path) {
  if (::fsync(fd) != 0) throw_errno("cannot fsync", path, errno);
}

void fsync_dir(const fs::path& dir) {
  UniqueFd fd = open_file(dir, O_RDONLY | O_DIRECTORY);
  if (::fsync(fd.get()) != 0 && errno != EINVAL)  // some filesystems refuse directory fsync
    throw_errno("cannot fsync directory", dir, errno);
}

void close_file(UniqueFd& fd, const fs::path& path) {
  int f = fd.release();
  if (f >= 0 && ::close(f) != 0 && errno != EINTR) throw_errno("cannot close", path, errno);
}

std::string read_text_file(const fs::path& path) {
  UniqueFd fd = open_file(path, O_RDONLY);
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read", path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void write_file_atomically(const fs::path& path, const std::string& text, bool durable) {
  fs::path tmp = path;
  tmp += ".tmp-" + random_token();
  try {
    UniqueFd fd = open_file(tmp, O_WRONLY | O_CREAT | O_TRUNC);
    write_all(fd.get(), text.data(), text.size(), tmp);
    if (durable) fsync_file(fd.get(), tmp);
    close_file(fd, tmp);
    if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno("cannot rename onto", path, errno);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (durable) fsync_dir(path.parent_path().empty() ? fs::path(".") : path.parent_path());
}

bool remove_tree(const fs::path& path, std::string* why) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec && why) *why = ec.message();
  return !ec;
}

std::string random_token() {
  // A fresh draw each time (no cached generator): a forked child must not
  // repeat its parent's names.
  std::random_device rd;
  uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return hex64(v ^ static_cast<uint64_t>(now_ns()) ^ (static_cast<uint64_t>(::getpid()) << 40));
}

}  // namespace braid::ckpt
