#pragma once
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

// Splits [0, n) into T nearly equal parts; returns part t as [begin, end).
inline void split_range(long n, int t, int T, long* begin, long* end) {
  long base = n / T, rem = n % T;
  *begin = t * base + (t < rem ? t : rem);
  *end = *begin + base + (t < rem ? 1 : 0);
}

}  // namespace kvlab
