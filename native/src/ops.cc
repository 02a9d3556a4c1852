#include "ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu.h"
#include "pool.h"
#include "vecmath.h"
#include "weights.h"

#define AVX512 "avx512f,avx512bw,avx512vl,avx512dq"
#define AVX2 "avx2,fma"

namespace kvlab {
namespace {

// Rows of work below this many elements run on the calling thread (waking the pool costs more).
constexpr long PARALLEL_MIN = 1 << 15;

template <typename F>
void rows_maybe_parallel(long n, long per_row, F f) {
  if (n * per_row < PARALLEL_MIN || n < 2) return f(0, n);
  pool_run([&](int t, int T) {
    long a, b;
    split_range(n, t, T, &a, &b);
    if (a < b) f(a, b);
  });
}

void rmsnorm_rows_scalar(float* out, const float* x, long i0, long i1, long dim, const float* w, double eps) {
  for (long i = i0; i < i1; i++) {
    const float* xi = x + i * dim;
    double ss = 0;
    for (long c = 0; c < dim; c++) ss += double(xi[c]) * xi[c];
    const double inv = 1.0 / std::sqrt(double(float(ss / double(dim))) + eps);
    float* o = out + i * dim;
    for (long c = 0; c < dim; c++) o[c] = float(double(xi[c]) * inv) * w[c];
  }
}

__attribute__((target(AVX512)))
void rmsnorm_rows_avx512(float* out, const float* x, long i0, long i1, long dim, const float* w, double eps) {
  for (long i = i0; i < i1; i++) {
    const float* xi = x + i * dim;
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    long c = 0;
    for (; c + 16 <= dim; c += 16) {
      const __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(xi + c)), b = _mm512_cvtps_pd(_mm256_loadu_ps(xi + c + 8));
      s0 = _mm512_fmadd_pd(a, a, s0);
      s1 = _mm512_fmadd_pd(b, b, s1);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (; c < dim; c++) ss += double(xi[c]) * xi[c];
    const double inv = 1.0 / std::sqrt(double(float(ss / double(dim))) + eps);
    const __m512d vinv = _mm512_set1_pd(inv);
    float* o = out + i * dim;
    c = 0;
    for (; c + 8 <= dim; c += 8) {
      const __m256 scaled = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(xi + c)), vinv));
      _mm256_storeu_ps(o + c, _mm256_mul_ps(scaled, _mm256_loadu_ps(w + c)));
    }
    for (; c < dim; c++) o[c] = float(double(xi[c]) * inv) * w[c];
  }
}

__attribute__((target(AVX2)))
void rmsnorm_rows_avx2(float* out, const float* x, long i0, long i1, long dim, const float* w, double eps) {
  for (long i = i0; i < i1; i++) {
    const float* xi = x + i * dim;
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    long c = 0;
    for (; c + 8 <= dim; c += 8) {
      const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(xi + c)), b = _mm256_cvtps_pd(_mm_loadu_ps(xi + c + 4));
      s0 = _mm256_fmadd_pd(a, a, s0);
      s1 = _mm256_fmadd_pd(b, b, s1);
    }
    const __m256d s = _mm256_add_pd(s0, s1);
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    double ss = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; c < dim; c++) ss += double(xi[c]) * xi[c];
    const double inv = 1.0 / std::sqrt(double(float(ss / double(dim))) + eps);
    const __m256d vinv = _mm256_set1_pd(inv);
    float* o = out + i * dim;
    c = 0;
    for (; c + 4 <= dim; c += 4) {
      const __m128 scaled = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(xi + c)), vinv));
      _mm_storeu_ps(o + c, _mm_mul_ps(scaled, _mm_loadu_ps(w + c)));
    }
    for (; c < dim; c++) o[c] = float(double(xi[c]) * inv) * w[c];
  }
}

void rope_rows(float* x, long i0, long i1, long nh, long d, const int32_t* pos, const float* inv_freq, double scaling, int isa);

// Pairs (f, f + half) for f in [f0, half): a * c - b * s and b * c + a * s in fp64, as the reference.
void rotate_scalar(float* r, const double* cs, const double* sn, long f0, long half) {
  for (long f = f0; f < half; f++) {
    const double a = r[f], b = r[f + half];
    r[f] = float(a * cs[f] - b * sn[f]);
    r[f + half] = float(b * cs[f] + a * sn[f]);
  }
}

__attribute__((target(AVX512)))
void rotate_avx512(float* r, const double* cs, const double* sn, long half) {
  long f = 0;
  for (; f + 8 <= half; f += 8) {
    const __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(r + f)), b = _mm512_cvtps_pd(_mm256_loadu_ps(r + f + half));
    const __m512d c = _mm512_loadu_pd(cs + f), s = _mm512_loadu_pd(sn + f);
    // Products of two fp32 values are exact in fp64, so a*c - b*s rounds once in fp64, as in the reference.
    _mm256_storeu_ps(r + f, _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_mul_pd(a, c), _mm512_mul_pd(b, s))));
    _mm256_storeu_ps(r + f + half, _mm512_cvtpd_ps(_mm512_add_pd(_mm512_mul_pd(b, c), _mm512_mul_pd(a, s))));
  }
  rotate_scalar(r, cs, sn, f, half);
}

__attribute__((target(AVX2)))
void rotate_avx2(float* r, const double* cs, const double* sn, long half) {
  long f = 0;
  for (; f + 4 <= half; f += 4) {
    const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(r + f)), b = _mm256_cvtps_pd(_mm_loadu_ps(r + f + half));
    const __m256d c = _mm256_loadu_pd(cs + f), s = _mm256_loadu_pd(sn + f);
    _mm_storeu_ps(r + f, _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_mul_pd(a, c), _mm256_mul_pd(b, s))));
    _mm_storeu_ps(r + f + half, _mm256_cvtpd_ps(_mm256_add_pd(_mm256_mul_pd(b, c), _mm256_mul_pd(a, s))));
  }
  rotate_scalar(r, cs, sn, f, half);
}

void rope_rows(float* x, long i0, long i1, long nh, long d, const int32_t* pos, const float* inv_freq, double scaling, int isa) {
  const long half = d / 2;
  std::vector<double> cs(half), sn(half);
  for (long i = i0; i < i1; i++) {
    for (long f = 0; f < half; f++) {
      const float angle = float(double(pos[i]) * double(inv_freq[f]));
      // The reference keeps cos * scaling in a Float32Array.
      cs[f] = double(float(std::cos(double(angle)) * scaling));
      sn[f] = double(float(std::sin(double(angle)) * scaling));
    }
    for (long h = 0; h < nh; h++) {
      float* r = x + (i * nh + h) * d;
      if (isa == 2) rotate_avx512(r, cs.data(), sn.data(), half);
      else if (isa == 1) rotate_avx2(r, cs.data(), sn.data(), half);
      else rotate_scalar(r, cs.data(), sn.data(), 0, half);
    }
  }
}

__attribute__((target(AVX512)))
long silu_mul_avx512(float* out, const float* g, const float* u, long i, long len) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= len; i += 16) {
    const __m512 x = _mm512_loadu_ps(g + i);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
  }
  return i;
}

__attribute__((target(AVX2)))
long silu_mul_avx2(float* out, const float* g, const float* u, long i, long len) {
  const __m256 one = _mm256_set1_ps(1.0f), cap = _mm256_set1_ps(88.0f);
  for (; i + 8 <= len; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = exp256(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), cap));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
  return i;
}

// 2 with AVX-512, 1 with AVX2 + FMA, 0 otherwise.
int isa_level() { return cpu().avx512 ? 2 : cpu().avx2_fma ? 1 : 0; }

}  // namespace

void rmsnorm(float* out, const float* x, long n, long dim, const float* w, double eps) {
  const int isa = isa_level();
  rows_maybe_parallel(n, dim, [&](long a, long b) {
    if (isa == 2) rmsnorm_rows_avx512(out, x, a, b, dim, w, eps);
    else if (isa == 1) rmsnorm_rows_avx2(out, x, a, b, dim, w, eps);
    else rmsnorm_rows_scalar(out, x, a, b, dim, w, eps);
  });
}

void rope(float* x, long n, long n_heads, long d, const int32_t* pos, const float* inv_freq, double scaling) {
  const int isa = isa_level();
  rows_maybe_parallel(n, n_heads * d + 4 * d, [&](long a, long b) { rope_rows(x, a, b, n_heads, d, pos, inv_freq, scaling, isa); });
}

void silu_mul(float* out, const float* gate, const float* up, long len) {
  const int isa = isa_level();
  const long chunk = 4096;
  rows_maybe_parallel((len + chunk - 1) / chunk, chunk, [&](long a, long b) {
    const long i0 = a * chunk, i1 = std::min(len, b * chunk);
    long i = isa == 2 ? silu_mul_avx512(out, gate, up, i0, i1) : isa == 1 ? silu_mul_avx2(out, gate, up, i0, i1) : i0;
    for (; i < i1; i++) out[i] = float(double(gate[i]) / (1.0 + std::exp(-double(gate[i]))) * up[i]);
  });
}

void add(float* out, const float* a, const float* b, long len) {
  for (long i = 0; i < len; i++) out[i] = a[i] + b[i];
}

void add_row_bias(float* x, long n, long w, const float* bias) {
  for (long i = 0; i < n; i++) add(x + i * w, x + i * w, bias, w);
}

void copy_rows(float* dst, long dst_off, const float* src, long src_off, long src_stride, long rows, long width) {
  for (long i = 0; i < rows; i++) std::copy(src + src_off + i * src_stride, src + src_off + i * src_stride + width, dst + dst_off + i * width);
}

void copy_rows_bf16(uint16_t* dst, long dst_off, const float* src, long src_off, long src_stride, long rows, long width) {
  for (long i = 0; i < rows; i++) {
    const float* s = src + src_off + i * src_stride;
    uint16_t* o = dst + dst_off + i * width;
    for (long c = 0; c < width; c++) o[c] = f32_to_bf16(s[c]);
  }
}

}  // namespace kvlab
