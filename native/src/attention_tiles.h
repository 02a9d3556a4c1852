#pragma once
// Pieces shared by the attention paths (attention_scalar.cc, attention_avx2.cc, attention_avx512.cc) and the
// selector that picks one per call (attention.cc): units of work (tiles), per-thread scratch, keys packed
// transposed for many-row calls, and a bf16 cache widened for the paths that read fp32 only.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "aligned.h"
#include "attention.h"
#include "pool.h"

namespace kvlab::attn {

constexpr int KB = 16;       // keys per block
constexpr int MAX_TILE = 8;  // query heads per tile

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
inline float query_weight(const Attention& a, int i) { return a.query_weight ? a.query_weight[i] : 1.0f; }

// Keys visible to query i in a head whose positions ascend: a prefix. Otherwise all (masked one by one).
int visible_keys(const HeadView& kv, bool sorted, int32_t qp);
// Whether the head's positions never decrease.
bool ascending(const HeadView& kv);

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

// Per-thread probability rows, kept across calls: a fresh buffer per call is a large allocation (fresh pages,
// faulted in and zeroed) on every layer.
Scratch& thread_scratch();

// Statistics of keys [j0, n): probability p[j] * f added to sum[j] and kept in mx[j] if larger (either may be null).
void add_stats_scalar(float* sum, float* mx, const float* p, int j0, int n, float f);

// Keys packed transposed per block of 16, for the many-row paths.
struct PackedKeys {
  AlignedVector<float> kt;   // [blocks][d][16]
  std::vector<int32_t> pos;  // [blocks * 16], padding = INT32_MAX (never visible)
  int blocks = 0;
  bool sorted = true;
};

// Every KV head's keys packed (on the pool), in the calling thread's kept buffers up to a cap (fresh buffers per
// call cost a page fault per 4 KiB, with zeroing, on every layer; past the cap the attention dwarfs that cost),
// otherwise in `fresh`.
std::vector<PackedKeys>& pack_all_keys(const Attention& a, std::vector<PackedKeys>& fresh);

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

// A bf16 cache's rows widened to fp32, per KV head, in the calling thread's kept buffers, for the paths that read
// fp32 only (AVX2 prefill and head sizes the row kernels do not take, scalar, on AVX-512 d not a multiple of 16
// or above 128). The buffers grow to the largest call's heads.
Attention widened(const Attention& a);

// ---------- the paths (one file each) ----------

// Portable: one (query row, head) at a time.
void attention_scalar(const Attention& a);
// AVX-512: tiles of a KV group's heads (decode, d a multiple of 16 up to 128) or of heads and query rows
// (many rows, keys packed); reads a bf16 cache directly where avx512_reads_bf16.
void attention_avx512(const Attention& a);
bool avx512_reads_bf16(const Attention& a);
// AVX2 + FMA, d a multiple of 8: decode (one or two query rows) in key chunks combined flash-decoding style,
// or many rows against packed keys. avx2_rows_fit(d): decode reads a bf16 cache directly.
void attention_avx2_decode(const Attention& a);
void attention_avx2_rows(const Attention& a);
bool avx2_rows_fit(int d);

}  // namespace kvlab::attn
