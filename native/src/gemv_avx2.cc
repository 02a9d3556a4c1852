#include "gemv.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "vecmath.h"

namespace kvlab {
namespace {

#define AVX2 "avx2,fma,f16c"

using gemv::PassPrefetch;
using gemv::prefetch_line;

template <int R, int N>
__attribute__((target(AVX2))) void rows_bf16_pairs(const Matmul& m, const float* xe, const float* xo, const long* rr, const PassPrefetch& pf) {
  const long K2 = m.w.cols / 2, full = K2 - K2 % 8, rows = m.w.rows;
  const char* bytes[R];
  const uint32_t* row[R];
  for (int q = 0; q < R; q++) {
    bytes[q] = static_cast<const char*>(m.w.data) + rr[q] * K2 * 4;
    row[q] = reinterpret_cast<const uint32_t*>(bytes[q]);
  }
  const __m256i hi = _mm256_set1_epi32(int(0xffff0000u));
  __m256 acc[R][N];
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm256_setzero_ps();
  auto step = [&](long kk) __attribute__((always_inline, target(AVX2))) {
    __m256 xev[N], xov[N];
    for (int t = 0; t < N; t++) {
      xev[t] = _mm256_loadu_ps(xe + t * K2 + kk);
      xov[t] = _mm256_loadu_ps(xo + t * K2 + kk);
    }
    for (int q = 0; q < R; q++) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[q] + kk));
      const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
      for (int t = 0; t < N; t++) {
        acc[q][t] = _mm256_fmadd_ps(even, xev[t], acc[q][t]);
        acc[q][t] = _mm256_fmadd_ps(odd, xov[t], acc[q][t]);
      }
    }
  };
  long kk = 0;
  for (; kk + 16 <= full; kk += 16) {
    prefetch_line<R>(pf, bytes, kk * 4);
    step(kk);
    step(kk + 8);
  }
  for (; kk < full; kk += 8) step(kk);
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) {
      float s = hsum256(acc[q][t]);
      for (long kk = full; kk < K2; kk++) {
        uint32_t p;
        std::memcpy(&p, row[q] + kk, 4);
        s += bf16_to_f32(uint16_t(p & 0xffff)) * xe[t * K2 + kk] + bf16_to_f32(uint16_t(p >> 16)) * xo[t * K2 + kk];
      }
      m.out[t * rows + rr[q]] = s;
    }
}

template <WeightType TYPE>
__attribute__((target(AVX2))) inline __m256 load8(const void* data, long off) {
  if constexpr (TYPE == W_F32) return _mm256_loadu_ps(static_cast<const float*>(data) + off);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(data) + off));
  if constexpr (TYPE == W_F16) return _mm256_cvtph_ps(h);
  return bf16x8_to_f32(h);
}

template <int R, int N, WeightType TYPE>
__attribute__((target(AVX2))) void rows_float(const Matmul& m, const long* rr, const PassPrefetch& pf) {
  constexpr long es = TYPE == W_F32 ? 4 : 2;
  const long K = m.w.cols, K8 = K - K % 8, rows = m.w.rows;
  const char* row[R];
  for (int q = 0; q < R; q++) row[q] = static_cast<const char*>(m.w.data) + rr[q] * K * es;
  __m256 acc[R][N];
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm256_setzero_ps();
  auto step = [&](long k) __attribute__((always_inline, target(AVX2))) {
    __m256 xv[N];
    for (int t = 0; t < N; t++) xv[t] = _mm256_loadu_ps(m.x + t * K + k);
    for (int q = 0; q < R; q++) {
      const __m256 wv = load8<TYPE>(m.w.data, rr[q] * K + k);
      for (int t = 0; t < N; t++) acc[q][t] = _mm256_fmadd_ps(wv, xv[t], acc[q][t]);
    }
  };
  constexpr long LINE = 64 / es;  // elements per 64 bytes
  long k = 0;
  for (; k + LINE <= K8; k += LINE) {
    prefetch_line<R>(pf, row, k * es);
    #pragma GCC unroll 4
    for (long u = 0; u < LINE; u += 8) step(k + u);
  }
  for (; k < K8; k += 8) step(k);
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) {
      float s = hsum256(acc[q][t]);
      for (long k = K8; k < K; k++) s += weight_at(m.w, rr[q], k) * m.x[t * K + k];
      m.out[t * rows + rr[q]] = s;
    }
}

// int8: each group's products summed in fp32 registers, then scaled once into the row's accumulator. CLEAN:
// every group is a whole number of 8-column steps, so there is no scalar tail to keep.
template <int R, int N, bool CLEAN>
__attribute__((target(AVX2))) void rows_int8(const Matmul& m, const long* rr, const PassPrefetch& pf) {
  const long K = m.w.cols, G = m.w.group, ngroups = m.w.groups_per_row(), rows = m.w.rows;
  const int8_t* W = static_cast<const int8_t*>(m.w.data);
  const float* x = m.x;
  const float* scales = m.w.scales;
  const char* row[R];
  const float* srow[R];
  for (int q = 0; q < R; q++) {
    row[q] = reinterpret_cast<const char*>(W + rr[q] * K);
    srow[q] = scales + rr[q] * ngroups;
  }
  __m256 acc[R][N];
  float tail[R][N] = {};
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm256_setzero_ps();
  for (long g = 0; g < ngroups; g++) {
    const long k0 = g * G, k1 = CLEAN ? k0 + G : std::min(K, k0 + G), k8 = CLEAN ? k1 : k0 + (k1 - k0) / 8 * 8;
    __m256 ga[R][N];
    for (int q = 0; q < R; q++)
      for (int t = 0; t < N; t++) ga[q][t] = _mm256_setzero_ps();
    auto step = [&](long k) __attribute__((always_inline, target(AVX2))) {
      __m256 xv[N];
      for (int t = 0; t < N; t++) xv[t] = _mm256_loadu_ps(x + t * K + k);
      for (int q = 0; q < R; q++) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row[q] + k));
        const __m256 wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        for (int t = 0; t < N; t++) ga[q][t] = _mm256_fmadd_ps(wv, xv[t], ga[q][t]);
      }
    };
    long k = k0;
    for (; k + 64 <= k8; k += 64) {
      prefetch_line<R>(pf, row, k);
      #pragma GCC unroll 8
      for (long u = 0; u < 64; u += 8) step(k + u);
    }
    for (; k < k8; k += 8) step(k);
    for (int q = 0; q < R; q++) {
      const float sc = srow[q][g];
      const __m256 s = _mm256_set1_ps(sc);
      for (int t = 0; t < N; t++) {
        acc[q][t] = _mm256_fmadd_ps(ga[q][t], s, acc[q][t]);
        if constexpr (!CLEAN)
          for (long k = k8; k < k1; k++) tail[q][t] += float(int8_t(row[q][k])) * sc * x[t * K + k];
      }
    }
  }
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) m.out[t * rows + rr[q]] = hsum256(acc[q][t]) + tail[q][t];
}

// The activations split into even and odd columns, or null (then m.x alone).
struct SplitActivations {
  const float* xe;
  const float* xo;
};

struct Avx2Rows {
  template <int R, int N>
  static void rows(const Matmul& m, const SplitActivations& x, const long* rr, const PassPrefetch& pf) {
    switch (m.w.type) {
      case W_I8:
        if (m.w.cols % m.w.group == 0 && m.w.group % 8 == 0) return rows_int8<R, N, true>(m, rr, pf);
        return rows_int8<R, N, false>(m, rr, pf);
      case W_F32: return rows_float<R, N, W_F32>(m, rr, pf);
      case W_F16: return rows_float<R, N, W_F16>(m, rr, pf);
      default: return x.xe ? rows_bf16_pairs<R, N>(m, x.xe, x.xo, rr, pf) : rows_float<R, N, W_BF16>(m, rr, pf);
    }
  }
};

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
  if (m.n <= 4) return gemv::walk<Avx2Rows>(m, SplitActivations{xe, xo}, r0, r1, pf);
  const long K = m.w.cols, K2 = K / 2;
  gemv::walk_wide<Avx2Rows>(
      m,
      [&](long t0) {
        Matmul s = m;
        s.x = m.x + t0 * K;
        s.out = m.out + t0 * m.w.rows;
        return gemv::Block<SplitActivations>{s, SplitActivations{xe ? xe + t0 * K2 : nullptr, xo ? xo + t0 * K2 : nullptr}};
      },
      r0, r1, pf);
}

}  // namespace kvlab
