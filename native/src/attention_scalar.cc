// Portable attention: one (query row, head) pair at a time, two-pass softmax, fp32 throughout.
#include <cmath>

#include "attention_tiles.h"

namespace kvlab::attn {
namespace {

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

}  // namespace

void attention_scalar(const Attention& a) {
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
}

}  // namespace kvlab::attn
