#pragma once
#include "matmul.h"

namespace kvlab {

// out[n, w.rows] = x[n, w.cols] . w^T on AVX2 + FMA (+ F16C for f16 weights), fp32 products and fp32
// accumulation; weights of every type are widened exactly (int8: q * scale in fp32) into packed panels.
// Any n, rows and cols. The caller checks the CPU (see choose() in matmul.cc).
void gemm_avx2(const Matmul& m);

// Register-resident AVX2 FMA throughput (GFLOP/s, all threads together) on `threads` pool threads
// (clamped to the pool size), timed over ~0.2 s: the peak the AVX2 GEMM is compared with.
double fma_peak_gflops(int threads);

}  // namespace kvlab
