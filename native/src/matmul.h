#pragma once
#include <cstdint>

namespace kvlab {

enum WeightType { W_F32 = 0, W_BF16 = 1, W_F16 = 2, W_I8 = 3 };

struct Matmul {
  float* out;          // [n, rows]
  const float* x;      // [n, cols]
  int n;
  const void* w;       // [rows, cols] of the weight type
  int type;
  int rows;
  int cols;
  const float* scales; // int8: one per row
  const int32_t* row_sums = nullptr;  // int8: sum of each row's quantized weights (enables the VNNI path)
};

// out = x . w^T. Decode-sized n streams the weights once at full precision (bandwidth bound); prefill-sized
// n runs a packed register-blocked GEMM, with activations rounded to bf16 when bf16_activations is set and
// the CPU has AVX512_BF16.
void matmul(const Matmul& m, bool bf16_activations);

// Which kernel a call of this shape and type takes, for `kvlab info` and benchmarks.
const char* matmul_path(int n, int type, bool bf16_activations);

}  // namespace kvlab
