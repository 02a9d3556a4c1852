// AVX-512 pieces of the quantized attention (d a multiple of 16; value groups a multiple of 16 channels or the whole
// row): codes widened 16 channels per variable shift in registers and used there by up to 4 query heads, the same
// structure as the AVX2 pieces.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "attention_quant.h"
#include "vecmath.h"

namespace kvlab::qattn {
namespace {

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// Channels c..c+15 of a packed row, as floats.
template <int BITS>
AVX512 inline __m512 codes16(const uint8_t* row, int c) {
  if constexpr (BITS == 4) {
    uint32_t lo, hi;
    __builtin_memcpy(&lo, row + c / 2, 4);
    __builtin_memcpy(&hi, row + c / 2 + 4, 4);
    const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(int(lo))), _mm256_set1_epi32(int(hi)), 1);
    const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w, shifts), _mm512_set1_epi32(15)));
  } else {
    uint32_t w;
    __builtin_memcpy(&w, row + c / 4, 4);
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(w)), shifts), _mm512_set1_epi32(3)));
  }
}

AVX512 void fold_keys_avx512(const float* q, int nh, int d, const float* ks, const float* kz, float* qs, float* qz) {
  for (int h = 0; h < nh; h++) {
    __m512 z = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
      const __m512 qv = _mm512_loadu_ps(q + long(h) * d + c);
      _mm512_storeu_ps(qs + long(h) * d + c, _mm512_mul_ps(qv, _mm512_loadu_ps(ks + c)));
      z = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kz + c), z);
    }
    qz[h] = _mm512_reduce_add_ps(z);
  }
}

// Vectorized over (row, group) pairs, 16 / ng rows a vector, when ng divides 16; plain loops otherwise and for the
// rows left over.
AVX512 bool value_weights_avx512(const float* p, long pstride, int nh, const float* vs, const float* vz, int n, int ng, float* w, float* zacc) {
  const int rpv = 16 % ng == 0 ? 16 / ng : 0;
  const int nv = rpv ? n / rpv * rpv : 0;
  const __m512i dup = _mm512_setr_epi32(0, 1 / ng, 2 / ng, 3 / ng, 4 / ng, 5 / ng, 6 / ng, 7 / ng, 8 / ng, 9 / ng, 10 / ng, 11 / ng, 12 / ng, 13 / ng, 14 / ng, 15 / ng);
  bool live = false;
  for (int h = 0; h < nh; h++) {
    const float* ph = p + h * pstride;
    float* wh = w + long(h) * n * ng;
    __m512 z = _mm512_setzero_ps();
    for (int r = 0; r < nv; r += rpv) {
      const __m512 pv = _mm512_permutexvar_ps(dup, _mm512_maskz_loadu_ps(__mmask16((1u << rpv) - 1), ph + r));
      live |= _mm512_cmp_ps_mask(pv, _mm512_setzero_ps(), _CMP_NEQ_UQ) != 0;
      _mm512_storeu_ps(wh + long(r) * ng, _mm512_mul_ps(pv, _mm512_loadu_ps(vs + long(r) * ng)));
      z = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vz + long(r) * ng), z);
    }
    alignas(64) float zl[16];
    _mm512_store_ps(zl, z);
    if (rpv)
      for (int k = 0; k < 16; k++) zacc[h * ng + k % ng] += zl[k];
    for (int r = nv; r < n; r++) {
      const float pr = ph[r];
      live |= pr != 0.f;
      for (int cg = 0; cg < ng; cg++) {
        wh[r * ng + cg] = pr * vs[r * ng + cg];
        zacc[h * ng + cg] += pr * vz[r * ng + cg];
      }
    }
  }
  return live;
}

AVX512 inline __m256 halves(__m512 a) { return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)); }

// The lane sums of a0..a3, in order.
AVX512 inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(halves(a0), halves(a1)), _mm256_hadd_ps(halves(a2), halves(a3)));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// key_logits for HB <= 4 query heads: a row's codes widened 16 channels at a time, each used by all HB heads.
template <int BITS, int HB>
AVX512 void key_rows(const float* qs, const float* qz, const uint8_t* codes, int n, int d, float* out, long ostride) {
  const int rb = d * BITS / 8;
  for (int r = 0; r < n; r++) {
    const uint8_t* row = codes + long(r) * rb;
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int c = 0; c < d; c += 16) {
      const __m512 x = codes16<BITS>(row, c);
#pragma GCC unroll 4
      for (int h = 0; h < HB; h++) a[h] = _mm512_fmadd_ps(_mm512_loadu_ps(qs + long(h) * d + c), x, a[h]);
    }
    alignas(16) float sums[4];
    _mm_store_ps(sums, sum4(a[0], a[1], a[2], a[3]));
    for (int h = 0; h < HB; h++) out[h * ostride + r] = sums[h] + qz[h];
  }
}

template <int BITS>
AVX512 void key_logits_bits(const float* qs, const float* qz, int nh, const uint8_t* codes, int n, int d, float* out, long ostride) {
  for (int h0 = 0; h0 < nh; h0 += 4) {
    const float* q = qs + long(h0) * d;
    float* o = out + h0 * ostride;
    switch (std::min(4, nh - h0)) {
      case 4: key_rows<BITS, 4>(q, qz + h0, codes, n, d, o, ostride); break;
      case 3: key_rows<BITS, 3>(q, qz + h0, codes, n, d, o, ostride); break;
      case 2: key_rows<BITS, 2>(q, qz + h0, codes, n, d, o, ostride); break;
      default: key_rows<BITS, 1>(q, qz + h0, codes, n, d, o, ostride); break;
    }
  }
}

AVX512 void key_logits_avx512(const float* qs, const float* qz, int nh, const uint8_t* codes, int n, int d, int bits, float* out, long ostride) {
  if (bits == 4)
    key_logits_bits<4>(qs, qz, nh, codes, n, d, out, ostride);
  else
    key_logits_bits<2>(qs, qz, nh, codes, n, d, out, ostride);
}

// value_accum for HB <= 4 query heads over channels [c0, c0 + 16 * CH): HB * CH accumulators stay in registers over
// all n rows, and each row's codes are widened once for the HB heads.
template <int BITS, int HB, int CH>
AVX512 void value_cols(float* acc, const float* w, int ng, int group, const uint8_t* codes, int n, int d, int c0) {
  const int rb = d * BITS / 8;
  int g[CH];
  for (int k = 0; k < CH; k++) g[k] = (c0 + 16 * k) / group;
  __m512 a[HB][CH];
  for (int h = 0; h < HB; h++)
    for (int k = 0; k < CH; k++) a[h][k] = _mm512_loadu_ps(acc + long(h) * d + c0 + 16 * k);
  for (int r = 0; r < n; r++) {
    const uint8_t* row = codes + long(r) * rb;
    __m512 x[CH];
    for (int k = 0; k < CH; k++) x[k] = codes16<BITS>(row, c0 + 16 * k);
#pragma GCC unroll 4
    for (int h = 0; h < HB; h++) {
      const float* wr = w + (long(h) * n + r) * ng;
      for (int k = 0; k < CH; k++) a[h][k] = _mm512_fmadd_ps(_mm512_set1_ps(wr[g[k]]), x[k], a[h][k]);
    }
  }
  for (int h = 0; h < HB; h++)
    for (int k = 0; k < CH; k++) _mm512_storeu_ps(acc + long(h) * d + c0 + 16 * k, a[h][k]);
}

template <int BITS, int HB>
AVX512 void value_heads(float* acc, const float* w, int ng, int group, const uint8_t* codes, int n, int d) {
  int c0 = 0;
  for (; c0 + 32 <= d; c0 += 32) value_cols<BITS, HB, 2>(acc, w, ng, group, codes, n, d, c0);
  if (c0 < d) value_cols<BITS, HB, 1>(acc, w, ng, group, codes, n, d, c0);
}

template <int BITS>
AVX512 void value_accum_bits(float* acc, int nh, const float* w, int ng, int group, const uint8_t* codes, int n, int d) {
  for (int h0 = 0; h0 < nh; h0 += 4) {
    float* a = acc + long(h0) * d;
    const float* wh = w + long(h0) * n * ng;
    switch (std::min(4, nh - h0)) {
      case 4: value_heads<BITS, 4>(a, wh, ng, group, codes, n, d); break;
      case 3: value_heads<BITS, 3>(a, wh, ng, group, codes, n, d); break;
      case 2: value_heads<BITS, 2>(a, wh, ng, group, codes, n, d); break;
      default: value_heads<BITS, 1>(a, wh, ng, group, codes, n, d); break;
    }
  }
}

AVX512 void value_accum_avx512(float* acc, int nh, const float* w, int ng, int group, const uint8_t* codes, int n, int d, int bits) {
  if (bits == 4)
    value_accum_bits<4>(acc, nh, w, ng, group, codes, n, d);
  else
    value_accum_bits<2>(acc, nh, w, ng, group, codes, n, d);
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

AVX512 void accum_avx512(float* acc, int nh, const float* w, long wstride, const float* rows, int n, int d) {
  for (int h = 0; h < nh; h++) {
    const float* wh = w + h * wstride;
    for (int c = 0; c < d; c += 16) {
      __m512 a = _mm512_loadu_ps(acc + long(h) * d + c);
      for (int r = 0; r < n; r++) a = _mm512_fmadd_ps(_mm512_set1_ps(wh[r]), _mm512_loadu_ps(rows + long(r) * d + c), a);
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

const Kernels avx512_kernels = {fold_keys_avx512, key_logits_avx512, value_accum_avx512, value_weights_avx512, dots_avx512, accum_avx512, softmax_avx512};

}  // namespace kvlab::qattn
