#pragma once
// Kernel calls unpacked from N-API arguments, shared by the direct bindings (addon.cc) and the step list
// (step.cc). Arguments are validated in src/tensor/native.ts; here they are only unpacked.
#include <napi.h>

#include <functional>
#include <utility>
#include <vector>

#include "attention.h"
#include "attention_prefixed.h"
#include "attention_pruned.h"
#include "attention_quant.h"
#include "matmul.h"
#include "ops.h"

namespace kvlab::bind {

// Data pointer of a typed array (already adjusted by its byte offset), or null for null/undefined.
template <typename T>
T* data_of(const Napi::Value& v) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  napi_typedarray_type type;
  size_t length;
  void* data = nullptr;
  napi_value ab;
  size_t offset;
  napi_get_typedarray_info(v.Env(), v, &type, &length, &data, &ab, &offset);
  return static_cast<T*>(data);
}

// A Uint16Array holds bf16 bits (a bf16 KV cache); a Float32Array fp32 values.
inline bool is_bf16(const Napi::Value& v) { return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array; }

inline long num(const Napi::Value& v) { return long(v.As<Napi::Number>().Int64Value()); }

// A kernel call unpacked from its arguments, run later (at once for the sync functions, on a worker for a step).
using Kernel = std::function<void()>;

// Arguments of one op inside a step's op list: [code, label, ...the kernel function's own arguments].
struct ArrayArgs {
  Napi::Array a;
  uint32_t base;
  Napi::Value operator[](size_t i) const { return a.Get(uint32_t(base + i)); }
};

inline double dbl(const Napi::Value& v) { return v.As<Napi::Number>().DoubleValue(); }
inline bool flag(const Napi::Value& v) { return v.As<Napi::Boolean>().Value(); }

// w, type, rows, cols, scales | null, group (0 = per row)
template <class A>
WeightRef weight_arg(const A& info, int at) {
  WeightRef w;
  w.data = data_of<void>(info[at]);
  w.type = int(num(info[at + 1]));
  w.rows = num(info[at + 2]);
  w.cols = num(info[at + 3]);
  w.scales = data_of<float>(info[at + 4]);
  const long g = num(info[at + 5]);
  w.group = g > 0 ? g : w.cols;
  return w;
}

// The leading arguments every attention call shares: (q, out | null, nq, nHeads, nKv, d, qPos, ...).
template <class A, class Args>
void query_args(const A& info, Args& a) {
  a.q = data_of<float>(info[0]);
  a.out = data_of<float>(info[1]);
  a.nq = int(num(info[2]));
  a.n_heads = int(num(info[3]));
  a.n_kv = int(num(info[4]));
  a.d = int(num(info[5]));
  a.q_pos = data_of<int32_t>(info[6]);
}

// (..., max[] | null, sum[] | null, queryWeight | null) from argument `at` on: the statistics of the keys' attention.
template <class A, class Args>
void stats_args(const A& info, int at, Args& a) {
  for (int s = at; s <= at + 1; s++) {
    const Napi::Value v = info[s];
    if (v.IsNull() || v.IsUndefined()) continue;
    Napi::Array arr = v.As<Napi::Array>();
    auto& dst = s == at ? a.stat_max : a.stat_sum;
    for (uint32_t g = 0; g < arr.Length(); g++) dst.push_back(data_of<float>(arr.Get(g)));
  }
  a.query_weight = data_of<float>(info[at + 2]);
}

// [k, v, pos, len] of each KV head; sets bf16 when the rows are bf16 bits (Uint16Array).
inline std::vector<HeadView> head_views(const Napi::Array& heads, bool* bf16) {
  std::vector<HeadView> views;
  for (uint32_t g = 0; g < heads.Length(); g++) {
    Napi::Array h = heads.Get(g).As<Napi::Array>();
    HeadView view{nullptr, nullptr, data_of<int32_t>(h.Get(2u)), int(num(h.Get(3u)))};
    *bf16 = is_bf16(h.Get(0u));
    if (*bf16) {
      view.k16 = data_of<uint16_t>(h.Get(0u));
      view.v16 = data_of<uint16_t>(h.Get(1u));
    } else {
      view.k = data_of<float>(h.Get(0u));
      view.v = data_of<float>(h.Get(1u));
    }
    views.push_back(view);
  }
  return views;
}

// (out, x, n, w, type, rows, cols, scales | null, group, bf16Activations)
template <class A>
Kernel matmul_op(const A& a) {
  Matmul m;
  m.out = data_of<float>(a[0]);
  m.x = data_of<float>(a[1]);
  m.n = num(a[2]);
  m.w = weight_arg(a, 3);
  const bool bf16 = flag(a[9]);
  return [m, bf16] { matmul(m, bf16); };
}

// (q, out | null, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len][] (k, v all Float32Array or all Uint16Array of bf16), scale, statsFrom, max[] | null, sum[] | null, queryWeight | null, window (0: none))
template <class A>
Kernel attention_op(const A& info) {
  Attention a;
  query_args(info, a);
  a.heads = head_views(info[7].template As<Napi::Array>(), &a.bf16);
  a.scale = float(dbl(info[8]));
  a.stats_from = int(num(info[9]));
  stats_args(info, 10, a);
  a.window = long(num(info[13]));
  return [a = std::move(a)] { attention(a); };
}

// (q, out, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len][], prefix: [k, v, pos, len][], scale, window (0: none)): attention over a
// shared prefix's rows followed by each head's own
template <class A>
Kernel attention_prefixed_op(const A& info) {
  Attention a;
  query_args(info, a);
  a.heads = head_views(info[7].template As<Napi::Array>(), &a.bf16);
  bool prefix_bf16 = a.bf16;
  std::vector<HeadView> prefix = head_views(info[8].template As<Napi::Array>(), &prefix_bf16);
  a.scale = float(dbl(info[9]));
  a.window = long(num(info[10]));
  return [a = std::move(a), prefix = std::move(prefix)] { attention_prefixed(a, prefix); };
}

// [k, v, pos, len, channels | null] of each KV head (k [len, channels.length] when channels are given).
inline std::vector<PrunedHead> pruned_heads(const Napi::Value& arr) {
  std::vector<PrunedHead> views;
  if (arr.IsNull() || arr.IsUndefined()) return views;
  Napi::Array heads = arr.As<Napi::Array>();
  for (uint32_t g = 0; g < heads.Length(); g++) {
    Napi::Array h = heads.Get(g).As<Napi::Array>();
    PrunedHead view{data_of<float>(h.Get(0u)), data_of<float>(h.Get(1u)), data_of<int32_t>(h.Get(2u)), int(num(h.Get(3u)))};
    const Napi::Value ch = h.Get(4u);
    if (!ch.IsNull() && !ch.IsUndefined()) {
      view.ch = data_of<int32_t>(ch);
      view.kd = int(ch.As<Napi::TypedArray>().ElementLength());
    }
    views.push_back(view);
  }
  return views;
}

// (q, out, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len, channels | null][], prefix: same | null, scale, window (0: none)):
// attention over channel-pruned fp32 keys (attention_pruned.h)
template <class A>
Kernel attention_pruned_op(const A& info) {
  PrunedAttention a;
  query_args(info, a);
  a.heads = pruned_heads(info[7]);
  a.prefix = pruned_heads(info[8]);
  a.scale = float(dbl(info[9]));
  a.window = long(num(info[10]));
  return [a = std::move(a)] { attention_pruned(a); };
}

// [k, v, pos, len, qrows, kCodes, vCodes, kScale, kZero, vScale, vZero] of each quantized KV head.
inline std::vector<QuantHead> quant_heads(const Napi::Value& arr) {
  std::vector<QuantHead> views;
  if (arr.IsNull() || arr.IsUndefined()) return views;
  Napi::Array heads = arr.As<Napi::Array>();
  for (uint32_t g = 0; g < heads.Length(); g++) {
    Napi::Array h = heads.Get(g).As<Napi::Array>();
    QuantHead v;
    v.k = data_of<float>(h.Get(0u));
    v.v = data_of<float>(h.Get(1u));
    v.pos = data_of<int32_t>(h.Get(2u));
    v.len = int(num(h.Get(3u)));
    v.qrows = int(num(h.Get(4u)));
    v.kc = data_of<uint8_t>(h.Get(5u));
    v.vc = data_of<uint8_t>(h.Get(6u));
    v.ks = data_of<float>(h.Get(7u));
    v.kz = data_of<float>(h.Get(8u));
    v.vs = data_of<float>(h.Get(9u));
    v.vz = data_of<float>(h.Get(10u));
    views.push_back(v);
  }
  return views;
}

// (q, out | null, nq, nHeads, nKv, d, qPos, heads: quant head[], prefix: quant head[] | null, scale, statsFrom, max[] | null, sum[] | null,
// queryWeight | null, window (0: none), bits, group): attention over KIVI-quantized heads (attention_quant.h)
template <class A>
Kernel attention_quant_op(const A& info) {
  QuantAttention a;
  query_args(info, a);
  a.heads = quant_heads(info[7]);
  a.prefix = quant_heads(info[8]);
  a.scale = float(dbl(info[9]));
  a.stats_from = int(num(info[10]));
  stats_args(info, 11, a);
  a.window = long(num(info[14]));
  a.bits = int(num(info[15]));
  a.group = int(num(info[16]));
  return [a = std::move(a)] { attention_quant(a); };
}

// (out, x, n, dim, weight, eps)
template <class A>
Kernel rmsnorm_op(const A& a) {
  float* out = data_of<float>(a[0]);
  const float* x = data_of<float>(a[1]);
  const long n = num(a[2]), dim = num(a[3]);
  const float* w = data_of<float>(a[4]);
  const double eps = dbl(a[5]);
  return [=] { rmsnorm(out, x, n, dim, w, eps); };
}

// (x, n, nHeads, headDim, positions, invFreq, scaling)
template <class A>
Kernel rope_op(const A& a) {
  float* x = data_of<float>(a[0]);
  const long n = num(a[1]), heads = num(a[2]), d = num(a[3]);
  const int32_t* pos = data_of<int32_t>(a[4]);
  const float* inv = data_of<float>(a[5]);
  const double scaling = dbl(a[6]);
  return [=] { rope(x, n, heads, d, pos, inv, scaling); };
}

// (out, gate, up, len)
template <class A>
Kernel silu_mul_op(const A& a) {
  float* out = data_of<float>(a[0]);
  const float* gate = data_of<float>(a[1]);
  const float* up = data_of<float>(a[2]);
  const long len = num(a[3]);
  return [=] { silu_mul(out, gate, up, len); };
}

// (out, table, type, rows, cols, scales | null, group, ids)   (ids validated by the caller)
template <class A>
Kernel embedding_op(const A& a) {
  float* out = data_of<float>(a[0]);
  const WeightRef table = weight_arg(a, 1);
  Napi::Int32Array ids = a[7].template As<Napi::Int32Array>();
  const int32_t* id = ids.Data();
  const long n = long(ids.ElementLength());
  return [=] { embedding(table, id, n, out); };
}

// (out, a, b, len)
template <class A>
Kernel add_op(const A& a) {
  float* out = data_of<float>(a[0]);
  const float* x = data_of<float>(a[1]);
  const float* y = data_of<float>(a[2]);
  const long len = num(a[3]);
  return [=] { add(out, x, y, len); };
}

// (x, n, bias, width)
template <class A>
Kernel add_row_bias_op(const A& a) {
  float* x = data_of<float>(a[0]);
  const long n = num(a[1]);
  const float* bias = data_of<float>(a[2]);
  const long w = num(a[3]);
  return [=] { add_row_bias(x, n, w, bias); };
}

// (dst: Float32Array | Uint16Array of bf16, dstOffset, src, srcOffset, srcStride, rows, width)
template <class A>
Kernel copy_rows_op(const A& a) {
  const long dst_off = num(a[1]);
  const float* src = data_of<float>(a[2]);
  const long src_off = num(a[3]), stride = num(a[4]), rows = num(a[5]), width = num(a[6]);
  if (is_bf16(a[0])) {
    uint16_t* dst = data_of<uint16_t>(a[0]);
    return [=] { copy_rows_bf16(dst, dst_off, src, src_off, stride, rows, width); };
  }
  float* dst = data_of<float>(a[0]);
  return [=] { copy_rows(dst, dst_off, src, src_off, stride, rows, width); };
}

}  // namespace kvlab::bind
