#pragma once
#include "gemv_walk.h"
#include "matmul.h"

namespace kvlab {

// AVX2: bf16 weights with even K are dotted as pairs, against activations split once into even and odd
// halves ([n][K/2] each).
bool gemv_avx2_uses_pairs(const WeightRef& w);
void split_even_odd(const float* x, long n, long K, float* xe, float* xo);

// Rows [r0, r1) of out = x . w^T for m.n <= 4 activation rows on AVX2+FMA+F16C, weights widened exactly in
// registers (fp32 products, fp32 sums). xe/xo: the split activations when gemv_avx2_uses_pairs, else null.
void gemv_avx2(const Matmul& m, const float* xe, const float* xo, long r0, long r1, PrefetchPolicy pf);

// The same on AVX-512 (16 lanes, tails by masks; xe/xo unused).
void gemv_avx512(const Matmul& m, const float* xe, const float* xo, long r0, long r1, PrefetchPolicy pf);

}  // namespace kvlab
