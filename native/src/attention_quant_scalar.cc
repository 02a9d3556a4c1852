// Portable pieces of the quantized attention: plain loops, fp32.
#include <algorithm>
#include <cmath>

#include "attention_quant.h"

namespace kvlab::qattn {
namespace {

inline float code_at(const uint8_t* row, int c, int bits) {
  const int per = 8 / bits;
  return float((row[c / per] >> ((c % per) * bits)) & ((1 << bits) - 1));
}

void fold_keys_scalar(const float* q, int nh, int d, int, const float* ks, const float* kz, float* qs, float* qz) {
  for (int h = 0; h < nh; h++) {
    float z = 0;
    for (int c = 0; c < d; c++) {
      qs[h * d + c] = q[h * d + c] * ks[c];
      z += q[h * d + c] * kz[c];
    }
    qz[h] = z;
  }
}

void key_logits_scalar(const float* qs, const float* qz, int nh, const uint8_t* codes, int n, int d, int bits, float* out, long ostride) {
  const int rb = d * bits / 8;
  for (int r = 0; r < n; r++) {
    const uint8_t* row = codes + long(r) * rb;
    for (int h = 0; h < nh; h++) {
      float acc = 0;
      for (int c = 0; c < d; c++) acc += qs[h * d + c] * code_at(row, c, bits);
      out[h * ostride + r] = acc + qz[h];
    }
  }
}

void value_accum_scalar(float* acc, int nh, const float* p, long pstride, const float* vs, const float* vz, int ng, int group, const uint8_t* codes, int n, int d,
                        int bits) {
  const int rb = d * bits / 8;
  for (int r = 0; r < n; r++) {
    const uint8_t* row = codes + long(r) * rb;
    for (int h = 0; h < nh; h++) {
      const float pr = p[h * pstride + r];
      for (int c = 0; c < d; c++) acc[h * d + c] += pr * (vs[r * ng + c / group] * code_at(row, c, bits) + vz[r * ng + c / group]);
    }
  }
}

void dots_scalar(const float* qs, int nh, const float* rows, int n, int d, float* out, long ostride) {
  for (int h = 0; h < nh; h++)
    for (int r = 0; r < n; r++) {
      float acc = 0;
      for (int c = 0; c < d; c++) acc += qs[h * d + c] * rows[long(r) * d + c];
      out[h * ostride + r] = acc;
    }
}

void accum_scalar(float* acc, int nh, const float* w, long wstride, const float* rows, int n, int d) {
  for (int h = 0; h < nh; h++)
    for (int r = 0; r < n; r++) {
      const float wr = w[h * wstride + r];
      for (int c = 0; c < d; c++) acc[h * d + c] += wr * rows[long(r) * d + c];
    }
}

void softmax_scalar(float* p, int nh, long L, long stride) {
  for (int h = 0; h < nh; h++) {
    float* ph = p + h * stride;
    float mx = -INFINITY;
    for (long j = 0; j < L; j++) mx = std::max(mx, ph[j]);
    double z = 0;
    for (long j = 0; j < L; j++) {
      ph[j] = ph[j] == -INFINITY ? 0.f : std::exp(ph[j] - mx);
      z += ph[j];
    }
    const float inv = z > 0 ? float(1.0 / z) : 0.f;
    for (long j = 0; j < L; j++) ph[j] *= inv;
  }
}

}  // namespace

const Kernels scalar_kernels = {fold_keys_scalar, key_logits_scalar, value_accum_scalar, dots_scalar, accum_scalar, softmax_scalar};

}  // namespace kvlab::qattn
