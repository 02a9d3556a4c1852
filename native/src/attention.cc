// Attention over ragged per-KV-head caches. Work is cut into tiles: up to 8 query heads of one KV group for
// one query row (many-row calls: for up to 8 consecutive rows, at most 24 (row, head) pairs). The pairs of a tile
// share the keys, so every key and value is read once per tile instead of once per pair: at decode that turns
// G passes over a head's cache into one.
//   - decode (few rows): keys straight from the cache, 16 per step, two or four heads per vector (one head
//     alone), reduced with one transpose;
//   - prefill / scoring (many rows): keys packed transposed per 16 (per call, per KV head), so logits are
//     broadcast-FMAs with each packed vector reused by all the tile's pairs.
// Softmax is two-pass in fp32 (max, then exp and sum), probabilities are normalized before the optional
// statistics, and P.V runs over key blocks with the tile's heads inner.
// The AVX2 path (at the end) differs in its units of work; see there.
// GCC 12 warns that _mm512_reduce_add_ps / _mm512_reduce_max_ps read an uninitialized value (its extract
// intrinsics); a false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "attention.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "aligned.h"
#include "cpu.h"
#include "pool.h"
#include "vecmath.h"
#include "weights.h"

#define AVX512 "avx512f,avx512bw,avx512vl,avx512dq"

namespace kvlab {
namespace {

constexpr int KB = 16;       // keys per block
constexpr int MAX_TILE = 8;  // query heads per tile
// Tuning (attn_ahead): AVX-512 decode prefetches keys and values this many bytes ahead into L1 (0: off). On a
// Zen 5, llama-3.2-1b at 8K from DRAM, alternating: 20.2 vs 21.3 ms and 17.9 vs 20.2 ms per token (2048 vs off);
// 4096 and 8192 were no better. The AVX2 flash-decoding kernels ran no faster there (22.2-22.8 vs 21.0 ms).
// Session 12, the faster kernels of since, alternating on a busy host: 4096 vs 2048 1.03-1.11x on the 1B's cache
// at 8K (11.9 vs 13.0 ms), 1.035x qwen2.5-0.5b's at 8K, 1.03x d 128 at 4K, 1.00-1.03x at 1K; 8192 1.10x, 12288 1.04x.
long AVX512_AHEAD = 4096;
// Tuning (attn_ahead_bf16): the same for a bf16 cache. 1B's cache at 8K, split-query logits, alternating: 4096
// 6.30-6.55 vs 2048 6.84-6.91 ms per token (8192 6.39-6.44); at 1K no difference.
long AVX512_AHEAD_BF16 = 4096;
template <typename KT>
inline long ahead_bytes() { return std::is_same_v<KT, float> ? AVX512_AHEAD : AVX512_AHEAD_BF16; }
// Tuning (attn_pv_heads): P.V loads each value row once for a batch of heads (pv_heads) rather than once per
// head from L1 (pv_tile_blocks). Zen 5, llama-3.2-1b at 8K from DRAM, alternating: 13.6 vs 16.0 ms per token;
// L2-resident on one thread 1.39x. Reading each key row once for two heads in the logits (queries of both in
// registers, 8 keys per reduction) was 1.04x L2-resident but 0.84x from DRAM, so the logits stay per head.
int PV_HEADS = 1;

struct Tile {
  int g = 0;     // KV head
  int i = 0;     // (first) query row
  int h0 = 0;    // first query head
  int n = 0;     // heads h0 .. h0 + n - 1
  int rows = 1;  // query rows i .. i + rows - 1 (many-row calls); scratch row k is (row k / n, head k % n)
};

inline const float* q_row(const Attention& a, int i, int h) { return a.q + (long(i) * a.n_heads + h) * a.d; }
inline float* out_row(const Attention& a, int i, int h) { return a.out + (long(i) * a.n_heads + h) * a.d; }
inline bool has_stats(const Attention& a) { return !a.stat_max.empty() || !a.stat_sum.empty(); }
inline int pairs(const Tile& t) { return t.n * t.rows; }
inline float* pair_out(const Attention& a, const Tile& t, int k) { return out_row(a, t.i + k / t.n, t.h0 + k % t.n); }

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

// Keys visible to query i in a head whose positions ascend: a prefix. Otherwise all (masked one by one).
int visible_keys(const HeadView& kv, bool sorted, int32_t qp) {
  if (!sorted) return kv.len;
  return int(std::upper_bound(kv.pos, kv.pos + kv.len, qp) - kv.pos);
}

bool ascending(const HeadView& kv) {
  for (int j = 1; j < kv.len; j++)
    if (kv.pos[j] < kv.pos[j - 1]) return false;
  return true;
}

// Per-row scratch: probabilities [n][stride].
struct Scratch {
  AlignedVector<float> p;
  long stride = 0;
  float* row(int r) { return p.data() + r * stride; }
  void reserve(int rows, long len) {
    stride = (len + 2 * KB + 15) / 16 * 16;
    if (p.size() < size_t(rows * stride)) p.resize(size_t(rows * stride));
  }
};

// ---------- portable path, one row at a time ----------

void attend_row_scalar(const Attention& a, int h, int i, Scratch& s) {
  const int G = a.n_heads / a.n_kv, g = h / G, d = a.d;
  const HeadView& kv = a.heads[g];
  const float* q = q_row(a, i, h);
  const int32_t qp = a.q_pos[i];
  s.reserve(1, kv.len);
  float* p = s.row(0);
  float mx = -INFINITY;
  for (int j = 0; j < kv.len; j++) {
    if (kv.pos[j] > qp) {
      p[j] = -INFINITY;
      continue;
    }
    float dot = 0;
    const float* k = kv.k + long(j) * d;
    for (int c = 0; c < d; c++) dot += q[c] * k[c];
    p[j] = dot * a.scale;
    mx = std::max(mx, p[j]);
  }
  double z = 0;
  for (int j = 0; j < kv.len; j++) {
    p[j] = p[j] == -INFINITY ? 0.f : std::exp(p[j] - mx);
    z += p[j];
  }
  const float inv = z > 0 ? float(1.0 / z) : 0.f;
  for (int j = 0; j < kv.len; j++) p[j] *= inv;
  if (a.out) {
    float* o = out_row(a, i, h);
    std::fill(o, o + d, 0.f);
    for (int j = 0; j < kv.len; j++) {
      if (p[j] == 0.f) continue;
      const float* v = kv.v + long(j) * d;
      for (int c = 0; c < d; c++) o[c] += p[j] * v[c];
    }
  }
  if (i >= a.stats_from && has_stats(a)) {
    float* mxo = a.stat_max.empty() ? nullptr : a.stat_max[g];
    float* sum = a.stat_sum.empty() ? nullptr : a.stat_sum[g];
    const float wq = a.query_weight ? a.query_weight[i] : 1.0f;
    for (int j = 0; j < kv.len; j++) {
      const float prob = p[j] * wq;
      if (sum) sum[j] += prob;
      if (mxo && prob > mxo[j]) mxo[j] = prob;
    }
  }
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

// Statistics of keys [j0, n): probability p[j] * f added to sum[j] and kept in mx[j] if larger (either may be null).
void add_stats_scalar(float* sum, float* mx, const float* p, int j0, int n, float f) {
  for (int j = j0; j < n; j++) {
    const float prob = p[j] * f;
    if (sum) sum[j] += prob;
    if (mx && prob > mx[j]) mx[j] = prob;
  }
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

// out rows of the tile = P . V over keys [0, visible). Keys in blocks of 64 outer, heads inner, so each value
// row is fetched from memory once per tile; per head NV = d / 16 accumulators live in registers.
template <int NV>
__attribute__((target(AVX512)))
void pv_tile_blocks(const Attention& a, const Tile& t, Scratch& s, int visible) {
  const HeadView& kv = a.heads[t.g];
  constexpr int KEYS = 64;
  __m512 acc[MAX_TILE][NV];
  for (int r = 0; r < t.n; r++)
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
  for (int j0 = 0; j0 < visible; j0 += KEYS) {
    const int j1 = std::min(visible, j0 + KEYS);
    if (AVX512_AHEAD) {
      const char* vb = reinterpret_cast<const char*>(kv.v + long(j0) * NV * 16) + AVX512_AHEAD;
      for (long l = 0; l < long(j1 - j0) * NV; l++) _mm_prefetch(vb + 64 * l, _MM_HINT_T0);
    }
    for (int r = 0; r < t.n; r++) {
      const float* p = s.row(r);
      __m512 ac[NV];
      for (int v = 0; v < NV; v++) ac[v] = acc[r][v];
      for (int j = j0; j < j1; j++) {
        const __m512 w = _mm512_set1_ps(p[j]);
        const float* vr = kv.v + long(j) * NV * 16;
        for (int v = 0; v < NV; v++) ac[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + v * 16), ac[v]);
      }
      for (int v = 0; v < NV; v++) acc[r][v] = ac[v];
    }
  }
  for (int r = 0; r < t.n; r++) {
    float* o = out_row(a, t.i, t.h0 + r);
    for (int v = 0; v < NV; v++) _mm512_storeu_ps(o + v * 16, acc[r][v]);
  }
}

// Out rows of (row, head) pairs [h0, h0 + HN) of the tile += P . V over keys [j0, j1): each value row is loaded
// once into registers and meets every pair's probability, HN x NV accumulators in registers (kept in the out
// rows between calls). Each pair's sums run over the keys in order, as in pv_tile_blocks.
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
    if (ahead) prefetch_ahead(vr, NV * 16 * long(sizeof(KT)), ahead_bytes<KT>());
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

// Tuning (attn_pv_block): with more heads in a tile than fit in registers at once, values are taken in blocks
// of this many bytes (L1-resident), every head group meeting a block before the next one is read, so each value
// row comes from memory once per tile instead of once per head group (0: each group streams all the values).
// Zen 5, decode from DRAM, alternating, 0 vs 32768: qwen2.5-0.5b at 8K (7 heads per KV head) 9.29 vs 8.49 ms,
// llama-3-8b heads at 4K (d 128: 2 heads per batch) 18.89 vs 17.43 ms; 16384 was between. One batch: no change.
long PV_BLOCK_BYTES = 32768;

// A bf16 cache is only read here with PV_HEADS on (attention() widens it for the other paths).
template <int NV, typename KT>
void pv_tile(const Attention& a, const Tile& t, Scratch& s, int visible) {
  if constexpr (std::is_same_v<KT, float>)
    if (!PV_HEADS) return pv_tile_blocks<NV>(a, t, s, visible);
  constexpr int HB = NV >= 8 ? 2 : NV >= 4 ? 4 : 8;  // heads per pass: at most 16-24 accumulators
  const int np = pairs(t);
  for (int k = 0; k < np; k++) std::fill_n(pair_out(a, t, k), NV * 16, 0.f);
  const long row_bytes = NV * 16 * long(sizeof(KT));
  const int block = np <= HB || PV_BLOCK_BYTES <= 0 ? visible : std::max(1, int(PV_BLOCK_BYTES / row_bytes));
  for (int j0 = 0; j0 < visible; j0 += block) {
    const int j1 = std::min(visible, j0 + block);
    for (int h0 = 0; h0 < np; h0 += HB) pv_group<NV, HB, KT>(a, t, s, j0, j1, h0, ahead_bytes<KT>() && h0 == 0);
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
    if (AVX512_AHEAD)
      for (int l = 0; l < KB * NV; l++) _mm_prefetch(reinterpret_cast<const char*>(kb + l * 16) + AVX512_AHEAD, _MM_HINT_T0);
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

// Tuning (attn_packed): decode logits with several heads packed in each vector (below) for tiles of 2 or more
// heads: two per vector for tiles of 2, four for more; 0: per head with a 16-key transpose-reduction
// (logits_decode). Zen 5 from DRAM, alternating, per token's attention: llama-3.2-1b at 8K 11.95 vs 15.13 ms,
// qwen2.5-0.5b 6.02 vs 7.77 ms, 4 heads of d 128 1.05x; 2 heads of d 128 11.82 vs 13.95 ms, of d 64 1.03x; 5 heads
// 7.09 vs 7.65 ms (three of eight lanes idle) and 7.02 at two per vector. Four per vector beat two at 4 heads
// (12.16 vs 13.02 ms) and tied at 7.
int PACKED_LOGITS = 1;
// Tuning (attn_split, attn_split_max_bytes): when a tile's keys take at most SPLIT_MAX_BYTES, the packed logits take
// each block's 16 keys as 8 from each half of the keys, so two key streams are read side by side (attn_split 0:
// always 16 consecutive keys). Zen 5 from DRAM, alternating, 32:8 heads of d 64 (llama-3.2-1b's cache): two
// streams 1.03-1.06x at 1K and 2K keys, 0.99x at 4K, 0.91-0.95x at 8K; qwen2.5-0.5b 1.07x at 2K, 0.96-0.98x at
// 8K; d 128 at 4K 0.95x. (Before the key loop below was unrolled, with its accumulators on the stack, two
// streams won at 8K too: 13.48 vs 14.27 ms.) Two value streams in P.V gave nothing (12.55 vs 12.52 ms, 1B at 8K).
int SPLIT_KEYS = 1;
long SPLIT_MAX_BYTES = 768 << 10;

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

// Tuning (attn_bf16_dot): on CPUs with AVX512-BF16, decode logits over a bf16 cache multiply its keys as they are
// (vdpbf16ps: two bf16 products per lane, exact, accumulated in fp32) by the query split into two bf16 parts,
// hi = bf16(q) and lo = bf16(q - hi), which together hold q to 2^-18 relative: against the keys' own bf16
// rounding (2^-9) this adds a hundredth. 0: keys widened to fp32 (the fp32 path's arithmetic, same bits as an
// fp32 cache holding the widened values).
int BF16_DOT = 1;

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
  const bool dot = bf16 && BF16_DOT && cpu().avx512_bf16;
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
    if (ahead_bytes<KT>())
      for (int p = 0; p < S; p++) prefetch_ahead(src[p], KS * D * long(sizeof(KT)), ahead_bytes<KT>());
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
        // Unrolled, or GCC keeps acc[] on the stack. Zen 5, both builds in one process, alternating: the unrolled
        // one 1.08-1.09x on the 1B's cache at 1K, 1.02-1.04x at 8K, 1.05-1.09x on qwen2.5-0.5b's at 8K.
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
  if (SPLIT_KEYS && len >= 2 * KB && long(len) * NV * 16 * long(sizeof(KT)) <= SPLIT_MAX_BYTES) logits_decode_packed<NV, HP, 2, KT>(a, t, s, len, mx);
  else logits_decode_packed<NV, HP, 1, KT>(a, t, s, len, mx);
}

// A bf16 cache comes here with PACKED_LOGITS and PV_HEADS on (see attention()); a tile of
// one head then takes the two-per-vector logits with the second head's lanes zero.
template <int NV, typename KT>
void attend_decode_tile(const Attention& a, const Tile& t, Scratch& s) {
  const HeadView& kv = a.heads[t.g];
  s.reserve(t.n, kv.len);
  float mx[MAX_TILE];
  constexpr bool fp32 = std::is_same_v<KT, float>;
  if (fp32 && (!PACKED_LOGITS || t.n == 1)) logits_decode<NV>(a, t, s, kv.len, mx);
  else if (t.n <= 2) logits_decode_packed_streams<NV, 2, KT>(a, t, s, kv.len, mx);
  else logits_decode_packed_streams<NV, 4, KT>(a, t, s, kv.len, mx);
  const int padded = (kv.len + KB - 1) / KB * KB;
  for (int r = 0; r < t.n; r++) softmax_row(s.row(r), padded, kv.len, mx[r]);
  if (a.out) pv<KT>(a, t, s, kv.len);
  accumulate_stats(a, t, s, kv.len);
}

// ---------- prefill tiles: keys packed transposed per 16, logits by broadcast-FMA ----------

struct PackedKeys {
  AlignedVector<float> kt;   // [blocks][d][16]
  std::vector<int32_t> pos;  // [blocks * 16], padding = INT32_MAX (never visible)
  int blocks = 0;
  bool sorted = true;
};

// Tuning (attn_keep_packed): prefill/scoring reuse their packed keys' buffers across calls (0: fresh per call).
// With KV-head-major tiles (attn_kv_major) on a Zen 5, 2 threads, 256 queries x 4K keys of 32:8 heads: 35.5 ms
// against 69.4 with neither (50.4 with only KV-head-major tiles, 54.3 with only kept buffers); 512 x 512: 5.3 vs
// 7.2 ms; qwen's 14:2 at 8K keys 33.6 vs 35.5 ms. Same bits either way.
int KEEP_PACKED = 1;
constexpr long KEPT_PACKED_MAX = 64L << 20;

void pack_keys(const HeadView& kv, int d, PackedKeys& pk) {
  pk.blocks = (kv.len + KB - 1) / KB;
  const size_t n = size_t(pk.blocks) * d * KB + 16;
  // Kept across calls (no fresh pages to fault in and zero per layer). The last block's padding lanes are
  // masked by their positions whatever they hold; they are zeroed anyway, as fresh buffers were.
  if (pk.kt.size() < n || !KEEP_PACKED) pk.kt.assign(n, 0.f);
  else std::fill(pk.kt.begin() + size_t(kv.len / KB) * d * KB, pk.kt.begin() + n, 0.f);
  pk.pos.assign(size_t(pk.blocks) * KB, INT32_MAX);
  pk.sorted = ascending(kv);
  for (int j = 0; j < kv.len; j++) {
    float* dst = pk.kt.data() + size_t(j / KB) * d * KB + j % KB;
    if (kv.k16) {
      const uint16_t* src = kv.k16 + long(j) * d;
      for (int c = 0; c < d; c++) dst[c * KB] = bf16_to_f32(src[c]);
    } else {
      const float* src = kv.k + long(j) * d;
      for (int c = 0; c < d; c++) dst[c * KB] = src[c];
    }
    pk.pos[j] = kv.pos[j];
  }
}

// Every KV head's keys packed (on the pool), in the calling thread's kept buffers up to KEPT_PACKED_MAX bytes
// (fresh buffers per call cost a page fault per 4 KiB, with zeroing, on every layer; past the cap the attention
// dwarfs that cost), otherwise in `fresh`.
std::vector<PackedKeys>& pack_all_keys(const Attention& a, std::vector<PackedKeys>& fresh) {
  static thread_local std::vector<PackedKeys> kept;
  long need = 0;
  for (int g = 0; g < a.n_kv; g++) need += (long(a.heads[g].len) + KB - 1) / KB * KB * a.d * long(sizeof(float));
  const bool keep = KEEP_PACKED && need <= KEPT_PACKED_MAX;
  if (!keep) std::vector<PackedKeys>().swap(kept);
  std::vector<PackedKeys>& packed = keep ? kept : fresh;
  if (packed.size() < size_t(a.n_kv)) packed.resize(size_t(a.n_kv));
  pool_run([&](int t, int T) {
    long g0, g1;
    split_range(a.n_kv, t, T, &g0, &g1);
    for (long g = g0; g < g1; g++) pack_keys(a.heads[g], a.d, packed[g]);
  });
  return packed;
}

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

// The tiles of KV head g for query row i: its G query heads in chunks of at most MAX_TILE (balanced).
template <typename F>
void for_tiles_of(const Attention& a, int g, int i, F f) {
  const int G = a.n_heads / a.n_kv;
  const int chunks = (G + MAX_TILE - 1) / MAX_TILE;
  for (int c = 0; c < chunks; c++) {
    long h0, h1;
    split_range(G, c, chunks, &h0, &h1);
    f(Tile{g, i, g * G + int(h0), int(h1 - h0)});
  }
}

// Runs every tile on the pool. With statistics a thread owns whole KV heads (no two threads write one
// statistics array); otherwise (KV head, query row) pairs are split evenly.
// Per-thread probability rows, kept across calls: a fresh buffer per call is a large allocation (fresh pages,
// faulted in and zeroed) on every layer.
Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}

// Tuning (attn_kv_major): tiles of (KV head, query row) pairs split KV-head-major over the threads (0: row-major).
int KV_MAJOR = 1;

// Runs unit(g, k, scratch) for every KV head g and k < per_kv on the pool. With statistics each KV head's units all
// run on one thread (its statistics are accumulated by that thread alone); otherwise the n_kv x per_kv units are
// split evenly, KV-head-major (a thread's consecutive units read the same keys and values) or, with kv_major
// false, row-major.
template <typename U>
void run_kv_units(const Attention& a, long per_kv, bool kv_major, U unit) {
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
    for (long u = u0; u < u1; u++) {
      if (kv_major) unit(int(u / per_kv), u % per_kv, s);
      else unit(int(u % a.n_kv), u / a.n_kv, s);
    }
  });
}

template <typename F>
void run_tiles(const Attention& a, F f) {
  if (has_stats(a) || long(a.n_kv) * a.nq >= pool_threads()) {
    run_kv_units(a, a.nq, KV_MAJOR, [&](int g, long i, Scratch& s) { for_tiles_of(a, g, int(i), [&](const Tile& tile) { f(tile, s); }); });
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

// Tuning (attn_many_rows): many-row calls group consecutive query rows into tiles (rows_per_tile), so packed keys
// and values are read once per group instead of once per row (0: one row per tile). Zen 5, 2 threads, alternating:
// 256 queries x 8K keys of qwen's 14:2 heads 32.6 vs 41.4 ms, x 4K keys of 32:8 heads 31.7 vs 37.2 ms; prefill
// of 4K tokens of qwen2.5-0.5b 8.24 vs 9.41 s, 2K of llama-3.2-1b 8.95 vs 10.2 s. Same bits.
int MANY_ROWS = 1;

// Runs many-row tiles (G heads x up to rows_per_tile(G) rows) where P.V takes them (d a multiple of 16 up to
// 128, values once per head batch) and there are enough for every thread; false otherwise (nothing run).
template <typename F>
bool run_row_tiles(const Attention& a, F f) {
  const int G = a.n_heads / a.n_kv;
  if (!MANY_ROWS || !PV_HEADS || a.d % 16 != 0 || a.d > 128 || G > MAX_TILE) return false;
  const int QR = rows_per_tile(G);
  const long groups = (a.nq + QR - 1) / QR;
  const auto tile = [&](int g, long grp) { return Tile{g, int(grp * QR), g * G, G, int(std::min<long>(QR, a.nq - grp * QR))}; };
  if (!has_stats(a) && long(a.n_kv) * groups < pool_threads()) return false;
  run_kv_units(a, groups, true, [&](int g, long grp, Scratch& s) { f(tile(g, grp), s); });
  return true;
}

// ---------- AVX2 path ----------
// Both products are register panels of up to 6 rows by 16 columns, fed by broadcasts from the rows and
// vector loads from the other operand: Q . K^T against keys packed transposed (many query rows), P . V
// against the cache's value rows. At decode the keys are read straight from the cache and the keys of a
// tile are cut into chunks of DECODE_CHUNK, attended in parallel and combined in a fixed order (flash-
// decoding), so a call has work for every thread whatever its number of KV heads. Units of work are
// independent, so results do not depend on which thread runs them: decode chunks are split into
// contiguous ranges (each thread streams consecutive keys), many-row units go to whichever thread is free.

constexpr int PANEL = 6;
constexpr int DECODE_CHUNK = 256;
bool ROW_KERNELS = true;      // tuning (attn_rows): the row-order decode kernels below (see rows_fit)
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

inline float query_weight(const Attention& a, int i) { return a.query_weight ? a.query_weight[i] : 1.0f; }

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
bool rows_fit(int d) { return ROW_KERNELS && d % 8 == 0 && (d <= 64 || d == 96 || d == 128); }
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

// A bf16 cache's rows widened to fp32, per KV head, in the calling thread's kept buffers, for the paths that read
// fp32 only (AVX2 prefill and head sizes the row kernels do not take, scalar, on AVX-512 d not a multiple of 16
// or above 128, the per-head knobs). The buffers grow to the largest call's heads.
Attention widened(const Attention& a) {
  static thread_local std::vector<AlignedVector<float>> kept;
  std::vector<AlignedVector<float>>& wide = kept;  // the pool's workers must see this thread's buffers
  if (wide.size() < size_t(2 * a.n_kv)) wide.resize(size_t(2 * a.n_kv));
  Attention w = a;
  w.bf16 = false;
  for (int g = 0; g < a.n_kv; g++) {
    const size_t n = size_t(a.heads[g].len) * a.d;
    if (wide[2 * g].size() < n) wide[2 * g].resize(n);
    if (wide[2 * g + 1].size() < n) wide[2 * g + 1].resize(n);
    w.heads[g].k = wide[2 * g].data();
    w.heads[g].v = wide[2 * g + 1].data();
    w.heads[g].k16 = w.heads[g].v16 = nullptr;
  }
  pool_run([&](int t, int T) {
    long u0, u1;
    split_range(2L * a.n_kv, t, T, &u0, &u1);
    for (long u = u0; u < u1; u++) {
      const HeadView& h = a.heads[u / 2];
      const uint16_t* src = u % 2 ? h.v16 : h.k16;
      float* dst = wide[u].data();
      const long n = long(h.len) * a.d;
      for (long i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
    }
  });
  return w;
}

}  // namespace

bool attention_set(const std::string& key, double value) {
  if (key == "rows") ROW_KERNELS = value != 0;
  else if (key == "ahead") AVX512_AHEAD = long(value);
  else if (key == "ahead_bf16") AVX512_AHEAD_BF16 = long(value);
  else if (key == "pv_heads") PV_HEADS = int(value);
  else if (key == "pv_block") PV_BLOCK_BYTES = long(value);
  else if (key == "kv_major") KV_MAJOR = int(value);
  else if (key == "many_rows") MANY_ROWS = int(value);
  else if (key == "keep_packed") KEEP_PACKED = int(value);
  else if (key == "split") SPLIT_KEYS = int(value);
  else if (key == "split_max_bytes") SPLIT_MAX_BYTES = long(value);
  else if (key == "packed") PACKED_LOGITS = int(value);
  else if (key == "bf16_dot") BF16_DOT = int(value);
  else return false;
  return true;
}

void attention(const Attention& a) {
  if (a.nq <= 0 || a.n_heads <= 0) return;
  const bool decode_shape = a.d % 16 == 0 && a.d <= 128 && a.nq <= 2;
  // A bf16 cache is read as it is by the AVX-512 tiles whose P.V batches heads (d a multiple of 16 up to 128):
  // decode with packed logits, and the many-row tiles, whose keys are widened while they are packed.
  // On AVX2, decode reads it as it is where the row-order kernels take the head size.
  const bool avx2_decode = !cpu().avx512 && cpu().avx2_fma && a.d % 8 == 0 && a.nq <= 2;
  const bool bf16_direct = cpu().avx512 ? a.d % 16 == 0 && a.d <= 128 && PV_HEADS && (PACKED_LOGITS || !decode_shape) : avx2_decode && rows_fit(a.d);
  if (a.bf16 && !bf16_direct) return attention(widened(a));
  if (avx2_decode) return attention_decode_avx2(a);
  if (!cpu().avx512 && cpu().avx2_fma && a.d % 8 == 0) return attention_rows_avx2(a);
  if (!cpu().avx512) {
    const long rows = long(a.n_heads) * a.nq;
    if (has_stats(a)) {
      pool_run([&](int t, int T) {
        Scratch s;
        long g0, g1;
        split_range(a.n_kv, t, T, &g0, &g1);
        const int G = a.n_heads / a.n_kv;
        for (long g = g0; g < g1; g++)
          for (int i = 0; i < a.nq; i++)
            for (int h = int(g) * G; h < int(g + 1) * G; h++) attend_row_scalar(a, h, i, s);
      });
    } else {
      pool_run([&](int t, int T) {
        Scratch s;
        long r0, r1;
        split_range(rows, t, T, &r0, &r1);
        for (long r = r0; r < r1; r++) attend_row_scalar(a, int(r % a.n_heads), int(r / a.n_heads), s);
      });
    }
    return;
  }
  if (decode_shape) return a.bf16 ? attend_decode_tiles<uint16_t>(a) : attend_decode_tiles<float>(a);
  std::vector<PackedKeys> fresh;
  const std::vector<PackedKeys>& packed = pack_all_keys(a, fresh);
  const auto tile = [&](const Tile& t, Scratch& s) { attend_blocked_tile(a, t, packed[t.g], s); };
  if (!run_row_tiles(a, tile)) run_tiles(a, tile);
}

}  // namespace kvlab
