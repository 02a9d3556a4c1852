// AVX2 + FMA fp32 GEMM for prefill: out[n, rows] = x[n, cols] . W^T.
//
// The Goto/BLIS structure with a 6x16 register tile (6 activation rows broadcast, 2 ymm of 16 packed weight
// columns, 12 accumulators):
//   all threads: the activations packed once for every K block, to [k][6] micro-panels
//   per thread: chunks of NC output columns, claimed one at a time (a thread slowed down by other processes
//   on the machine takes fewer chunks)
//       pc: blocks of KC of the inner dimension; the KC x NC weight block is widened exactly to fp32 and
//           packed ([k][16] panels, 256 KiB at KC 256 / NC 256, stays in L2); the weight rows of the next
//           block are prefetched into L2 while this one is in use
//         ic: blocks of MC activation rows (they stay in L2 across the panels)
//           jr: one 16-column weight panel (KC x 16 fp32 = 16 KiB at KC 256, stays in L1)
//             ir: 6-row activation micro-panel -> 6x16 tile, added to out after the first K block
// Every output is computed with the same K blocking and the same kernel whichever thread takes its chunk, so
// the result does not depend on the thread count.
//
// KC 256 / MC 144 are BLIS's Zen sgemm blocking. Output columns are claimed in chunks of NC rather than split
// statically, so a thread slowed down by other processes takes fewer of them.
#include "gemm_avx2.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>

#include "cpu.h"
#include "pool.h"
#include "vecmath.h"

#define KVLAB_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace kvlab {
namespace {

constexpr int MR = 6;   // activation rows per register tile
constexpr int NR = 16;  // output columns per register tile / packed weight panel
constexpr long KC = 256;  // inner dimension per block
constexpr long MC = 144;  // activation rows per packed block (multiple of MR)
constexpr long NC = 256;  // output columns per packed weight block and unit of work (multiple of NR)

// Grow-only 64-byte aligned scratch, one per thread (pool workers live as long as the addon).
struct Scratch {
  std::unique_ptr<char[]> raw;
  size_t cap = 0;
  float* p = nullptr;
  float* get(size_t floats) {
    if (floats > cap) {
      raw.reset(new char[floats * sizeof(float) + 64]);
      p = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(raw.get()) + 63) & ~uintptr_t(63));
      cap = floats;
    }
    return p;
  }
};
thread_local Scratch weight_scratch, act_scratch, row_scratch;

// In place: r[i][j] <- r[j][i].
KVLAB_AVX2 inline void transpose8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

constexpr int W_GENERIC = 99;  // scalar widening (f16 without F16C)

// Columns [c0, c0 + len) of row r, widened exactly to fp32 (int8: q * its group's scale, one fp32 product).
template <int T>
KVLAB_AVX2 void widen_segment(const WeightRef& w, long r, long c0, long len, float* dst) {
  const long base = r * w.cols + c0;
  long k = 0;
  if constexpr (T == W_F32) {
    const float* src = static_cast<const float*>(w.data) + base;
    for (; k + 8 <= len; k += 8) _mm256_storeu_ps(dst + k, _mm256_loadu_ps(src + k));
    for (; k < len; k++) dst[k] = src[k];
  } else if constexpr (T == W_BF16) {
    const uint16_t* src = static_cast<const uint16_t*>(w.data) + base;
    for (; k + 8 <= len; k += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
      _mm256_storeu_ps(dst + k, bf16x8_to_f32(h));
    }
    for (; k < len; k++) dst[k] = bf16_to_f32(src[k]);
  } else if constexpr (T == W_F16) {
    const uint16_t* src = static_cast<const uint16_t*>(w.data) + base;
    for (; k + 8 <= len; k += 8) _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
    for (; k < len; k++) dst[k] = f16_to_f32(src[k]);
  } else if constexpr (T == W_I8) {
    const int8_t* src = static_cast<const int8_t*>(w.data) + base;
    const float* scales = w.scales + r * w.groups_per_row();
    long g = c0 / w.group;
    while (k < len) {
      const long end = std::min(len, (g + 1) * w.group - c0);  // this group's columns: [k, end)
      const float s = scales[g];
      const __m256 sv = _mm256_set1_ps(s);
      for (; k + 8 <= end; k += 8) {
        const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + k));
        _mm256_storeu_ps(dst + k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), sv));
      }
      for (; k < end; k++) dst[k] = float(src[k]) * s;
      g++;
    }
  } else {
    for (; k < len; k++) dst[k] = weight_at(w, r, c0 + k);
  }
}

// Weight rows [r0, r0 + 16) x columns [k0, k0 + kc) as one kc x 16 panel (zero rows past the end of the
// weight). Each row segment is first widened into `rows` (16 x ld floats, contiguous reads of the weight),
// then transposed 8x8 at a time: reading the 16 rows in step would put 16 streams one weight row apart
// (often a multiple of 4 KiB) into the same L1 set.
template <int T>
KVLAB_AVX2 void pack_panel(const WeightRef& w, long r0, long k0, long kc, float* dst, float* rows, long ld) {
  const long k8 = kc & ~7L;
  const long nr = std::min<long>(NR, w.rows - r0);
  for (long j = 0; j < NR; j++) {
    if (j < nr) widen_segment<T>(w, r0 + j, k0, kc, rows + j * ld);
    else std::fill(rows + j * ld, rows + j * ld + kc, 0.f);
  }
  for (long k = 0; k < k8; k += 8)
    for (int h = 0; h < 2; h++) {
      __m256 v[8];
      for (int j = 0; j < 8; j++) v[j] = _mm256_loadu_ps(rows + (8 * h + j) * ld + k);
      transpose8(v);
      for (int j = 0; j < 8; j++) _mm256_store_ps(dst + (k + j) * NR + 8 * h, v[j]);
    }
  for (long k = k8; k < kc; k++)
    for (int j = 0; j < NR; j++) dst[k * NR + j] = rows[j * ld + k];
}

// Activation rows [i0, i0 + mc) x columns [k0, k0 + kc) as ceil(mc / 6) micro-panels of kc x 6 (zero rows past
// mc).
KVLAB_AVX2 void pack_activations(const float* x, long K, long i0, long mc, long k0, long kc, float* Ap) {
  const long k8 = kc & ~7L;
  for (long q = 0; q * MR < mc; q++) {
    float* dst = Ap + q * kc * MR;
    const float* src = x + (i0 + q * MR) * K + k0;
    const long nr = std::min<long>(MR, mc - q * MR);
    if (nr == MR) {
      for (long k = 0; k < k8; k += 8) {
        __m256 v[8];
        for (int i = 0; i < MR; i++) v[i] = _mm256_loadu_ps(src + i * K + k);
        v[6] = v[7] = _mm256_setzero_ps();
        transpose8(v);
        // Each store writes 8 floats of which the last 2 are overwritten by the next one; the last store
        // writes 6 (the next micro-panel may already be packed, by another thread).
        for (int j = 0; j < 7; j++) _mm256_storeu_ps(dst + (k + j) * MR, v[j]);
        _mm_storeu_ps(dst + (k + 7) * MR, _mm256_castps256_ps128(v[7]));
        _mm_storel_pi(reinterpret_cast<__m64*>(dst + (k + 7) * MR + 4), _mm256_extractf128_ps(v[7], 1));
      }
      for (long k = k8; k < kc; k++)
        for (int i = 0; i < MR; i++) dst[k * MR + i] = src[i * K + k];
    } else {
      for (long k = 0; k < kc; k++)
        for (int i = 0; i < MR; i++) dst[k * MR + i] = i < nr ? src[i * K + k] : 0.f;
    }
  }
}

// C[6, 16] (row stride ldc) = (ACC ? C : 0) + A . B over kc: A a [kc][6] micro-panel, B a [kc][16] panel.
template <bool ACC>
KVLAB_AVX2 void kernel_6x16(long kc, const float* __restrict A, const float* __restrict B, float* C, long ldc) {
  for (int i = 0; i < MR; i++) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + 15), _MM_HINT_T0);
  }
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#define KVLAB_STEP(o)                                                                              \
  {                                                                                                \
    const __m256 b0 = _mm256_load_ps(B + (o) * NR), b1 = _mm256_load_ps(B + (o) * NR + 8);         \
    __m256 a = _mm256_broadcast_ss(A + (o) * MR + 0);                                              \
    c00 = _mm256_fmadd_ps(a, b0, c00), c01 = _mm256_fmadd_ps(a, b1, c01);                         \
    a = _mm256_broadcast_ss(A + (o) * MR + 1);                                                     \
    c10 = _mm256_fmadd_ps(a, b0, c10), c11 = _mm256_fmadd_ps(a, b1, c11);                         \
    a = _mm256_broadcast_ss(A + (o) * MR + 2);                                                     \
    c20 = _mm256_fmadd_ps(a, b0, c20), c21 = _mm256_fmadd_ps(a, b1, c21);                         \
    a = _mm256_broadcast_ss(A + (o) * MR + 3);                                                     \
    c30 = _mm256_fmadd_ps(a, b0, c30), c31 = _mm256_fmadd_ps(a, b1, c31);                         \
    a = _mm256_broadcast_ss(A + (o) * MR + 4);                                                     \
    c40 = _mm256_fmadd_ps(a, b0, c40), c41 = _mm256_fmadd_ps(a, b1, c41);                         \
    a = _mm256_broadcast_ss(A + (o) * MR + 5);                                                     \
    c50 = _mm256_fmadd_ps(a, b0, c50), c51 = _mm256_fmadd_ps(a, b1, c51);                         \
  }
  long k = 0;
  for (; k + 4 <= kc; k += 4) {
    KVLAB_STEP(0) KVLAB_STEP(1) KVLAB_STEP(2) KVLAB_STEP(3)
    A += 4 * MR;
    B += 4 * NR;
  }
  for (; k < kc; k++) {
    KVLAB_STEP(0)
    A += MR;
    B += NR;
  }
#undef KVLAB_STEP
  const __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < MR; i++) {
    float* o = C + i * ldc;
    if (ACC) {
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc[i][0]));
      _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), acc[i][1]));
    } else {
      _mm256_storeu_ps(o, acc[i][0]);
      _mm256_storeu_ps(o + 8, acc[i][1]);
    }
  }
}

// Walks the row segments of a weight block line by line, prefetching them into L2 a few lines per micro-kernel
// call, so packing that block does not wait for memory (its row segments are only kc elements long, too short
// for the hardware prefetcher).
struct PanelPrefetch {
  const char* base = nullptr;
  long stride = 0, bytes = 0, rows = 0;  // row stride, bytes per row segment, rows
  long r = 0, b = 0;
  void start(const WeightRef& w, long j0, long nr, long k0, long kc) {
    const long es = w.type == W_F32 ? 4 : w.type == W_I8 ? 1 : 2;
    base = static_cast<const char*>(w.data) + k0 * es + j0 * w.cols * es;
    stride = w.cols * es;
    bytes = kc * es;
    rows = nr;
    r = b = 0;
  }
  long lines() const { return rows * ((bytes + 63) / 64 + 1); }
  void step(long count) {
    for (; count > 0 && r < rows; count--) {
      const char* row = base + r * stride;
      _mm_prefetch(row + std::min(b, bytes - 1), _MM_HINT_T1);
      b += 64;
      if (b >= bytes + 64) b = 0, r++;
    }
  }
};


struct Blocking {
  long kc, mc, nc;
};

// Output columns [j0, j1) for all activation rows; Ap holds the activations packed for every K block (block
// pc at Ap + pc * npad, rows in micro-panels of kc x 6).
template <int T>
void gemm_chunk(const Matmul& m, const Blocking& b, const float* Ap, long j0, long j1) {
  const long n = m.n, N = m.w.rows, K = m.w.cols, npad = (n + MR - 1) / MR * MR, nc = j1 - j0;
  const long kcb = std::min(b.kc, K);
  float* Bp = weight_scratch.get(size_t(b.nc) * kcb);
  const long ld = (kcb + 7) / 8 * 8 + 8;
  float* rows = row_scratch.get(size_t(NR) * ld);
  alignas(32) float tmp[MR * NR];
  PanelPrefetch pf;
  const long calls = (npad / MR) * ((nc + NR - 1) / NR);  // micro-kernel calls per K block
  for (long pc = 0; pc < K; pc += kcb) {
    const long kc = std::min(kcb, K - pc);
    const bool first = pc == 0;
    for (long jr = 0; jr < nc; jr += NR) pack_panel<T>(m.w, j0 + jr, pc, kc, Bp + jr * kc, rows, ld);
    long per_call = 0;
    if (pc + kc < K) {
      pf.start(m.w, j0, nc, pc + kc, std::min(kcb, K - pc - kc));
      per_call = (pf.lines() + calls - 1) / calls;
    }
    const float* Ab = Ap + pc * npad;
    for (long ic = 0; ic < n; ic += b.mc) {
      const long mc = std::min(b.mc, n - ic);
      for (long jr = 0; jr < nc; jr += NR) {
        const float* B = Bp + jr * kc;
        const long nr = std::min<long>(NR, nc - jr);
        for (long ir = 0; ir < mc; ir += MR) {
          const float* A = Ab + (ic + ir) * kc;
          const long mr = std::min<long>(MR, mc - ir);
          float* C = m.out + (ic + ir) * N + j0 + jr;
          pf.step(per_call);
          if (mr == MR && nr == NR) {
            if (first) kernel_6x16<false>(kc, A, B, C, N);
            else kernel_6x16<true>(kc, A, B, C, N);
          } else {
            kernel_6x16<false>(kc, A, B, tmp, NR);
            for (long i = 0; i < mr; i++)
              for (long j = 0; j < nr; j++) C[i * N + j] = first ? tmp[i * NR + j] : C[i * N + j] + tmp[i * NR + j];
          }
        }
      }
    }
  }
}

KVLAB_AVX2 __attribute__((noinline)) float fma_chains(long iters) {
  asm volatile("");  // not a pure function: every call runs
  __m256 a0 = _mm256_set1_ps(0.000f), a1 = _mm256_set1_ps(0.001f), a2 = _mm256_set1_ps(0.002f), a3 = _mm256_set1_ps(0.003f);
  __m256 a4 = _mm256_set1_ps(0.004f), a5 = _mm256_set1_ps(0.005f), a6 = _mm256_set1_ps(0.006f), a7 = _mm256_set1_ps(0.007f);
  __m256 a8 = _mm256_set1_ps(0.008f), a9 = _mm256_set1_ps(0.009f), a10 = _mm256_set1_ps(0.010f), a11 = _mm256_set1_ps(0.011f);
  const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.0001f);
  for (long it = 0; it < iters; it++) {
    a0 = _mm256_fmadd_ps(a0, b, c), a1 = _mm256_fmadd_ps(a1, b, c), a2 = _mm256_fmadd_ps(a2, b, c);
    a3 = _mm256_fmadd_ps(a3, b, c), a4 = _mm256_fmadd_ps(a4, b, c), a5 = _mm256_fmadd_ps(a5, b, c);
    a6 = _mm256_fmadd_ps(a6, b, c), a7 = _mm256_fmadd_ps(a7, b, c), a8 = _mm256_fmadd_ps(a8, b, c);
    a9 = _mm256_fmadd_ps(a9, b, c), a10 = _mm256_fmadd_ps(a10, b, c), a11 = _mm256_fmadd_ps(a11, b, c);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)), _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  return _mm_cvtss_f32(_mm256_castps256_ps128(s));
}

}  // namespace

void gemm_avx2(const Matmul& m) {
  const long n = m.n, N = m.w.rows, K = m.w.cols;
  if (n <= 0 || N <= 0) return;
  if (K == 0) {
    std::fill(m.out, m.out + n * N, 0.f);
    return;
  }
  const Blocking b{KC, MC, NC};
  int type = m.w.type;
  if (type == W_F16 && !cpu().f16c) type = W_GENERIC;
  const long npad = (n + MR - 1) / MR * MR, kcb = std::min(KC, K);
  float* Ap = act_scratch.get(size_t(npad) * K);
  const long row_blocks = (n + b.mc - 1) / b.mc, chunks = (N + b.nc - 1) / b.nc;
  std::atomic<long> next_rows{0}, next_chunk{0};
  pool_run([&](int, int) {
    for (long r; (r = next_rows++) < row_blocks;) {
      const long i0 = r * b.mc, mc = std::min(b.mc, n - i0);
      for (long pc = 0; pc < K; pc += kcb) {
        const long kc = std::min(kcb, K - pc);
        pack_activations(m.x, K, i0, mc, pc, kc, Ap + pc * npad + i0 * kc);
      }
    }
  });
  pool_run([&](int, int) {
    for (long c; (c = next_chunk++) < chunks;) {
      const long j0 = c * b.nc, j1 = std::min(N, j0 + b.nc);
      switch (type) {
        case W_F32: gemm_chunk<W_F32>(m, b, Ap, j0, j1); break;
        case W_BF16: gemm_chunk<W_BF16>(m, b, Ap, j0, j1); break;
        case W_F16: gemm_chunk<W_F16>(m, b, Ap, j0, j1); break;
        case W_I8: gemm_chunk<W_I8>(m, b, Ap, j0, j1); break;
        default: gemm_chunk<W_GENERIC>(m, b, Ap, j0, j1);
      }
    }
  });
}

double fma_peak_gflops(int threads) {
  const int want = std::max(1, std::min(threads, pool_threads()));
  std::atomic<float> sink{0};
  auto timed = [&](long iters, int* ran) {
    std::atomic<int> count{0};
    const auto t0 = std::chrono::steady_clock::now();
    pool_run([&](int t, int) {
      if (t >= want) return;
      count++;
      sink.store(fma_chains(iters), std::memory_order_relaxed);
    });
    *ran = count.load();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  int ran = 0;
  timed(1 << 16, &ran);  // wake the workers, warm up the FMA units
  const long probe = 1 << 20;
  const double s = timed(probe, &ran);
  const long iters = std::max<long>(probe, long(probe * 0.2 / std::max(s, 1e-6)));
  const double elapsed = timed(iters, &ran);
  return double(ran) * double(iters) * 12 * 8 * 2 / elapsed / 1e9;
}

}  // namespace kvlab
