#pragma once
#include <sched.h>

#include <functional>

namespace kvlab {

// A fixed pool of worker threads living inside the addon. Workers spin briefly after each job and then
// park on a futex, so an idle pool costs nothing when the machine is shared.
void pool_init(int threads);
int pool_threads();
// Runs fn(t, T) on T = pool_threads() threads (the caller is thread 0) and returns when all are done; a
// caller left waiting spins briefly too and then parks until the last worker wakes it.
// Calls from different threads are serialized; a call from inside a job runs fn(0, 1) inline.
void pool_run(const std::function<void(int, int)>& fn);

// While alive, the constructing thread and the workers run on distinct CPUs: the caller is pinned to the CPU it
// is on, each worker to another of the CPUs the process had at pool start, and all are unpinned afterwards.
// For an async step or product, whose caller is a libuv thread: on a 2-vCPU VM that packs threads which wake
// each other onto one vCPU, the caller and the worker were seen taking turns on one vCPU (each spinning out
// its wait while the other could not run) while the second vCPU idled. A no-op with one thread,
// more threads than CPUs, placement turned off (KVLAB_STEP_PLACEMENT=0, setTuning('step_placement', 0)), or while another
// PoolPlacement is alive (two async steps at once: the second caller stays free to move).
class PoolPlacement {
 public:
  PoolPlacement();
  ~PoolPlacement();
  PoolPlacement(const PoolPlacement&) = delete;
  PoolPlacement& operator=(const PoolPlacement&) = delete;
  bool placed() const { return placed_; }

 private:
  bool placed_ = false;
  cpu_set_t caller_mask_;
};
void pool_set_placement(bool on);

// Splits [0, n) into T nearly equal parts; returns part t as [begin, end).
inline void split_range(long n, int t, int T, long* begin, long* end) {
  long base = n / T, rem = n % T;
  *begin = t * base + (t < rem ? t : rem);
  *end = *begin + base + (t < rem ? 1 : 0);
}

}  // namespace kvlab
