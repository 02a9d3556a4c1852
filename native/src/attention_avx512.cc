// AVX-512 attention. Work is cut into tiles: up to 8 query heads of one KV group for
// one query row (many-row calls: for up to 8 consecutive rows, at most 24 (row, head) pairs). The pairs of a tile
// share the keys, so every key and value is read once per tile instead of once per pair: at decode that turns
// G passes over a head's cache into one.
//   - decode (few rows): keys straight from the cache, 16 per step, two or four heads per vector (one head
//     alone), reduced with one transpose;
//   - prefill / scoring (many rows): keys packed transposed per 16 (per call, per KV head), so logits are
//     broadcast-FMAs with each packed vector reused by all the tile's pairs.
// Softmax is two-pass in fp32 (max, then exp and sum), probabilities are normalized before the optional
// statistics, and P.V loads each value row once for a batch of the tile's heads.
// GCC 12 warns that _mm512_reduce_add_ps / _mm512_reduce_max_ps read an uninitialized value (its extract
// intrinsics); a false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "attention_tiles.h"
#include "cpu.h"
#include "vecmath.h"
#include "weights.h"

#define AVX512 "avx512f,avx512bw,avx512vl,avx512dq"

namespace kvlab::attn {
namespace {

// Decode prefetches keys and values this many bytes ahead into L1 (an fp32 or a bf16 cache alike).
constexpr long AHEAD = 4096;

// Cache rows are fp32 (KT float) or bf16 bits (KT uint16_t), widened exactly to fp32 on load.
template <typename KT>
inline const KT* keys_of(const HeadView& kv) {
  if constexpr (std::is_same_v<KT, float>) return kv.k;
  else return kv.k16;
}
template <typename KT>
inline const KT* values_of(const HeadView& kv) {
  if constexpr (std::is_same_v<KT, float>) return kv.v;
  else return kv.v16;
}
template <typename KT>
__attribute__((target(AVX512)))
inline __m512 load16(const KT* p) {
  if constexpr (std::is_same_v<KT, float>) return _mm512_loadu_ps(p);
  else return bf16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// Prefetches the bytes [p + ahead, p + ahead + bytes) into L1.
inline void prefetch_ahead(const void* p, long bytes, long ahead) {
  const char* c = static_cast<const char*>(p) + ahead;
  for (long l = 0; l < bytes; l += 64) _mm_prefetch(c + l, _MM_HINT_T0);
}

// ---------- AVX-512 pieces shared by both tiled paths ----------

// Row r: logits [0, padded) -> normalized probabilities; -inf (masked or padding) becomes 0. Keys in
// [padded, len) were never computed and are set to 0.
__attribute__((target(AVX512)))
void softmax_row(float* p, int padded, int len, float mx) {
  const __m512 vm = _mm512_set1_ps(mx), neg = _mm512_set1_ps(-INFINITY);
  __m512 vz = _mm512_setzero_ps();
  for (int j = 0; j < padded; j += KB) {
    const __m512 s = _mm512_loadu_ps(p + j);
    const __mmask16 live = _mm512_cmp_ps_mask(s, neg, _CMP_NEQ_OQ);
    const __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(s, vm)));
    _mm512_storeu_ps(p + j, e);
    vz = _mm512_add_ps(vz, e);
  }
  const float z = _mm512_reduce_add_ps(vz);
  const __m512 inv = _mm512_set1_ps(z > 0 ? 1.0f / z : 0.f);
  for (int j = 0; j < padded; j += KB) _mm512_storeu_ps(p + j, _mm512_mul_ps(_mm512_loadu_ps(p + j), inv));
  for (int j = padded; j < len; j++) p[j] = 0.f;
}

__attribute__((target(AVX512)))
void accumulate_stats(const Attention& a, const Tile& t, Scratch& s, int len) {
  if (!has_stats(a)) return;
  float* mx = a.stat_max.empty() ? nullptr : a.stat_max[t.g];
  float* sum = a.stat_sum.empty() ? nullptr : a.stat_sum[t.g];
  for (int k = 0; k < pairs(t); k++) {
    const int i = t.i + k / t.n;
    if (i < a.stats_from) continue;
    const float wq = a.query_weight ? a.query_weight[i] : 1.0f;
    const __m512 w = _mm512_set1_ps(wq);
    const float* p = s.row(k);
    int j = 0;
    for (; j + KB <= len; j += KB) {
      const __m512 prob = _mm512_mul_ps(_mm512_loadu_ps(p + j), w);
      if (sum) _mm512_storeu_ps(sum + j, _mm512_add_ps(_mm512_loadu_ps(sum + j), prob));
      if (mx) _mm512_storeu_ps(mx + j, _mm512_max_ps(_mm512_loadu_ps(mx + j), prob));
    }
    add_stats_scalar(sum, mx, p, j, len, wq);
  }
}

// Out rows of (row, head) pairs [h0, h0 + HN) of the tile += P . V over keys [j0, j1): each value row is loaded
// once into registers and meets every pair's probability, HN x NV accumulators in registers (kept in the out
// rows between calls). Each pair's sums run over the keys in order.
template <int NV, int HN, typename KT>
__attribute__((target(AVX512)))
void pv_heads(const Attention& a, const Tile& t, Scratch& s, int j0, int j1, int h0, bool ahead) {
  const HeadView& kv = a.heads[t.g];
  const float* p[HN];
  float* o[HN];
  for (int h = 0; h < HN; h++) {
    p[h] = s.row(h0 + h);
    o[h] = pair_out(a, t, h0 + h);
  }
  __m512 acc[HN][NV];
  for (int h = 0; h < HN; h++)
    for (int v = 0; v < NV; v++) acc[h][v] = _mm512_loadu_ps(o[h] + v * 16);
  const KT* vr = values_of<KT>(kv) + long(j0) * NV * 16;
  for (int j = j0; j < j1; j++, vr += NV * 16) {
    if (ahead) prefetch_ahead(vr, NV * 16 * long(sizeof(KT)), AHEAD);
    __m512 row[NV];
    for (int v = 0; v < NV; v++) row[v] = load16(vr + v * 16);
    for (int h = 0; h < HN; h++) {
      const __m512 w = _mm512_set1_ps(p[h][j]);
      for (int v = 0; v < NV; v++) acc[h][v] = _mm512_fmadd_ps(w, row[v], acc[h][v]);
    }
  }
  for (int h = 0; h < HN; h++)
    for (int v = 0; v < NV; v++) _mm512_storeu_ps(o[h] + v * 16, acc[h][v]);
}

template <int NV, int HB, typename KT>
void pv_group(const Attention& a, const Tile& t, Scratch& s, int j0, int j1, int h0, bool ahead) {
  switch (std::min(HB, pairs(t) - h0)) {
    case 1: return pv_heads<NV, 1, KT>(a, t, s, j0, j1, h0, ahead);
    case 2: return pv_heads<NV, std::min(2, HB), KT>(a, t, s, j0, j1, h0, ahead);
    case 3: return pv_heads<NV, std::min(3, HB), KT>(a, t, s, j0, j1, h0, ahead);
    case 4: return pv_heads<NV, std::min(4, HB), KT>(a, t, s, j0, j1, h0, ahead);
    case 5: return pv_heads<NV, std::min(5, HB), KT>(a, t, s, j0, j1, h0, ahead);
    case 6: return pv_heads<NV, std::min(6, HB), KT>(a, t, s, j0, j1, h0, ahead);
    case 7: return pv_heads<NV, std::min(7, HB), KT>(a, t, s, j0, j1, h0, ahead);
    default: return pv_heads<NV, HB, KT>(a, t, s, j0, j1, h0, ahead);
  }
}

// With more heads in a tile than fit in registers at once, values are taken in blocks of this many bytes
// (L1-resident), every head group meeting a block before the next one is read, so each value row comes from
// memory once per tile instead of once per head group.
constexpr long PV_BLOCK_BYTES = 32768;

// P.V of the tile: each value row loaded once for a batch of HB heads (pv_heads).
template <int NV, typename KT>
void pv_tile(const Attention& a, const Tile& t, Scratch& s, int visible) {
  constexpr int HB = NV >= 8 ? 2 : NV >= 4 ? 4 : 8;  // heads per pass: at most 16-24 accumulators
  const int np = pairs(t);
  for (int k = 0; k < np; k++) std::fill_n(pair_out(a, t, k), NV * 16, 0.f);
  const long row_bytes = NV * 16 * long(sizeof(KT));
  const int block = np <= HB ? visible : std::max(1, int(PV_BLOCK_BYTES / row_bytes));
  for (int j0 = 0; j0 < visible; j0 += block) {
    const int j1 = std::min(visible, j0 + block);
    for (int h0 = 0; h0 < np; h0 += HB) pv_group<NV, HB, KT>(a, t, s, j0, j1, h0, h0 == 0);
  }
}

// Any d, one (row, head) pair at a time.
__attribute__((target(AVX512)))
void pv_tile_any(const Attention& a, const Tile& t, Scratch& s, int visible) {
  const HeadView& kv = a.heads[t.g];
  const int d = a.d;
  for (int k = 0; k < pairs(t); k++) {
    float* o = pair_out(a, t, k);
    std::fill(o, o + d, 0.f);
    const float* p = s.row(k);
    for (int j = 0; j < visible; j++) {
      if (p[j] == 0.f) continue;
      const __m512 w = _mm512_set1_ps(p[j]);
      const float* vr = kv.v + long(j) * d;
      int c = 0;
      for (; c + 16 <= d; c += 16) _mm512_storeu_ps(o + c, _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + c), _mm512_loadu_ps(o + c)));
      if (c < d) {
        const __mmask16 m = __mmask16((1u << (d - c)) - 1);
        _mm512_mask_storeu_ps(o + c, m, _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, vr + c), _mm512_maskz_loadu_ps(m, o + c)));
      }
    }
  }
}

template <typename KT>
void pv(const Attention& a, const Tile& t, Scratch& s, int visible) {
  switch (a.d) {
    case 16: return pv_tile<1, KT>(a, t, s, visible);
    case 32: return pv_tile<2, KT>(a, t, s, visible);
    case 48: return pv_tile<3, KT>(a, t, s, visible);
    case 64: return pv_tile<4, KT>(a, t, s, visible);
    case 80: return pv_tile<5, KT>(a, t, s, visible);
    case 96: return pv_tile<6, KT>(a, t, s, visible);
    case 112: return pv_tile<7, KT>(a, t, s, visible);
    case 128: return pv_tile<8, KT>(a, t, s, visible);
    default:
      // d not a multiple of 16 up to 128: the fp32 path only (a bf16 cache is widened first).
      if constexpr (std::is_same_v<KT, float>) return pv_tile_any(a, t, s, visible);
  }
}

// ---------- decode tiles: keys read from the cache once per tile ----------

// f[t] = sum of the 16 lanes of a[t], for t < 16.
__attribute__((target(AVX512)))
inline __m512 reduce16(const __m512* a) {
  __m512 r[8], s[4];
  for (int i = 0; i < 8; i++) r[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; i++) s[i] = _mm512_add_ps(_mm512_shuffle_ps(r[2 * i], r[2 * i + 1], 0x44), _mm512_shuffle_ps(r[2 * i], r[2 * i + 1], 0xEE));
  const __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(s[0], s[1], 0x88), _mm512_shuffle_f32x4(s[0], s[1], 0xDD));
  const __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(s[2], s[3], 0x88), _mm512_shuffle_f32x4(s[2], s[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xDD));
}

__attribute__((target(AVX512)))
float dot_avx512(const float* a, const float* b, int d) {
  __m512 acc = _mm512_setzero_ps();
  int c = 0;
  for (; c + 16 <= d; c += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c), acc);
  if (c < d) {
    const __mmask16 m = __mmask16((1u << (d - c)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + c), _mm512_maskz_loadu_ps(m, b + c), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Decode logits of keys [j, len) one by one (past the last whole block of 16), then padding to a whole block
// (-inf: weight 0); the row maxima are updated.
template <typename KT>
void logits_decode_tail(const Attention& a, const Tile& t, Scratch& s, int j, int len, float* mx) {
  const HeadView& kv = a.heads[t.g];
  alignas(64) float wide[128];
  for (int r = 0; r < t.n; r++) {
    float* p = s.row(r);
    const float* q = q_row(a, t.i, t.h0 + r);
    for (int jj = j; jj < len; jj++) {
      const float* k = kv.k + long(jj) * a.d;
      if constexpr (!std::is_same_v<KT, float>) {
        for (int c = 0; c < a.d; c++) wide[c] = bf16_to_f32(kv.k16[long(jj) * a.d + c]);
        k = wide;
      }
      p[jj] = kv.pos[jj] > a.q_pos[t.i] ? -INFINITY : dot_avx512(q, k, a.d) * a.scale;
      mx[r] = std::max(mx[r], p[jj]);
    }
    for (int jj = len; jj < (len + KB - 1) / KB * KB; jj++) p[jj] = -INFINITY;
  }
}

// Logits of the tile's heads for every key (d % 16 == 0, d <= 128), scaled and masked; returns the row maxima.
template <int NV>
__attribute__((target(AVX512)))
void logits_decode(const Attention& a, const Tile& t, Scratch& s, int len, float* mx) {
  const HeadView& kv = a.heads[t.g];
  const __m512i qp = _mm512_set1_epi32(a.q_pos[t.i]);
  const __m512 scale = _mm512_set1_ps(a.scale), neg = _mm512_set1_ps(-INFINITY);
  __m512 vmax[MAX_TILE];
  for (int r = 0; r < t.n; r++) vmax[r] = neg;
  int j = 0;
  for (; j + KB <= len; j += KB) {
    const float* kb = kv.k + long(j) * NV * 16;
    const __mmask16 hidden = _mm512_cmpgt_epi32_mask(_mm512_loadu_si512(kv.pos + j), qp);
    for (int l = 0; l < KB * NV; l++) _mm_prefetch(reinterpret_cast<const char*>(kb + l * 16) + AHEAD, _MM_HINT_T0);
    for (int r = 0; r < t.n; r++) {
      const float* q = q_row(a, t.i, t.h0 + r);
      __m512 qv[NV];
      for (int v = 0; v < NV; v++) qv[v] = _mm512_loadu_ps(q + v * 16);
      __m512 acc[KB];
      for (int u = 0; u < KB; u++) {
        const float* kr = kb + u * NV * 16;
        __m512 x = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kr));
        for (int v = 1; v < NV; v++) x = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(kr + v * 16), x);
        acc[u] = x;
      }
      const __m512 logits = _mm512_mask_mov_ps(_mm512_mul_ps(reduce16(acc), scale), hidden, neg);
      _mm512_storeu_ps(s.row(r) + j, logits);
      vmax[r] = _mm512_max_ps(vmax[r], logits);
    }
  }
  for (int r = 0; r < t.n; r++) mx[r] = _mm512_reduce_max_ps(vmax[r]);
  logits_decode_tail<float>(a, t, s, j, len, mx);
}

// Decode logits of tiles of 2 or more heads pack several heads in each vector (logits_decode_packed): two per
// vector for tiles of 2, four for more; one head alone takes 16 keys with a 16:1 transpose-reduction
// (logits_decode). While a tile's keys fit in three quarters of a core's L2, the packed logits take each
// block's 16 keys as 8 from each half of the keys, so two key streams are read side by side; past that one
// stream of 16 consecutive keys reads faster.
long split_max_bytes() { return cpu().l2_bytes / 4 * 3; }

// acc[u] holds head r's W = 16 / HP partial sums for key u in lanes W r .. W r + W - 1; rows[r] = head r's 16 sums.
template <int HP>
__attribute__((target(AVX512), always_inline))
inline void reduce_packed(const __m512* acc, __m512* rows) {
  // First sum within 128-bit lanes.
  __m512 p2[8], p4[4];
  for (int m = 0; m < 8; m++)
    p2[m] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * m], acc[2 * m + 1]), _mm512_unpackhi_ps(acc[2 * m], acc[2 * m + 1]));
  for (int m = 0; m < 4; m++)
    p4[m] = _mm512_add_ps(_mm512_shuffle_ps(p2[2 * m], p2[2 * m + 1], 0x44), _mm512_shuffle_ps(p2[2 * m], p2[2 * m + 1], 0xEE));
  // p4[m], 128-bit lane L: keys 4m..4m+3 summed over lane L's 4 partials.
  if constexpr (HP == 4) {
    // Lane L is head L: transpose the 4x4 grid of 128-bit lanes.
    const __m512 t0 = _mm512_shuffle_f32x4(p4[0], p4[1], 0x44), t1 = _mm512_shuffle_f32x4(p4[0], p4[1], 0xEE);
    const __m512 t2 = _mm512_shuffle_f32x4(p4[2], p4[3], 0x44), t3 = _mm512_shuffle_f32x4(p4[2], p4[3], 0xEE);
    rows[0] = _mm512_shuffle_f32x4(t0, t2, 0x88);
    rows[1] = _mm512_shuffle_f32x4(t0, t2, 0xDD);
    rows[2] = _mm512_shuffle_f32x4(t1, t3, 0x88);
    rows[3] = _mm512_shuffle_f32x4(t1, t3, 0xDD);
  } else {
    // Lanes 2r and 2r + 1 are head r's halves: add them, then gather each head's four key groups.
    const __m512 t01 = _mm512_add_ps(_mm512_shuffle_f32x4(p4[0], p4[1], 0x88), _mm512_shuffle_f32x4(p4[0], p4[1], 0xDD));
    const __m512 t23 = _mm512_add_ps(_mm512_shuffle_f32x4(p4[2], p4[3], 0x88), _mm512_shuffle_f32x4(p4[2], p4[3], 0xDD));
    rows[0] = _mm512_shuffle_f32x4(t01, t23, 0x88);
    rows[1] = _mm512_shuffle_f32x4(t01, t23, 0xDD);
  }
}

// On CPUs with AVX512-BF16, decode logits over a bf16 cache multiply its keys as they are (vdpbf16ps: two bf16
// products per lane, exact, accumulated in fp32) by the query split into two bf16 parts, hi = bf16(q) and
// lo = bf16(q - hi), which together hold q to 2^-18 relative: against the keys' own bf16 rounding (2^-9) this
// adds a hundredth. Without AVX512-BF16 the keys are widened to fp32 (the fp32 path's arithmetic).

// The split query of a group of HP heads: part [0] hi, [1] lo; in chunk c, 32-bit lane W r + i holds head r's
// dims E c + 2i and E c + 2i + 1 (E = 2 W), as a key's E dims broadcast to every head's lanes line up with them.
template <int NV, int HP>
struct SplitQuery {
  static constexpr int E = 32 / HP;
  alignas(64) uint16_t part[2][NV * 16 / E][32];
};

template <int NV, int HP>
__attribute__((target(AVX512 ",avx512bf16")))
void split_query(const Attention& a, const Tile& t, int gr, SplitQuery<NV, HP>& q) {
  constexpr int D = NV * 16, E = SplitQuery<NV, HP>::E;
  for (int r = 0; r < HP; r++) {
    const int h = HP * gr + r;
    alignas(64) uint16_t hi[D], lo[D];
    for (int v = 0; v < NV; v++) {
      const __m512 x = h < t.n ? _mm512_loadu_ps(q_row(a, t.i, t.h0 + h) + v * 16) : _mm512_setzero_ps();
      const __m256bh xh = _mm512_cvtneps_pbh(x);
      const __m512 wide = bf16x16_to_f32((__m256i)xh);
      _mm256_store_si256(reinterpret_cast<__m256i*>(hi + v * 16), (__m256i)xh);
      _mm256_store_si256(reinterpret_cast<__m256i*>(lo + v * 16), (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(x, wide)));
    }
    for (int c = 0; c < D / E; c++) {
      std::memcpy(q.part[0][c] + E * r, hi + E * c, E * sizeof(uint16_t));
      std::memcpy(q.part[1][c] + E * r, lo + E * c, E * sizeof(uint16_t));
    }
  }
}

// One block's 16 keys (KS from each of S streams) against a group's split query: rows[r] = head r's 16 logits.
template <int NV, int HP, int S>
__attribute__((target(AVX512 ",avx512bf16"), noinline))
void dot_block(const uint16_t* const* src, const SplitQuery<NV, HP>& q, __m512* rows) {
  constexpr int D = NV * 16, E = SplitQuery<NV, HP>::E, KS = KB / S;
  __m512 acc[KB];
  for (int u = 0; u < KB; u++) acc[u] = _mm512_setzero_ps();
  for (int c = 0; c < D / E; c++) {
    const __m512bh hi = (__m512bh)_mm512_load_si512(q.part[0][c]), lo = (__m512bh)_mm512_load_si512(q.part[1][c]);
    #pragma GCC unroll 16
    for (int u = 0; u < KB; u++) {
      const uint16_t* kr = src[u / KS] + (u % KS) * D + E * c;
      const __m512i k = HP == 4 ? _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kr)))
                                : _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kr)));
      acc[u] = _mm512_dpbf16_ps(acc[u], hi, (__m512bh)k);
      acc[u] = _mm512_dpbf16_ps(acc[u], lo, (__m512bh)k);
    }
  }
  reduce_packed<HP>(acc, rows);
}

// Logits of the tile's heads, HP heads per vector: lanes W r .. W r + W - 1 (W = 16 / HP) hold head r's query at W
// consecutive dims, so one W-float broadcast of a key meets HP heads in one FMA, and 16 keys need a W:1 reduction
// (two shuffle-add stages for W 4, three for W 8, then a transpose of 128-bit lanes) instead of 16:1 per head.
// Heads past the tile's are zero lanes. Same contract as logits_decode.
// A bf16 cache's keys are widened per block into an L1 buffer that the broadcasts then read.
template <int NV, int HP, int S, typename KT>
__attribute__((target(AVX512)))
void logits_decode_packed(const Attention& a, const Tile& t, Scratch& s, int len, float* mx) {
  static_assert(HP == 2 || HP == 4, "two or four heads per vector");
  static_assert(S == 1 || S == 2, "one or two key streams");
  constexpr int D = NV * 16, W = 16 / HP, KS = KB / S;
  const HeadView& kv = a.heads[t.g];
  const int groups = (t.n + HP - 1) / HP;
  alignas(64) float qp[MAX_TILE / HP][D / W][16];
  for (int gr = 0; gr < groups; gr++)
    for (int c = 0; c < D / W; c++)
      for (int r = 0; r < HP; r++)
        for (int i = 0; i < W; i++) {
          const int h = HP * gr + r;
          qp[gr][c][W * r + i] = h < t.n ? q_row(a, t.i, t.h0 + h)[W * c + i] : 0.f;
        }
  constexpr bool bf16 = !std::is_same_v<KT, float>;
  const bool dot = bf16 && cpu().avx512_bf16;
  SplitQuery<NV, HP> split[bf16 ? MAX_TILE / HP : 1];
  if (dot)
    for (int gr = 0; gr < groups; gr++) split_query<NV, HP>(a, t, gr, split[gr]);
  const __m512i qpos = _mm512_set1_epi32(a.q_pos[t.i]);
  const __m512 scale = _mm512_set1_ps(a.scale), neg = _mm512_set1_ps(-INFINITY);
  __m512 vmax[MAX_TILE];
  for (int r = 0; r < t.n; r++) vmax[r] = neg;
  // Block b takes KS consecutive keys from each of S equal parts of the keys, so S streams are read side by side.
  const int nblk = len / KB, part = nblk * KS;
  for (int b = 0; b < nblk; b++) {
    int k0[S];
    const KT* src[S];
    const float* kp[S];
    for (int p = 0; p < S; p++) {
      k0[p] = p * part + b * KS;
      src[p] = keys_of<KT>(kv) + long(k0[p]) * D;
    }
    const __m512i pos =
        S == 1 ? _mm512_loadu_si512(kv.pos + k0[0])
               : _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kv.pos + k0[0]))),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kv.pos + k0[S - 1])), 1);
    const __mmask16 hidden = _mm512_cmpgt_epi32_mask(pos, qpos);
    for (int p = 0; p < S; p++) prefetch_ahead(src[p], KS * D * long(sizeof(KT)), AHEAD);
    // The group's logits scaled, masked and stored; the row maxima updated.
    const auto store_block = [&](int gr, const __m512* rows) __attribute__((target(AVX512))) {
      for (int r = 0; r < HP && HP * gr + r < t.n; r++) {
        const int h = HP * gr + r;
        const __m512 logits = _mm512_mask_mov_ps(_mm512_mul_ps(rows[r], scale), hidden, neg);
        if constexpr (S == 1) {
          _mm512_storeu_ps(s.row(h) + k0[0], logits);
        } else {
          _mm256_storeu_ps(s.row(h) + k0[0], _mm512_castps512_ps256(logits));
          _mm256_storeu_ps(s.row(h) + k0[1], _mm512_extractf32x8_ps(logits, 1));
        }
        vmax[h] = _mm512_max_ps(vmax[h], logits);
      }
    };
    if constexpr (!std::is_same_v<KT, float>) {
      if (dot) {
        for (int gr = 0; gr < groups; gr++) {
          __m512 rows[HP];
          dot_block<NV, HP, S>(src, split[gr], rows);
          store_block(gr, rows);
        }
        continue;
      }
    }
    alignas(64) float wide[std::is_same_v<KT, float> ? 1 : KB * D];
    for (int p = 0; p < S; p++) {
      if constexpr (std::is_same_v<KT, float>) {
        kp[p] = src[p];
      } else {
        for (int l = 0; l < KS * NV; l++) _mm512_store_ps(wide + p * KS * D + l * 16, load16(src[p] + l * 16));
        kp[p] = wide + p * KS * D;
      }
    }
    for (int gr = 0; gr < groups; gr++) {
      __m512 acc[KB];
      for (int u = 0; u < KB; u++) acc[u] = _mm512_setzero_ps();
      for (int v = 0; v < NV; v++) {
        __m512 qv[HP];
        for (int c = 0; c < HP; c++) qv[c] = _mm512_load_ps(qp[gr][HP * v + c]);
        // Unrolled, or GCC keeps acc[] on the stack.
        #pragma GCC unroll 16
        for (int u = 0; u < KB; u++) {
          const float* kr = kp[u / KS] + (u % KS) * D + v * 16;
          #pragma GCC unroll 4
          for (int c = 0; c < HP; c++) {
            const __m512 k = HP == 4 ? _mm512_broadcast_f32x4(_mm_loadu_ps(kr + W * c)) : _mm512_broadcast_f32x8(_mm256_loadu_ps(kr + W * c));
            acc[u] = _mm512_fmadd_ps(qv[c], k, acc[u]);
          }
        }
      }
      __m512 rows[HP];
      reduce_packed<HP>(acc, rows);
      store_block(gr, rows);
    }
  }
  for (int r = 0; r < t.n; r++) mx[r] = _mm512_reduce_max_ps(vmax[r]);
  logits_decode_tail<KT>(a, t, s, nblk * KB, len, mx);
}

template <int NV, int HP, typename KT>
void logits_decode_packed_streams(const Attention& a, const Tile& t, Scratch& s, int len, float* mx) {
  if (len >= 2 * KB && long(len) * NV * 16 * long(sizeof(KT)) <= split_max_bytes()) logits_decode_packed<NV, HP, 2, KT>(a, t, s, len, mx);
  else logits_decode_packed<NV, HP, 1, KT>(a, t, s, len, mx);
}

// A tile of one head takes the per-head logits over an fp32 cache, and over a bf16 cache the two-per-vector
// logits with the second head's lanes zero.
template <int NV, typename KT>
void attend_decode_tile(const Attention& a, const Tile& t, Scratch& s) {
  const HeadView& kv = a.heads[t.g];
  s.reserve(t.n, kv.len);
  float mx[MAX_TILE];
  constexpr bool fp32 = std::is_same_v<KT, float>;
  if (fp32 && t.n == 1) logits_decode<NV>(a, t, s, kv.len, mx);
  else if (t.n <= 2) logits_decode_packed_streams<NV, 2, KT>(a, t, s, kv.len, mx);
  else logits_decode_packed_streams<NV, 4, KT>(a, t, s, kv.len, mx);
  const int padded = (kv.len + KB - 1) / KB * KB;
  for (int r = 0; r < t.n; r++) softmax_row(s.row(r), padded, kv.len, mx[r]);
  if (a.out) pv<KT>(a, t, s, kv.len);
  accumulate_stats(a, t, s, kv.len);
}

// ---------- prefill tiles: keys packed transposed per 16, logits by broadcast-FMA ----------

// Query rows per many-row tile of R heads: R x QR accumulators, at most 24.
constexpr int rows_per_tile(int R) { return R >= 7 ? 3 : R >= 5 ? 4 : R == 4 ? 6 : 8; }
constexpr int MAX_PAIRS = 24;

// Logits of a tile (t.rows <= QR query rows x R heads) against keys packed transposed: each packed vector of 16
// keys meets every (row, head) pair in registers, so the keys are read once per QR rows. Rows past t.rows repeat
// the last one and are not stored.
template <int R, int QR>
__attribute__((target(AVX512)))
void logits_blocked(const Attention& a, const Tile& t, const PackedKeys& pk, Scratch& s, int nblocks, float* mx) {
  const int d = a.d;
  // The pairs' queries interleaved per dimension, so every broadcast below is one base pointer plus a constant
  // (24 separate query pointers do not fit in registers: GCC reloaded one from the stack before each FMA).
  constexpr int P = QR * R;
  thread_local AlignedVector<float> qbuf;
  if (qbuf.size() < size_t(d) * P) qbuf.resize(size_t(d) * P);
  float* qt = qbuf.data();
  __m512i qp[QR];
  for (int ri = 0; ri < QR; ri++) {
    const int i = t.i + std::min(ri, t.rows - 1);
    qp[ri] = _mm512_set1_epi32(a.q_pos[i]);
    for (int r = 0; r < R; r++) {
      const float* q = q_row(a, i, t.h0 + r);
      for (int c = 0; c < d; c++) qt[c * P + ri * R + r] = q[c];
    }
  }
  const __m512 scale = _mm512_set1_ps(a.scale), neg = _mm512_set1_ps(-INFINITY);
  __m512 vmax[QR][R];
  for (int ri = 0; ri < QR; ri++)
    for (int r = 0; r < R; r++) vmax[ri][r] = neg;
  for (int b = 0; b < nblocks; b++) {
    const float* kt = pk.kt.data() + size_t(b) * d * KB;
    __m512 acc[QR][R];
    for (int ri = 0; ri < QR; ri++)
      for (int r = 0; r < R; r++) acc[ri][r] = _mm512_setzero_ps();
    for (int c = 0; c < d; c++) {
      const __m512 kv = _mm512_loadu_ps(kt + c * KB);
      const float* qc = qt + c * P;
      for (int ri = 0; ri < QR; ri++)
        for (int r = 0; r < R; r++) acc[ri][r] = _mm512_fmadd_ps(_mm512_set1_ps(qc[ri * R + r]), kv, acc[ri][r]);
    }
    const __m512i pos = _mm512_loadu_si512(pk.pos.data() + b * KB);
    for (int ri = 0; ri < QR && ri < t.rows; ri++) {
      const __mmask16 hidden = _mm512_cmpgt_epi32_mask(pos, qp[ri]);
      for (int r = 0; r < R; r++) {
        const __m512 logits = _mm512_mask_mov_ps(_mm512_mul_ps(acc[ri][r], scale), hidden, neg);
        _mm512_storeu_ps(s.row(ri * R + r) + b * KB, logits);
        vmax[ri][r] = _mm512_max_ps(vmax[ri][r], logits);
      }
    }
  }
  for (int ri = 0; ri < t.rows; ri++)
    for (int r = 0; r < R; r++) mx[ri * R + r] = _mm512_reduce_max_ps(vmax[ri][r]);
}

template <int R>
void logits_blocked_tile(const Attention& a, const Tile& t, const PackedKeys& pk, Scratch& s, int nblocks, float* mx) {
  if (t.rows == 1) logits_blocked<R, 1>(a, t, pk, s, nblocks, mx);
  else logits_blocked<R, rows_per_tile(R)>(a, t, pk, s, nblocks, mx);
}

// A tile of one or more query rows: logits for all its (row, head) pairs, softmax per pair, P.V over the keys
// any row sees (the others' probabilities there are 0), statistics per pair in row order.
void attend_blocked_tile(const Attention& a, const Tile& t, const PackedKeys& pk, Scratch& s) {
  const HeadView& kv = a.heads[t.g];
  s.reserve(pairs(t), std::max(kv.len, pk.blocks * KB));
  int visible = 0;
  for (int ri = 0; ri < t.rows; ri++) visible = std::max(visible, visible_keys(kv, pk.sorted, a.q_pos[t.i + ri]));
  const int nblocks = (visible + KB - 1) / KB;
  float mx[MAX_PAIRS];
  switch (t.n) {
    case 1: logits_blocked_tile<1>(a, t, pk, s, nblocks, mx); break;
    case 2: logits_blocked_tile<2>(a, t, pk, s, nblocks, mx); break;
    case 3: logits_blocked_tile<3>(a, t, pk, s, nblocks, mx); break;
    case 4: logits_blocked_tile<4>(a, t, pk, s, nblocks, mx); break;
    case 5: logits_blocked_tile<5>(a, t, pk, s, nblocks, mx); break;
    case 6: logits_blocked_tile<6>(a, t, pk, s, nblocks, mx); break;
    case 7: logits_blocked_tile<7>(a, t, pk, s, nblocks, mx); break;
    default: logits_blocked_tile<8>(a, t, pk, s, nblocks, mx); break;
  }
  for (int k = 0; k < pairs(t); k++) softmax_row(s.row(k), nblocks * KB, kv.len, mx[k]);
  if (a.out && a.bf16) pv<uint16_t>(a, t, s, std::min(visible, kv.len));
  else if (a.out) pv<float>(a, t, s, std::min(visible, kv.len));
  accumulate_stats(a, t, s, kv.len);
}

// ---------- scheduling ----------

// Runs unit(g, k, scratch) for every KV head g and k < per_kv on the pool. With statistics each KV head's units all
// run on one thread (its statistics are accumulated by that thread alone); otherwise the n_kv x per_kv units are
// split evenly, KV-head-major (a thread's consecutive units read the same keys and values).
template <typename U>
void run_kv_units(const Attention& a, long per_kv, U unit) {
  if (has_stats(a)) {
    pool_run([&](int t, int T) {
      Scratch& s = thread_scratch();
      long g0, g1;
      split_range(a.n_kv, t, T, &g0, &g1);
      for (long g = g0; g < g1; g++)
        for (long k = 0; k < per_kv; k++) unit(int(g), k, s);
    });
    return;
  }
  pool_run([&](int t, int T) {
    Scratch& s = thread_scratch();
    long u0, u1;
    split_range(long(a.n_kv) * per_kv, t, T, &u0, &u1);
    for (long u = u0; u < u1; u++) unit(int(u / per_kv), u % per_kv, s);
  });
}

// Runs every tile on the pool. With statistics a thread owns whole KV heads (no two threads write one
// statistics array); otherwise (KV head, query row) pairs are split evenly.
template <typename F>
void run_tiles(const Attention& a, F f) {
  if (has_stats(a) || long(a.n_kv) * a.nq >= pool_threads()) {
    run_kv_units(a, a.nq, [&](int g, long i, Scratch& s) { for_tiles_of(a, g, int(i), [&](const Tile& tile) { f(tile, s); }); });
    return;
  }
  // Fewer (KV head, query) pairs than threads (e.g. one KV head at decode): split the heads instead.
  pool_run([&](int t, int T) {
    Scratch& s = thread_scratch();
    const int G = a.n_heads / a.n_kv;
    const long rows = long(a.n_heads) * a.nq;
    long r0, r1;
    split_range(rows, t, T, &r0, &r1);
    // Rows ordered (i, g, head in group); cut into tiles that stay inside one (i, g).
    long r = r0;
    while (r < r1) {
      const int i = int(r / a.n_heads), h = int(r % a.n_heads), g = h / G;
      const long end = std::min<long>({r1, long(i) * a.n_heads + long(g + 1) * G, r + MAX_TILE});
      f(Tile{g, i, h, int(end - r)}, s);
      r = end;
    }
  });
}

// Every decode tile of the call (d a multiple of 16 up to 128).
template <typename KT>
void attend_decode_tiles(const Attention& a) {
  run_tiles(a, [&](const Tile& t, Scratch& s) {
    switch (a.d / 16) {
      case 1: return attend_decode_tile<1, KT>(a, t, s);
      case 2: return attend_decode_tile<2, KT>(a, t, s);
      case 3: return attend_decode_tile<3, KT>(a, t, s);
      case 4: return attend_decode_tile<4, KT>(a, t, s);
      case 5: return attend_decode_tile<5, KT>(a, t, s);
      case 6: return attend_decode_tile<6, KT>(a, t, s);
      case 7: return attend_decode_tile<7, KT>(a, t, s);
      default: return attend_decode_tile<8, KT>(a, t, s);
    }
  });
}


// Many-row calls group consecutive query rows into tiles, so packed keys and values are read once per group
// instead of once per row. Runs many-row tiles (G heads x up to rows_per_tile(G) rows) where P.V takes them (d a multiple of 16 up to
// 128, values once per head batch) and there are enough for every thread; false otherwise (nothing run).
template <typename F>
bool run_row_tiles(const Attention& a, F f) {
  const int G = a.n_heads / a.n_kv;
  if (a.d % 16 != 0 || a.d > 128 || G > MAX_TILE) return false;
  const int QR = rows_per_tile(G);
  const long groups = (a.nq + QR - 1) / QR;
  const auto tile = [&](int g, long grp) { return Tile{g, int(grp * QR), g * G, G, int(std::min<long>(QR, a.nq - grp * QR))}; };
  if (!has_stats(a) && long(a.n_kv) * groups < pool_threads()) return false;
  run_kv_units(a, groups, [&](int g, long grp, Scratch& s) { f(tile(g, grp), s); });
  return true;
}

}  // namespace

bool avx512_reads_bf16(const Attention& a) {
  return a.d % 16 == 0 && a.d <= 128;
}

void attention_avx512(const Attention& a) {
  const bool decode_shape = a.d % 16 == 0 && a.d <= 128 && a.nq <= 2;
  if (decode_shape) return a.bf16 ? attend_decode_tiles<uint16_t>(a) : attend_decode_tiles<float>(a);
  std::vector<PackedKeys> fresh;
  const std::vector<PackedKeys>& packed = pack_all_keys(a, fresh);
  const auto tile = [&](const Tile& t, Scratch& s) { attend_blocked_tile(a, t, packed[t.g], s); };
  if (!run_row_tiles(a, tile)) run_tiles(a, tile);
}

}  // namespace kvlab::attn
