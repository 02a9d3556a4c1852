#pragma once
// Attention over KIVI-quantized KV heads (int4 / int2, src/tensor/kv-quant.ts has the layout): rows [0, qrows) packed
// (keys per channel over groups of `group` rows, values per row over groups of `group` channels, fp32 scales and
// zero points), rows [qrows, len) in fp32 (the residual window). The packed rows are read as they are: each row's
// codes are widened in registers once for all the query heads of its KV head, never copied out.
#include <cstdint>
#include <vector>

namespace kvlab {

struct QuantHead {
  const float* k;  // residual rows [qrows, len) from their start
  const float* v;
  const int32_t* pos;  // every row
  int len = 0;
  int qrows = 0;
  const uint8_t* kc = nullptr;  // [qrows][d * bits / 8]
  const uint8_t* vc = nullptr;
  const float* ks = nullptr;  // [qrows / group][d]
  const float* kz = nullptr;
  const float* vs = nullptr;  // [qrows][ceil(d / group)]
  const float* vz = nullptr;
};

struct QuantAttention {
  const float* q;  // [nq, n_heads, d]
  float* out;      // [nq, n_heads, d] or null
  int nq, n_heads, n_kv, d;
  const int32_t* q_pos;
  std::vector<QuantHead> heads;   // one per KV head
  std::vector<QuantHead> prefix;  // empty, or one per KV head: rows read before the head's own (a shared context)
  float scale;
  int stats_from = 0;
  std::vector<float*> stat_max;  // per KV head, or empty (not with a prefix)
  std::vector<float*> stat_sum;
  const float* query_weight = nullptr;
  long window = 0;  // > 0: key j visible to query i only if q_pos[i] - pos[j] < window
  int bits = 4;
  int group = 32;
};

void attention_quant(const QuantAttention& a);
// The ISA the call would run on ("avx512", "avx2", "scalar").
const char* attention_quant_path(int d, int group);

namespace qattn {

// The per-ISA pieces (attention_quant_{scalar,avx2,avx512}.cc); everything else is attention_quant.cc.
struct Kernels {
  // qs[h * d + c] = q[h * d + c] * ks[c] and qz[h] = sum_c q[h * d + c] * kz[c], for h < nh: one key group's scales
  // and zero points folded into the queries. qs may hold each head's channels in the order this ISA's key_logits
  // reads them for `bits` (the SIMD pieces split int4 channels into even and odd ones per block).
  void (*fold_keys)(const float* q, int nh, int d, int bits, const float* ks, const float* kz, float* qs, float* qz);
  // out[h * ostride + r] = qz[h] + sum_c qs[h * d + c] * code(r, c), for h < nh, r < n: the logits of n packed key
  // rows of one key group, its scales and zero points already folded into qs and qz by fold_keys; codes are read
  // in place.
  void (*key_logits)(const float* qs, const float* qz, int nh, const uint8_t* codes, int n, int d, int bits, float* out, long ostride);
  // acc[h * d + c] += sum_r p[h * pstride + r] * (vs[r * ng + c / group] * code(r, c) + vz[r * ng + c / group]), for
  // h < nh, r < n: packed value rows dequantized in registers, once for all nh query heads. Rows whose p is 0 for
  // every head may be skipped.
  void (*value_accum)(float* acc, int nh, const float* p, long pstride, const float* vs, const float* vz, int ng, int group, const uint8_t* codes, int n, int d,
                      int bits);
  // The fp32 residual rows. out[h * ostride + r] = sum_c qs[h * d + c] * rows[r * d + c], for h < nh, r < n.
  void (*dots)(const float* qs, int nh, const float* rows, int n, int d, float* out, long ostride);
  // acc[h * d + c] += sum_r w[h * wstride + r] * rows[r * d + c], for h < nh, r < n.
  void (*accum)(float* acc, int nh, const float* w, long wstride, const float* rows, int n, int d);
  // Softmax in place of p[h * stride + j], j < L, for h < nh: -inf (masked) becomes exactly 0; a row with no visible
  // key becomes all 0.
  void (*softmax)(float* p, int nh, long L, long stride);
};

extern const Kernels scalar_kernels;
extern const Kernels avx2_kernels;
extern const Kernels avx512_kernels;

}  // namespace qattn
}  // namespace kvlab
