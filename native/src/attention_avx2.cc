// AVX2 + FMA attention.
// Both products are register panels of up to 6 rows by 16 columns, fed by broadcasts from the rows and
// vector loads from the other operand: Q . K^T against keys packed transposed (many query rows), P . V
// against the cache's value rows. At decode the keys are read straight from the cache and the keys of a
// tile are cut into chunks of DECODE_CHUNK, attended in parallel and combined in a fixed order (flash-
// decoding), so a call has work for every thread whatever its number of KV heads. Units of work are
// independent, so results do not depend on which thread runs them: decode chunks are split into
// contiguous ranges (each thread streams consecutive keys), many-row units go to whichever thread is free.
#include <immintrin.h>

#include <atomic>
#include <cmath>

#include "attention_tiles.h"
#include "vecmath.h"

namespace kvlab::attn {
namespace {

constexpr int PANEL = 6;
constexpr int DECODE_CHUNK = 256;
constexpr int ROW_AHEAD = 32;  // keys the row-order logits prefetch ahead
constexpr int UNIT_ROWS = 24;  // (query row, head) rows per unit of many-row attention, at least one query row

// Eight cache values as fp32: fp32 rows loaded, bf16 rows widened exactly.
__attribute__((target("avx2,fma"), always_inline)) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma"), always_inline)) inline __m256 load8(const uint16_t* p) {
  return bf16x8_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <typename KT>
__attribute__((target("avx2,fma")))
float dot_avx2(const float* a, const KT* b, int d) {
  __m256 acc = _mm256_setzero_ps();
  for (int c = 0; c < d; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), load8(b + c), acc);
  return hsum256(acc);
}

// out[r][o_off + 0 .. 8 NV) (+)= sum over k < K of a[r][a_off + k] * b[k * ldb + 0 .. 8 NV), for r < R.
// The loops over acc are unrolled by pragma: left to GCC, acc is written back to the stack every step.
template <int R, int NV>
__attribute__((target("avx2,fma")))
void panel_avx2(const float* const* a, long a_off, const float* b, long ldb, int K, float* const* out, long o_off, bool add) {
  __m256 acc[R][NV];
  #pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; v++) acc[r][v] = add ? _mm256_loadu_ps(out[r] + o_off + 8 * v) : _mm256_setzero_ps();
  for (int k = 0; k < K; k++) {
    __m256 bv[NV];
    #pragma GCC unroll 8
    for (int v = 0; v < NV; v++) bv[v] = _mm256_loadu_ps(b + k * ldb + 8 * v);
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const __m256 x = _mm256_broadcast_ss(a[r] + a_off + k);
      #pragma GCC unroll 8
      for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(x, bv[v], acc[r][v]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; v++) _mm256_storeu_ps(out[r] + o_off + 8 * v, acc[r][v]);
}

template <int NV>
void panel_rows_avx2(int R, const float* const* a, long a_off, const float* b, long ldb, int K, float* const* out, long o_off, bool add = false) {
  switch (R) {
    case 1: return panel_avx2<1, NV>(a, a_off, b, ldb, K, out, o_off, add);
    case 2: return panel_avx2<2, NV>(a, a_off, b, ldb, K, out, o_off, add);
    case 3: return panel_avx2<3, NV>(a, a_off, b, ldb, K, out, o_off, add);
    case 4: return panel_avx2<4, NV>(a, a_off, b, ldb, K, out, o_off, add);
    case 5: return panel_avx2<5, NV>(a, a_off, b, ldb, K, out, o_off, add);
    default: return panel_avx2<6, NV>(a, a_off, b, ldb, K, out, o_off, add);
  }
}

// Calls f(r0, r1) for the row panels of rows [0, n), as even as possible.
template <typename F>
void for_panels(int n, F f) {
  const int panels = (n + PANEL - 1) / PANEL;
  for (int p = 0; p < panels; p++) {
    long r0, r1;
    split_range(n, p, panels, &r0, &r1);
    f(int(r0), int(r1));
  }
}

// o[r][0, d) = sum over j < len of p[r][j] * v[j][0, d), for r < n. Keys in blocks whose value rows are
// read whole before the next block's, so V streams in order.
void pv_avx2(const float* const* p, int n, const float* v, int len, int d, float* const* o, int block) {
  for (int j0 = 0; j0 < std::max(len, 1); j0 += block) {
    const int nk = std::min(block, len - j0);
    const float* vb = v + long(j0) * d;
    for_panels(n, [&](int r0, int r1) {
      int c = 0;
      for (; c + 16 <= d; c += 16) panel_rows_avx2<2>(r1 - r0, p + r0, j0, vb + c, d, nk, o + r0, c, j0 > 0);
      if (c < d) panel_rows_avx2<1>(r1 - r0, p + r0, j0, vb + c, d, nk, o + r0, c, j0 > 0);
    });
  }
}

// Row p[0, n) of dot products -> e^(scale p - m), keys at positions after qp weighted 0; returns the largest
// visible logit m (-inf when none is visible) and the sum of the weights in *z.
__attribute__((target("avx2,fma")))
float exp_row_avx2(float* p, const int32_t* pos, int32_t qp, int n, float scale, float* z) {
  const __m256 vs = _mm256_set1_ps(scale), neg = _mm256_set1_ps(-INFINITY);
  const __m256i vqp = _mm256_set1_epi32(qp);
  __m256 vmax = neg;
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 hidden = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pos + j)), vqp));
    const __m256 l = _mm256_blendv_ps(_mm256_mul_ps(_mm256_loadu_ps(p + j), vs), neg, hidden);
    _mm256_storeu_ps(p + j, l);
    vmax = _mm256_max_ps(vmax, l);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float mx = *std::max_element(lanes, lanes + 8);
  for (; j < n; j++) {
    p[j] = pos[j] > qp ? -INFINITY : p[j] * scale;
    mx = std::max(mx, p[j]);
  }
  if (mx == -INFINITY) {
    std::fill(p, p + n, 0.f);
    *z = 0;
    return mx;
  }
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vz = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 x = _mm256_loadu_ps(p + j);
    const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(x, vm)), _mm256_cmp_ps(x, neg, _CMP_NEQ_OQ));
    _mm256_storeu_ps(p + j, e);
    vz = _mm256_add_ps(vz, e);
  }
  float sum = hsum256(vz);
  for (; j < n; j++) {
    p[j] = p[j] == -INFINITY ? 0.f : std::exp(p[j] - mx);
    sum += p[j];
  }
  *z = sum;
  return mx;
}

// Statistics of KV head g over its keys [j0, j0 + n): probability p[j] * f.
__attribute__((target("avx2,fma")))
void add_stats_avx2(const Attention& a, int g, int j0, const float* p, int n, float f) {
  float* mx = a.stat_max.empty() ? nullptr : a.stat_max[g] + j0;
  float* sum = a.stat_sum.empty() ? nullptr : a.stat_sum[g] + j0;
  const __m256 vf = _mm256_set1_ps(f);
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 prob = _mm256_mul_ps(_mm256_loadu_ps(p + j), vf);
    if (sum) _mm256_storeu_ps(sum + j, _mm256_add_ps(_mm256_loadu_ps(sum + j), prob));
    if (mx) _mm256_storeu_ps(mx + j, _mm256_max_ps(_mm256_loadu_ps(mx + j), prob));
  }
  add_stats_scalar(sum, mx, p, j, n, f);
}

// ----- many query rows: a unit is one KV head and a block of query rows with all their heads -----

// Rows (query row, head) of KV head g for query rows [i0, i1): logits against the packed keys, softmax,
// P . V and statistics.
void attend_rows_avx2(const Attention& a, const PackedKeys& pk, int g, int i0, int i1, Scratch& s) {
  const HeadView& kv = a.heads[g];
  const int G = a.n_heads / a.n_kv, d = a.d, n = (i1 - i0) * G;
  int visible = 0;
  for (int i = i0; i < i1; i++) visible = std::max(visible, visible_keys(kv, pk.sorted, a.q_pos[i]));
  const int padded = (visible + KB - 1) / KB * KB;
  s.reserve(n, std::max(kv.len, padded));
  std::vector<const float*> q(n);
  std::vector<float*> p(n), o(n);
  for (int r = 0; r < n; r++) {
    const int i = i0 + r / G, h = g * G + r % G;
    q[r] = q_row(a, i, h);
    p[r] = s.row(r);
    o[r] = a.out ? out_row(a, i, h) : nullptr;
  }
  for_panels(n, [&](int r0, int r1) {
    for (int j = 0; j < padded; j += KB) panel_rows_avx2<2>(r1 - r0, q.data() + r0, 0, pk.kt.data() + long(j) * d, KB, d, p.data() + r0, j);
  });
  // Weights stay unnormalized; 1 / z scales the outputs and the statistics.
  std::vector<float> inv(n);
  for (int r = 0; r < n; r++) {
    float z;
    exp_row_avx2(p[r], pk.pos.data(), a.q_pos[i0 + r / G], padded, a.scale, &z);
    inv[r] = z > 0 ? 1.0f / z : 0.f;
    if (padded < kv.len) std::fill(p[r] + padded, p[r] + kv.len, 0.f);
  }
  if (a.out) {
    pv_avx2(p.data(), n, kv.v, std::min(padded, kv.len), d, o.data(), 128);
    for (int r = 0; r < n; r++)
      for (int c = 0; c < d; c++) o[r][c] *= inv[r];
  }
  if (!has_stats(a)) return;
  for (int r = 0; r < n; r++) {
    const int i = i0 + r / G;
    if (i >= a.stats_from) add_stats_avx2(a, g, 0, p[r], kv.len, query_weight(a, i) * inv[r]);
  }
}

void attention_rows_avx2(const Attention& a) {
  std::vector<PackedKeys> fresh;
  const std::vector<PackedKeys>& packed = pack_all_keys(a, fresh);
  const int G = a.n_heads / a.n_kv, rows = std::max(1, UNIT_ROWS / G);
  const int blocks = (a.nq + rows - 1) / rows;
  auto unit = [&](int g, int b, Scratch& s) { attend_rows_avx2(a, packed[g], g, b * rows, std::min(a.nq, (b + 1) * rows), s); };
  if (has_stats(a)) {
    // A thread owns whole KV heads, so the statistics of a key are accumulated in query order.
    pool_run([&](int t, int T) {
      long g0, g1;
      split_range(a.n_kv, t, T, &g0, &g1);
      for (long g = g0; g < g1; g++)
        for (int b = 0; b < blocks; b++) unit(int(g), b, thread_scratch());
    });
    return;
  }
  // Later query rows see more keys (causal): hand out units from the last rows back.
  std::atomic<long> next{0};
  pool_run([&](int, int) {
    for (long u; (u = next++) < long(blocks) * a.n_kv;) unit(int(u % a.n_kv), blocks - 1 - int(u / a.n_kv), thread_scratch());
  });
}

// ----- one or two query rows: tiles of heads, keys from the cache in chunks -----

// Dot products of the heads q[0, NH) with keys [j, n) of row-major k: dots[h][j]. When v is given,
// prefetches the keys ahead and the value rows of these keys for the P . V that follows.
template <int NH>
__attribute__((target("avx2,fma")))
void dots_avx2(const float* const* q, const float* k, const float* v, int j, int n, int d, float* const* dots) {
  constexpr int AHEAD = 16;
  for (; j + 4 <= n; j += 4) {
    const float* kr = k + long(j) * d;
    if (v)
      for (int c = 0; c < 4 * d; c += 16) {
        _mm_prefetch(reinterpret_cast<const char*>(kr + AHEAD * d + c), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(v + long(j) * d + c), _MM_HINT_T1);
      }
    __m256 acc[NH][4];
    #pragma GCC unroll 8
    for (int h = 0; h < NH; h++)
      #pragma GCC unroll 8
      for (int u = 0; u < 4; u++) acc[h][u] = _mm256_setzero_ps();
    for (int c = 0; c < d; c += 8) {
      __m256 kv[4];
      #pragma GCC unroll 8
      for (int u = 0; u < 4; u++) {
        kv[u] = _mm256_loadu_ps(kr + u * d + c);
        asm("" : "+x"(kv[u]));  // a register: folded into the FMAs, the load would be repeated per head
      }
      #pragma GCC unroll 8
      for (int h = 0; h < NH; h++) {
        const __m256 qv = _mm256_loadu_ps(q[h] + c);
        #pragma GCC unroll 8
        for (int u = 0; u < 4; u++) acc[h][u] = _mm256_fmadd_ps(qv, kv[u], acc[h][u]);
      }
    }
    #pragma GCC unroll 8
    for (int h = 0; h < NH; h++) {
      const __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(acc[h][0], acc[h][1]), _mm256_hadd_ps(acc[h][2], acc[h][3]));
      _mm_storeu_ps(dots[h] + j, _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)));
    }
  }
  for (; j < n; j++)
    #pragma GCC unroll 8
    for (int h = 0; h < NH; h++) dots[h][j] = dot_avx2(q[h], k + long(j) * d, d);
}

// dots_avx2 for up to four heads with d = 8 DV, two keys per step, each key's row read whole before
// the next's, so keys are touched in address order and the hardware prefetcher keeps up (the four-row
// interleave of dots_avx2 defeats it). The sums are reduced as in dots_avx2, so the logits are the same.
template <int NH, int DV, typename KT>
__attribute__((target("avx2,fma")))
void dots_heads_avx2(const float* const* qs, const KT* k, int j, int n, bool prefetch, float* const* dots) {
  constexpr int d = 8 * DV;
  const float* q[NH];
  #pragma GCC unroll 4
  for (int h = 0; h < NH; h++) q[h] = qs[h];
  const int end4 = j + (n - j) / 4 * 4;  // keys after it take dot_avx2, as in dots_avx2
  for (; j + 2 <= end4; j += 2) {
    const KT* kr = k + long(j) * d;
    if (prefetch)
      #pragma GCC unroll 16
      for (long c = 0; c < 2 * d * long(sizeof(KT)); c += 64) _mm_prefetch(reinterpret_cast<const char*>(kr + ROW_AHEAD * d) + c, _MM_HINT_T0);
    __m256 acc[NH][2];
    #pragma GCC unroll 2
    for (int u = 0; u < 2; u++) {
      {
        const __m256 kv = load8(kr + u * d);
        #pragma GCC unroll 4
        for (int h = 0; h < NH; h++) acc[h][u] = _mm256_mul_ps(_mm256_loadu_ps(q[h]), kv);
      }
      #pragma GCC unroll 8
      for (int c = 1; c < DV; c++) {
        const __m256 kv = load8(kr + u * d + 8 * c);
        #pragma GCC unroll 4
        for (int h = 0; h < NH; h++) acc[h][u] = _mm256_fmadd_ps(_mm256_loadu_ps(q[h] + 8 * c), kv, acc[h][u]);
      }
    }
    #pragma GCC unroll 2
    for (int h = 0; h < NH; h += 2) {
      const int h1 = h + 1 < NH ? h + 1 : h;  // an odd last head is paired with zeros
      const __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(acc[h][0], acc[h][1]), h + 1 < NH ? _mm256_hadd_ps(acc[h1][0], acc[h1][1]) : _mm256_setzero_ps());
      const __m128 r = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
      _mm_storel_pi(reinterpret_cast<__m64*>(dots[h] + j), r);
      if (h + 1 < NH) _mm_storeh_pi(reinterpret_cast<__m64*>(dots[h + 1] + j), r);
    }
  }
  for (; j < n; j++)
    for (int h = 0; h < NH; h++) dots[h][j] = dot_avx2(q[h], k + long(j) * d, d);
}

// o[0, 8 DV) (+)= sum over keys [j0, j0 + nk) of p[j] v[j][0, 8 DV), value rows d apart, one head, key
// after key: the same order of operations as pv_avx2, with the output (slice) in registers.
template <int DV, typename KT>
__attribute__((target("avx2,fma")))
void pv_rows_avx2(const float* p, const KT* v, int j0, int nk, bool add, float* o, long d = 8 * DV) {
  __m256 acc[DV];
  #pragma GCC unroll 8
  for (int c = 0; c < DV; c++) acc[c] = add ? _mm256_loadu_ps(o + 8 * c) : _mm256_setzero_ps();
  for (int j = j0; j < j0 + nk; j++) {
    const __m256 w = _mm256_broadcast_ss(p + j);
    #pragma GCC unroll 8
    for (int c = 0; c < DV; c++) acc[c] = _mm256_fmadd_ps(w, load8(v + long(j) * d + 8 * c), acc[c]);
  }
  #pragma GCC unroll 8
  for (int c = 0; c < DV; c++) _mm256_storeu_ps(o + 8 * c, acc[c]);
}

// Logits of a tile's heads against keys [0, len), or P . V over them, in blocks of KB keys that stay in L1
// while the heads read them.
template <int DV, typename KT>
__attribute__((target("avx2,fma")))
void tile_rows_avx2(const float* const* q, int nh, const KT* k, const KT* v, int len, float* const* p, float* const* o, bool logits) {
  for (int j = 0; j < len; j += KB) {
    const int n = std::min(len, j + KB);
    if (logits)
      for (int h = 0; h < nh; h += 4) switch (std::min(4, nh - h)) {
          case 1: dots_heads_avx2<1, DV, KT>(q + h, k, j, n, h == 0, p + h); break;
          case 2: dots_heads_avx2<2, DV, KT>(q + h, k, j, n, h == 0, p + h); break;
          case 3: dots_heads_avx2<3, DV, KT>(q + h, k, j, n, h == 0, p + h); break;
          default: dots_heads_avx2<4, DV, KT>(q + h, k, j, n, h == 0, p + h); break;
        }
    else
      // Wider heads in slices of 64 columns, so the output slice stays in registers.
      for (int h = 0; h < nh; h++)
        for (int c0 = 0; c0 < 8 * DV; c0 += 64) {
          if (8 * DV - c0 >= 64) pv_rows_avx2<8, KT>(p[h], v + c0, j, n - j, j > 0, o[h] + c0, 8 * DV);
          else pv_rows_avx2<(DV % 8 ? DV % 8 : 8), KT>(p[h], v + c0, j, n - j, j > 0, o[h] + c0, 8 * DV);
        }
  }
  if (!logits && len == 0)
    for (int h = 0; h < nh; h++) std::fill(o[h], o[h] + 8 * DV, 0.f);
}

// Whether tile_rows_avx2 handles head dimension d, and the call for it.
bool rows_fit(int d) { return d % 8 == 0 && (d <= 64 || d == 96 || d == 128); }
template <typename KT>
void tile_rows(int d, const float* const* q, int nh, const KT* k, const KT* v, int len, float* const* p, float* const* o, bool logits) {
  switch (d / 8) {
    case 1: return tile_rows_avx2<1, KT>(q, nh, k, v, len, p, o, logits);
    case 2: return tile_rows_avx2<2, KT>(q, nh, k, v, len, p, o, logits);
    case 3: return tile_rows_avx2<3, KT>(q, nh, k, v, len, p, o, logits);
    case 4: return tile_rows_avx2<4, KT>(q, nh, k, v, len, p, o, logits);
    case 5: return tile_rows_avx2<5, KT>(q, nh, k, v, len, p, o, logits);
    case 6: return tile_rows_avx2<6, KT>(q, nh, k, v, len, p, o, logits);
    case 7: return tile_rows_avx2<7, KT>(q, nh, k, v, len, p, o, logits);
    case 12: return tile_rows_avx2<12, KT>(q, nh, k, v, len, p, o, logits);
    case 16: return tile_rows_avx2<16, KT>(q, nh, k, v, len, p, o, logits);
    default: return tile_rows_avx2<8, KT>(q, nh, k, v, len, p, o, logits);
  }
}

// What a chunk leaves per head, besides its unnormalized P . V: its largest logit m and its sum of weights z.
// The combination turns z into the factor from the chunk's weights to probabilities.
struct ChunkHead {
  float m, z;
};

void attention_decode_avx2(const Attention& a) {
  struct Unit {
    Tile t;
    int j0, n;
  };
  std::vector<Tile> tiles;
  for (int i = 0; i < a.nq; i++)
    for (int g = 0; g < a.n_kv; g++) for_tiles_of(a, g, i, [&](const Tile& t) { tiles.push_back(t); });
  std::vector<Unit> units;
  std::vector<int> first_unit;
  for (const Tile& t : tiles) {
    first_unit.push_back(int(units.size()));
    for (int j0 = 0; j0 < a.heads[t.g].len; j0 += DECODE_CHUNK) units.push_back({t, j0, std::min(DECODE_CHUNK, a.heads[t.g].len - j0)});
  }
  first_unit.push_back(int(units.size()));
  const int d = a.d;
  // Per unit and head: (m, z), partial output [d] and, for the statistics, the weights [DECODE_CHUNK] (else
  // they stay in the thread's scratch). The caller's buffers, kept across calls (see thread_scratch); the
  // workers see them through these pointers.
  static thread_local AlignedVector<float> pbuf, obuf;
  static thread_local std::vector<ChunkHead> mzbuf;
  const bool keep = has_stats(a);
  if (keep) pbuf.resize(units.size() * MAX_TILE * DECODE_CHUNK);
  obuf.resize(units.size() * MAX_TILE * d);
  mzbuf.resize(units.size() * MAX_TILE);
  float* const pw = pbuf.data();
  float* const po = obuf.data();
  ChunkHead* const mz = mzbuf.data();
  auto weights = [=](long u, int h) { return pw + (u * MAX_TILE + h) * DECODE_CHUNK; };
  auto partial = [=](long u, int h) { return po + (u * MAX_TILE + h) * d; };
  pool_run([&](int t, int T) {
    long u0, u1;
    split_range(long(units.size()), t, T, &u0, &u1);
    Scratch& s = thread_scratch();
    s.reserve(MAX_TILE, DECODE_CHUNK);
    const bool rows = rows_fit(d);
    for (long u = u0; u < u1; u++) {
      const Unit& un = units[u];
      const HeadView& kv = a.heads[un.t.g];
      const float* q[MAX_TILE];
      float* p[MAX_TILE];
      float* o[MAX_TILE];
      for (int h = 0; h < un.t.n; h++) {
        q[h] = q_row(a, un.t.i, un.t.h0 + h);
        p[h] = keep ? weights(u, h) : s.row(h);
        o[h] = partial(u, h);
      }
      auto exp_rows = [&] {
        for (int h = 0; h < un.t.n; h++) mz[u * MAX_TILE + h].m = exp_row_avx2(p[h], kv.pos + un.j0, a.q_pos[un.t.i], un.n, a.scale, &mz[u * MAX_TILE + h].z);
      };
      if (a.bf16) {  // rows_fit(d): the caller widens the cache otherwise
        const uint16_t* k16 = kv.k16 + long(un.j0) * d;
        const uint16_t* v16 = kv.v16 + long(un.j0) * d;
        tile_rows(d, q, un.t.n, k16, v16, un.n, p, o, true);
        exp_rows();
        if (a.out) tile_rows(d, q, un.t.n, k16, v16, un.n, p, o, false);
        continue;
      }
      const float* k = kv.k + long(un.j0) * d;
      const float* v = kv.v + long(un.j0) * d;
      // Keys in blocks that stay in L1 while every head (pair) reads them.
      if (rows) tile_rows(d, q, un.t.n, k, v, un.n, p, o, true);
      else
        for (int j = 0; j < un.n; j += KB) {
          const int n = std::min(un.n, j + KB);
          int h = 0;
          for (; h + 2 <= un.t.n; h += 2) dots_avx2<2>(q + h, k, h == 0 ? v : nullptr, j, n, d, p + h);
          if (h < un.t.n) dots_avx2<1>(q + h, k, h == 0 ? v : nullptr, j, n, d, p + h);
        }
      exp_rows();
      if (a.out && rows) tile_rows(d, q, un.t.n, k, v, un.n, p, o, false);
      else if (a.out) pv_avx2(p, un.t.n, v, un.n, d, o, KB);
    }
  });
  // The chunks of each tile combined in order.
  for (size_t ti = 0; ti < tiles.size(); ti++) {
    const Tile& t = tiles[ti];
    for (int h = 0; h < t.n; h++) {
      float mx = -INFINITY, z = 0;
      for (int u = first_unit[ti]; u < first_unit[ti + 1]; u++) mx = std::max(mx, mz[u * MAX_TILE + h].m);
      for (int u = first_unit[ti]; u < first_unit[ti + 1]; u++) {
        ChunkHead& c = mz[u * MAX_TILE + h];
        c.m = c.m == -INFINITY ? 0.f : std::exp(c.m - mx);
        z += c.z * c.m;
      }
      const float inv = z > 0 ? 1.0f / z : 0.f;
      for (int u = first_unit[ti]; u < first_unit[ti + 1]; u++) mz[u * MAX_TILE + h].z = mz[u * MAX_TILE + h].m * inv;
      if (!a.out) continue;
      float* o = out_row(a, t.i, t.h0 + h);
      std::fill(o, o + d, 0.f);
      for (int u = first_unit[ti]; u < first_unit[ti + 1]; u++) {
        const float f = mz[u * MAX_TILE + h].z;
        const float* x = partial(u, h);
        for (int c = 0; c < d; c++) o[c] += f * x[c];
      }
    }
  }
  if (!has_stats(a)) return;
  // On this thread (little work; another pool job costs more): each key takes its rows in query order.
  for (size_t ti = 0; ti < tiles.size(); ti++) {
    if (tiles[ti].i < a.stats_from) continue;
    const float wq = query_weight(a, tiles[ti].i);
    for (int u = first_unit[ti]; u < first_unit[ti + 1]; u++)
      for (int h = 0; h < tiles[ti].n; h++) add_stats_avx2(a, tiles[ti].g, units[u].j0, weights(u, h), units[u].n, mz[u * MAX_TILE + h].z * wq);
  }
}

}  // namespace

bool avx2_rows_fit(int d) { return rows_fit(d); }
void attention_avx2_decode(const Attention& a) { attention_decode_avx2(a); }
void attention_avx2_rows(const Attention& a) { attention_rows_avx2(a); }

}  // namespace kvlab::attn
