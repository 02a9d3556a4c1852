#pragma once
#include <cstdint>

namespace kvlab {

// Each matches the reference backend's arithmetic (fp64 where it computes in JS numbers, then rounded to fp32).
void rmsnorm(float* out, const float* x, long n, long dim, const float* w, double eps);
void rope(float* x, long n, long n_heads, long d, const int32_t* pos, const float* inv_freq, double scaling);
void silu_mul(float* out, const float* gate, const float* up, long len);

}  // namespace kvlab
