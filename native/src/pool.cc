#include "pool.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <mutex>
#include <thread>
#include <vector>

namespace kvlab {
namespace {

std::atomic<unsigned> generation{0};
std::atomic<int> pending{0};
std::atomic<int> sleepers{0};  // workers parked (or about to park) on the futex
std::atomic<unsigned> finished{0};     // bumped by the last worker to finish a job
std::atomic<bool> caller_parked{false};
const std::function<void(int, int)>* job = nullptr;
int n_threads = 1;
std::vector<std::thread> workers;
std::mutex run_lock;
thread_local bool in_job = false;

// About 20-50 us of spinning before parking: back-to-back kernels of one forward pass reuse awake workers,
// an idle pool sleeps in the kernel.
constexpr int SPIN = 20000;

void futex_wait(std::atomic<unsigned>* addr, unsigned expected) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<unsigned>* addr) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(addr), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

void worker_main(int index) {
  in_job = true;
  unsigned seen = 0;
  for (;;) {
    unsigned g = generation.load(std::memory_order_acquire);
    for (int spin = 0; g == seen && spin < SPIN; spin++) {
      _mm_pause();
      g = generation.load(std::memory_order_acquire);
    }
    while (g == seen) {
      sleepers.fetch_add(1);
      futex_wait(&generation, seen);
      sleepers.fetch_sub(1);
      g = generation.load(std::memory_order_acquire);
    }
    seen = g;
    (*job)(index, n_threads);
    if (pending.fetch_sub(1) == 1) {
      finished.fetch_add(1);
      if (caller_parked.load()) futex_wake_all(&finished);
    }
  }
}

}  // namespace

void pool_init(int threads) {
  if (!workers.empty() || threads < 1) return;
  n_threads = threads;
  for (int i = 1; i < threads; i++) {
    workers.emplace_back(worker_main, i);
    workers.back().detach();
  }
}

int pool_threads() { return n_threads; }

void pool_run(const std::function<void(int, int)>& fn) {
  if (n_threads == 1 || in_job) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> hold(run_lock);
  in_job = true;
  job = &fn;
  const unsigned done_before = finished.load();
  pending.store(n_threads - 1, std::memory_order_release);
  generation.fetch_add(1);
  // A worker counts itself in `sleepers` before it checks the generation in futex_wait, so either it sees
  // the new generation there or this load sees it and wakes it.
  if (sleepers.load() > 0) futex_wake_all(&generation);
  fn(0, n_threads);
  // Spin while the workers are likely about to finish; then park, so a worker that lost its CPU to another
  // process gets this one instead of competing with a busy-waiting caller.
  for (int spin = 0; pending.load(std::memory_order_acquire) > 0 && spin < SPIN; spin++) _mm_pause();
  while (pending.load() > 0) {
    caller_parked.store(true);
    // The last worker bumps `finished` after zeroing `pending`, so if it finished after the check above
    // the futex sees a changed word and returns at once.
    if (pending.load() > 0) futex_wait(&finished, done_before);
    caller_parked.store(false);
  }
  in_job = false;
}

}  // namespace kvlab
