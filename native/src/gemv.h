#pragma once
#include "gemv_walk.h"
#include "matmul.h"

namespace kvlab {

// AVX2: bf16 weights with even K are dotted as pairs, against activations split once into even and odd
// halves ([n][K/2] each).
bool gemv_avx2_uses_pairs(const WeightRef& w);
void split_even_odd(const float* x, long n, long K, float* xe, float* xo);

// Rows [r0, r1) of out = x . w^T for m.n <= gemv::WIDE_MAX_N activation rows on AVX2+FMA+F16C, weights widened
// exactly in registers (fp32 products, fp32 sums) and read from memory once for all rows (more than four:
// gemv::walk_wide). xe/xo: the split activations of all m.n rows when gemv_avx2_uses_pairs, else null.
void gemv_avx2(const Matmul& m, const float* xe, const float* xo, long r0, long r1, PrefetchPolicy pf);

// The same on AVX-512 (16 lanes, tails by masks).
void gemv_avx512(const Matmul& m, long r0, long r1, PrefetchPolicy pf);

// Activations quantized for the VNNI int8 GEMV: per (row t, block b of `block` columns) q = round(x / s) in
// [-127, 127] with s = max|x| / 127, and the sum of the block's q.
struct Int8Activations {
  const int8_t* q;     // [n][stride], zero past the last column
  long stride;
  const float* scale;  // [n][blocks]
  const int32_t* sum;  // [n][blocks]
  long block, blocks;
};
void quantize_activations_int8(const float* x, long n, long K, long block, int8_t* q, long stride, float* scale, int32_t* sum);

// Rows [r0, r1) of an int8 weight, n <= gemv::WIDE_MAX_N, whose groups are the activation blocks (a multiple of 64 columns) or
// which has per-row scales (any blocks): vpdpbusd on the weights shifted to u8 (+128) against the quantized
// activations, the shift undone per block with the activations' block sums.
void gemv_int8_vnni(const Matmul& m, const Int8Activations& qa, long r0, long r1, PrefetchPolicy pf);

}  // namespace kvlab
