#include "matmul.h"

#include <immintrin.h>

#include <cmath>
#include <algorithm>
#include <type_traits>
#include <cstring>
#include <cmath>
#include <vector>

#include "cpu.h"
#include "pool.h"

namespace kvlab {
namespace {

constexpr int GEMM_MIN_N = 8;
constexpr int NR = 32;  // output columns (weight rows) per panel
constexpr int MR = 8;   // activation rows per micro-tile

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, frac = h & 0x3ff, u;
  if (exp == 0) {
    float f = std::ldexp(float(frac), -24);
    return sign ? -f : f;
  }
  if (exp == 31) u = sign | 0x7f800000u | (frac << 13);
  else u = sign | ((exp + 112) << 23) | (frac << 13);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float weight_at(const Matmul& m, long r, long c) {
  long i = r * m.cols + c;
  switch (m.type) {
    case W_F32: return static_cast<const float*>(m.w)[i];
    case W_BF16: return bf16_to_f32(static_cast<const uint16_t*>(m.w)[i]);
    case W_F16: return f16_to_f32(static_cast<const uint16_t*>(m.w)[i]);
    default: return float(static_cast<const int8_t*>(m.w)[i]) * m.scales[r];
  }
}

// ---------- portable paths ----------

void gemv_scalar(const Matmul& m, long r0, long r1) {
  for (long r = r0; r < r1; r++)
    for (int t = 0; t < m.n; t++) {
      const float* x = m.x + long(t) * m.cols;
      float acc = 0;
      for (long c = 0; c < m.cols; c++) acc += x[c] * weight_at(m, r, c);
      m.out[long(t) * m.rows + r] = acc;
    }
}

// ---------- AVX2 + FMA: GEMV with 8-wide exact widening, GEMM on the packed fp32 panel ----------

__attribute__((target("avx2,fma,f16c")))
inline __m256 load_w8(const Matmul& m, long off) {
  switch (m.type) {
    case W_F32: return _mm256_loadu_ps(static_cast<const float*>(m.w) + off);
    case W_BF16: {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(m.w) + off));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case W_F16: return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(m.w) + off)));
    default: return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(m.w) + off))));
  }
}

__attribute__((target("avx2,fma")))
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma,f16c")))
void gemv_avx2(const Matmul& m, long r0, long r1) {
  const long K = m.cols, K8 = K - K % 8;
  for (long r = r0; r < r1; r++) {
    const float s = m.type == W_I8 ? m.scales[r] : 1.f;
    for (int t = 0; t < m.n; t++) {
      const float* x = m.x + long(t) * K;
      __m256 acc = _mm256_setzero_ps();
      for (long k = 0; k < K8; k += 8) acc = _mm256_fmadd_ps(load_w8(m, r * K + k), _mm256_loadu_ps(x + k), acc);
      float tail = 0;
      for (long k = K8; k < K; k++) tail += x[k] * weight_at(m, r, k);
      m.out[long(t) * m.rows + r] = (hsum256(acc) + (m.type == W_I8 ? tail / s : tail)) * s;
    }
  }
}

// ---------- AVX-512 GEMV: weights widened exactly in registers, fp32 accumulation ----------

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))
inline __m512 load_w16(const Matmul& m, long off, __mmask16 mask) {
  switch (m.type) {
    case W_F32: return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(m.w) + off);
    case W_BF16: {
      __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(m.w) + off);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case W_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(m.w) + off));
    default: {
      __m128i b = _mm_maskz_loadu_epi8(mask, static_cast<const int8_t*>(m.w) + off);
      return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    }
  }
}

template <int N>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))
void gemv_avx512_n(const Matmul& m, long r0, long r1) {
  const long K = m.cols;
  long r = r0;
  for (; r + 2 <= r1; r += 2) {
    __m512 acc0[N], acc1[N];
    for (int t = 0; t < N; t++) acc0[t] = acc1[t] = _mm512_setzero_ps();
    for (long k = 0; k < K; k += 16) {
      __mmask16 mask = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
      __m512 w0 = load_w16(m, r * K + k, mask);
      __m512 w1 = load_w16(m, (r + 1) * K + k, mask);
      for (int t = 0; t < N; t++) {
        __m512 xv = _mm512_maskz_loadu_ps(mask, m.x + t * K + k);
        acc0[t] = _mm512_fmadd_ps(w0, xv, acc0[t]);
        acc1[t] = _mm512_fmadd_ps(w1, xv, acc1[t]);
      }
    }
    float s0 = m.type == W_I8 ? m.scales[r] : 1.f, s1 = m.type == W_I8 ? m.scales[r + 1] : 1.f;
    for (int t = 0; t < N; t++) {
      m.out[t * long(m.rows) + r] = _mm512_reduce_add_ps(acc0[t]) * s0;
      m.out[t * long(m.rows) + r + 1] = _mm512_reduce_add_ps(acc1[t]) * s1;
    }
  }
  for (; r < r1; r++) {
    __m512 acc[N];
    for (int t = 0; t < N; t++) acc[t] = _mm512_setzero_ps();
    for (long k = 0; k < K; k += 16) {
      __mmask16 mask = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
      __m512 w0 = load_w16(m, r * K + k, mask);
      for (int t = 0; t < N; t++) acc[t] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mask, m.x + t * K + k), acc[t]);
    }
    float s = m.type == W_I8 ? m.scales[r] : 1.f;
    for (int t = 0; t < N; t++) m.out[t * long(m.rows) + r] = _mm512_reduce_add_ps(acc[t]) * s;
  }
}

// bf16 weights: 32 weights per 512-bit load; even elements widen by a shift, odd ones by a mask, and
// meet activations that were split into even and odd halves once per call. Exact (fp32 products).
template <int N, bool MASKED>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
inline void bf16_pairs_step(const uint16_t* W, long K, long r, long kk, __mmask16 mask, const float* xe, const float* xo, long K2,
                            __m512 (&acc)[4][N]) {
  const __m512i hi_mask = _mm512_set1_epi32(int(0xffff0000u));
  __m512 xev[N], xov[N];
  for (int t = 0; t < N; t++) {
    xev[t] = MASKED ? _mm512_maskz_loadu_ps(mask, xe + t * K2 + kk) : _mm512_loadu_ps(xe + t * K2 + kk);
    xov[t] = MASKED ? _mm512_maskz_loadu_ps(mask, xo + t * K2 + kk) : _mm512_loadu_ps(xo + t * K2 + kk);
  }
  for (int q = 0; q < 4; q++) {
    const uint16_t* src = W + (r + q) * K + 2 * kk;
    __m512i v = MASKED ? _mm512_maskz_loadu_epi32(mask, src) : _mm512_loadu_si512(src);
    __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));
    for (int t = 0; t < N; t++) {
      acc[q][t] = _mm512_fmadd_ps(even, xev[t], acc[q][t]);
      acc[q][t] = _mm512_fmadd_ps(odd, xov[t], acc[q][t]);
    }
  }
}

template <int N>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
void gemv_bf16_pairs(const Matmul& m, const float* xe, const float* xo, long r0, long r1) {
  const long K = m.cols, K2 = K / 2;  // K is even here
  const long full = K2 - K2 % 16;
  const uint16_t* W = static_cast<const uint16_t*>(m.w);
  long r = r0;
  for (; r + 4 <= r1; r += 4) {
    __m512 acc[4][N];
    for (int q = 0; q < 4; q++)
      for (int t = 0; t < N; t++) acc[q][t] = _mm512_setzero_ps();
    for (long kk = 0; kk < full; kk += 16) bf16_pairs_step<N, false>(W, K, r, kk, 0xffff, xe, xo, K2, acc);
    if (full < K2) bf16_pairs_step<N, true>(W, K, r, full, __mmask16((1u << (K2 - full)) - 1), xe, xo, K2, acc);
    for (int q = 0; q < 4; q++)
      for (int t = 0; t < N; t++) m.out[t * long(m.rows) + r + q] = _mm512_reduce_add_ps(acc[q][t]);
  }
  if (r < r1) gemv_avx512_n<N>(m, r, r1);
}

// int8 weights with VNNI: activations quantized per row of x to int8 (symmetric), shifted to u8 by +128;
// vpdpbusd sums 4 u8 x s8 products per lane; the shift is undone with the row sums of the weights.
template <int N>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
inline void i8_finish(const Matmul& m, const float* xs, long row, const __m512i* acc) {
  for (int t = 0; t < N; t++) {
    const long dot = long(_mm512_reduce_add_epi32(acc[t])) - 128L * m.row_sums[row];
    m.out[t * long(m.rows) + row] = float(dot) * xs[t] * m.scales[row];
  }
}

template <int N>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
void gemv_i8_vnni(const Matmul& m, const uint8_t* xu, const float* xs, long Kp, long r0, long r1) {
  const long K = m.cols;
  const int8_t* W = static_cast<const int8_t*>(m.w);
  long r = r0;
  for (; r + 4 <= r1; r += 4) {
    __m512i acc[4][N];
    for (int q = 0; q < 4; q++)
      for (int t = 0; t < N; t++) acc[q][t] = _mm512_setzero_si512();
    const long full = K - K % 64;
    for (long k = 0; k < K; k += 64) {
      const bool tail = k >= full;
      const __mmask64 mask = tail ? (__mmask64(1) << (K - k)) - 1 : ~__mmask64(0);
      __m512i xv[N];
      for (int t = 0; t < N; t++) xv[t] = _mm512_loadu_si512(xu + t * Kp + k);
      for (int q = 0; q < 4; q++) {
        const int8_t* src = W + (r + q) * K + k;
        const __m512i w = tail ? _mm512_maskz_loadu_epi8(mask, src) : _mm512_loadu_si512(src);
        for (int t = 0; t < N; t++) acc[q][t] = _mm512_dpbusd_epi32(acc[q][t], xv[t], w);
      }
    }
    for (int q = 0; q < 4; q++) i8_finish<N>(m, xs, r + q, acc[q]);
  }
  for (; r < r1; r++) {
    __m512i acc[N];
    for (int t = 0; t < N; t++) acc[t] = _mm512_setzero_si512();
    for (long k = 0; k < K; k += 64) {
      const __mmask64 mask = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
      const __m512i w = _mm512_maskz_loadu_epi8(mask, W + r * K + k);
      for (int t = 0; t < N; t++) acc[t] = _mm512_dpbusd_epi32(acc[t], _mm512_loadu_si512(xu + t * Kp + k), w);
    }
    i8_finish<N>(m, xs, r, acc);
  }
}

void gemv_avx512(const Matmul& m, long r0, long r1) {
  switch (m.n) {
    case 1: return gemv_avx512_n<1>(m, r0, r1);
    case 2: return gemv_avx512_n<2>(m, r0, r1);
    case 3: return gemv_avx512_n<3>(m, r0, r1);
    case 4: return gemv_avx512_n<4>(m, r0, r1);
    case 5: return gemv_avx512_n<5>(m, r0, r1);
    case 6: return gemv_avx512_n<6>(m, r0, r1);
    default: return gemv_avx512_n<7>(m, r0, r1);
  }
}

// ---------- AVX-512 fp32 GEMM: weight panel packed as [K][32] fp32, 8x32 register tile ----------

void pack_panel_f32_portable(const Matmul& m, long r0, float* panel) {
  for (int j = 0; j < NR; j++) {
    const long r = r0 + j;
    for (long k = 0; k < m.cols; k++) panel[k * NR + j] = r < m.rows ? weight_at(m, r, k) : 0.f;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))
void pack_panel_f32(const Matmul& m, long r0, float* panel) {
  const long K = m.cols;
  for (int j = 0; j < NR; j++) {
    long r = r0 + j;
    if (r >= m.rows) {
      for (long k = 0; k < K; k++) panel[k * NR + j] = 0;
      continue;
    }
    for (long k = 0; k < K; k++) panel[k * NR + j] = weight_at(m, r, k);
  }
}

// Writes an M x 32 tile of results, masking the columns past the weight's last row.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
inline void store_tile(const Matmul& m, const __m512 (&acc)[M][2], long i0, long r0) {
  const long left = m.rows - r0;
  const __mmask16 m0 = left >= 16 ? 0xffff : __mmask16((1u << left) - 1);
  const __mmask16 m1 = left >= 32 ? 0xffff : left <= 16 ? 0 : __mmask16((1u << (left - 16)) - 1);
  for (int i = 0; i < M; i++) {
    float* o = m.out + (i0 + i) * long(m.rows) + r0;
    _mm512_mask_storeu_ps(o, m0, acc[i][0]);
    _mm512_mask_storeu_ps(o + 16, m1, acc[i][1]);
  }
}

template <int M>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
void tile_f32(const Matmul& m, const float* panel, long i0, long r0) {
  const long K = m.cols;
  __m512 acc[M][2];
  for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  const float* x = m.x + i0 * K;
  for (long k = 0; k < K; k++) {
    __m512 b0 = _mm512_load_ps(panel + k * NR), b1 = _mm512_load_ps(panel + k * NR + 16);
    for (int i = 0; i < M; i++) {
      __m512 a = _mm512_set1_ps(x[i * K + k]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  store_tile<M>(m, acc, i0, r0);
}

template <int M>
__attribute__((target("avx2,fma")))
void tile_f32_avx2(const Matmul& m, const float* panel, long i0, long r0) {
  const long K = m.cols;
  __m256 acc[M][4];
  for (int i = 0; i < M; i++)
    for (int c = 0; c < 4; c++) acc[i][c] = _mm256_setzero_ps();
  const float* x = m.x + i0 * K;
  for (long k = 0; k < K; k++) {
    __m256 b[4];
    for (int c = 0; c < 4; c++) b[c] = _mm256_load_ps(panel + k * NR + 8 * c);
    for (int i = 0; i < M; i++) {
      __m256 a = _mm256_broadcast_ss(x + i * K + k);
      for (int c = 0; c < 4; c++) acc[i][c] = _mm256_fmadd_ps(a, b[c], acc[i][c]);
    }
  }
  alignas(32) float row[NR];
  for (int i = 0; i < M; i++) {
    for (int c = 0; c < 4; c++) _mm256_store_ps(row + 8 * c, acc[i][c]);
    const long cols = std::min<long>(NR, m.rows - r0);
    std::memcpy(m.out + (i0 + i) * long(m.rows) + r0, row, size_t(cols) * 4);
  }
}

// ---------- AVX512_BF16 GEMM: panel packed as [K/2][32] bf16 pairs, activations rounded to bf16 ----------

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
void pack_panel_bf16(const Matmul& m, long r0, uint32_t* panel, long K2) {
  for (int j = 0; j < NR; j++) {
    long r = r0 + j;
    for (long kk = 0; kk < K2; kk++) {
      uint32_t pair = 0;
      if (r < m.rows) {
        long k = 2 * kk;
        uint16_t lo, hi = 0;
        if (m.type == W_BF16) {
          const uint16_t* w = static_cast<const uint16_t*>(m.w) + r * m.cols;
          lo = w[k];
          if (k + 1 < m.cols) hi = w[k + 1];
        } else {
          float a = weight_at(m, r, k), b = k + 1 < m.cols ? weight_at(m, r, k + 1) : 0.f;
          __m128bh v = _mm_cvtneps_pbh(_mm_set_ps(0, 0, b, a));
          uint32_t bits = uint32_t(_mm_cvtsi128_si32((__m128i)v));
          lo = bits & 0xffff;
          hi = bits >> 16;
        }
        pair = uint32_t(lo) | (uint32_t(hi) << 16);
      }
      panel[kk * NR + j] = pair;
    }
  }
}

template <int M>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
void tile_bf16(const Matmul& m, const uint32_t* panel, const uint32_t* xb, long K2, long i0, long r0) {
  __m512 acc[M][2];
  for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  const uint32_t* x = xb + i0 * K2;
  for (long kk = 0; kk < K2; kk++) {
    __m512bh b0 = (__m512bh)_mm512_load_si512(panel + kk * NR), b1 = (__m512bh)_mm512_load_si512(panel + kk * NR + 16);
    for (int i = 0; i < M; i++) {
      __m512bh a = (__m512bh)_mm512_set1_epi32(int(x[i * K2 + kk]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
    }
  }
  store_tile<M>(m, acc, i0, r0);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
void activations_to_bf16(const Matmul& m, uint32_t* xb, long K2, long i0, long i1) {
  for (long i = i0; i < i1; i++) {
    const float* x = m.x + i * m.cols;
    uint32_t* dst = xb + i * K2;
    for (long kk = 0; kk < K2; kk++) {
      long k = 2 * kk;
      float a = x[k], b = k + 1 < m.cols ? x[k + 1] : 0.f;
      __m128bh v = _mm_cvtneps_pbh(_mm_set_ps(0, 0, b, a));
      dst[kk] = uint32_t(_mm_cvtsi128_si32((__m128i)v));
    }
  }
}

// Calls tile(i0, std::integral_constant<int, rows>) over the activation rows in blocks of MR (the last one shorter).
template <typename Tile>
void for_each_tile(const Matmul& m, Tile tile) {
  long i = 0;
  for (; i + MR <= m.n; i += MR) tile(i, std::integral_constant<int, MR>{});
  switch (int(m.n - i)) {
    case 7: return tile(i, std::integral_constant<int, 7>{});
    case 6: return tile(i, std::integral_constant<int, 6>{});
    case 5: return tile(i, std::integral_constant<int, 5>{});
    case 4: return tile(i, std::integral_constant<int, 4>{});
    case 3: return tile(i, std::integral_constant<int, 3>{});
    case 2: return tile(i, std::integral_constant<int, 2>{});
    case 1: return tile(i, std::integral_constant<int, 1>{});
    default: return;
  }
}

void gemm_f32_avx2(const Matmul& m) {
  const long panels = (m.rows + NR - 1) / NR;
  pool_run([&](int t, int T) {
    long p0, p1;
    split_range(panels, t, T, &p0, &p1);
    std::vector<float> buf(size_t(m.cols) * NR + 16);
    float* panel = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
    for (long p = p0; p < p1; p++) {
      pack_panel_f32_portable(m, p * NR, panel);
      long i = 0;
      for (; i + 3 <= m.n; i += 3) tile_f32_avx2<3>(m, panel, i, p * NR);
      for (; i < m.n; i++) tile_f32_avx2<1>(m, panel, i, p * NR);
    }
  });
}

void gemm_f32(const Matmul& m) {
  const long panels = (m.rows + NR - 1) / NR;
  pool_run([&](int t, int T) {
    long p0, p1;
    split_range(panels, t, T, &p0, &p1);
    std::vector<float, std::allocator<float>> buf(size_t(m.cols) * NR + 16);
    float* panel = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
    for (long p = p0; p < p1; p++) {
      pack_panel_f32(m, p * NR, panel);
      for_each_tile(m, [&](long i0, auto rows) { tile_f32<decltype(rows)::value>(m, panel, i0, p * NR); });
    }
  });
}

void gemm_bf16(const Matmul& m) {
  const long K2 = (m.cols + 1) / 2;
  std::vector<uint32_t> xraw(size_t(m.n) * K2);
  uint32_t* xb = xraw.data();
  pool_run([&](int t, int T) {
    long i0, i1;
    split_range(m.n, t, T, &i0, &i1);
    activations_to_bf16(m, xb, K2, i0, i1);
  });
  const long panels = (m.rows + NR - 1) / NR;
  pool_run([&](int t, int T) {
    long p0, p1;
    split_range(panels, t, T, &p0, &p1);
    std::vector<uint32_t> buf(size_t(K2) * NR + 16);
    uint32_t* panel = reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
    for (long p = p0; p < p1; p++) {
      pack_panel_bf16(m, p * NR, panel, K2);
      for_each_tile(m, [&](long i0, auto rows) { tile_bf16<decltype(rows)::value>(m, panel, xb, K2, i0, p * NR); });
    }
  });
}

}  // namespace

const char* matmul_path(int n, int type, bool bf16_activations) {
  const CpuFeatures& f = cpu();
  if (!f.avx512 && f.avx2_fma) return n < GEMM_MIN_N ? "avx2-gemv" : "avx2-f32-gemm";
  if (!f.avx512) return "scalar";
  if (n < GEMM_MIN_N) return type == W_I8 && f.avx512_vnni && n <= 4 ? "avx512vnni-int8-gemv" : "avx512-gemv";
  if (bf16_activations && f.avx512_bf16) return "avx512bf16-gemm";
  (void)type;
  return "avx512-f32-gemm";
}

void matmul(const Matmul& m, bool bf16_activations) {
  const CpuFeatures& f = cpu();
  if (!f.avx512 && f.avx2_fma) {
    if (m.n >= GEMM_MIN_N) return gemm_f32_avx2(m);
    pool_run([&](int t, int T) {
      long r0, r1;
      split_range(m.rows, t, T, &r0, &r1);
      gemv_avx2(m, r0, r1);
    });
    return;
  }
  if (!f.avx512) {
    pool_run([&](int t, int T) {
      long r0, r1;
      split_range(m.rows, t, T, &r0, &r1);
      gemv_scalar(m, r0, r1);
    });
    return;
  }
  if (m.n <= 4 && m.type == W_I8 && m.row_sums && f.avx512_vnni) {
    const long Kp = (m.cols + 63) / 64 * 64;
    std::vector<uint8_t> xu(size_t(m.n) * Kp, 0);
    std::vector<float> xs(m.n);
    for (int t = 0; t < m.n; t++) {
      const float* x = m.x + long(t) * m.cols;
      float mx = 0;
      for (long k = 0; k < m.cols; k++) mx = std::max(mx, std::fabs(x[k]));
      const float s = mx > 0 ? mx / 127.f : 1.f;
      xs[t] = s;
      for (long k = 0; k < m.cols; k++) xu[t * Kp + k] = uint8_t(int(std::lrint(x[k] / s)) + 128);
    }
    pool_run([&](int t, int T) {
      long r0, r1;
      split_range(m.rows, t, T, &r0, &r1);
      switch (m.n) {
        case 1: gemv_i8_vnni<1>(m, xu.data(), xs.data(), Kp, r0, r1); break;
        case 2: gemv_i8_vnni<2>(m, xu.data(), xs.data(), Kp, r0, r1); break;
        case 3: gemv_i8_vnni<3>(m, xu.data(), xs.data(), Kp, r0, r1); break;
        default: gemv_i8_vnni<4>(m, xu.data(), xs.data(), Kp, r0, r1); break;
      }
    });
    return;
  }
  if (m.n < GEMM_MIN_N && m.type == W_BF16 && m.cols % 2 == 0 && m.n <= 4) {
    const long K2 = m.cols / 2;
    std::vector<float> xs(size_t(2 * m.n * K2));
    float* xe = xs.data();
    float* xo = xs.data() + m.n * K2;
    for (int t = 0; t < m.n; t++)
      for (long k = 0; k < K2; k++) {
        xe[t * K2 + k] = m.x[t * m.cols + 2 * k];
        xo[t * K2 + k] = m.x[t * m.cols + 2 * k + 1];
      }
    pool_run([&](int t, int T) {
      long r0, r1;
      split_range(m.rows, t, T, &r0, &r1);
      switch (m.n) {
        case 1: gemv_bf16_pairs<1>(m, xe, xo, r0, r1); break;
        case 2: gemv_bf16_pairs<2>(m, xe, xo, r0, r1); break;
        case 3: gemv_bf16_pairs<3>(m, xe, xo, r0, r1); break;
        default: gemv_bf16_pairs<4>(m, xe, xo, r0, r1); break;
      }
    });
    return;
  }
  if (m.n < GEMM_MIN_N) {
    pool_run([&](int t, int T) {
      long r0, r1;
      split_range(m.rows, t, T, &r0, &r1);
      gemv_avx512(m, r0, r1);
    });
    return;
  }
  if (bf16_activations && f.avx512_bf16) gemm_bf16(m);
  else gemm_f32(m);
}

}  // namespace kvlab
