#include "pool.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <thread>
#include <vector>

namespace kvlab {
namespace {

std::atomic<unsigned> generation{0};
std::atomic<int> pending{0};
const std::function<void(int, int)>* job = nullptr;
int n_threads = 1;
std::vector<std::thread> workers;

void futex_wait(std::atomic<unsigned>* addr, unsigned expected) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<unsigned>* addr) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(addr), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

void worker_main(int index) {
  unsigned seen = 0;
  for (;;) {
    unsigned g = generation.load(std::memory_order_acquire);
    for (int spin = 0; g == seen && spin < 20000; spin++) {
      _mm_pause();
      g = generation.load(std::memory_order_acquire);
    }
    while (g == seen) {
      futex_wait(&generation, seen);
      g = generation.load(std::memory_order_acquire);
    }
    seen = g;
    (*job)(index, n_threads);
    pending.fetch_sub(1, std::memory_order_acq_rel);
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
  if (n_threads == 1) {
    fn(0, 1);
    return;
  }
  job = &fn;
  pending.store(n_threads - 1, std::memory_order_release);
  generation.fetch_add(1, std::memory_order_acq_rel);
  futex_wake_all(&generation);
  fn(0, n_threads);
  while (pending.load(std::memory_order_acquire) > 0) _mm_pause();
}

}  // namespace kvlab
