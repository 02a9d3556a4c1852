#include "pool.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <string>
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

// The CPUs this process could run on when the pool started, and each worker's thread id (for placement).
std::vector<int> process_cpus;
std::vector<std::atomic<pid_t>> worker_tids;
std::atomic<bool> placement_enabled{true};
std::mutex placement_lock;
bool placed_elsewhere = false;  // a PoolPlacement is alive (guarded by placement_lock)

// Spinning before parking, so back-to-back kernels of one forward pass reuse awake workers while an idle pool
// sleeps in the kernel: 20000 pauses, a few hundred microseconds.
constexpr int SPIN = 20000;

void futex_wait(std::atomic<unsigned>* addr, unsigned expected) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<unsigned>* addr) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(addr), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

void worker_main(int index) {
  worker_tids[index - 1].store(pid_t(syscall(SYS_gettid)));
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
  if (const char* e = std::getenv("KVLAB_STEP_PLACEMENT")) placement_enabled = std::string(e) != "0";
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &set)) process_cpus.push_back(c);
  worker_tids = std::vector<std::atomic<pid_t>>(threads - 1);
  for (int i = 1; i < threads; i++) {
    workers.emplace_back(worker_main, i);
    workers.back().detach();
  }
  for (const auto& t : worker_tids)
    while (t.load() == 0) std::this_thread::yield();
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

namespace {

void pin(pid_t tid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(tid, sizeof set, &set);
}

void unpin(pid_t tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : process_cpus) CPU_SET(c, &set);
  sched_setaffinity(tid, sizeof set, &set);
}

}  // namespace

void pool_set_placement(bool on) { placement_enabled = on; }

PoolPlacement::PoolPlacement() {
  const size_t workers_n = worker_tids.size();
  if (!placement_enabled || workers_n == 0 || workers_n + 1 > process_cpus.size()) return;
  // One placement at a time: a second caller pinned beside the first would land on a worker's CPU.
  std::lock_guard<std::mutex> hold(placement_lock);
  if (placed_elsewhere) return;
  if (sched_getaffinity(0, sizeof caller_mask_, &caller_mask_) != 0) return;
  // The caller stays on the CPU it is on; the workers take the others in order.
  int here = sched_getcpu();
  bool known = false;
  for (int c : process_cpus) known |= c == here;
  if (!known) here = process_cpus[0];
  pin(0, here);
  size_t next = 0;
  for (const auto& t : worker_tids) {
    if (process_cpus[next] == here) next++;
    pin(t.load(), process_cpus[next++]);
  }
  placed_ = placed_elsewhere = true;
}

PoolPlacement::~PoolPlacement() {
  if (!placed_) return;
  std::lock_guard<std::mutex> hold(placement_lock);
  sched_setaffinity(0, sizeof caller_mask_, &caller_mask_);
  for (const auto& t : worker_tids) unpin(t.load());
  placed_elsewhere = false;
}

}  // namespace kvlab
