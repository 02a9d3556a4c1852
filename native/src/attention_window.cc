// Sliding-window attention (Mistral): a query at position p sees the keys at positions p - window < pos <= p.
// The kernels mask by pos <= p only, so a windowed call is run one query row at a time over views restricted to
// the row's window: in a head whose positions ascend (rows are appended in order and eviction keeps order) that
// is a contiguous range, read in place; otherwise the row's visible keys are gathered into scratch and their
// statistics added back where they came from. The mask is on positions, never on row indices, so evicted rows
// shift nothing. Every ISA path runs unchanged on the restricted views.
#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "attention.h"
#include "attention_prefixed.h"

namespace kvlab {
namespace {

bool ascending_positions(const HeadView& h) {
  for (int j = 1; j < h.len; j++)
    if (h.pos[j] < h.pos[j - 1]) return false;
  return true;
}

// Rows of one head a query keeps: in place (offset into the head) or gathered (their row indices).
struct Restricted {
  HeadView view{};
  int offset = 0;                // in place: the view starts at this row
  std::vector<int> rows;         // gathered: source row of each view row
  std::vector<float> k, v;       // gathered fp32 rows
  std::vector<uint16_t> k16, v16;  // gathered bf16 rows
  std::vector<int32_t> pos;
  bool gathered = false;
};

// Keys of h with position > lowest_excluded, for a query whose window starts above lowest_excluded.
void restrict_head(const HeadView& h, bool sorted, int d, bool bf16, int32_t lowest_excluded, Restricted& r) {
  r.gathered = !sorted;
  if (sorted) {
    r.offset = int(std::upper_bound(h.pos, h.pos + h.len, lowest_excluded) - h.pos);
    r.view = h;
    r.view.len = h.len - r.offset;
    r.view.pos = h.pos + r.offset;
    const long skip = long(r.offset) * d;
    if (bf16) {
      r.view.k16 = h.k16 + skip;
      r.view.v16 = h.v16 + skip;
    } else {
      r.view.k = h.k + skip;
      r.view.v = h.v + skip;
    }
    return;
  }
  r.rows.clear();
  for (int j = 0; j < h.len; j++)
    if (h.pos[j] > lowest_excluded) r.rows.push_back(j);
  const int n = int(r.rows.size());
  r.pos.resize(std::max(n, 1));
  if (bf16) {
    r.k16.resize(size_t(std::max(n, 1)) * d);
    r.v16.resize(size_t(std::max(n, 1)) * d);
  } else {
    r.k.resize(size_t(std::max(n, 1)) * d);
    r.v.resize(size_t(std::max(n, 1)) * d);
  }
  for (int i = 0; i < n; i++) {
    const long src = long(r.rows[i]) * d, dst = long(i) * d;
    r.pos[i] = h.pos[r.rows[i]];
    if (bf16) {
      std::memcpy(&r.k16[dst], h.k16 + src, sizeof(uint16_t) * d);
      std::memcpy(&r.v16[dst], h.v16 + src, sizeof(uint16_t) * d);
    } else {
      std::memcpy(&r.k[dst], h.k + src, sizeof(float) * d);
      std::memcpy(&r.v[dst], h.v + src, sizeof(float) * d);
    }
  }
  r.view = HeadView{bf16 ? nullptr : r.k.data(), bf16 ? nullptr : r.v.data(), r.pos.data(), n};
  if (bf16) {
    r.view.k16 = r.k16.data();
    r.view.v16 = r.v16.data();
  }
}

bool masks_any(const std::vector<HeadView>& heads, int n, long window, int32_t highest_query) {
  for (int g = 0; g < n; g++)
    for (int j = 0; j < heads[g].len; j++)
      if (long(highest_query) - heads[g].pos[j] >= window) return true;
  return false;
}

int32_t highest_query(const Attention& a) {
  int32_t hi = INT32_MIN;
  for (int i = 0; i < a.nq; i++) hi = std::max(hi, a.q_pos[i]);
  return hi;
}

// One query row of a: the row's q/out/position/weight, its window's keys, statistics pointed at those keys.
void run_row(const Attention& a, const std::vector<HeadView>* prefix, int i, std::vector<Restricted>& own, std::vector<Restricted>& pre) {
  const int32_t lowest_excluded = int32_t(std::max<long>(long(a.q_pos[i]) - a.window, INT32_MIN));
  Attention r = a;
  r.window = 0;
  r.nq = 1;
  r.q = a.q + long(i) * a.n_heads * a.d;
  r.out = a.out ? a.out + long(i) * a.n_heads * a.d : nullptr;
  r.q_pos = a.q_pos + i;
  r.query_weight = a.query_weight ? a.query_weight + i : nullptr;
  r.stats_from = i >= a.stats_from ? 0 : 1;
  for (int g = 0; g < a.n_kv; g++) {
    restrict_head(a.heads[g], !own[g].gathered, a.d, a.bf16, lowest_excluded, own[g]);
    r.heads[g] = own[g].view;
  }
  if (prefix) {
    // Shared-prefix calls carry no statistics.
    std::vector<HeadView> p(a.n_kv);
    for (int g = 0; g < a.n_kv; g++) {
      restrict_head((*prefix)[g], !pre[g].gathered, a.d, a.bf16, lowest_excluded, pre[g]);
      p[g] = pre[g].view;
    }
    attention_prefixed(r, p);
    return;
  }
  // Statistics: in place, the arrays shifted to the view's first row; gathered, zeroed scratch added back after.
  std::vector<std::vector<float>> smax(a.n_kv), ssum(a.n_kv);
  for (int g = 0; g < a.n_kv; g++) {
    const int n = std::max(own[g].view.len, 1);
    if (!a.stat_max.empty()) r.stat_max[g] = own[g].gathered ? (smax[g].assign(n, 0.f), smax[g].data()) : a.stat_max[g] + own[g].offset;
    if (!a.stat_sum.empty()) r.stat_sum[g] = own[g].gathered ? (ssum[g].assign(n, 0.f), ssum[g].data()) : a.stat_sum[g] + own[g].offset;
  }
  attention(r);
  if (r.stats_from) return;
  for (int g = 0; g < a.n_kv; g++) {
    if (!own[g].gathered) continue;
    for (size_t x = 0; x < own[g].rows.size(); x++) {
      const int j = own[g].rows[x];
      if (!a.stat_sum.empty()) a.stat_sum[g][j] += ssum[g][x];
      if (!a.stat_max.empty()) a.stat_max[g][j] = std::max(a.stat_max[g][j], smax[g][x]);
    }
  }
}

}  // namespace

bool window_masks_keys(const Attention& a, const std::vector<HeadView>* prefix) {
  if (a.window <= 0 || a.nq <= 0) return false;
  const int32_t hi = highest_query(a);
  return masks_any(a.heads, a.n_kv, a.window, hi) || (prefix && masks_any(*prefix, a.n_kv, a.window, hi));
}

void attention_windowed(const Attention& a, const std::vector<HeadView>* prefix) {
  std::vector<Restricted> own(a.n_kv), pre(prefix ? a.n_kv : 0);
  // Whether each head's positions ascend decides in place or gathered, once per call.
  for (int g = 0; g < a.n_kv; g++) own[g].gathered = !ascending_positions(a.heads[g]);
  for (size_t g = 0; g < pre.size(); g++) pre[g].gathered = !ascending_positions((*prefix)[g]);
  for (int i = 0; i < a.nq; i++) run_row(a, prefix, i, own, pre);
}

}  // namespace kvlab
