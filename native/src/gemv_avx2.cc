#include "gemv_avx2.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "vecmath.h"

namespace kvlab {
namespace {

#define AVX2 "avx2,fma,f16c"

// Prefetches the lines of the next pass whose offsets fall in [from, to): a pass of R rows is contiguous, so
// prefetching it linearly at the rate the current pass is consumed keeps one pass in flight.
inline void prefetch_span(const char* next, long from, long to, int level) {
  for (long o = (from + 63) & ~63L; o < to; o += 64) {
    if (level == 1) _mm_prefetch(next + o, _MM_HINT_T0);
    else _mm_prefetch(next + o, _MM_HINT_T1);
  }
}

template <int R, int N>
__attribute__((target(AVX2))) void rows_bf16_pairs(const Matmul& m, const float* xe, const float* xo, long r, int pf) {
  const long K2 = m.w.cols / 2, full = K2 - K2 % 8, rows = m.w.rows;
  const uint32_t* W = static_cast<const uint32_t*>(m.w.data);
  const char* next = reinterpret_cast<const char*>(W + (r + R) * K2);
  const __m256i hi = _mm256_set1_epi32(int(0xffff0000u));
  __m256 acc[R][N];
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm256_setzero_ps();
  for (long kk = 0; kk < full; kk += 8) {
    if (pf) prefetch_span(next, R * kk * 4, R * (kk + 8) * 4, pf);
    __m256 xev[N], xov[N];
    for (int t = 0; t < N; t++) {
      xev[t] = _mm256_loadu_ps(xe + t * K2 + kk);
      xov[t] = _mm256_loadu_ps(xo + t * K2 + kk);
    }
    for (int q = 0; q < R; q++) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(W + (r + q) * K2 + kk));
      const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
      for (int t = 0; t < N; t++) {
        acc[q][t] = _mm256_fmadd_ps(even, xev[t], acc[q][t]);
        acc[q][t] = _mm256_fmadd_ps(odd, xov[t], acc[q][t]);
      }
    }
  }
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) {
      float s = hsum256(acc[q][t]);
      for (long kk = full; kk < K2; kk++) {
        uint32_t p;
        std::memcpy(&p, W + (r + q) * K2 + kk, 4);
        s += bf16_to_f32(uint16_t(p & 0xffff)) * xe[t * K2 + kk] + bf16_to_f32(uint16_t(p >> 16)) * xo[t * K2 + kk];
      }
      m.out[t * rows + r + q] = s;
    }
}

template <WeightType TYPE>
__attribute__((target(AVX2))) inline __m256 load8(const void* data, long off) {
  if constexpr (TYPE == W_F32) return _mm256_loadu_ps(static_cast<const float*>(data) + off);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(data) + off));
  if constexpr (TYPE == W_F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <int R, int N, WeightType TYPE>
__attribute__((target(AVX2))) void rows_float(const Matmul& m, long r, int pf) {
  const long K = m.w.cols, K8 = K - K % 8, rows = m.w.rows, es = TYPE == W_F32 ? 4 : 2;
  const char* next = static_cast<const char*>(m.w.data) + (r + R) * K * es;
  __m256 acc[R][N];
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm256_setzero_ps();
  for (long k = 0; k < K8; k += 8) {
    if (pf) prefetch_span(next, R * k * es, R * (k + 8) * es, pf);
    __m256 xv[N];
    for (int t = 0; t < N; t++) xv[t] = _mm256_loadu_ps(m.x + t * K + k);
    for (int q = 0; q < R; q++) {
      const __m256 wv = load8<TYPE>(m.w.data, (r + q) * K + k);
      for (int t = 0; t < N; t++) acc[q][t] = _mm256_fmadd_ps(wv, xv[t], acc[q][t]);
    }
  }
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) {
      float s = hsum256(acc[q][t]);
      for (long k = K8; k < K; k++) s += weight_at(m.w, r + q, k) * m.x[t * K + k];
      m.out[t * rows + r + q] = s;
    }
}

// int8: each group's products summed in fp32 registers, then scaled once into the row's accumulator.
template <int R, int N>
__attribute__((target(AVX2))) void rows_int8(const Matmul& m, long r, int pf) {
  const long K = m.w.cols, G = m.w.group, ngroups = m.w.groups_per_row(), rows = m.w.rows;
  const int8_t* W = static_cast<const int8_t*>(m.w.data);
  const char* next = reinterpret_cast<const char*>(W + (r + R) * K);
  __m256 acc[R][N];
  float tail[R][N] = {};
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm256_setzero_ps();
  for (long g = 0; g < ngroups; g++) {
    const long k0 = g * G, k1 = std::min(K, k0 + G), k8 = k0 + (k1 - k0) / 8 * 8;
    __m256 ga[R][N];
    for (int q = 0; q < R; q++)
      for (int t = 0; t < N; t++) ga[q][t] = _mm256_setzero_ps();
    for (long k = k0; k < k8; k += 8) {
      if (pf) prefetch_span(next, R * k, R * (k + 8), pf);
      __m256 xv[N];
      for (int t = 0; t < N; t++) xv[t] = _mm256_loadu_ps(m.x + t * K + k);
      for (int q = 0; q < R; q++) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(W + (r + q) * K + k));
        const __m256 wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        for (int t = 0; t < N; t++) ga[q][t] = _mm256_fmadd_ps(wv, xv[t], ga[q][t]);
      }
    }
    for (int q = 0; q < R; q++) {
      const float sc = m.w.scales[(r + q) * ngroups + g];
      const __m256 s = _mm256_set1_ps(sc);
      for (int t = 0; t < N; t++) {
        acc[q][t] = _mm256_fmadd_ps(ga[q][t], s, acc[q][t]);
        for (long k = k8; k < k1; k++) tail[q][t] += float(W[(r + q) * K + k]) * sc * m.x[t * K + k];
      }
    }
  }
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) m.out[t * rows + r + q] = hsum256(acc[q][t]) + tail[q][t];
}

template <int R, int N>
void rows(const Matmul& m, const float* xe, const float* xo, long r, int pf) {
  switch (m.w.type) {
    case W_I8: return rows_int8<R, N>(m, r, pf);
    case W_F32: return rows_float<R, N, W_F32>(m, r, pf);
    case W_F16: return rows_float<R, N, W_F16>(m, r, pf);
    default: return xe ? rows_bf16_pairs<R, N>(m, xe, xo, r, pf) : rows_float<R, N, W_BF16>(m, r, pf);
  }
}

long element_size(int t) { return t == W_F32 ? 4 : t == W_I8 ? 1 : 2; }

template <int N>
void run(const Matmul& m, const float* xe, const float* xo, long r0, long r1, PrefetchPolicy pf) {
  constexpr int R = N <= 2 ? 4 : 2;
  const int level = pf.level && R * m.w.cols * element_size(m.w.type) <= pf.max_pass ? pf.level : 0;
  long r = r0;
  for (; r + R <= r1; r += R) rows<R, N>(m, xe, xo, r, level);
  for (; r < r1; r++) rows<1, N>(m, xe, xo, r, 0);
}

}  // namespace

bool gemv_avx2_uses_pairs(const WeightRef& w) { return w.type == W_BF16 && w.cols % 2 == 0; }

void split_even_odd(const float* x, long n, long K, float* xe, float* xo) {
  const long K2 = K / 2;
  for (long t = 0; t < n; t++)
    for (long k = 0; k < K2; k++) {
      xe[t * K2 + k] = x[t * K + 2 * k];
      xo[t * K2 + k] = x[t * K + 2 * k + 1];
    }
}

void gemv_avx2(const Matmul& m, const float* xe, const float* xo, long r0, long r1, PrefetchPolicy pf) {
  switch (m.n) {
    case 1: return run<1>(m, xe, xo, r0, r1, pf);
    case 2: return run<2>(m, xe, xo, r0, r1, pf);
    case 3: return run<3>(m, xe, xo, r0, r1, pf);
    default: return run<4>(m, xe, xo, r0, r1, pf);
  }
}

}  // namespace kvlab
