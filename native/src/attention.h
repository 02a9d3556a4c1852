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
  long window = 0;                      // > 0: query i also needs q_pos[i] - pos[j] < window (a sliding window)
};

// Softmax attention over ragged per-KV-head caches: key j is visible to query i iff pos[j] <= q_pos[i] (and, with
// a window, q_pos[i] - pos[j] < window).
void attention(const Attention& a);
// The windowed case (attention_window.cc): whether a's window hides any key from any of its queries, and a run
// of a (over prefix's rows then each head's own when prefix is given) that applies it.
bool window_masks_keys(const Attention& a, const std::vector<HeadView>* prefix);
void attention_windowed(const Attention& a, const std::vector<HeadView>* prefix);

}  // namespace kvlab
