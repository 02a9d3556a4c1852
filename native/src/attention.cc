// Attention: picks the path for a call from the CPU's features and the call's shape (head size, query rows,
// cache dtype). The paths live in attention_scalar.cc, attention_avx2.cc and attention_avx512.cc; what they
// share in attention_common.cc.
#include "attention.h"

#include "attention_tiles.h"
#include "cpu.h"

namespace kvlab {

void attention(const Attention& a) {
  using namespace attn;
  if (a.nq <= 0 || a.n_heads <= 0) return;
  if (window_masks_keys(a, nullptr)) return attention_windowed(a, nullptr);
  // A bf16 cache is read as it is by the AVX-512 tiles (d a multiple of 16 up to 128; the many-row tiles widen
  // keys while they pack them).
  // On AVX2, decode reads it as it is where the row-order kernels take the head size.
  const bool avx2_decode = !cpu().avx512 && cpu().avx2_fma && a.d % 8 == 0 && a.nq <= 2;
  const bool bf16_direct = cpu().avx512 ? avx512_reads_bf16(a) : avx2_decode && avx2_rows_fit(a.d);
  if (a.bf16 && !bf16_direct) return attention(widened(a));
  if (avx2_decode) return attention_avx2_decode(a);
  if (!cpu().avx512 && cpu().avx2_fma && a.d % 8 == 0) return attention_avx2_rows(a);
  if (!cpu().avx512) return attention_scalar(a);
  attention_avx512(a);
}

}  // namespace kvlab
