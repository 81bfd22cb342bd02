#include "core/process_group.hpp"

#include <fcntl.h>
#include <sched.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/clock.hpp"
#include "core/error.hpp"

extern char** environ;

namespace braid {

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

std::string ProcessExit::describe() const {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), signal_name(WTERMSIG(status)));
  return "ended";
}

bool ProcessExit::ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

ProcessGroup::ProcessGroup(LineFn on_line) : on_line_(std::move(on_line)) {
  if (!on_line_) {
    on_line_ = [this](int i, std::string_view line) {
      std::fprintf(stdout, "[%s] %.*s\n", kids_[i].spec.label.c_str(), static_cast<int>(line.size()),
                   line.data());
      std::fflush(stdout);
    };
  }
}

ProcessGroup::~ProcessGroup() { terminate_all(2.0); }

int ProcessGroup::spawn(const ProcessSpec& spec) {
  Kid kid;
  kid.spec = spec;
  kids_.push_back(std::move(kid));
  int index = static_cast<int>(kids_.size() - 1);
  start(index);
  return index;
}

void ProcessGroup::respawn(int index) {
  if (!kids_[index].exited) throw Error(fmt::format("process {} is still running", kids_[index].spec.label));
  start(index);
}

void ProcessGroup::start(int index) {
  Kid& k = kids_[index];
  if (k.spec.argv.empty()) throw ConfigError("nothing to run: the command is empty");
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) throw Error(fmt::format("pipe failed: {}", std::strerror(errno)));
  // Build argv/envp before fork: only async-signal-safe calls after it.
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string s = *e;
    bool overridden = false;
    for (auto& [key, v] : k.spec.env)
      if (s.compare(0, key.size() + 1, key + "=") == 0) overridden = true;
    if (!overridden) envs.push_back(s);
  }
  for (auto& [key, v] : k.spec.env) envs.push_back(key + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : envs) envp.push_back(s.data());
  envp.push_back(nullptr);
  for (auto& s : k.spec.argv) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);

  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  for (int c : k.spec.cpus)
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &cpus);

  pid_t pid = fork();
  if (pid < 0) throw Error(fmt::format("fork failed: {}", std::strerror(errno)));
  if (pid == 0) {
    setpgid(0, 0);
    // Before exec, so that every thread the program starts inherits it.
    if (!k.spec.cpus.empty()) (void)sched_setaffinity(0, sizeof cpus, &cpus);
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGPIPE, SIG_DFL);
    execvpe(argv[0], argv.data(), envp.data());
    char msg[512];
    int n = std::snprintf(msg, sizeof msg, "braid launch: cannot run '%s': %s\n", argv[0], std::strerror(errno));
    (void)!write(2, msg, static_cast<size_t>(n));
    _exit(127);
  }
  setpgid(pid, pid);
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  k.pid = pid;
  k.out_fd = fds[0];
  k.partial.clear();
  k.exited = false;
  k.pending_exit.reset();
}

void ProcessGroup::drain(Kid& k, int index, bool final) {
  char buf[65536];
  while (k.out_fd >= 0) {
    ssize_t r = read(k.out_fd, buf, sizeof buf);
    if (r > 0) {
      k.partial.append(buf, static_cast<size_t>(r));
      size_t start = 0;
      for (size_t i = 0; i < k.partial.size(); ++i) {
        if (k.partial[i] == '\n' || k.partial[i] == '\r') {
          if (i > start) on_line_(index, std::string_view(k.partial).substr(start, i - start));
          start = i + 1;
        }
      }
      k.partial.erase(0, start);
      continue;
    }
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
      if (!k.partial.empty()) on_line_(index, k.partial);
      k.partial.clear();
      close(k.out_fd);
      k.out_fd = -1;
    }
    break;
  }
  (void)final;
}

std::optional<ProcessExit> ProcessGroup::poll(int timeout_ms) {
  // Report exits already seen first.
  for (size_t i = 0; i < kids_.size(); ++i) {
    if (kids_[i].pending_exit && kids_[i].out_fd < 0) {
      auto e = kids_[i].pending_exit;
      kids_[i].pending_exit.reset();
      return e;
    }
  }
  std::vector<pollfd> fds;
  std::vector<int> idx;
  for (size_t i = 0; i < kids_.size(); ++i) {
    if (kids_[i].out_fd >= 0) {
      fds.push_back({kids_[i].out_fd, POLLIN, 0});
      idx.push_back(static_cast<int>(i));
    }
  }
  if (!fds.empty()) {
    ::poll(fds.data(), fds.size(), timeout_ms);
    for (size_t j = 0; j < fds.size(); ++j)
      if (fds[j].revents) drain(kids_[idx[j]], idx[j], false);
  } else if (timeout_ms > 0) {
    usleep(static_cast<useconds_t>(std::min(timeout_ms, 50)) * 1000);
  }
  for (size_t i = 0; i < kids_.size(); ++i) {
    Kid& k = kids_[i];
    if (k.exited || k.pid < 0) continue;
    int status = 0;
    pid_t r = waitpid(k.pid, &status, WNOHANG);
    if (r == k.pid) {
      k.exited = true;
      // Take the rest of its output (grandchildren may hold the pipe: don't block).
      drain(k, static_cast<int>(i), true);
      if (k.out_fd >= 0) {
        close(k.out_fd);
        k.out_fd = -1;
      }
      k.pending_exit = ProcessExit{static_cast<int>(i), status};
    }
  }
  for (size_t i = 0; i < kids_.size(); ++i) {
    if (kids_[i].pending_exit) {
      auto e = kids_[i].pending_exit;
      kids_[i].pending_exit.reset();
      return e;
    }
  }
  return std::nullopt;
}

void ProcessGroup::set_env(int index, const std::string& key, const std::string& value) {
  for (auto& kv : kids_[index].spec.env)
    if (kv.first == key) {
      kv.second = value;
      return;
    }
  kids_[index].spec.env.emplace_back(key, value);
}

bool ProcessGroup::running(int index) const { return !kids_[index].exited; }

size_t ProcessGroup::running_count() const {
  size_t n = 0;
  for (auto& k : kids_) n += !k.exited;
  return n;
}

pid_t ProcessGroup::pid(int index) const { return kids_[index].pid; }

void ProcessGroup::signal(int index, int sig) {
  if (!kids_[index].exited && kids_[index].pid > 0) kill(-kids_[index].pid, sig);
}

void ProcessGroup::signal_all(int sig) {
  for (size_t i = 0; i < kids_.size(); ++i) signal(static_cast<int>(i), sig);
}

void ProcessGroup::terminate_all(double grace_s) {
  if (running_count() == 0) return;
  signal_all(SIGTERM);
  Deadline d = Deadline::in_seconds(grace_s);
  while (running_count() > 0 && !d.expired()) poll(20);
  if (running_count() > 0) {
    signal_all(SIGKILL);
    while (running_count() > 0) poll(20);
  }
}

}  // namespace braid
