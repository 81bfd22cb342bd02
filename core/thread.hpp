#pragma once
// Small threading helpers: naming threads, a CPU pause for spin loops, and a
// futex-backed word that waiters can spin on briefly, then sleep on.
#include <atomic>
#include <cstdint>
#include <string>

namespace braid {

void set_thread_name(const std::string& name);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Futex wait/wake on a 32-bit word, usable across processes when the word is in
// shared memory (shared=true) or within one process (shared=false).
// wait returns when *addr != expected, on a wake, on a signal, or after timeout_ns
// (negative: no timeout). Spurious returns are possible: callers re-check.
void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected, int64_t timeout_ns, bool shared);
void futex_wake(std::atomic<uint32_t>* addr, int count, bool shared);

// Number of CPUs this process may run on (sched_getaffinity), at least 1.
int available_cpus();

}  // namespace braid
