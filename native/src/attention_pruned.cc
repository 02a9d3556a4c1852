// Attention over channel-pruned keys: one unit of work is a KV head and a query row with all the query heads of its
// group. Row dots at the key width kd and the fp32 softmax (over the prefix's rows then the head's own) are the
// quantized path's per-ISA pieces (attention_quant_{scalar,avx2,avx512}.cc); P . V at the value width d is this file's.
#include "attention_pruned.h"

#include <immintrin.h>

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

#define AVX2 __attribute__((target("avx2,fma")))

// acc[h * d + c] += sum_r w[h * wstride + r] * rows[r * d + c] (d a multiple of 8), four rows per step into four
// accumulators so the FMAs do not wait on each other.
AVX2 void accum_rows_avx2(float* acc, int nh, const float* w, long wstride, const float* rows, int n, int d) {
  for (int h = 0; h < nh; h++) {
    const float* wh = w + h * wstride;
    for (int c = 0; c < d; c += 8) {
      __m256 a0 = _mm256_loadu_ps(acc + long(h) * d + c), a1 = _mm256_setzero_ps(), a2 = a1, a3 = a1;
      int r = 0;
      for (; r + 4 <= n; r += 4) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(wh[r]), _mm256_loadu_ps(rows + long(r) * d + c), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(wh[r + 1]), _mm256_loadu_ps(rows + long(r + 1) * d + c), a1);
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(wh[r + 2]), _mm256_loadu_ps(rows + long(r + 2) * d + c), a2);
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(wh[r + 3]), _mm256_loadu_ps(rows + long(r + 3) * d + c), a3);
      }
      for (; r < n; r++) a0 = _mm256_fmadd_ps(_mm256_set1_ps(wh[r]), _mm256_loadu_ps(rows + long(r) * d + c), a0);
      _mm256_storeu_ps(acc + long(h) * d + c, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
  }
}

void accum_rows_scalar(float* acc, int nh, const float* w, long wstride, const float* rows, int n, int d) {
  for (int h = 0; h < nh; h++)
    for (int r = 0; r < n; r++) {
      const float wr = w[h * wstride + r];
      for (int c = 0; c < d; c++) acc[long(h) * d + c] += wr * rows[long(r) * d + c];
    }
}

// acc += P . V over one source's rows, a tile of rows at a time so each tile is read once for all the group's heads.
// The AVX2 pass also serves AVX-512 CPUs.
void source_values(bool avx2, const PrunedHead& kv, int nh, int d, const float* p, long L, int at, float* acc) {
  for (int r0 = 0; r0 < kv.len; r0 += VALUE_TILE) {
    const int n = std::min(VALUE_TILE, kv.len - r0);
    (avx2 ? accum_rows_avx2 : accum_rows_scalar)(acc, nh, p + at + r0, L, kv.v + long(r0) * d, n, d);
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
  const bool avx2 = &K != &qattn::scalar_kernels;
  if (pre) source_values(avx2, *pre, nh, d, p, L, 0, s.acc.data());
  source_values(avx2, own, nh, d, p, L, plen, s.acc.data());
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
