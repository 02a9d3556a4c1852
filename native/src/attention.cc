#include "attention.h"

#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cmath>

#include "cpu.h"
#include "vecmath.h"
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
    const float wq = a.query_weight ? a.query_weight[i] : 1.0f;
    for (int j = 0; j < kv.len; j++) {
      float prob = p[j] * inv * wq;
      if (sum_out) sum_out[j] += prob;
      if (mx_out && prob > mx_out[j]) mx_out[j] = prob;
    }
  }
}

// ---------- blocked path for many queries: K packed transposed per 16 keys, logits without reductions ----------

constexpr int KB = 16;

struct PackedKeys {
  std::vector<float> kt;      // [blocks][d][16]
  std::vector<int32_t> pos;   // [blocks * 16], padding = INT32_MAX (never visible)
  int blocks = 0;
  bool sorted = true;         // positions ascending: a query can stop at its last visible key
};

void pack_keys(const HeadView& kv, int d, PackedKeys& pk) {
  pk.blocks = (kv.len + KB - 1) / KB;
  pk.kt.assign(size_t(pk.blocks) * d * KB + 16, 0.f);
  pk.pos.assign(size_t(pk.blocks) * KB, INT32_MAX);
  for (int j = 0; j < kv.len; j++) {
    if (j && kv.pos[j] < kv.pos[j - 1]) pk.sorted = false;
    const int b = j / KB, t = j % KB;
    float* dst = pk.kt.data() + size_t(b) * d * KB + t;
    const float* src = kv.k + long(j) * d;
    for (int c = 0; c < d; c++) dst[c * KB] = src[c];
    pk.pos[j] = kv.pos[j];
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
void attend_blocked(const Attention& a, const PackedKeys& pk, int h, int i, std::vector<float>& p) {
  const int G = a.n_heads / a.n_kv, g = h / G, d = a.d;
  const HeadView& kv = a.heads[g];
  const float* q = a.q + (long(i) * a.n_heads + h) * d;
  const __m512i qp = _mm512_set1_epi32(a.q_pos[i]);
  int visible = kv.len;
  if (pk.sorted) visible = int(std::upper_bound(kv.pos, kv.pos + kv.len, a.q_pos[i]) - kv.pos);
  const int nblocks = (visible + KB - 1) / KB;
  const int padded = nblocks * KB;
  if (int(p.size()) < pk.blocks * KB) p.resize(pk.blocks * KB);
  const __m512 scale = _mm512_set1_ps(a.scale), neg = _mm512_set1_ps(-INFINITY);
  __m512 vmax = neg;
  for (int b = 0; b < nblocks; b++) {
    const float* kt = pk.kt.data() + size_t(b) * d * KB;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int c = 0;
    for (; c + 2 <= d; c += 2) {
      acc0 = _mm512_fmadd_ps(_mm512_set1_ps(q[c]), _mm512_load_ps(kt + c * KB), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_set1_ps(q[c + 1]), _mm512_load_ps(kt + (c + 1) * KB), acc1);
    }
    for (; c < d; c++) acc0 = _mm512_fmadd_ps(_mm512_set1_ps(q[c]), _mm512_load_ps(kt + c * KB), acc0);
    __m512 s = _mm512_mul_ps(_mm512_add_ps(acc0, acc1), scale);
    __mmask16 hidden = _mm512_cmpgt_epi32_mask(_mm512_loadu_si512(pk.pos.data() + b * KB), qp);
    s = _mm512_mask_mov_ps(s, hidden, neg);
    _mm512_storeu_ps(p.data() + b * KB, s);
    vmax = _mm512_max_ps(vmax, s);
  }
  const float mx = _mm512_reduce_max_ps(vmax);
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 vz = _mm512_setzero_ps();
  for (int b = 0; b < padded; b += KB) {
    __m512 s = _mm512_loadu_ps(p.data() + b);
    __mmask16 live = _mm512_cmp_ps_mask(s, neg, _CMP_NEQ_OQ);
    __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(s, vm)));
    _mm512_storeu_ps(p.data() + b, e);
    vz = _mm512_add_ps(vz, e);
  }
  const float z = _mm512_reduce_add_ps(vz);
  const float inv = z > 0 ? 1.0f / z : 0.f;
  if (a.out) {
    float* o = a.out + (long(i) * a.n_heads + h) * d;
    if (d % 16 == 0 && d <= 128) {
      __m512 acc[8];
      const int nv = d / 16;
      for (int v = 0; v < nv; v++) acc[v] = _mm512_setzero_ps();
      for (int j = 0; j < visible; j++) {
        const __m512 w = _mm512_set1_ps(p[j]);
        const float* vr = kv.v + long(j) * d;
        for (int v = 0; v < nv; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + v * 16), acc[v]);
      }
      const __m512 vinv = _mm512_set1_ps(inv);
      for (int v = 0; v < nv; v++) _mm512_storeu_ps(o + v * 16, _mm512_mul_ps(acc[v], vinv));
    } else {
      std::fill(o, o + d, 0.f);
      for (int j = 0; j < visible; j++)
        if (p[j] != 0.f) axpy_avx512(o, p[j] * inv, kv.v + long(j) * d, d);
    }
  }
  for (int j = padded; j < kv.len; j++) p[j] = 0.f;
  if (i >= a.stats_from && (!a.stat_max.empty() || !a.stat_sum.empty())) {
    float* mx_out = a.stat_max.empty() ? nullptr : a.stat_max[g];
    float* sum_out = a.stat_sum.empty() ? nullptr : a.stat_sum[g];
    const float wq = a.query_weight ? a.query_weight[i] : 1.0f;
    const __m512 vinv = _mm512_set1_ps(inv * wq);
    int j = 0;
    for (; j + KB <= kv.len; j += KB) {
      __m512 prob = _mm512_mul_ps(_mm512_loadu_ps(p.data() + j), vinv);
      if (sum_out) _mm512_storeu_ps(sum_out + j, _mm512_add_ps(_mm512_loadu_ps(sum_out + j), prob));
      if (mx_out) _mm512_storeu_ps(mx_out + j, _mm512_max_ps(_mm512_loadu_ps(mx_out + j), prob));
    }
    for (; j < kv.len; j++) {
      const float prob = p[j] * inv * wq;
      if (sum_out) sum_out[j] += prob;
      if (mx_out && prob > mx_out[j]) mx_out[j] = prob;
    }
  }
}

// ---------- decode path (few queries): 16 keys per step, one transpose-reduction instead of 16 ----------

// f[t] = sum of the 16 lanes of a[t], for t < 16.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
inline __m512 reduce16(const __m512* a) {
  __m512 r[8], s[4];
  for (int i = 0; i < 8; i++) r[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; i++) s[i] = _mm512_add_ps(_mm512_shuffle_ps(r[2 * i], r[2 * i + 1], 0x44), _mm512_shuffle_ps(r[2 * i], r[2 * i + 1], 0xEE));
  __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(s[0], s[1], 0x88), _mm512_shuffle_f32x4(s[0], s[1], 0xDD));
  __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(s[2], s[3], 0x88), _mm512_shuffle_f32x4(s[2], s[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xDD));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
void attend_decode(const Attention& a, int h, int i, std::vector<float>& p) {
  const int G = a.n_heads / a.n_kv, g = h / G, d = a.d;
  const HeadView& kv = a.heads[g];
  const float* q = a.q + (long(i) * a.n_heads + h) * d;
  const int32_t qp = a.q_pos[i];
  if (int(p.size()) < kv.len + 16) p.resize(kv.len + 16);
  const int nv = d / 16;
  __m512 qv[8];
  for (int v = 0; v < nv; v++) qv[v] = _mm512_loadu_ps(q + v * 16);
  float mx = -INFINITY;
  int j = 0;
  for (; j + 16 <= kv.len; j += 16) {
    __m512 acc[16];
    for (int t = 0; t < 16; t++) {
      const float* kr = kv.k + long(j + t) * d;
      __m512 s = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kr));
      for (int v = 1; v < nv; v++) s = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(kr + v * 16), s);
      acc[t] = s;
    }
    __m512 logits = reduce16(acc);
    logits = _mm512_mul_ps(logits, _mm512_set1_ps(a.scale));
    __mmask16 hidden = _mm512_cmpgt_epi32_mask(_mm512_loadu_si512(kv.pos + j), _mm512_set1_epi32(qp));
    logits = _mm512_mask_mov_ps(logits, hidden, _mm512_set1_ps(-INFINITY));
    _mm512_storeu_ps(p.data() + j, logits);
    mx = std::max(mx, _mm512_reduce_max_ps(logits));
  }
  for (; j < kv.len; j++) {
    p[j] = kv.pos[j] > qp ? -INFINITY : dot_avx512(q, kv.k + long(j) * d, d) * a.scale;
    mx = std::max(mx, p[j]);
  }
  const __m512 vm = _mm512_set1_ps(mx), neg = _mm512_set1_ps(-INFINITY);
  __m512 vz = _mm512_setzero_ps();
  j = 0;
  for (; j + 16 <= kv.len; j += 16) {
    __m512 s = _mm512_loadu_ps(p.data() + j);
    __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, neg, _CMP_NEQ_OQ), exp512(_mm512_sub_ps(s, vm)));
    _mm512_storeu_ps(p.data() + j, e);
    vz = _mm512_add_ps(vz, e);
  }
  float z = _mm512_reduce_add_ps(vz);
  for (; j < kv.len; j++) {
    p[j] = p[j] == -INFINITY ? 0.f : std::exp(p[j] - mx);
    z += p[j];
  }
  const float inv = z > 0 ? 1.0f / z : 0.f;
  if (a.out) {
    float* o = a.out + (long(i) * a.n_heads + h) * d;
    __m512 acc[8];
    for (int v = 0; v < nv; v++) acc[v] = _mm512_setzero_ps();
    for (int k = 0; k < kv.len; k++) {
      const __m512 w = _mm512_set1_ps(p[k]);
      const float* vr = kv.v + long(k) * d;
      for (int v = 0; v < nv; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + v * 16), acc[v]);
    }
    for (int v = 0; v < nv; v++) _mm512_storeu_ps(o + v * 16, _mm512_mul_ps(acc[v], _mm512_set1_ps(inv)));
  }
  if (i >= a.stats_from && (!a.stat_max.empty() || !a.stat_sum.empty())) {
    float* mx_out = a.stat_max.empty() ? nullptr : a.stat_max[g];
    float* sum_out = a.stat_sum.empty() ? nullptr : a.stat_sum[g];
    const float wq = a.query_weight ? a.query_weight[i] : 1.0f;
    for (int k = 0; k < kv.len; k++) {
      const float prob = p[k] * inv * wq;
      if (sum_out) sum_out[k] += prob;
      if (mx_out && prob > mx_out[k]) mx_out[k] = prob;
    }
  }
}

}  // namespace

// Runs attend(h, i, scratch) for every (query head, query row) on the pool. With statistics, one thread owns
// whole KV groups so no two threads write one statistics array; otherwise rows are split evenly.
template <typename F>
void for_each_row(const Attention& a, F attend) {
  const int G = a.n_heads / a.n_kv;
  if (!a.stat_max.empty() || !a.stat_sum.empty()) {
    pool_run([&](int t, int T) {
      std::vector<float> p;
      long g0, g1;
      split_range(a.n_kv, t, T, &g0, &g1);
      for (long g = g0; g < g1; g++)
        for (int h = int(g) * G; h < int(g + 1) * G; h++)
          for (int i = 0; i < a.nq; i++) attend(h, i, p);
    });
    return;
  }
  const long units = long(a.n_heads) * a.nq;
  pool_run([&](int t, int T) {
    std::vector<float> p;
    long u0, u1;
    split_range(units, t, T, &u0, &u1);
    for (long u = u0; u < u1; u++) attend(int(u % a.n_heads), int(u / a.n_heads), p);
  });
}

void attention(const Attention& a) {
  const bool avx = cpu().avx512;
  const long rows = long(a.nq) * (a.n_heads / a.n_kv);
  if (avx && a.d % 16 == 0 && a.d <= 128 && rows < 8) {
    for_each_row(a, [&](int h, int i, std::vector<float>& p) { attend_decode(a, h, i, p); });
  } else if (avx && rows >= 8) {
    const int G = a.n_heads / a.n_kv;
    std::vector<PackedKeys> packed(a.n_kv);
    pool_run([&](int t, int T) {
      long g0, g1;
      split_range(a.n_kv, t, T, &g0, &g1);
      for (long g = g0; g < g1; g++) pack_keys(a.heads[g], a.d, packed[g]);
    });
    for_each_row(a, [&](int h, int i, std::vector<float>& p) { attend_blocked(a, packed[h / G], h, i, p); });
  } else {
    for_each_row(a, [&](int h, int i, std::vector<float>& p) { attend_one(a, h, i, p, avx); });
  }
}

}  // namespace kvlab
