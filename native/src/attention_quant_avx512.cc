// AVX-512 pieces of the quantized attention (d a multiple of 16; value groups a multiple of 16 channels or the whole
// row): codes unpacked 16 channels per variable shift.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "attention_quant.h"
#include "vecmath.h"

namespace kvlab::qattn {
namespace {

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

AVX512 void unpack_avx512(const uint8_t* codes, int rows, int d, int bits, float* buf) {
  const int rb = d * bits / 8;
  if (bits == 4) {
    const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28), mask = _mm512_set1_epi32(15);
    for (int r = 0; r < rows; r++) {
      const uint8_t* src = codes + long(r) * rb;
      for (int c = 0; c < d; c += 16) {
        uint32_t lo, hi;
        __builtin_memcpy(&lo, src + c / 2, 4);
        __builtin_memcpy(&hi, src + c / 2 + 4, 4);
        const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(int(lo))), _mm256_set1_epi32(int(hi)), 1);
        _mm512_storeu_ps(buf + long(r) * d + c, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w, shifts), mask)));
      }
    }
  } else {
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), mask = _mm512_set1_epi32(3);
    for (int r = 0; r < rows; r++) {
      const uint8_t* src = codes + long(r) * rb;
      for (int c = 0; c < d; c += 16) {
        uint32_t w;
        __builtin_memcpy(&w, src + c / 4, 4);
        _mm512_storeu_ps(buf + long(r) * d + c, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(w)), shifts), mask)));
      }
    }
  }
}

AVX512 void dots_avx512(const float* qs, int nh, const float* rows, int n, int d, float* out, long ostride) {
  for (int r0 = 0; r0 < n; r0 += 8) {
    const int m = n - r0 < 8 ? n - r0 : 8;
    const float* base = rows + long(r0) * d;
    for (int h = 0; h < nh; h++) {
      const float* q = qs + long(h) * d;
      __m512 acc[8];
      for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
      for (int c = 0; c < d; c += 16) {
        const __m512 qv = _mm512_loadu_ps(q + c);
        for (int r = 0; r < m; r++) acc[r] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(base + long(r) * d + c), acc[r]);
      }
      for (int r = 0; r < m; r++) out[h * ostride + r0 + r] = _mm512_reduce_add_ps(acc[r]);
    }
  }
}

AVX512 void accum_avx512(float* acc, int nh, const float* w, long wstride, int ng, int group, const float* rows, int n, int d) {
  for (int h = 0; h < nh; h++) {
    const float* wh = w + h * wstride;
    for (int c = 0; c < d; c += 16) {
      const int cg = c / group;
      __m512 a = _mm512_loadu_ps(acc + long(h) * d + c);
      for (int r = 0; r < n; r++) a = _mm512_fmadd_ps(_mm512_set1_ps(wh[long(r) * ng + cg]), _mm512_loadu_ps(rows + long(r) * d + c), a);
      _mm512_storeu_ps(acc + long(h) * d + c, a);
    }
  }
}

AVX512 void softmax_avx512(float* p, int nh, long L, long stride) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int h = 0; h < nh; h++) {
    float* ph = p + h * stride;
    const long L16 = L / 16 * 16;
    __m512 m = ninf;
    for (long j = 0; j < L16; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(ph + j));
    float mx = _mm512_reduce_max_ps(m);
    for (long j = L16; j < L; j++) mx = std::max(mx, ph[j]);
    if (mx == -INFINITY) {
      std::fill(ph, ph + L, 0.f);
      continue;
    }
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 sum = _mm512_setzero_ps();
    for (long j = 0; j < L16; j += 16) {
      const __m512 x = _mm512_loadu_ps(ph + j);
      const __mmask16 live = _mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_OQ);
      const __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(x, vmx)));
      _mm512_storeu_ps(ph + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    double z = _mm512_reduce_add_ps(sum);
    for (long j = L16; j < L; j++) {
      ph[j] = ph[j] == -INFINITY ? 0.f : std::exp(ph[j] - mx);
      z += ph[j];
    }
    const __m512 inv = _mm512_set1_ps(float(1.0 / z));
    for (long j = 0; j < L16; j += 16) _mm512_storeu_ps(ph + j, _mm512_mul_ps(_mm512_loadu_ps(ph + j), inv));
    for (long j = L16; j < L; j++) ph[j] *= float(1.0 / z);
  }
}

}  // namespace

const Kernels avx512_kernels = {unpack_avx512, dots_avx512, accum_avx512, softmax_avx512};

}  // namespace kvlab::qattn
