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

// The int8 decode GEMV's arithmetic, read from KVLAB_INT8_GEMV at first use (dequant: off): on, VNNI where it
// applies, with activations quantized per block; off, weights dequantized in registers against exact fp32
// activations. Tests compare both in one process. Returns true.
bool set_int8_vnni(bool on);

// Symmetric absmax int8 per (row, group): q = round(v / s), s = max|v| / 127 (1 for an all-zero group).
void quantize_int8(const WeightRef& src, long group, int8_t* q, float* scales);

// out[i, :] = row ids[i] of the table, widened to fp32.
void embedding(const WeightRef& table, const int32_t* ids, long n, float* out);

}  // namespace kvlab
