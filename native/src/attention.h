#pragma once
#include <cstdint>
#include <vector>

namespace kvlab {

// A KV head's rows [0, len): fp32 keys and values in k, v, or, in a bf16 cache (Attention::bf16), their bf16 bits in
// k16, v16.
struct HeadView {
  const float* k;
  const float* v;
  const int32_t* pos;
  int len;
  const uint16_t* k16 = nullptr;
  const uint16_t* v16 = nullptr;
};

struct Attention {
  const float* q;  // [nq, n_heads, d]
  float* out;      // [nq, n_heads, d] or null
  int nq, n_heads, n_kv, d;
  const int32_t* q_pos;
  std::vector<HeadView> heads;  // one per KV head
  float scale;
  int stats_from;               // query rows >= stats_from feed the statistics
  std::vector<float*> stat_max;  // per KV head, or empty
  std::vector<float*> stat_sum;
  const float* query_weight = nullptr;  // optional: probabilities of query row i are scaled by this before accumulation
  bool bf16 = false;                    // every head's keys and values are bf16 (k16, v16)
};

// Softmax attention over ragged per-KV-head caches: key j is visible to query i iff pos[j] <= q_pos[i].
void attention(const Attention& a);

}  // namespace kvlab
