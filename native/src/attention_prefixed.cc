// Attention over a shared read-only prefix (a compressed context several sequences continue) followed by each
// sequence's own rows, without copying either: keys of both segments take part in one softmax. Computed per
// (query row, KV head) task, all query heads of the KV head's group together so every key and value row is read
// once per task; keys are taken in blocks, scored, and folded into a running max, sum and output (online
// softmax, fp32). AVX2+FMA where the CPU has it and the head size is a multiple of 8, scalar otherwise.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "attention_prefixed.h"
#include "cpu.h"
#include "pool.h"
#include "vecmath.h"

namespace kvlab {
namespace {

constexpr int BLOCK = 64;     // keys scored per block before they are folded in
constexpr int MAX_GROUP = 16;  // query heads per KV head handled by one task's stack buffers

template <class KT>
const KT* keys_of(const HeadView& h);
template <>
const float* keys_of<float>(const HeadView& h) { return h.k; }
template <>
const uint16_t* keys_of<uint16_t>(const HeadView& h) { return h.k16; }
template <class KT>
const KT* values_of(const HeadView& h);
template <>
const float* values_of<float>(const HeadView& h) { return h.v; }
template <>
const uint16_t* values_of<uint16_t>(const HeadView& h) { return h.v16; }

inline float widen(float x) { return x; }
inline float widen(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Running state of one query head's softmax.
struct Running {
  float max = -INFINITY;
  float sum = 0;
};

template <class KT>
__attribute__((target("avx2,fma"))) inline __m256 load8(const KT* p) {
  if constexpr (std::is_same_v<KT, float>) return _mm256_loadu_ps(p);
  else return bf16x8_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <class KT>
__attribute__((target("avx2,fma"))) float dot_avx2(const float* q, const KT* k, int d) {
  __m256 acc = _mm256_setzero_ps();
  for (int c = 0; c < d; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), load8(k + c), acc);
  return hsum256(acc);
}

template <class KT>
float dot_scalar(const float* q, const KT* k, int d) {
  float acc = 0;
  for (int c = 0; c < d; c++) acc += q[c] * widen(k[c]);
  return acc;
}

// out[c] = out[c] * scale + p * v[c]
template <class KT>
__attribute__((target("avx2,fma"))) void axpy_avx2(float* out, float scale, float p, const KT* v, int d) {
  const __m256 s = _mm256_set1_ps(scale), pp = _mm256_set1_ps(p);
  for (int c = 0; c < d; c += 8) _mm256_storeu_ps(out + c, _mm256_fmadd_ps(pp, load8(v + c), _mm256_mul_ps(_mm256_loadu_ps(out + c), s)));
}

template <class KT>
void axpy_scalar(float* out, float scale, float p, const KT* v, int d) {
  for (int c = 0; c < d; c++) out[c] = out[c] * scale + p * widen(v[c]);
}

__attribute__((target("avx2,fma"))) void exp_avx2(float* x, int n) {
  int j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, exp256(_mm256_loadu_ps(x + j)));
  for (; j < n; j++) x[j] = std::exp(x[j]);
}

// One task: query row i, KV head g, query heads [h0, h0 + G), over the segments in order.
template <class KT, bool AVX2>
void task(const Attention& a, const HeadView* const* segs, int nsegs, int i, int g) {
  const int d = a.d, G = a.n_heads / a.n_kv, h0 = g * G;
  const int32_t qp = a.q_pos[i];
  const float* q = a.q + (long(i) * a.n_heads + h0) * d;
  float* out = a.out + (long(i) * a.n_heads + h0) * d;
  Running run[MAX_GROUP];
  float scores[MAX_GROUP][BLOCK];
  bool visible[BLOCK];
  std::fill(out, out + long(G) * d, 0.f);
  for (int s = 0; s < nsegs; s++) {
    const HeadView& seg = *segs[s];
    const KT* K = keys_of<KT>(seg);
    const KT* V = values_of<KT>(seg);
    for (int j0 = 0; j0 < seg.len; j0 += BLOCK) {
      const int nb = std::min(BLOCK, seg.len - j0);
      int live = 0;
      for (int j = 0; j < nb; j++) live += (visible[j] = seg.pos[j0 + j] <= qp);
      if (live == 0) continue;
      for (int hh = 0; hh < G; hh++) {
        const float* qh = q + long(hh) * d;
        float* sc = scores[hh];
        float bmax = -INFINITY;
        for (int j = 0; j < nb; j++) {
          if (!visible[j]) continue;
          const KT* kr = K + long(j0 + j) * d;
          sc[j] = (AVX2 ? dot_avx2<KT>(qh, kr, d) : dot_scalar<KT>(qh, kr, d)) * a.scale;
          bmax = std::max(bmax, sc[j]);
        }
        Running& r = run[hh];
        const float m = std::max(r.max, bmax);
        const float rescale = r.max == -INFINITY ? 0.f : std::exp(r.max - m);
        for (int j = 0; j < nb; j++) sc[j] = visible[j] ? sc[j] - m : -INFINITY;
        if (AVX2) exp_avx2(sc, nb);
        else
          for (int j = 0; j < nb; j++) sc[j] = std::exp(sc[j]);
        // exp256 flushes -inf to a tiny positive value; masked keys contribute nothing.
        float bsum = 0;
        for (int j = 0; j < nb; j++) bsum += visible[j] ? sc[j] : (sc[j] = 0.f);
        r.sum = r.sum * rescale + bsum;
        r.max = m;
        float* oh = out + long(hh) * d;
        float first = rescale;  // the output's running rescale is applied once, with the first visible row
        for (int j = 0; j < nb; j++) {
          if (!visible[j]) continue;
          const KT* vr = V + long(j0 + j) * d;
          if (AVX2) axpy_avx2<KT>(oh, first, sc[j], vr, d);
          else axpy_scalar<KT>(oh, first, sc[j], vr, d);
          first = 1.f;
        }
      }
    }
  }
  for (int hh = 0; hh < G; hh++) {
    const float inv = run[hh].sum > 0 ? 1.f / run[hh].sum : 0.f;
    float* oh = out + long(hh) * d;
    for (int c = 0; c < d; c++) oh[c] *= inv;
  }
}

template <class KT>
void run_all(const Attention& a, const std::vector<HeadView>& prefix) {
  const bool avx2 = cpu().avx2_fma && a.d % 8 == 0;
  const long tasks = long(a.nq) * a.n_kv;
  pool_run([&](int t, int T) {
    long b, e;
    split_range(tasks, t, T, &b, &e);
    for (long x = b; x < e; x++) {
      const int i = int(x / a.n_kv), g = int(x % a.n_kv);
      const HeadView* segs[2] = {&prefix[g], &a.heads[g]};
      if (avx2) task<KT, true>(a, segs, 2, i, g);
      else task<KT, false>(a, segs, 2, i, g);
    }
  });
}

}  // namespace

void attention_prefixed(const Attention& a, const std::vector<HeadView>& prefix) {
  if (a.out == nullptr || a.nq <= 0) return;
  if (a.n_heads / a.n_kv > MAX_GROUP) throw std::runtime_error("attention_prefixed: more than 16 query heads per KV head");
  if (window_masks_keys(a, &prefix)) return attention_windowed(a, &prefix);
  if (a.bf16) run_all<uint16_t>(a, prefix);
  else run_all<float>(a, prefix);
}

}  // namespace kvlab
