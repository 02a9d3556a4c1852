// Key logits of int4 packed rows (d 64, 4 query heads of one KV head, key groups of 32 rows), two ways, on the same
// data in one process: the fp32 fold the addon uses (attention_quant_avx2.cc: codes widened to fp32, one FMA per
// channel and head) and llama.cpp-style integer dots (the folded query rounded to int8 per head and key group,
// maddubs / madd on the codes). Not part of the addon; an experiment for choosing between them:
//
//   g++ -O3 -mavx2 -mfma -fno-math-errno -o /tmp/key-logits-bench native/bench/key_logits_int8_vs_f32.cc && /tmp/key-logits-bench
//
// Prints JSON: best-of-15 ns per key row for each, the int8 kernel with its per-group query rounding (plain loops)
// and without it, and the largest logit difference between the two (what rounding the query to int8 costs).
#include <immintrin.h>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
constexpr int D = 64, NH = 4, G = 32;
static inline __m256 codes8(const uint8_t* row, int c) {
  uint32_t w; memcpy(&w, row + c / 2, 4);
  __m256i x = _mm256_srlv_epi32(_mm256_set1_epi32(int(w)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
  return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(15)));
}
static inline __m256 reduce8(const __m256* a) {
  __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}
static inline __m256i reduce8i(const __m256i* a) {
  __m256i t0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
  __m256i t1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(t0, t1, 0x20), _mm256_permute2x128_si256(t0, t1, 0x31));
}
// out[r*4+h]
void keys_float(const float* qs, const float* qz, const uint8_t* codes, int n, float* out) {
  const int rb = D / 2;
  for (int g0 = 0; g0 < n; g0 += G) {
    __m256 z2 = _mm256_setr_ps(qz[0], qz[1], qz[2], qz[3], qz[0], qz[1], qz[2], qz[3]);
    for (int r = g0; r < g0 + G; r += 2) {
      const uint8_t* r0 = codes + long(r) * rb; const uint8_t* r1 = r0 + rb;
      __m256 a[8]; for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
      for (int c = 0; c < D; c += 8) {
        __m256 x0 = codes8(r0, c), x1 = codes8(r1, c);
        for (int h = 0; h < NH; h++) { __m256 qv = _mm256_loadu_ps(qs + h * D + c); a[h] = _mm256_fmadd_ps(qv, x0, a[h]); a[4 + h] = _mm256_fmadd_ps(qv, x1, a[4 + h]); }
      }
      _mm256_storeu_ps(out + long(r) * 4, _mm256_add_ps(reduce8(a), z2));
    }
  }
}
// q quantized to int8 per head (per key group: done once per group, included), even/odd channel split.
void keys_int8(const float* qs, const float* qz, const uint8_t* codes, int n, float* out, bool per_group) {
  const int rb = D / 2;
  alignas(32) int8_t qe[NH][32], qo[NH][32];
  float qa[NH];
  for (int g0 = 0; g0 < n; g0 += G) {
    for (int h = 0; h < NH && (per_group || g0 == 0); h++) {
      float m = 0; for (int c = 0; c < D; c++) { float v = std::fabs(qs[h * D + c]); m = v > m ? v : m; }
      qa[h] = m / 127; const float inv = m > 0 ? 127 / m : 0;
      for (int i = 0; i < 32; i++) { { float e = qs[h * D + 2 * i] * inv, o = qs[h * D + 2 * i + 1] * inv; qe[h][i] = int8_t(int(e + (e > 0 ? 0.5f : -0.5f))); qo[h][i] = int8_t(int(o + (o > 0 ? 0.5f : -0.5f))); } }
    }
    __m256 z2 = _mm256_setr_ps(qz[0], qz[1], qz[2], qz[3], qz[0], qz[1], qz[2], qz[3]);
    __m256 s2 = _mm256_setr_ps(qa[0], qa[1], qa[2], qa[3], qa[0], qa[1], qa[2], qa[3]);
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256i qev[NH], qov[NH];
    for (int h = 0; h < NH; h++) { qev[h] = _mm256_load_si256((const __m256i*)qe[h]); qov[h] = _mm256_load_si256((const __m256i*)qo[h]); }
    for (int r = g0; r < g0 + G; r += 2) {
      __m256i a[8];
      for (int k = 0; k < 2; k++) {
        __m256i b = _mm256_loadu_si256((const __m256i*)(codes + long(r + k) * rb));
        __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
        for (int h = 0; h < NH; h++) a[4 * k + h] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, qev[h]), _mm256_maddubs_epi16(hi, qov[h])), ones);
      }
      _mm256_storeu_ps(out + long(r) * 4, _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8i(a)), s2, z2));
    }
  }
}
int main() {
  const int n = 8192 * 8;  // 8 KV heads' worth of rows
  std::mt19937 rng(1); std::uniform_real_distribution<float> U(-1, 1);
  std::vector<uint8_t> codes(long(n) * D / 2);
  for (auto& b : codes) b = uint8_t(rng());
  std::vector<float> qs(NH * D), qz(NH), o1(long(n) * 4), o2(long(n) * 4);
  for (auto& x : qs) x = U(rng) * 0.03f;
  for (auto& x : qz) x = U(rng);
  double best[3] = {1e9, 1e9, 1e9};
  for (int rep = 0; rep < 15; rep++) {
    auto t0 = std::chrono::steady_clock::now(); keys_float(qs.data(), qz.data(), codes.data(), n, o1.data());
    auto t1 = std::chrono::steady_clock::now(); keys_int8(qs.data(), qz.data(), codes.data(), n, o2.data(), true);
    auto t2 = std::chrono::steady_clock::now(); keys_int8(qs.data(), qz.data(), codes.data(), n, o2.data(), false);
    auto t3 = std::chrono::steady_clock::now();
    best[0] = std::fmin(best[0], std::chrono::duration<double, std::nano>(t1 - t0).count() / n);
    best[1] = std::fmin(best[1], std::chrono::duration<double, std::nano>(t2 - t1).count() / n);
    best[2] = std::fmin(best[2], std::chrono::duration<double, std::nano>(t3 - t2).count() / n);
  }
  double maxerr = 0, maxv = 0;
  for (long i = 0; i < long(n) * 4; i++) { maxerr = std::fmax(maxerr, std::fabs(o1[i] - o2[i] - 0)); maxv = std::fmax(maxv, std::fabs(o1[i] - qz[i % 4])); }
  printf("{\"ns_per_key_row\": {\"f32_fold\": %.2f, \"int8_query_requantized_per_group_scalar\": %.2f, \"int8_query_kernel_only\": %.2f}, \"max_abs_logit_diff\": %.3g, \"max_abs_q_dot_code\": %.3g}\n", best[0], best[1], best[2], maxerr, maxv);
}
