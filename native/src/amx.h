#pragma once
#include "matmul.h"

namespace kvlab {

// Whether the AMX bf16 GEMM takes a call of this shape (AMX present or emulated, n large enough, cols % 32 == 0).
bool amx_usable(long n, const WeightRef& w);

// out = x . w^T on AMX tiles: activations rounded to bf16, weights converted to bf16 if stored otherwise,
// fp32 accumulation. Returns false (nothing written) if AMX turned out unusable; the caller falls back.
bool amx_gemm(const Matmul& m);

}  // namespace kvlab
