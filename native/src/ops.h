#pragma once
#include <cstdint>

namespace kvlab {

// Each matches the reference backend's arithmetic (fp64 where it computes in JS numbers, then rounded to fp32).
void rmsnorm(float* out, const float* x, long n, long dim, const float* w, double eps);
void rope(float* x, long n, long n_heads, long d, const int32_t* pos, const float* inv_freq, double scaling);
void silu_mul(float* out, const float* gate, const float* up, long len);
// out[i] = a[i] + b[i] (out may alias a or b): the residual adds.
void add(float* out, const float* a, const float* b, long len);
// x[i, c] += bias[c] over n rows of width w.
void add_row_bias(float* x, long n, long w, const float* bias);
// dst[dst_off + i*width + c] = src[src_off + i*src_stride + c]: new cache rows out of a [n, heads, d] block.
void copy_rows(float* dst, long dst_off, const float* src, long src_off, long src_stride, long rows, long width);
// The same into a bf16 cache: each value rounded to the nearest bf16, ties to even (NaN stays a quiet NaN).
void copy_rows_bf16(uint16_t* dst, long dst_off, const float* src, long src_off, long src_stride, long rows, long width);

}  // namespace kvlab
