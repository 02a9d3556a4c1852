#include "matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "aligned.h"
#include "amx.h"
#include "cpu.h"
#include "gemm_avx2.h"
#include "gemv.h"
#include "pool.h"
#include "vecmath.h"

#define AVX512 "avx512f,avx512bw,avx512vl,avx512dq"

namespace kvlab {
namespace {

// Up to this many activation rows the decode GEMV reads the weights once for all of them (gemv::walk_wide);
// from here on a packed GEMM, whose packing is paid back over the rows.
constexpr long GEMV_MAX_N = gemv::WIDE_MAX_N;
constexpr int NR = 32;          // output columns (weight rows) per packed panel
constexpr int MR = 8;           // activation rows per register tile
// How decode GEMVs walk their rows (gemv_walk.h), per ISA: each thread's rows as that many ranges read side by
// side, each row prefetching a fixed distance ahead along its range, into L2 on AVX2 and into L1 on AVX-512
// (without help the hardware prefetcher restarts at every row, and short rows of 2-4 KiB lose up to a third of
// the bandwidth). The VNNI int8 GEMV reads three ranges, the others four.
constexpr PrefetchPolicy GEMV_AVX2{2, 4, 512};
constexpr PrefetchPolicy GEMV_AVX512{1, 4, 2048};
constexpr PrefetchPolicy GEMV_VNNI{1, 3, 2048};

int INT8_MODE = -1;  // -1: not yet read from KVLAB_INT8_GEMV, 0: dequantize in registers, 1: VNNI where it applies

inline __mmask16 mask16(long len) { return len >= 16 ? __mmask16(0xffff) : __mmask16((1u << len) - 1); }

// ---------- widening a row (packing, embedding, fallbacks) ----------

void widen_row_scalar(const WeightRef& w, long r, long c0, long c1, float* dst) {
  for (long c = c0; c < c1; c++) dst[c - c0] = weight_at(w, r, c);
}

__attribute__((target(AVX512 ",f16c")))
void widen_row_avx512(const WeightRef& w, long r, long c0, long c1, float* dst) {
  const long base = r * w.cols;
  for (long c = c0; c < c1; c += 16) {
    const long len = std::min<long>(16, c1 - c);
    const __mmask16 mask = mask16(len);
    __m512 v;
    switch (w.type) {
      case W_F32: v = _mm512_maskz_loadu_ps(mask, static_cast<const float*>(w.data) + base + c); break;
      case W_BF16: {
        const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w.data) + base + c);
        v = bf16x16_to_f32(h);
        break;
      }
      case W_F16: v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w.data) + base + c)); break;
      default: {
        v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, static_cast<const int8_t*>(w.data) + base + c)));
        if (c / w.group == (c + len - 1) / w.group) {
          v = _mm512_mul_ps(v, _mm512_set1_ps(w.scale(r, c)));
        } else {
          alignas(64) float s[16] = {};
          for (long i = 0; i < len; i++) s[i] = w.scale(r, c + i);
          v = _mm512_mul_ps(v, _mm512_load_ps(s));
        }
      }
    }
    _mm512_mask_storeu_ps(dst + (c - c0), mask, v);
  }
}

__attribute__((target("avx2,fma,f16c")))
void widen_row_avx2(const WeightRef& w, long r, long c0, long c1, float* dst) {
  long c = c0;
  const long base = r * w.cols;
  if (w.type != W_I8)
    for (; c + 8 <= c1; c += 8) {
      __m256 v;
      if (w.type == W_F32) v = _mm256_loadu_ps(static_cast<const float*>(w.data) + base + c);
      else {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w.data) + base + c));
        v = w.type == W_F16 ? _mm256_cvtph_ps(h) : bf16x8_to_f32(h);
      }
      _mm256_storeu_ps(dst + (c - c0), v);
    }
  widen_row_scalar(w, r, c, c1, dst + (c - c0));
}

// ---------- portable GEMV ----------

void gemv_scalar(const Matmul& m, long r0, long r1) {
  std::vector<float> row(m.w.cols);
  for (long r = r0; r < r1; r++) {
    widen_row_scalar(m.w, r, 0, m.w.cols, row.data());
    for (long t = 0; t < m.n; t++) {
      const float* x = m.x + t * m.w.cols;
      float acc = 0;
      for (long c = 0; c < m.w.cols; c++) acc += x[c] * row[c];
      m.out[t * m.w.rows + r] = acc;
    }
  }
}

// Splits rows over the pool in aligned units of 16, so every row is computed by the same kernel variant (and
// so to the same bits) whatever the thread count.
template <typename F>
void run_rows(long rows, F f) {
  constexpr long UNIT = 16;
  pool_run([&](int t, int T) {
    long u0, u1;
    split_range((rows + UNIT - 1) / UNIT, t, T, &u0, &u1);
    const long r0 = u0 * UNIT, r1 = std::min(rows, u1 * UNIT);
    if (r0 < r1) f(r0, r1);
  });
}

// ---------- int8 decode GEMV: VNNI or dequantized in registers ----------

// VNNI (gemv_avx512.cc) where the CPU has it and the weight has per-row scales or groups of whole 64-column
// steps; else, or under KVLAB_INT8_GEMV=dequant, the weights are dequantized in registers against exact fp32
// activations.
constexpr long VNNI_ROW_BLOCK = 128;
bool int8_vnni_applies(long n, const WeightRef& w) {
  if (INT8_MODE < 0) {
    const char* e = std::getenv("KVLAB_INT8_GEMV");
    INT8_MODE = e && std::string(e) == "dequant" ? 0 : 1;
  }
  return INT8_MODE == 1 && cpu().avx512_vnni && n <= GEMV_MAX_N && (w.per_row() || w.group % 64 == 0);
}

void gemv_int8_vnni_dispatch(const Matmul& m) {
  // Activation blocks: the weight's groups, or 128 columns under per-row scales.
  const long K = m.w.cols, B = m.w.per_row() ? VNNI_ROW_BLOCK : m.w.group, blocks = (K + B - 1) / B, stride = (K + 63) / 64 * 64;
  // The caller's buffers, kept across calls, reached through a reference: a worker naming the thread_local
  // itself would get its own, empty one.
  struct Buffers {
    std::vector<int8_t> q;
    std::vector<float> scale;
    std::vector<int32_t> sum;
  };
  thread_local Buffers kept;
  Buffers& b = kept;
  if (b.q.size() < size_t(m.n * stride)) b.q.resize(size_t(m.n * stride));
  if (b.scale.size() < size_t(m.n * blocks)) {
    b.scale.resize(size_t(m.n * blocks));
    b.sum.resize(size_t(m.n * blocks));
  }
  int8_t* const q = b.q.data();
  float* const scale = b.scale.data();
  int32_t* const sum = b.sum.data();
  quantize_activations_int8(m.x, m.n, K, B, q, stride, scale, sum);
  const PrefetchPolicy pf = GEMV_VNNI;
  const Int8Activations qa{q, stride, scale, sum, B, blocks};
  run_rows(m.w.rows, [&](long r0, long r1) { gemv_int8_vnni(m, qa, r0, r1, pf); });
}

// ---------- packed GEMMs ----------

void pack_panel_f32(const WeightRef& w, long r0, float* panel, float* row, bool avx512) {
  const long K = w.cols;
  for (int j = 0; j < NR; j++) {
    const long r = r0 + j;
    if (r >= w.rows) {
      for (long k = 0; k < K; k++) panel[k * NR + j] = 0;
      continue;
    }
    if (avx512) widen_row_avx512(w, r, 0, K, row);
    else widen_row(w, r, 0, K, row);
    for (long k = 0; k < K; k++) panel[k * NR + j] = row[k];
  }
}

template <int M>
__attribute__((target(AVX512)))
inline void store_tile(const Matmul& m, const __m512 (&acc)[M][2], long i0, long r0) {
  const long left = m.w.rows - r0;
  const __mmask16 m0 = mask16(left), m1 = left <= 16 ? 0 : mask16(left - 16);
  for (int i = 0; i < M; i++) {
    float* o = m.out + (i0 + i) * m.w.rows + r0;
    _mm512_mask_storeu_ps(o, m0, acc[i][0]);
    _mm512_mask_storeu_ps(o + 16, m1, acc[i][1]);
  }
}

template <int M>
__attribute__((target(AVX512)))
void tile_f32(const Matmul& m, const float* panel, long i0, long r0) {
  const long K = m.w.cols;
  __m512 acc[M][2];
  for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  const float* x = m.x + i0 * K;
  for (long k = 0; k < K; k++) {
    const __m512 b0 = _mm512_load_ps(panel + k * NR), b1 = _mm512_load_ps(panel + k * NR + 16);
    for (int i = 0; i < M; i++) {
      const __m512 a = _mm512_set1_ps(x[i * K + k]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  store_tile<M>(m, acc, i0, r0);
}

// bf16 panel: [K/2][32] pairs of bf16 (element k in the low half), zero-padded.
__attribute__((target(AVX512 ",f16c,avx512bf16")))
void pack_panel_bf16(const WeightRef& w, long r0, uint32_t* panel, long K2, float* row) {
  for (int j = 0; j < NR; j++) {
    const long r = r0 + j;
    if (r >= w.rows) {
      for (long kk = 0; kk < K2; kk++) panel[kk * NR + j] = 0;
      continue;
    }
    if (w.type == W_BF16) {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + r * w.cols;
      for (long kk = 0; kk < K2; kk++) {
        const long k = 2 * kk;
        panel[kk * NR + j] = uint32_t(src[k]) | (k + 1 < w.cols ? uint32_t(src[k + 1]) << 16 : 0u);
      }
    } else {
      widen_row_avx512(w, r, 0, w.cols, row);
      if (w.cols % 2) row[w.cols] = 0;
      long kk = 0;
      alignas(64) uint32_t pairs[16];
      for (; kk + 16 <= K2; kk += 16) {
        _mm512_store_si512(pairs, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 2 * kk + 16), _mm512_loadu_ps(row + 2 * kk)));
        for (int i = 0; i < 16; i++) panel[(kk + i) * NR + j] = pairs[i];
      }
      for (; kk < K2; kk++) panel[kk * NR + j] = uint32_t(f32_to_bf16(row[2 * kk])) | uint32_t(f32_to_bf16(row[2 * kk + 1])) << 16;
    }
  }
}

template <int M>
__attribute__((target(AVX512 ",avx512bf16")))
void tile_bf16(const Matmul& m, const uint32_t* panel, const uint32_t* xb, long K2, long i0, long r0) {
  __m512 acc[M][2];
  for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  const uint32_t* x = xb + i0 * K2;
  for (long kk = 0; kk < K2; kk++) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(panel + kk * NR), b1 = (__m512bh)_mm512_load_si512(panel + kk * NR + 16);
    for (int i = 0; i < M; i++) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(x[i * K2 + kk]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
    }
  }
  store_tile<M>(m, acc, i0, r0);
}

// Activation rows [i0, i1) as bf16 pairs (round to nearest even), K2 = ceil(K/2) dwords per row.
__attribute__((target(AVX512 ",avx512bf16")))
void activations_to_bf16(const Matmul& m, uint32_t* xb, long K2, long i0, long i1) {
  const long K = m.w.cols;
  for (long i = i0; i < i1; i++) {
    const float* x = m.x + i * K;
    uint32_t* dst = xb + i * K2;
    long kk = 0;
    if (K % 2 == 0)
      for (; kk + 16 <= K2; kk += 16) {
        const __m512 lo = _mm512_loadu_ps(x + 2 * kk), hi = _mm512_loadu_ps(x + 2 * kk + 16);
        _mm512_storeu_si512(dst + kk, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    for (; kk < K2; kk++) {
      const long k = 2 * kk;
      dst[kk] = uint32_t(f32_to_bf16(x[k])) | (k + 1 < K ? uint32_t(f32_to_bf16(x[k + 1])) << 16 : 0u);
    }
  }
}

// Calls tile(i0, std::integral_constant<int, rows>) over the activation rows in blocks of MR (the last one shorter).
template <typename Tile>
void for_each_tile(long n, Tile tile) {
  long i = 0;
  for (; i + MR <= n; i += MR) tile(i, std::integral_constant<int, MR>{});
  switch (int(n - i)) {
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

// Splits the panels over the pool; each thread packs one panel at a time into its own L2-sized buffer.
template <typename F>
void for_each_panel(const Matmul& m, F f) {
  const long panels = (m.w.rows + NR - 1) / NR;
  pool_run([&](int t, int T) {
    long p0, p1;
    split_range(panels, t, T, &p0, &p1);
    if (p0 < p1) f(p0, p1);
  });
}

// fp32 activations on AVX2 + FMA: a 6x16 register tile over packed fp32 panels (gemm_avx2.cc).
void gemm_f32_avx2(const Matmul& m) { gemm_avx2(m); }

void gemm_f32(const Matmul& m) {
  for_each_panel(m, [&](long p0, long p1) {
    AlignedVector<float> panel(size_t(m.w.cols) * NR);
    std::vector<float> row(m.w.cols + 16);
    for (long p = p0; p < p1; p++) {
      pack_panel_f32(m.w, p * NR, panel.data(), row.data(), true);
      for_each_tile(m.n, [&](long i0, auto rows) { tile_f32<decltype(rows)::value>(m, panel.data(), i0, p * NR); });
    }
  });
}

void gemm_bf16(const Matmul& m) {
  const long K2 = (m.w.cols + 1) / 2;
  std::vector<uint32_t> xraw(size_t(m.n * K2));
  uint32_t* xb = xraw.data();
  run_rows(m.n, [&](long i0, long i1) { activations_to_bf16(m, xb, K2, i0, i1); });
  for_each_panel(m, [&](long p0, long p1) {
    AlignedVector<uint32_t> panel(size_t(K2) * NR);
    std::vector<float> row(m.w.cols + 16);
    for (long p = p0; p < p1; p++) {
      pack_panel_bf16(m.w, p * NR, panel.data(), K2, row.data());
      for_each_tile(m.n, [&](long i0, auto rows) { tile_bf16<decltype(rows)::value>(m, panel.data(), xb, K2, i0, p * NR); });
    }
  });
}

// All activation rows (at most GEMV_MAX_N) in one walk over the weight rows, split over the pool.
void gemv_dispatch(const Matmul& m, bool avx512) {
  const long K = m.w.cols, K2 = K / 2;
  const bool pairs = !avx512 && gemv_avx2_uses_pairs(m.w);
  std::vector<float> split(pairs ? size_t(2 * m.n * K2) : 0);
  if (pairs) split_even_odd(m.x, m.n, K, split.data(), split.data() + m.n * K2);
  const PrefetchPolicy pf = avx512 ? GEMV_AVX512 : GEMV_AVX2;
  const float* xe = pairs ? split.data() : nullptr;
  const float* xo = pairs ? split.data() + m.n * K2 : nullptr;
  run_rows(m.w.rows, [&](long r0, long r1) {
    if (avx512) gemv_avx512(m, r0, r1, pf);
    else gemv_avx2(m, xe, xo, r0, r1, pf);
  });
}

enum class Path { Scalar, Avx2Gemv, Avx2Gemm, Avx512Gemv, Avx512Bf16Gemv, Int8Vnni, Int8Dequant, Avx512F32Gemm, Avx512Bf16Gemm, Amx };

Path choose(long n, const WeightRef& w, bool bf16_activations) {
  const CpuFeatures& f = cpu();
  if (!f.avx512 && f.avx2_fma) return n <= GEMV_MAX_N ? Path::Avx2Gemv : Path::Avx2Gemm;
  if (!f.avx512) return Path::Scalar;
  if (n <= GEMV_MAX_N) {
    if (w.type == W_I8) return int8_vnni_applies(n, w) ? Path::Int8Vnni : Path::Int8Dequant;
    if (w.type == W_BF16 && w.cols % 2 == 0 && n <= 4) return Path::Avx512Bf16Gemv;
    return Path::Avx512Gemv;
  }
  if (bf16_activations && amx_usable(n, w)) return Path::Amx;
  if (bf16_activations && f.avx512_bf16) return Path::Avx512Bf16Gemm;
  return Path::Avx512F32Gemm;
}

}  // namespace

bool set_int8_vnni(bool on) {
  INT8_MODE = on ? 1 : 0;
  return true;
}

void widen_row(const WeightRef& w, long r, long c0, long c1, float* dst) {
  const CpuFeatures& f = cpu();
  if (f.avx512) widen_row_avx512(w, r, c0, c1, dst);
  else if (f.avx2_fma && f.f16c) widen_row_avx2(w, r, c0, c1, dst);
  else widen_row_scalar(w, r, c0, c1, dst);
}

const char* matmul_path(long n, const WeightRef& w, bool bf16_activations) {
  switch (choose(n, w, bf16_activations)) {
    case Path::Scalar: return "scalar";
    case Path::Avx2Gemv: return "avx2-gemv";
    case Path::Avx2Gemm: return "avx2-f32-gemm";
    case Path::Avx512Gemv: return "avx512-gemv";
    case Path::Avx512Bf16Gemv: return "avx512-bf16-gemv";
    case Path::Int8Vnni: return "avx512vnni-int8-gemv";
    case Path::Int8Dequant: return "avx512-int8-dequant-gemv";
    case Path::Avx512F32Gemm: return "avx512-f32-gemm";
    case Path::Avx512Bf16Gemm: return "avx512bf16-gemm";
    case Path::Amx: return cpu().amx_emulated ? "amx-bf16-gemm (emulated)" : "amx-bf16-gemm";
  }
  return "?";
}

void matmul(const Matmul& m, bool bf16_activations) {
  if (m.n <= 0 || m.w.rows <= 0) return;
  if (m.w.cols == 0) {
    std::fill(m.out, m.out + m.n * m.w.rows, 0.f);
    return;
  }
  switch (choose(m.n, m.w, bf16_activations)) {
    case Path::Scalar: return run_rows(m.w.rows, [&](long r0, long r1) { gemv_scalar(m, r0, r1); });
    case Path::Avx2Gemv: return gemv_dispatch(m, false);
    case Path::Avx2Gemm: return gemm_f32_avx2(m);
    case Path::Int8Vnni: return gemv_int8_vnni_dispatch(m);
    case Path::Avx512Gemv:
    case Path::Avx512Bf16Gemv:
    case Path::Int8Dequant: return gemv_dispatch(m, true);
    case Path::Avx512F32Gemm: return gemm_f32(m);
    case Path::Avx512Bf16Gemm: return gemm_bf16(m);
    case Path::Amx:
      if (!amx_gemm(m)) gemm_bf16(m);
      return;
  }
}

// ---------- quantization and embedding ----------

void quantize_int8(const WeightRef& src, long group, int8_t* q, float* scales) {
  if (group <= 0 || group > src.cols) group = std::max<long>(src.cols, 1);
  const long K = src.cols, groups = (K + group - 1) / group;
  run_rows(src.rows, [&](long r0, long r1) {
    std::vector<float> row(K + 16);
    for (long r = r0; r < r1; r++) {
      widen_row(src, r, 0, K, row.data());
      for (long g = 0; g < groups; g++) {
        const long k0 = g * group, k1 = std::min(K, k0 + group);
        float mx = 0;
        for (long k = k0; k < k1; k++) mx = std::max(mx, std::fabs(row[k]));
        const float s = mx > 0 ? mx / 127.f : 1.f;
        scales[r * groups + g] = s;
        for (long k = k0; k < k1; k++) {
          // The quotient in fp64, rounded half away from zero: the same integers as the TypeScript fallback.
          const double v = std::round(double(row[k]) / double(s));
          const int qi = int(std::max(-127.0, std::min(127.0, v)));
          q[r * K + k] = int8_t(qi);
        }
      }
    }
  });
}

void embedding(const WeightRef& table, const int32_t* ids, long n, float* out) {
  for (long i = 0; i < n; i++) widen_row(table, ids[i], 0, table.cols, out + i * table.cols);
}

}  // namespace kvlab
