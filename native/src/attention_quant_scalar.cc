// Portable pieces of the quantized attention: plain loops, fp32.
#include <algorithm>
#include <cmath>

#include "attention_quant.h"

namespace kvlab::qattn {
namespace {

void unpack_scalar(const uint8_t* codes, int rows, int d, int bits, float* buf) {
  const int rb = d * bits / 8, per = 8 / bits, mask = (1 << bits) - 1;
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < d; c++) buf[r * d + c] = float((codes[long(r) * rb + c / per] >> ((c % per) * bits)) & mask);
}

void dots_scalar(const float* qs, int nh, const float* rows, int n, int d, float* out, long ostride) {
  for (int h = 0; h < nh; h++)
    for (int r = 0; r < n; r++) {
      float acc = 0;
      for (int c = 0; c < d; c++) acc += qs[h * d + c] * rows[long(r) * d + c];
      out[h * ostride + r] = acc;
    }
}

void accum_scalar(float* acc, int nh, const float* w, long wstride, int ng, int group, const float* rows, int n, int d) {
  for (int h = 0; h < nh; h++)
    for (int r = 0; r < n; r++) {
      const float* wr = w + h * wstride + long(r) * ng;
      for (int c = 0; c < d; c++) acc[h * d + c] += wr[c / group] * rows[long(r) * d + c];
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

const Kernels scalar_kernels = {unpack_scalar, dots_scalar, accum_scalar, softmax_scalar};

}  // namespace kvlab::qattn
