// Attention over KIVI-quantized heads: the driver every ISA shares, and the selector. A unit of work is one KV head
// and one query row with all the query heads of its group, so each packed row's codes are widened once (in
// registers, by the ISA kernels) and used by every query head of the group.
//   logits: for each key group, the group's per-channel scales and zero points are folded into the queries
//           (q . (z + s * code) = q . z + (q * s) . code), so a packed key row costs a convert and an FMA per channel
//           and query head;
//   values: each packed row is dequantized in registers (s * code + z) and accumulated by every query head.
// Softmax is two-pass in fp32 over the prefix's rows then the head's own, as the fp32 paths do.
#include "attention_quant.h"

#include <algorithm>
#include <cmath>

#include "aligned.h"
#include "cpu.h"
#include "pool.h"

namespace kvlab {
namespace {

using qattn::Kernels;

constexpr int TILE = 64;  // packed value rows per kernel call

bool simd_fits(int d, int group, int lanes) { return d % lanes == 0 && (group % lanes == 0 || group >= d); }

const Kernels& kernels_for(int d, int group) {
  if (cpu().avx512 && simd_fits(d, group, 16)) return qattn::avx512_kernels;
  if (cpu().avx2_fma && simd_fits(d, group, 8)) return qattn::avx2_kernels;
  return qattn::scalar_kernels;
}

struct UnitScratch {
  AlignedVector<float> p, qsc, qs, qz, acc;
};

UnitScratch& scratch() {
  static thread_local UnitScratch s;
  return s;
}

template <typename T>
void fit(AlignedVector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

bool visible(const QuantAttention& a, int32_t kp, int32_t qp) { return kp <= qp && (a.window <= 0 || long(qp) - kp < a.window); }

// Logits of one source's rows into p[h * L + at + j] (scaled; masked rows -inf).
void source_logits(const QuantAttention& a, const Kernels& K, const QuantHead& kv, int nh, const float* qsc, int32_t qp, float* p, long L, int at,
                   UnitScratch& s) {
  const int d = a.d, G = a.group, rb = d * a.bits / 8;
  for (int g0 = 0; g0 < kv.qrows; g0 += G) {
    const float* ks = kv.ks + long(g0 / G) * d;
    const float* kz = kv.kz + long(g0 / G) * d;
    K.fold_keys(qsc, nh, d, a.bits, ks, kz, s.qs.data(), s.qz.data());
    K.key_logits(s.qs.data(), s.qz.data(), nh, kv.kc + long(g0) * rb, G, d, a.bits, p + at + g0, L);
  }
  const int res = kv.len - kv.qrows;
  if (res > 0) K.dots(qsc, nh, kv.k, res, d, p + at + kv.qrows, L);
  for (int j = 0; j < kv.len; j++)
    if (!visible(a, kv.pos[j], qp))
      for (int h = 0; h < nh; h++) p[h * L + at + j] = -INFINITY;
}

// acc += P . V over one source's rows (probabilities p[h * L + at + j]).
void source_values(const QuantAttention& a, const Kernels& K, const QuantHead& kv, int nh, const float* p, long L, int at, UnitScratch& s) {
  const int d = a.d, G = a.group, rb = d * a.bits / 8, ng = (d + G - 1) / G;
  for (int r0 = 0; r0 < kv.qrows; r0 += TILE) {
    const int n = std::min(TILE, kv.qrows - r0);
    K.value_accum(s.acc.data(), nh, p + at + r0, L, kv.vs + long(r0) * ng, kv.vz + long(r0) * ng, ng, G, kv.vc + long(r0) * rb, n, d, a.bits);
  }
  const int res = kv.len - kv.qrows;
  if (res > 0) K.accum(s.acc.data(), nh, p + at + kv.qrows, L, kv.v, res, d);
}

void attend_unit(const QuantAttention& a, const Kernels& K, int g, int i) {
  const int d = a.d, nh = a.n_heads / a.n_kv, h0 = g * nh;
  const QuantHead& own = a.heads[g];
  const QuantHead* pre = a.prefix.empty() ? nullptr : &a.prefix[g];
  const int plen = pre ? pre->len : 0;
  const long L = plen + own.len;
  const int32_t qp = a.q_pos[i];
  UnitScratch& s = scratch();
  fit(s.p, size_t(nh) * L + 16);
  fit(s.qsc, size_t(nh) * d);
  fit(s.qs, size_t(nh) * d);
  fit(s.qz, size_t(nh));
  fit(s.acc, size_t(nh) * d);
  for (int h = 0; h < nh; h++)
    for (int c = 0; c < d; c++) s.qsc[h * d + c] = a.q[(long(i) * a.n_heads + h0 + h) * d + c] * a.scale;
  float* p = s.p.data();
  if (pre) source_logits(a, K, *pre, nh, s.qsc.data(), qp, p, L, 0, s);
  source_logits(a, K, own, nh, s.qsc.data(), qp, p, L, plen, s);
  K.softmax(p, nh, L, L);
  if (i >= a.stats_from && (!a.stat_max.empty() || !a.stat_sum.empty())) {
    float* mx = a.stat_max.empty() ? nullptr : a.stat_max[g];
    float* sum = a.stat_sum.empty() ? nullptr : a.stat_sum[g];
    const float wq = a.query_weight ? a.query_weight[i] : 1.0f;
    for (int h = 0; h < nh; h++)
      for (int j = 0; j < own.len; j++) {
        const float prob = p[h * L + plen + j] * wq;
        if (sum) sum[j] += prob;
        if (mx && prob > mx[j]) mx[j] = prob;
      }
  }
  if (!a.out) return;
  std::fill(s.acc.begin(), s.acc.begin() + long(nh) * d, 0.f);
  if (pre) source_values(a, K, *pre, nh, p, L, 0, s);
  source_values(a, K, own, nh, p, L, plen, s);
  for (int h = 0; h < nh; h++) {
    float* o = a.out + (long(i) * a.n_heads + h0 + h) * d;
    for (int c = 0; c < d; c++) o[c] = s.acc[h * d + c];
  }
}

}  // namespace

const char* attention_quant_path(int d, int group) {
  const Kernels& K = kernels_for(d, group);
  return &K == &qattn::avx512_kernels ? "avx512" : &K == &qattn::avx2_kernels ? "avx2" : "scalar";
}

void attention_quant(const QuantAttention& a) {
  if (a.nq <= 0 || a.n_heads <= 0) return;
  const Kernels& K = kernels_for(a.d, a.group);
  const bool stats = !a.stat_max.empty() || !a.stat_sum.empty();
  const long units = long(a.n_kv) * a.nq;
  pool_run([&](int t, int T) {
    long u0, u1;
    // Statistics accumulate per KV head: one thread owns a head's units then, in query order.
    split_range(stats ? a.n_kv : units, t, T, &u0, &u1);
    for (long u = u0; u < u1; u++) {
      if (stats)
        for (int i = 0; i < a.nq; i++) attend_unit(a, K, int(u), i);
      else
        attend_unit(a, K, int(u % a.n_kv), int(u / a.n_kv));
    }
  });
}

}  // namespace kvlab
