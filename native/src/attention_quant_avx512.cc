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

// int4 rows whose channels go 32 at a time (d a multiple of 32) are widened as two vectors per block: the even
// channels c, c + 2, ..., c + 30 (low nibbles) and the odd ones (high nibbles), one byte-to-lane widening for
// both; the folded queries are stored in that order, and value sums are interleaved back when stored.
inline bool split_keys(int d, int bits) { return bits == 4 && d % 32 == 0; }
inline bool split_values(int d, int group) { return d % 32 == 0 && (group % 32 == 0 || group >= d); }

AVX512 inline void codes32_split(const uint8_t* row, int c, __m512& even, __m512& odd) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2)));
  even = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  odd = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
}

AVX512 void fold_keys_avx512(const float* q, int nh, int d, int bits, const float* ks, const float* kz, float* qs, float* qz) {
  const bool split = split_keys(d, bits);
  const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int h = 0; h < nh; h++) {
    const float* qh = q + long(h) * d;
    float* out = qs + long(h) * d;
    __m512 z = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
      const __m512 qv = _mm512_loadu_ps(qh + c);
      _mm512_storeu_ps(out + c, _mm512_mul_ps(qv, _mm512_loadu_ps(ks + c)));
      z = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kz + c), z);
    }
    qz[h] = _mm512_reduce_add_ps(z);
    if (split)
      for (int c = 0; c < d; c += 32) {
        const __m512 s0 = _mm512_loadu_ps(out + c), s1 = _mm512_loadu_ps(out + c + 16);
        _mm512_storeu_ps(out + c, _mm512_permutex2var_ps(s0, even_idx, s1));
        _mm512_storeu_ps(out + c + 16, _mm512_permutex2var_ps(s0, odd_idx, s1));
      }
  }
}

AVX512 inline __m256 halves(__m512 a) { return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)); }

// The lane sums of a0..a3, in order.
AVX512 inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(halves(a0), halves(a1)), _mm256_hadd_ps(halves(a2), halves(a3)));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// The 8 lane sums of a[0..7], in order.
AVX512 inline __m256 reduce8(const __m512* a) {
  const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(halves(a[0]), halves(a[1])), _mm256_hadd_ps(halves(a[2]), halves(a[3])));
  const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(halves(a[4]), halves(a[5])), _mm256_hadd_ps(halves(a[6]), halves(a[7])));
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

// The 8 rows x 4 heads of lg (row-major) as 4 vectors of 8 rows, one per head.
AVX512 inline void transpose8x4(const float* lg, __m256* h) {
  const __m256 v0 = _mm256_load_ps(lg), v1 = _mm256_load_ps(lg + 8), v2 = _mm256_load_ps(lg + 16), v3 = _mm256_load_ps(lg + 24);
  const __m256 t0 = _mm256_unpacklo_ps(v0, v1), t1 = _mm256_unpackhi_ps(v0, v1), t2 = _mm256_unpacklo_ps(v2, v3), t3 = _mm256_unpackhi_ps(v2, v3);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  h[0] = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(t0, t2, 0x44), order);
  h[1] = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(t0, t2, 0xEE), order);
  h[2] = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(t1, t3, 0x44), order);
  h[3] = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(t1, t3, 0xEE), order);
}

// key_logits for HB <= 4 query heads: two rows at a time, each row's codes widened 16 channels at a time and used
// by all HB heads; the 8 sums of a row pair reduced together, 8 rows' logits transposed into the heads' rows.
template <int BITS, int HB, bool SPLIT>
AVX512 void key_rows(const float* qs, const float* qz, const uint8_t* codes, int n, int d, float* out, long ostride) {
  const int rb = d * BITS / 8;
  alignas(32) float zq[8] = {}, lg[32];
  for (int h = 0; h < HB; h++) zq[h] = zq[4 + h] = qz[h];
  const __m256 z2 = _mm256_load_ps(zq);
  int r = 0;
  for (; r + 8 <= n; r += 8) {
    for (int k = 0; k < 8; k += 2) {
      const uint8_t* row0 = codes + long(r + k) * rb;
      const uint8_t* row1 = row0 + rb;
      __m512 a[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; j++) a[j] = _mm512_setzero_ps();
      if (SPLIT)
        for (int c = 0; c < d; c += 32) {
          __m512 e0, o0, e1, o1;
          codes32_split(row0, c, e0, o0);
          codes32_split(row1, c, e1, o1);
#pragma GCC unroll 4
          for (int h = 0; h < HB; h++) {
            const __m512 qe = _mm512_loadu_ps(qs + long(h) * d + c), qo = _mm512_loadu_ps(qs + long(h) * d + c + 16);
            a[h] = _mm512_fmadd_ps(qo, o0, _mm512_fmadd_ps(qe, e0, a[h]));
            a[4 + h] = _mm512_fmadd_ps(qo, o1, _mm512_fmadd_ps(qe, e1, a[4 + h]));
          }
        }
      else
        for (int c = 0; c < d; c += 16) {
          const __m512 x0 = codes16<BITS>(row0, c), x1 = codes16<BITS>(row1, c);
#pragma GCC unroll 4
          for (int h = 0; h < HB; h++) {
            const __m512 qv = _mm512_loadu_ps(qs + long(h) * d + c);
            a[h] = _mm512_fmadd_ps(qv, x0, a[h]);
            a[4 + h] = _mm512_fmadd_ps(qv, x1, a[4 + h]);
          }
        }
      _mm256_store_ps(lg + 4 * k, _mm256_add_ps(reduce8(a), z2));
    }
    __m256 hv[4];
    transpose8x4(lg, hv);
#pragma GCC unroll 4
    for (int h = 0; h < HB; h++) _mm256_storeu_ps(out + h * ostride + r, hv[h]);
  }
  for (; r < n; r++) {
    const uint8_t* row = codes + long(r) * rb;
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    if (SPLIT)
      for (int c = 0; c < d; c += 32) {
        __m512 e, o;
        codes32_split(row, c, e, o);
#pragma GCC unroll 4
        for (int h = 0; h < HB; h++)
          a[h] = _mm512_fmadd_ps(_mm512_loadu_ps(qs + long(h) * d + c + 16), o, _mm512_fmadd_ps(_mm512_loadu_ps(qs + long(h) * d + c), e, a[h]));
      }
    else
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

template <int BITS, bool SPLIT>
AVX512 void key_logits_bits(const float* qs, const float* qz, int nh, const uint8_t* codes, int n, int d, float* out, long ostride) {
  for (int h0 = 0; h0 < nh; h0 += 4) {
    const float* q = qs + long(h0) * d;
    float* o = out + h0 * ostride;
    switch (std::min(4, nh - h0)) {
      case 4: key_rows<BITS, 4, SPLIT>(q, qz + h0, codes, n, d, o, ostride); break;
      case 3: key_rows<BITS, 3, SPLIT>(q, qz + h0, codes, n, d, o, ostride); break;
      case 2: key_rows<BITS, 2, SPLIT>(q, qz + h0, codes, n, d, o, ostride); break;
      default: key_rows<BITS, 1, SPLIT>(q, qz + h0, codes, n, d, o, ostride); break;
    }
  }
}

AVX512 void key_logits_avx512(const float* qs, const float* qz, int nh, const uint8_t* codes, int n, int d, int bits, float* out, long ostride) {
  if (split_keys(d, bits))
    key_logits_bits<4, true>(qs, qz, nh, codes, n, d, out, ostride);
  else if (bits == 4)
    key_logits_bits<4, false>(qs, qz, nh, codes, n, d, out, ostride);
  else
    key_logits_bits<2, false>(qs, qz, nh, codes, n, d, out, ostride);
}

// value_accum for HB <= 4 query heads over channels [c0, c0 + 16 * CH): HB * CH accumulators stay in registers over
// all n rows; each row's codes are widened and dequantized once for the HB heads.
template <int BITS, int HB, int CH>
AVX512 void value_cols(float* acc, const float* p, long pstride, const float* vs, const float* vz, int ng, int group, const uint8_t* codes, int n, int d,
                       int c0) {
  const int rb = d * BITS / 8;
  int g[CH];
#pragma GCC unroll 4
  for (int k = 0; k < CH; k++) g[k] = (c0 + 16 * k) / group;
  __m512 a[HB][CH];
#pragma GCC unroll 4
  for (int h = 0; h < HB; h++)
#pragma GCC unroll 4
    for (int k = 0; k < CH; k++) a[h][k] = _mm512_loadu_ps(acc + long(h) * d + c0 + 16 * k);
  for (int r = 0; r < n; r++) {
    const uint8_t* row = codes + long(r) * rb;
    __m512 x[CH];
#pragma GCC unroll 4
    for (int k = 0; k < CH; k++) x[k] = _mm512_fmadd_ps(codes16<BITS>(row, c0 + 16 * k), _mm512_set1_ps(vs[long(r) * ng + g[k]]), _mm512_set1_ps(vz[long(r) * ng + g[k]]));
#pragma GCC unroll 4
    for (int h = 0; h < HB; h++) {
      const __m512 pv = _mm512_set1_ps(p[h * pstride + r]);
#pragma GCC unroll 4
      for (int k = 0; k < CH; k++) a[h][k] = _mm512_fmadd_ps(pv, x[k], a[h][k]);
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < HB; h++)
#pragma GCC unroll 4
    for (int k = 0; k < CH; k++) _mm512_storeu_ps(acc + long(h) * d + c0 + 16 * k, a[h][k]);
}

// value_cols over the 32 int4 channels [c0, c0 + 32) of one group, widened as even and odd channels; the sums are
// interleaved back into channel order when added to acc.
template <int HB>
AVX512 void value_cols_split(float* acc, const float* p, long pstride, const float* vs, const float* vz, int ng, int group, const uint8_t* codes, int n,
                             int d, int c0) {
  const int rb = d / 2, g = c0 / group;
  __m512 e[HB], o[HB];
#pragma GCC unroll 4
  for (int h = 0; h < HB; h++) e[h] = o[h] = _mm512_setzero_ps();
  for (int r = 0; r < n; r++) {
    __m512 xe, xo;
    codes32_split(codes + long(r) * rb, c0, xe, xo);
    const __m512 sv = _mm512_set1_ps(vs[long(r) * ng + g]), zv = _mm512_set1_ps(vz[long(r) * ng + g]);
    xe = _mm512_fmadd_ps(xe, sv, zv);
    xo = _mm512_fmadd_ps(xo, sv, zv);
#pragma GCC unroll 4
    for (int h = 0; h < HB; h++) {
      const __m512 pv = _mm512_set1_ps(p[h * pstride + r]);
      e[h] = _mm512_fmadd_ps(pv, xe, e[h]);
      o[h] = _mm512_fmadd_ps(pv, xo, o[h]);
    }
  }
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
#pragma GCC unroll 4
  for (int h = 0; h < HB; h++) {
    float* a = acc + long(h) * d + c0;
    _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_permutex2var_ps(e[h], lo_idx, o[h])));
    _mm512_storeu_ps(a + 16, _mm512_add_ps(_mm512_loadu_ps(a + 16), _mm512_permutex2var_ps(e[h], hi_idx, o[h])));
  }
}

template <int BITS, int HB>
AVX512 void value_heads(float* acc, const float* p, long pstride, const float* vs, const float* vz, int ng, int group, const uint8_t* codes, int n, int d) {
  if (BITS == 4 && split_values(d, group)) {
    for (int c0 = 0; c0 < d; c0 += 32) value_cols_split<HB>(acc, p, pstride, vs, vz, ng, group, codes, n, d, c0);
    return;
  }
  int c0 = 0;
  for (; c0 + 32 <= d; c0 += 32) value_cols<BITS, HB, 2>(acc, p, pstride, vs, vz, ng, group, codes, n, d, c0);
  if (c0 < d) value_cols<BITS, HB, 1>(acc, p, pstride, vs, vz, ng, group, codes, n, d, c0);
}

// Whether any p[h * pstride + r], h < nh, r < n, is nonzero.
AVX512 bool any_nonzero(const float* p, long pstride, int nh, int n) {
  const int n16 = n / 16 * 16;
  __mmask16 live = 0;
  for (int h = 0; h < nh; h++) {
    const float* ph = p + h * pstride;
    for (int r = 0; r < n16; r += 16) live |= _mm512_cmp_ps_mask(_mm512_loadu_ps(ph + r), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    for (int r = n16; r < n; r++)
      if (ph[r] != 0.f) return true;
  }
  return live != 0;
}

template <int BITS>
AVX512 void value_accum_bits(float* acc, int nh, const float* p, long pstride, const float* vs, const float* vz, int ng, int group, const uint8_t* codes,
                             int n, int d) {
  if (!any_nonzero(p, pstride, nh, n)) return;
  for (int h0 = 0; h0 < nh; h0 += 4) {
    float* a = acc + long(h0) * d;
    const float* ph = p + h0 * pstride;
    switch (std::min(4, nh - h0)) {
      case 4: value_heads<BITS, 4>(a, ph, pstride, vs, vz, ng, group, codes, n, d); break;
      case 3: value_heads<BITS, 3>(a, ph, pstride, vs, vz, ng, group, codes, n, d); break;
      case 2: value_heads<BITS, 2>(a, ph, pstride, vs, vz, ng, group, codes, n, d); break;
      default: value_heads<BITS, 1>(a, ph, pstride, vs, vz, ng, group, codes, n, d); break;
    }
  }
}

AVX512 void value_accum_avx512(float* acc, int nh, const float* p, long pstride, const float* vs, const float* vz, int ng, int group, const uint8_t* codes,
                               int n, int d, int bits) {
  if (bits == 4)
    value_accum_bits<4>(acc, nh, p, pstride, vs, vz, ng, group, codes, n, d);
  else
    value_accum_bits<2>(acc, nh, p, pstride, vs, vz, ng, group, codes, n, d);
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

const Kernels avx512_kernels = {fold_keys_avx512, key_logits_avx512, value_accum_avx512, dots_avx512, accum_avx512, softmax_avx512};

}  // namespace kvlab::qattn
