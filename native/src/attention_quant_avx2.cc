// AVX2 + FMA pieces of the quantized attention (d a multiple of 8; value groups a multiple of 8 channels or the
// whole row): codes unpacked 8 channels per variable shift, row dots reduced 8 rows at a time by one transpose.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "attention_quant.h"
#include "vecmath.h"

namespace kvlab::qattn {
namespace {

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 void unpack_avx2(const uint8_t* codes, int rows, int d, int bits, float* buf) {
  const int rb = d * bits / 8;
  if (bits == 4) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), mask = _mm256_set1_epi32(15);
    for (int r = 0; r < rows; r++) {
      const uint8_t* src = codes + long(r) * rb;
      for (int c = 0; c < d; c += 8) {
        uint32_t w;
        __builtin_memcpy(&w, src + c / 2, 4);
        const __m256i x = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(w)), shifts), mask);
        _mm256_storeu_ps(buf + long(r) * d + c, _mm256_cvtepi32_ps(x));
      }
    }
  } else {
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), mask = _mm256_set1_epi32(3);
    for (int r = 0; r < rows; r++) {
      const uint8_t* src = codes + long(r) * rb;
      for (int c = 0; c < d; c += 8) {
        uint16_t w;
        __builtin_memcpy(&w, src + c / 4, 2);
        const __m256i x = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(w)), shifts), mask);
        _mm256_storeu_ps(buf + long(r) * d + c, _mm256_cvtepi32_ps(x));
      }
    }
  }
}

// The 8 lane sums of a[0..7], in order.
AVX2 inline __m256 reduce8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

AVX2 void dots_avx2(const float* qs, int nh, const float* rows, int n, int d, float* out, long ostride) {
  for (int r0 = 0; r0 < n; r0 += 8) {
    const int m = n - r0 < 8 ? n - r0 : 8;
    const float* base = rows + long(r0) * d;
    for (int h = 0; h < nh; h++) {
      const float* q = qs + long(h) * d;
      __m256 acc[8];
      for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
      if (m == 8) {
        for (int c = 0; c < d; c += 8) {
          const __m256 qv = _mm256_loadu_ps(q + c);
#pragma GCC unroll 8
          for (int r = 0; r < 8; r++) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(base + long(r) * d + c), acc[r]);
        }
        _mm256_storeu_ps(out + h * ostride + r0, reduce8(acc));
      } else {
        for (int c = 0; c < d; c += 8) {
          const __m256 qv = _mm256_loadu_ps(q + c);
          for (int r = 0; r < m; r++) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(base + long(r) * d + c), acc[r]);
        }
        for (int r = 0; r < m; r++) out[h * ostride + r0 + r] = hsum256(acc[r]);
      }
    }
  }
}

AVX2 void accum_avx2(float* acc, int nh, const float* w, long wstride, int ng, int group, const float* rows, int n, int d) {
  for (int h = 0; h < nh; h++) {
    const float* wh = w + h * wstride;
    for (int c = 0; c < d; c += 8) {
      const int cg = c / group;
      __m256 a = _mm256_loadu_ps(acc + long(h) * d + c);
      for (int r = 0; r < n; r++) a = _mm256_fmadd_ps(_mm256_set1_ps(wh[long(r) * ng + cg]), _mm256_loadu_ps(rows + long(r) * d + c), a);
      _mm256_storeu_ps(acc + long(h) * d + c, a);
    }
  }
}

AVX2 void softmax_avx2(float* p, int nh, long L, long stride) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  for (int h = 0; h < nh; h++) {
    float* ph = p + h * stride;
    const long L8 = L / 8 * 8;
    __m256 m = ninf;
    for (long j = 0; j < L8; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(ph + j));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    float mx = _mm_cvtss_f32(m4);
    for (long j = L8; j < L; j++) mx = std::max(mx, ph[j]);
    if (mx == -INFINITY) {
      std::fill(ph, ph + L, 0.f);
      continue;
    }
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 sum = _mm256_setzero_ps();
    for (long j = 0; j < L8; j += 8) {
      const __m256 x = _mm256_loadu_ps(ph + j);
      const __m256 e = _mm256_andnot_ps(_mm256_cmp_ps(x, ninf, _CMP_EQ_OQ), exp256(_mm256_sub_ps(x, vmx)));
      _mm256_storeu_ps(ph + j, e);
      sum = _mm256_add_ps(sum, e);
    }
    double z = hsum256(sum);
    for (long j = L8; j < L; j++) {
      ph[j] = ph[j] == -INFINITY ? 0.f : std::exp(ph[j] - mx);
      z += ph[j];
    }
    const __m256 inv = _mm256_set1_ps(float(1.0 / z));
    for (long j = 0; j < L8; j += 8) _mm256_storeu_ps(ph + j, _mm256_mul_ps(_mm256_loadu_ps(ph + j), inv));
    for (long j = L8; j < L; j++) ph[j] *= float(1.0 / z);
  }
}

}  // namespace

const Kernels avx2_kernels = {unpack_avx2, dots_avx2, accum_avx2, softmax_avx2};

}  // namespace kvlab::qattn
