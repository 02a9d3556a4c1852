#pragma once
// Attention over channel-pruned keys (ThinK, src/press/methods/think.ts): a head stores only the key channels `ch`
// (ascending, kd of them) of each row, values at the full head size d. q.k runs over the kept channels: the query's
// kept channels are gathered once per (query row, head), then the rows are read at width kd.
#include <cstdint>
#include <vector>

namespace kvlab {

struct PrunedHead {
  const float* k;      // [len, kd] (kd = d when ch is null)
  const float* v;      // [len, d]
  const int32_t* pos;  // [len]
  int len = 0;
  const int32_t* ch = nullptr;  // kept channels, or null: every channel
  int kd = 0;
};

struct PrunedAttention {
  const float* q;  // [nq, n_heads, d]
  float* out;      // [nq, n_heads, d]
  int nq, n_heads, n_kv, d;
  const int32_t* q_pos;
  std::vector<PrunedHead> heads;   // one per KV head
  std::vector<PrunedHead> prefix;  // empty, or one per KV head: rows read before the head's own (a shared context)
  float scale;
  long window = 0;  // > 0: key j visible to query i only if q_pos[i] - pos[j] < window
};

// fp32 rows only, outputs only (no statistics).
void attention_pruned(const PrunedAttention& a);
// The ISA the call would run on ("avx512", "avx2", "scalar").
const char* attention_pruned_path(const PrunedAttention& a);

}  // namespace kvlab
