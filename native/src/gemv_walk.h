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

// What a pass's rows prefetch: `ahead` bytes along each row's range, into cache `level` (0: nothing).
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
  if (pf.level == 0) return;
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

// The most activation rows one GEMV call takes (walk_wide); more go to a packed GEMM.
constexpr long WIDE_MAX_N = 16;
// walk_wide's register tile: WIDE_STREAMS weight rows per pass against WIDE_BLOCK activation rows at a time.
// Against four rows of two, two rows of four reread a pass's weights from cache half as often but the
// activations (the larger of the two beyond the first block) twice as often.
constexpr int WIDE_STREAMS = 4;
constexpr long WIDE_BLOCK = 2;

// One block of at most WIDE_BLOCK activation rows: the sub-call that computes them and what it reads them from.
template <class A>
struct Block {
  Matmul m;
  A act;
};

template <class K, int R, class A>
__attribute__((always_inline)) inline void block_rows(const Block<A>& b, const long* rr, const PassPrefetch& p) {
  static_assert(WIDE_BLOCK >= 1 && WIDE_BLOCK <= 4, "blocks of one to four activation rows");
  if (b.m.n == 1) return K::template rows<R, 1>(b.m, b.act, rr, p);
  if constexpr (WIDE_BLOCK >= 2)
    if (b.m.n == 2) return K::template rows<R, 2>(b.m, b.act, rr, p);
  if constexpr (WIDE_BLOCK >= 3)
    if (b.m.n == 3) return K::template rows<R, 3>(b.m, b.act, rr, p);
  if constexpr (WIDE_BLOCK >= 4) return K::template rows<R, 4>(b.m, b.act, rr, p);
}

template <class K, int S, class A>
void run_wide(const Block<A>* blocks, int nblocks, long r0, long r1, PrefetchPolicy pf) {
  const long per = (r1 - r0) / S;
  PassPrefetch first, none;
  first.ahead = pf.ahead;
  first.level = pf.level;
  none.level = 0;
  for (long i = 0; i < per; i++) {
    long rr[S];
    for (int j = 0; j < S; j++) rr[j] = r0 + j * per + i;
    for (int b = 0; b < nblocks; b++) block_rows<K, S>(blocks[b], rr, b == 0 ? first : none);
  }
  for (long r = r0 + S * per; r < r1; r++)
    for (int b = 0; b < nblocks; b++) block_rows<K, 1>(blocks[b], &r, b == 0 ? first : none);
}

// Rows [r0, r1) for 4 < m.n <= WIDE_MAX_N activation rows, the weights read from memory once: each pass takes
// its WIDE_STREAMS rows for every block of WIDE_BLOCK activation rows in turn while they are still in cache
// (only the first block prefetches). block(t0) gives the Block of the activation rows from t0 on (its m.n is set here).
// Every output is summed in the order it has under walk(), so each row gets the bits it gets alone.
template <class K, class MakeBlock>
void walk_wide(const Matmul& m, MakeBlock block, long r0, long r1, PrefetchPolicy pf) {
  using A = decltype(block(0L).act);
  Block<A> blocks[(WIDE_MAX_N + WIDE_BLOCK - 1) / WIDE_BLOCK];
  int nblocks = 0;
  for (long t0 = 0; t0 < m.n && t0 < WIDE_MAX_N; t0 += WIDE_BLOCK) {
    blocks[nblocks] = block(t0);
    blocks[nblocks].m.n = m.n - t0 < WIDE_BLOCK ? m.n - t0 : WIDE_BLOCK;
    nblocks++;
  }
  run_wide<K, WIDE_STREAMS>(blocks, nblocks, r0, r1, pf);
}

}  // namespace gemv
}  // namespace kvlab
