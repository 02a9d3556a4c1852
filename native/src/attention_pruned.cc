// Attention over channel-pruned keys: one unit of work is a KV head and a query row with all the query heads of its
// group. The per-ISA pieces are the quantized path's (attention_quant_{scalar,avx2,avx512}.cc): row dots at the key
// width kd, P . V at the value width d, an fp32 softmax over the prefix's rows then the head's own.
#include "attention_pruned.h"

#include <algorithm>
#include <cmath>

#include "aligned.h"
#include "attention_quant.h"
#include "cpu.h"
#include "pool.h"

namespace kvlab {
namespace {

using qattn::Kernels;

constexpr int VALUE_TILE = 32;  // value rows per P . V piece

int key_width(const PrunedHead& h, int d) { return h.ch ? h.kd : d; }

bool lanes_fit(const PrunedAttention& a, int lanes) {
  if (a.d % lanes) return false;
  for (const auto* src : {&a.heads, &a.prefix})
    for (const PrunedHead& h : *src)
      if (key_width(h, a.d) % lanes) return false;
  return true;
}

const Kernels& kernels_for(const PrunedAttention& a) {
  if (cpu().avx512 && lanes_fit(a, 16)) return qattn::avx512_kernels;
  if (cpu().avx2_fma && lanes_fit(a, 8)) return qattn::avx2_kernels;
  return qattn::scalar_kernels;
}

struct UnitScratch {
  AlignedVector<float> p, qs, acc;
};

UnitScratch& scratch() {
  static thread_local UnitScratch s;
  return s;
}

template <typename T>
void fit(AlignedVector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

bool visible(const PrunedAttention& a, int32_t kp, int32_t qp) { return kp <= qp && (a.window <= 0 || long(qp) - kp < a.window); }

// Scaled logits of one source's rows into p[h * L + at + j] (masked rows -inf), from the group's queries gathered at
// the source's kept channels.
void source_logits(const PrunedAttention& a, const Kernels& K, const PrunedHead& kv, int nh, int h0, int i, float* p, long L, int at, UnitScratch& s) {
  const int d = a.d, kd = key_width(kv, d);
  for (int h = 0; h < nh; h++) {
    const float* q = a.q + (long(i) * a.n_heads + h0 + h) * d;
    float* qs = s.qs.data() + long(h) * kd;
    for (int c = 0; c < kd; c++) qs[c] = q[kv.ch ? kv.ch[c] : c] * a.scale;
  }
  if (kv.len > 0) K.dots(s.qs.data(), nh, kv.k, kv.len, kd, p + at, L);
  const int32_t qp = a.q_pos[i];
  for (int j = 0; j < kv.len; j++)
    if (!visible(a, kv.pos[j], qp))
      for (int h = 0; h < nh; h++) p[h * L + at + j] = -INFINITY;
}

// acc += P . V over one source's rows, a tile of rows at a time so each tile is read once for all the group's heads.
void source_values(const Kernels& K, const PrunedHead& kv, int nh, int d, const float* p, long L, int at, float* acc) {
  for (int r0 = 0; r0 < kv.len; r0 += VALUE_TILE) {
    const int n = std::min(VALUE_TILE, kv.len - r0);
    K.accum(acc, nh, p + at + r0, L, 1, d, kv.v + long(r0) * d, n, d);
  }
}

void attend_unit(const PrunedAttention& a, const Kernels& K, int g, int i) {
  const int d = a.d, nh = a.n_heads / a.n_kv, h0 = g * nh;
  const PrunedHead& own = a.heads[g];
  const PrunedHead* pre = a.prefix.empty() ? nullptr : &a.prefix[g];
  const int plen = pre ? pre->len : 0;
  const long L = plen + own.len;
  UnitScratch& s = scratch();
  fit(s.p, size_t(nh) * L + 16);
  fit(s.qs, size_t(nh) * d);
  fit(s.acc, size_t(nh) * d);
  float* p = s.p.data();
  if (pre) source_logits(a, K, *pre, nh, h0, i, p, L, 0, s);
  source_logits(a, K, own, nh, h0, i, p, L, plen, s);
  K.softmax(p, nh, L, L);
  std::fill(s.acc.begin(), s.acc.begin() + long(nh) * d, 0.f);
  if (pre) source_values(K, *pre, nh, d, p, L, 0, s.acc.data());
  source_values(K, own, nh, d, p, L, plen, s.acc.data());
  for (int h = 0; h < nh; h++) std::copy(s.acc.begin() + long(h) * d, s.acc.begin() + long(h + 1) * d, a.out + (long(i) * a.n_heads + h0 + h) * d);
}

}  // namespace

const char* attention_pruned_path(const PrunedAttention& a) {
  const Kernels& K = kernels_for(a);
  return &K == &qattn::avx512_kernels ? "avx512" : &K == &qattn::avx2_kernels ? "avx2" : "scalar";
}

void attention_pruned(const PrunedAttention& a) {
  if (a.nq <= 0 || a.n_heads <= 0 || !a.out) return;
  const Kernels& K = kernels_for(a);
  const long units = long(a.n_kv) * a.nq;
  pool_run([&](int t, int T) {
    long u0, u1;
    split_range(units, t, T, &u0, &u1);
    for (long u = u0; u < u1; u++) attend_unit(a, K, int(u % a.n_kv), int(u / a.n_kv));
  });
}

}  // namespace kvlab
