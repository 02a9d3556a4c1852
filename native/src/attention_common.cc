// Attention pieces every path shares: visibility, scratch, packed keys, statistics, the bf16 widening.
#include <climits>

#include "attention_tiles.h"
#include "weights.h"

namespace kvlab::attn {
namespace {

// Packed keys up to this many bytes per call stay in the calling thread's buffers across calls.
constexpr long KEPT_PACKED_MAX = 64L << 20;

void pack_keys(const HeadView& kv, int d, PackedKeys& pk) {
  pk.blocks = (kv.len + KB - 1) / KB;
  const size_t n = size_t(pk.blocks) * d * KB + 16;
  // Kept across calls (no fresh pages to fault in and zero per layer). The last block's padding lanes are
  // masked by their positions whatever they hold; they are zeroed anyway.
  if (pk.kt.size() < n) pk.kt.assign(n, 0.f);
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

}  // namespace

int visible_keys(const HeadView& kv, bool sorted, int32_t qp) {
  if (!sorted) return kv.len;
  return int(std::upper_bound(kv.pos, kv.pos + kv.len, qp) - kv.pos);
}

bool ascending(const HeadView& kv) {
  for (int j = 1; j < kv.len; j++)
    if (kv.pos[j] < kv.pos[j - 1]) return false;
  return true;
}

Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}

void add_stats_scalar(float* sum, float* mx, const float* p, int j0, int n, float f) {
  for (int j = j0; j < n; j++) {
    const float prob = p[j] * f;
    if (sum) sum[j] += prob;
    if (mx && prob > mx[j]) mx[j] = prob;
  }
}

std::vector<PackedKeys>& pack_all_keys(const Attention& a, std::vector<PackedKeys>& fresh) {
  static thread_local std::vector<PackedKeys> kept;
  long need = 0;
  for (int g = 0; g < a.n_kv; g++) need += (long(a.heads[g].len) + KB - 1) / KB * KB * a.d * long(sizeof(float));
  const bool keep = need <= KEPT_PACKED_MAX;
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

}  // namespace kvlab::attn
