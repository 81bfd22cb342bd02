#pragma once
// Child processes of the launcher and of the benchmarks: spawn with extra
// environment, collect their output line by line (prefixed with a label by
// default), report exits, forward signals.
#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace braid {

struct ProcessSpec {
  std::vector<std::string> argv;
  std::vector<std::pair<std::string, std::string>> env;  // added to this process's environment
  std::string label;                                     // e.g. "r3"
  std::vector<int> cpus;  // CPUs the child is pinned to (sched_setaffinity); empty = inherit
};

struct ProcessExit {
  int index;
  int status;  // as from waitpid
  std::string describe() const;  // "exited with code 3" / "was killed by signal 9 (SIGKILL)"
  bool ok() const;
};

class ProcessGroup {
 public:
  // Called for every complete output line of a child (without the newline).
  // Default: print "[label] line" to stdout.
  using LineFn = std::function<void(int index, std::string_view line)>;
  explicit ProcessGroup(LineFn on_line = {});
  ~ProcessGroup();  // kills what is still running
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // Starts a child in its own process group; returns its index. Re-spawning an
  // index that has exited reuses the slot (restarts).
  int spawn(const ProcessSpec& spec);
  void respawn(int index);

  // Pumps output for up to timeout_ms and returns the first exit seen, if any.
  std::optional<ProcessExit> poll(int timeout_ms);
  bool running(int index) const;
  size_t running_count() const;
  pid_t pid(int index) const;
  size_t size() const { return kids_.size(); }
  const ProcessSpec& spec(int index) const { return kids_[index].spec; }
  // Sets (or replaces) one environment variable for the next (re)spawn of index.
  void set_env(int index, const std::string& key, const std::string& value);

  void signal(int index, int sig);
  void signal_all(int sig);
  // SIGTERM everything still running, wait up to grace_s, then SIGKILL.
  void terminate_all(double grace_s);

 private:
  struct Kid {
    ProcessSpec spec;
    pid_t pid = -1;
    int out_fd = -1;
    std::string partial;
    bool exited = true;
    std::optional<ProcessExit> pending_exit;
  };
  void start(int index);
  void drain(Kid& k, int index, bool final);
  LineFn on_line_;
  std::vector<Kid> kids_;
};

std::string signal_name(int sig);

}  // namespace braid
