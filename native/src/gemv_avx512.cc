// AVX-512 decode GEMVs: weights widened exactly in registers (fp32 products, fp32 sums), 16 lanes, tails by
// masks. The row walk and its prefetch are gemv_walk.h's. 16-bit weights are read 16 at a time (256-bit loads)
// and widened (from DRAM this streams faster than reading bf16 32 at a time as even/odd halves of one 512-bit
// load, as the AVX2 kernel does).
// GCC 12 warns that _mm512_reduce_add_ps reads an uninitialized value (its extract intrinsics); a false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "gemv.h"
#include "vecmath.h"

namespace kvlab {
namespace {

#define AVX512 "avx512f,avx512bw,avx512vl,avx512dq,f16c"

using gemv::PassPrefetch;
using gemv::prefetch_line;

inline __mmask16 mask16(long len) { return len >= 16 ? __mmask16(0xffff) : __mmask16((1u << len) - 1); }

template <WeightType TYPE>
__attribute__((target(AVX512))) inline __m512 load16(const char* row, long k, __mmask16 mask) {
  if constexpr (TYPE == W_F32) return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(row) + k);
  const __m256i h = _mm256_maskz_loadu_epi16(mask, reinterpret_cast<const uint16_t*>(row) + k);
  if constexpr (TYPE == W_F16) return _mm512_cvtph_ps(h);
  return bf16x16_to_f32(h);
}

template <int R, int N, WeightType TYPE>
__attribute__((target(AVX512))) void rows_float(const Matmul& m, const long* rr, const PassPrefetch& pf) {
  constexpr long es = TYPE == W_F32 ? 4 : 2;
  constexpr long LINE = 64 / es;  // elements per 64 bytes
  const long K = m.w.cols, rows = m.w.rows, full = K - K % LINE;
  const char* row[R];
  for (int q = 0; q < R; q++) row[q] = static_cast<const char*>(m.w.data) + rr[q] * K * es;
  __m512 acc[R][N];
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm512_setzero_ps();
  auto step = [&](long k, __mmask16 mask) __attribute__((always_inline, target(AVX512))) {
    __m512 xv[N];
    for (int t = 0; t < N; t++) xv[t] = _mm512_maskz_loadu_ps(mask, m.x + t * K + k);
    for (int q = 0; q < R; q++) {
      const __m512 wv = load16<TYPE>(row[q], k, mask);
      for (int t = 0; t < N; t++) acc[q][t] = _mm512_fmadd_ps(wv, xv[t], acc[q][t]);
    }
  };
  long k = 0;
  for (; k < full; k += LINE) {
    prefetch_line<R>(pf, row, k * es);
    #pragma GCC unroll 2
    for (long u = 0; u < LINE; u += 16) step(k + u, 0xffff);
  }
  for (; k < K; k += 16) step(k, mask16(K - k));
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) m.out[t * rows + rr[q]] = _mm512_reduce_add_ps(acc[q][t]);
}

// int8: each group's products summed in fp32 registers, then scaled once into the row's accumulator. The rows
// of a pass are evenly spaced (both walks make them so): one row pointer and one stride, unmasked loads but for
// a group's last partial step.
template <int R, int N>
__attribute__((target(AVX512))) void rows_int8(const Matmul& m, const long* rr, const PassPrefetch& pf) {
  const long K = m.w.cols, G = m.w.group, ngroups = m.w.groups_per_row(), rows = m.w.rows;
  const float* x = m.x;
  const long spacing = R > 1 ? rr[1] - rr[0] : 0, stride = spacing * K, sstride = spacing * ngroups;
  const int8_t* w0 = static_cast<const int8_t*>(m.w.data) + rr[0] * K;
  const float* s0 = m.w.scales + rr[0] * ngroups;
  const char* row[R];
  for (int q = 0; q < R; q++) row[q] = reinterpret_cast<const char*>(w0 + q * stride);
  __m512 acc[R][N];
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm512_setzero_ps();
  for (long g = 0; g < ngroups; g++) {
    const long k0 = g * G, k1 = std::min(K, k0 + G);
    __m512 ga[R][N];
    for (int q = 0; q < R; q++)
      for (int t = 0; t < N; t++) ga[q][t] = _mm512_setzero_ps();
    auto step = [&](long k, bool masked) __attribute__((always_inline, target(AVX512))) {
      const __mmask16 mask = masked ? mask16(k1 - k) : __mmask16(0xffff);
      __m512 xv[N];
      for (int t = 0; t < N; t++) xv[t] = masked ? _mm512_maskz_loadu_ps(mask, x + t * K + k) : _mm512_loadu_ps(x + t * K + k);
      #pragma GCC unroll 8
      for (int q = 0; q < R; q++) {
        const int8_t* src = w0 + q * stride + k;
        const __m128i b = masked ? _mm_maskz_loadu_epi8(mask, src) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
        for (int t = 0; t < N; t++) ga[q][t] = _mm512_fmadd_ps(wv, xv[t], ga[q][t]);
      }
    };
    long k = k0;
    for (; k + 64 <= k1; k += 64) {
      prefetch_line<R>(pf, row, k);
      #pragma GCC unroll 4
      for (long u = 0; u < 64; u += 16) step(k + u, false);
    }
    if (k < k1) prefetch_line<R>(pf, row, k);
    for (; k + 16 <= k1; k += 16) step(k, false);
    if (k < k1) step(k, true);
    for (int q = 0; q < R; q++) {
      const __m512 s = _mm512_set1_ps(s0[q * sstride + g]);
      for (int t = 0; t < N; t++) acc[q][t] = _mm512_fmadd_ps(ga[q][t], s, acc[q][t]);
    }
  }
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) m.out[t * rows + rr[q]] = _mm512_reduce_add_ps(acc[q][t]);
}

// int8 on VNNI: per 64 columns one xor (weights to u8) and one vpdpbusd per activation row; each activation
// block's int32 lane sums are scaled once into the row's fp32 accumulator, by the block's activation step times
// the weight group's scale (grouped weights: blocks are the groups) or, per-row scales, times the row's scale
// at the end. The rows are addressed from one pointer that advances block by block.
// - LB > 0: blocks of exactly LB whole 64-column lines (K a multiple of the block), unrolled; LB == 0: any
//   block, its last partial line masked.
// - Every row prefetches its weights pf.ahead bytes along its range into L1, and grouped scales SCALE_AHEAD
//   bytes ahead, a line per 16 blocks.
// A whole line is read as two 256-bit loads (from DRAM, at three ranges per thread, faster than one 512-bit load).
__attribute__((target(AVX512), always_inline)) inline __m512i load_line_halves(const int8_t* p) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)), 1);
}

template <int R, int N, bool MASKED>
__attribute__((target(AVX512 ",avx512vnni"), always_inline)) inline void vnni_line(__m512i (&ia)[R][N], const int8_t* w, long stride, const int8_t* xq, long xstride, __m512i flip, __mmask64 mask) {
  __m512i xv[N];
  for (int t = 0; t < N; t++) xv[t] = _mm512_loadu_si512(xq + t * xstride);
  #pragma GCC unroll 8
  for (int q = 0; q < R; q++) {
    // Masked-off weights become 0 (not 0 ^ 0x80), so they add nothing whatever the activations hold there.
    const __m512i wv = MASKED ? _mm512_maskz_mov_epi8(mask, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + q * stride), flip))
                              : _mm512_xor_si512(load_line_halves(w + q * stride), flip);
    for (int t = 0; t < N; t++) ia[q][t] = _mm512_dpbusd_epi32(ia[q][t], wv, xv[t]);
  }
}

// Each row's group scales, a line at a time, this many bytes ahead along the row's range: the scales are a stream
// of their own beside the weights, which the hardware prefetcher does not follow.
constexpr long SCALE_AHEAD = 512;

template <int R, int N, int LB, bool PER_ROW>
__attribute__((target(AVX512 ",avx512vnni"))) void rows_int8_vnni(const Matmul& m, const Int8Activations& qa, const long* rr, const PassPrefetch& pf) {
  const long K = m.w.cols, B = LB ? 64 * LB : qa.block, ngroups = m.w.groups_per_row(), rows = m.w.rows, blocks = qa.blocks;
  const long spacing = R > 1 ? rr[1] - rr[0] : 0, stride = spacing * K, sstride = spacing * ngroups;
  const int8_t* w0 = static_cast<const int8_t*>(m.w.data) + rr[0] * K;
  const float* sc = m.w.scales + rr[0] * ngroups;
  const char* ahead = reinterpret_cast<const char*>(w0) + pf.ahead;
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  __m512 acc[R][N];
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) acc[q][t] = _mm512_setzero_ps();
  for (long b = 0; b < blocks; b++) {
    const long k0 = b * B, k1 = LB ? k0 + B : std::min(K, k0 + B);
    const int8_t* p = w0 + k0;
    const int8_t* xq = qa.q + k0;
    // Each lane sum starts from 0 but lane 0's, which starts from -128 x (the block's activation sum): that
    // undoes the +128 on the weights once the lanes are added up.
    __m512i ia[R][N];
    for (int t = 0; t < N; t++) {
      const __m512i unshift = _mm512_maskz_mov_epi32(1, _mm512_set1_epi32(-128 * qa.sum[t * blocks + b]));
      for (int q = 0; q < R; q++) ia[q][t] = unshift;
    }
    auto prefetch = [&](long k) __attribute__((always_inline)) {
      #pragma GCC unroll 8
      for (int q = 0; q < R; q++) _mm_prefetch(ahead + q * stride + k, _MM_HINT_T0);
    };
    if constexpr (!PER_ROW) {
      if ((b & 15) == 0) {
        #pragma GCC unroll 8
        for (int q = 0; q < R; q++) _mm_prefetch(reinterpret_cast<const char*>(sc + q * sstride + b) + SCALE_AHEAD, _MM_HINT_T0);
      }
    }
    if constexpr (LB > 0) {
      #pragma GCC unroll 4
      for (int l = 0; l < LB; l++) {
        prefetch(k0 + 64 * l);
        vnni_line<R, N, false>(ia, p + 64 * l, stride, xq + 64 * l, qa.stride, flip, 0);
      }
    } else {
      long k = k0;
      for (; k + 64 <= k1; k += 64) {
        prefetch(k);
        vnni_line<R, N, false>(ia, w0 + k, stride, qa.q + k, qa.stride, flip, 0);
      }
      if (k < k1) {
        prefetch(k);
        vnni_line<R, N, true>(ia, w0 + k, stride, qa.q + k, qa.stride, flip, (~__mmask64(0)) >> (64 - (k1 - k)));
      }
    }
    for (int t = 0; t < N; t++) {
      const float xs = qa.scale[t * blocks + b];
      for (int q = 0; q < R; q++) acc[q][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[q][t]), _mm512_set1_ps(PER_ROW ? xs : xs * sc[q * sstride + b]), acc[q][t]);
    }
  }
  for (int q = 0; q < R; q++)
    for (int t = 0; t < N; t++) m.out[t * rows + rr[q]] = _mm512_reduce_add_ps(acc[q][t]) * (PER_ROW ? sc[q * sstride] : 1.f);
}

template <int R, int N, int LB>
void rows_int8_vnni(const Matmul& m, const Int8Activations& qa, const long* rr, const PassPrefetch& pf) {
  if (m.w.per_row()) rows_int8_vnni<R, N, LB, true>(m, qa, rr, pf);
  else rows_int8_vnni<R, N, LB, false>(m, qa, rr, pf);
}

struct Avx512Rows {
  template <int R, int N>
  static void rows(const Matmul& m, const gemv::Plain&, const long* rr, const PassPrefetch& pf) {
    switch (m.w.type) {
      case W_I8: return rows_int8<R, N>(m, rr, pf);
      case W_F32: return rows_float<R, N, W_F32>(m, rr, pf);
      case W_F16: return rows_float<R, N, W_F16>(m, rr, pf);
      default: return rows_float<R, N, W_BF16>(m, rr, pf);
    }
  }
};

}  // namespace

void gemv_avx512(const Matmul& m, long r0, long r1, PrefetchPolicy pf) {
  if (m.n <= 4) return gemv::walk<Avx512Rows>(m, gemv::Plain{}, r0, r1, pf);
  gemv::walk_wide<Avx512Rows>(
      m,
      [&](long t0) {
        Matmul s = m;
        s.x = m.x + t0 * m.w.cols;
        s.out = m.out + t0 * m.w.rows;
        return gemv::Block<gemv::Plain>{s, gemv::Plain{}};
      },
      r0, r1, pf);
}

namespace {
struct VnniRows {
  template <int R, int N>
  static void rows(const Matmul& m, const Int8Activations& qa, const long* rr, const PassPrefetch& pf) {
    if (m.w.cols % qa.block == 0) switch (qa.block) {
        case 64: return rows_int8_vnni<R, N, 1>(m, qa, rr, pf);
        case 128: return rows_int8_vnni<R, N, 2>(m, qa, rr, pf);
        case 256: return rows_int8_vnni<R, N, 4>(m, qa, rr, pf);
        default: break;
      }
    rows_int8_vnni<R, N, 0>(m, qa, rr, pf);
  }
};
}  // namespace

void gemv_int8_vnni(const Matmul& m, const Int8Activations& qa, long r0, long r1, PrefetchPolicy pf) {
  if (m.n <= 4) return gemv::walk<VnniRows>(m, qa, r0, r1, pf);
  gemv::walk_wide<VnniRows>(
      m,
      [&](long t0) {
        Matmul s = m;
        s.x = m.x + t0 * m.w.cols;
        s.out = m.out + t0 * m.w.rows;
        const Int8Activations a{qa.q + t0 * qa.stride, qa.stride, qa.scale + t0 * qa.blocks, qa.sum + t0 * qa.blocks, qa.block, qa.blocks};
        return gemv::Block<Int8Activations>{s, a};
      },
      r0, r1, pf);
}

__attribute__((target(AVX512))) void quantize_activations_int8(const float* x, long n, long K, long block, int8_t* q, long stride, float* scale, int32_t* sum) {
  const long blocks = (K + block - 1) / block;
  for (long t = 0; t < n; t++) {
    std::fill(q + t * stride + K, q + (t + 1) * stride, int8_t(0));
    for (long b = 0; b < blocks; b++) {
      const long k0 = b * block, k1 = std::min(K, k0 + block);
      const float* xr = x + t * K;
      __m512 amax = _mm512_setzero_ps();
      for (long k = k0; k < k1; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(mask16(k1 - k), xr + k)));
      const float mx = _mm512_reduce_max_ps(amax);
      const float s = mx > 0 ? mx / 127.f : 1.f;
      scale[t * blocks + b] = s;
      const __m512 inv = _mm512_set1_ps(1.f / s);
      __m512i total = _mm512_setzero_si512();
      for (long k = k0; k < k1; k += 16) {
        const __mmask16 mask = mask16(k1 - k);
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, xr + k), inv));  // nearest even
        v = _mm512_max_epi32(_mm512_min_epi32(v, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        total = _mm512_add_epi32(total, v);
        _mm_mask_storeu_epi8(q + t * stride + k, mask, _mm512_cvtepi32_epi8(v));
      }
      sum[t * blocks + b] = _mm512_reduce_add_epi32(total);
    }
  }
}

}  // namespace kvlab
