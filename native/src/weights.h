#pragma once
#include <cstdint>
#include <cstring>

namespace kvlab {

enum WeightType { W_F32 = 0, W_BF16 = 1, W_F16 = 2, W_I8 = 3 };

// A 2-D weight [rows, cols] in its storage type. int8: value = q * scales[r * groups_per_row + c / group].
struct WeightRef {
  const void* data = nullptr;
  int type = W_F32;
  long rows = 0;
  long cols = 0;
  const float* scales = nullptr;  // int8 only
  long group = 0;                 // int8 only: columns per scale (== cols for per-row scales)

  long groups_per_row() const { return (cols + group - 1) / group; }
  bool per_row() const { return group >= cols; }
  float scale(long r, long c) const { return scales[r * groups_per_row() + c / group]; }
};

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// fp32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, frac = h & 0x3ff, u;
  if (exp == 0) {
    float f = float(frac) * (1.0f / 16777216.0f);  // frac * 2^-24, exact
    return sign ? -f : f;
  }
  if (exp == 31) u = sign | 0x7f800000u | (frac << 13);
  else u = sign | ((exp + 112) << 23) | (frac << 13);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float weight_at(const WeightRef& w, long r, long c) {
  const long i = r * w.cols + c;
  switch (w.type) {
    case W_F32: return static_cast<const float*>(w.data)[i];
    case W_BF16: return bf16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    case W_F16: return f16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    default: return float(static_cast<const int8_t*>(w.data)[i]) * w.scale(r, c);
  }
}

// Columns [c0, c1) of row r as fp32 (exact for every type; int8 times its scales). Vectorized where the CPU allows.
void widen_row(const WeightRef& w, long r, long c0, long c1, float* dst);

}  // namespace kvlab
