#pragma once
// How decode GEMVs walk and prefetch a thread's rows, shared by the AVX2 and AVX-512 kernels. A kernel type
// K provides `template <int R, int N> static void rows(const Matmul&, const A& act, const long* rr,
// const PassPrefetch&)`, which computes rows rr[0..R) for N activation rows and calls prefetch_line once per 64
// bytes its rows advance. `act` is what the kernel reads the activations from besides m.x (gemv::Plain: m.x
// alone), handed through the walk unchanged.
#include <immintrin.h>

#include "matmul.h"

namespace kvlab {

// A thread's rows are cut into `streams` contiguous ranges read side by side (one row from each per pass, so each
// range is one long stream the hardware prefetcher follows; more activation rows use fewer ranges), and every
// row prefetches `ahead` bytes further along its own range, into L1 (level 1) or L2 (level 2).
struct PrefetchPolicy {
  int level;
  int streams;
  long ahead;
};

namespace gemv {

// The activations are m.x as given.
struct Plain {};

// What a pass's rows prefetch: `ahead` bytes along each row's range, into cache `level`.
struct PassPrefetch {
  long ahead = 0;
  int level = 1;
};

// Always inlined: GCC treats a function that only prefetches as free of side effects and drops calls to it.
__attribute__((always_inline)) inline void prefetch_at(const char* p, int level) {
  if (level == 1) _mm_prefetch(p, _MM_HINT_T0);
  else _mm_prefetch(p, _MM_HINT_T1);
}

// Called once per 64 bytes the rows advance, at byte offset `off` of the rows: a line of each row further
// along its range.
template <int R>
__attribute__((always_inline)) inline void prefetch_line(const PassPrefetch& pf, const char* const* row, long off) {
  #pragma GCC unroll 8
  for (int q = 0; q < R; q++) prefetch_at(row[q] + off + pf.ahead, pf.level);
}

inline long element_size(int t) { return t == W_F32 ? 4 : t == W_I8 ? 1 : 2; }

template <class K, int S, int N, class A>
void run_streams(const Matmul& m, const A& act, long r0, long r1, PrefetchPolicy pf) {
  const long per = (r1 - r0) / S;
  PassPrefetch p;
  p.ahead = pf.ahead;
  p.level = pf.level;
  for (long i = 0; i < per; i++) {
    long rr[S];
    for (int j = 0; j < S; j++) rr[j] = r0 + j * per + i;
    K::template rows<S, N>(m, act, rr, p);
  }
  for (long r = r0 + S * per; r < r1; r++) K::template rows<1, N>(m, act, &r, p);
}

template <class K, int N, class A>
void run(const Matmul& m, const A& act, long r0, long r1, PrefetchPolicy pf) {
  if constexpr (N > 2) return run_streams<K, 2, N>(m, act, r0, r1, pf);
  else if constexpr (N == 2) return run_streams<K, 4, N>(m, act, r0, r1, pf);
  else if (pf.streams == 3) return run_streams<K, 3, N>(m, act, r0, r1, pf);
  else return run_streams<K, 4, N>(m, act, r0, r1, pf);
}

// Rows [r0, r1) for m.n <= 4 activation rows.
template <class K, class A>
void walk(const Matmul& m, const A& act, long r0, long r1, PrefetchPolicy pf) {
  switch (m.n) {
    case 1: return run<K, 1>(m, act, r0, r1, pf);
    case 2: return run<K, 2>(m, act, r0, r1, pf);
    case 3: return run<K, 3>(m, act, r0, r1, pf);
    default: return run<K, 4>(m, act, r0, r1, pf);
  }
}

}  // namespace gemv
}  // namespace kvlab
