#include "attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "cpu.h"
#include "pool.h"

namespace kvlab {
namespace {

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
float dot_avx512(const float* a, const float* b, int d) {
  __m512 acc = _mm512_setzero_ps();
  int c = 0;
  for (; c + 16 <= d; c += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c), acc);
  if (c < d) {
    __mmask16 m = __mmask16((1u << (d - c)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + c), _mm512_maskz_loadu_ps(m, b + c), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
void axpy_avx512(float* y, float alpha, const float* x, int d) {
  __m512 a = _mm512_set1_ps(alpha);
  int c = 0;
  for (; c + 16 <= d; c += 16) _mm512_storeu_ps(y + c, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + c), _mm512_loadu_ps(y + c)));
  for (; c < d; c++) y[c] += alpha * x[c];
}

float dot_scalar(const float* a, const float* b, int d) {
  float s = 0;
  for (int c = 0; c < d; c++) s += a[c] * b[c];
  return s;
}

void axpy_scalar(float* y, float alpha, const float* x, int d) {
  for (int c = 0; c < d; c++) y[c] += alpha * x[c];
}

// One query row of one query head.
void attend_one(const Attention& a, int h, int i, std::vector<float>& p, bool avx) {
  const int G = a.n_heads / a.n_kv, g = h / G, d = a.d;
  const HeadView& kv = a.heads[g];
  const float* q = a.q + (long(i) * a.n_heads + h) * d;
  const int32_t qp = a.q_pos[i];
  if (int(p.size()) < kv.len) p.resize(kv.len);
  float mx = -INFINITY;
  for (int j = 0; j < kv.len; j++) {
    if (kv.pos[j] > qp) {
      p[j] = -INFINITY;
      continue;
    }
    float s = (avx ? dot_avx512(q, kv.k + long(j) * d, d) : dot_scalar(q, kv.k + long(j) * d, d)) * a.scale;
    p[j] = s;
    mx = std::max(mx, s);
  }
  double z = 0;
  for (int j = 0; j < kv.len; j++) {
    float e = p[j] == -INFINITY ? 0.f : std::exp(p[j] - mx);
    p[j] = e;
    z += e;
  }
  const float inv = z > 0 ? float(1.0 / z) : 0.f;
  if (a.out) {
    float* o = a.out + (long(i) * a.n_heads + h) * d;
    std::fill(o, o + d, 0.f);
    for (int j = 0; j < kv.len; j++) {
      if (p[j] == 0.f) continue;
      if (avx) axpy_avx512(o, p[j] * inv, kv.v + long(j) * d, d);
      else axpy_scalar(o, p[j] * inv, kv.v + long(j) * d, d);
    }
  }
  if (i >= a.stats_from && (!a.stat_max.empty() || !a.stat_sum.empty())) {
    float* mx_out = a.stat_max.empty() ? nullptr : a.stat_max[g];
    float* sum_out = a.stat_sum.empty() ? nullptr : a.stat_sum[g];
    for (int j = 0; j < kv.len; j++) {
      float prob = p[j] * inv;
      if (sum_out) sum_out[j] += prob;
      if (mx_out && prob > mx_out[j]) mx_out[j] = prob;
    }
  }
}

}  // namespace

void attention(const Attention& a) {
  const bool avx = cpu().avx512;
  const bool stats = !a.stat_max.empty() || !a.stat_sum.empty();
  const int G = a.n_heads / a.n_kv;
  if (stats) {
    // Statistics are accumulated per KV head: one thread owns a whole group so no two threads write one array.
    pool_run([&](int t, int T) {
      std::vector<float> p;
      long g0, g1;
      split_range(a.n_kv, t, T, &g0, &g1);
      for (long g = g0; g < g1; g++)
        for (int h = int(g) * G; h < int(g + 1) * G; h++)
          for (int i = 0; i < a.nq; i++) attend_one(a, h, i, p, avx);
    });
    return;
  }
  const long units = long(a.n_heads) * a.nq;
  pool_run([&](int t, int T) {
    std::vector<float> p;
    long u0, u1;
    split_range(units, t, T, &u0, &u1);
    for (long u = u0; u < u1; u++) attend_one(a, int(u % a.n_heads), int(u / a.n_heads), p, avx);
  });
}

}  // namespace kvlab
