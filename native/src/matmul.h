#pragma once
#include <cstdint>
#include <string>

#include "weights.h"

namespace kvlab {

struct Matmul {
  float* out;          // [n, w.rows]
  const float* x;      // [n, w.cols]
  long n;
  WeightRef w;
};

// out = x . w^T. Decode-sized n streams the weights once, widened exactly in registers (bandwidth bound);
// prefill-sized n runs a packed GEMM: AMX tiles or AVX512-BF16 dot products when bf16_activations is set
// (activations rounded to bf16, fp32 accumulation), AVX-512 / AVX2 fp32 otherwise.
void matmul(const Matmul& m, bool bf16_activations);

// The kernel a call of this shape takes, for `kvlab info` and benchmarks.
const char* matmul_path(long n, const WeightRef& w, bool bf16_activations);

// Benchmark knobs: "prefetch" (0/1/2, decode GEMV software prefetch: off, L1, L2), "prefetch_max_pass",
// "int8_vnni" (1: int8 decode GEMV on VNNI where it applies, 0: dequantized in registers). False if unknown.
bool set_tuning(const std::string& key, double value);

// Symmetric absmax int8 per (row, group): q = round(v / s), s = max|v| / 127 (1 for an all-zero group).
void quantize_int8(const WeightRef& src, long group, int8_t* q, float* scales);

// out[i, :] = row ids[i] of the table, widened to fp32.
void embedding(const WeightRef& table, const int32_t* ids, long n, float* out);

}  // namespace kvlab
