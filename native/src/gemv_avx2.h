#pragma once
#include "matmul.h"

namespace kvlab {

// How decode GEMVs walk and prefetch their rows (see matmul.cc). level: 0 off, 1 into L1, 2 into L2.
// streams == 0: passes of consecutive rows, each prefetching the next pass (only when a pass is at most
// max_pass bytes); streams > 0: that many contiguous row ranges read side by side (for one activation row;
// more rows use fewer), each prefetched `ahead` bytes along its own stream.
struct PrefetchPolicy {
  int level;
  long max_pass;
  int streams;
  long ahead;
};

// bf16 weights with even K are dotted as pairs: activations split once into even and odd halves
// ([n][K/2] each; the AVX-512 bf16 GEMV uses the same split).
bool gemv_avx2_uses_pairs(const WeightRef& w);
void split_even_odd(const float* x, long n, long K, float* xe, float* xo);

// Rows [r0, r1) of out = x . w^T for m.n <= 4 activation rows on AVX2+FMA+F16C, weights widened exactly in
// registers (fp32 products, fp32 sums). xe/xo: the split activations when gemv_avx2_uses_pairs, else null.
void gemv_avx2(const Matmul& m, const float* xe, const float* xo, long r0, long r1, PrefetchPolicy pf);

}  // namespace kvlab
