// N-API surface of the kernels. Model logic stays in TypeScript; every function here is one kernel call.
// Arguments are validated in src/tensor/native.ts; here they are only unpacked.
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <immintrin.h>
#include <napi.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "attention.h"
#include "cpu.h"
#include "gemm_avx2.h"
#include "matmul.h"
#include "ops.h"
#include "pool.h"

using namespace kvlab;

namespace {

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
bool is_bf16(const Napi::Value& v) { return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array; }

long num(const Napi::Value& v) { return long(v.As<Napi::Number>().Int64Value()); }

int default_threads() {
  if (const char* s = std::getenv("KVLAB_THREADS")) {
    const int n = std::atoi(s);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// A kernel call unpacked from its arguments, run later (at once for the sync functions, on a worker for a step).
using Kernel = std::function<void()>;

// Arguments of one op inside a step's op list: [code, label, ...the kernel function's own arguments].
struct ArrayArgs {
  Napi::Array a;
  uint32_t base;
  Napi::Value operator[](size_t i) const { return a.Get(uint32_t(base + i)); }
};

double dbl(const Napi::Value& v) { return v.As<Napi::Number>().DoubleValue(); }
bool flag(const Napi::Value& v) { return v.As<Napi::Boolean>().Value(); }

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

// (q, out | null, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len][] (k, v all Float32Array or all Uint16Array of bf16), scale, statsFrom, max[] | null, sum[] | null, queryWeight | null)
template <class A>
Kernel attention_op(const A& info) {
  Attention a;
  a.q = data_of<float>(info[0]);
  a.out = data_of<float>(info[1]);
  a.nq = int(num(info[2]));
  a.n_heads = int(num(info[3]));
  a.n_kv = int(num(info[4]));
  a.d = int(num(info[5]));
  a.q_pos = data_of<int32_t>(info[6]);
  Napi::Array heads = info[7].template As<Napi::Array>();
  for (uint32_t g = 0; g < heads.Length(); g++) {
    Napi::Array h = heads.Get(g).As<Napi::Array>();
    HeadView view{nullptr, nullptr, data_of<int32_t>(h.Get(2u)), int(num(h.Get(3u)))};
    a.bf16 = is_bf16(h.Get(0u));
    if (a.bf16) {
      view.k16 = data_of<uint16_t>(h.Get(0u));
      view.v16 = data_of<uint16_t>(h.Get(1u));
    } else {
      view.k = data_of<float>(h.Get(0u));
      view.v = data_of<float>(h.Get(1u));
    }
    a.heads.push_back(view);
  }
  a.scale = float(dbl(info[8]));
  a.stats_from = int(num(info[9]));
  for (int s = 10; s <= 11; s++) {
    const Napi::Value v = info[s];
    if (v.IsNull() || v.IsUndefined()) continue;
    Napi::Array arr = v.As<Napi::Array>();
    auto& dst = s == 10 ? a.stat_max : a.stat_sum;
    for (uint32_t g = 0; g < arr.Length(); g++) dst.push_back(data_of<float>(arr.Get(g)));
  }
  a.query_weight = data_of<float>(info[12]);
  return [a = std::move(a)] { attention(a); };
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

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CpuFeatures& f = cpu();
  Napi::Object o = Napi::Object::New(env);
  Napi::Object feats = Napi::Object::New(env);
  feats.Set("avx2_fma", f.avx2_fma);
  feats.Set("avx512", f.avx512);
  feats.Set("avx512_bf16", f.avx512_bf16);
  feats.Set("avx512_vnni", f.avx512_vnni);
  feats.Set("amx_bf16", f.amx_bf16);
  o.Set("features", feats);
  o.Set("threads", pool_threads());
  if (!f.isa_cap.empty()) o.Set("isaCap", f.isa_cap);
  Napi::Object paths = Napi::Object::New(env);
  WeightRef bf16{nullptr, W_BF16, 2048, 2048};
  WeightRef i8{nullptr, W_I8, 2048, 2048, nullptr, 128};
  paths.Set("decode_matmul", matmul_path(1, bf16, true));
  paths.Set("decode_matmul_int8", matmul_path(1, i8, true));
  paths.Set("prefill_matmul_bf16", matmul_path(512, bf16, true));
  paths.Set("prefill_matmul_f32", matmul_path(512, bf16, false));
  paths.Set("prefill_matmul_int8", matmul_path(512, i8, true));
  paths.Set("attention", f.avx512 ? "avx512" : f.avx2_fma ? "avx2" : "scalar");
  paths.Set("attention_bf16_cache", f.avx512 ? (f.avx512_bf16 ? "avx512, bf16 rows read directly, decode logits by vdpbf16ps (split query)" : "avx512, bf16 rows read directly")
                                             : f.avx2_fma ? "avx2, decode reads bf16 rows directly, prefill widens them per call" : "scalar, rows widened to fp32 per call");
  paths.Set("amx", f.amx_status);
  o.Set("paths", paths);
  return o;
}

// matmul(out, x, n, w, type, rows, cols, scales | null, group, bf16Activations)
Napi::Value MatmulFn(const Napi::CallbackInfo& info) {
  matmul_op(info)();
  return info.Env().Undefined();
}

// matmulAsync(out, x, n, w, type, rows, cols, scales | null, group, bf16Activations, done(err)): the same
// kernel as napi async work. The arrays stay referenced until `done` runs; the pool serializes it with any
// kernel the JS thread starts meanwhile.
class MatmulWorker : public Napi::AsyncWorker {
 public:
  MatmulWorker(const Napi::CallbackInfo& info)
      : Napi::AsyncWorker(info[10].As<Napi::Function>(), "kvlab.matmul"), bf16_(info[9].As<Napi::Boolean>().Value()) {
    m_.out = data_of<float>(info[0]);
    m_.x = data_of<float>(info[1]);
    m_.n = num(info[2]);
    m_.w = weight_arg(info, 3);
    for (int i : {0, 1, 3, 7})
      if (info[i].IsObject()) keep_.push_back(Napi::Persistent(info[i].As<Napi::Object>()));
  }
  void Execute() override {
    PoolPlacement spread;
    matmul(m_, bf16_);
  }
  void OnOK() override { Callback().Call({Env().Null()}); }

 private:
  Matmul m_;
  bool bf16_;
  std::vector<Napi::ObjectReference> keep_;
};

Napi::Value MatmulAsyncFn(const Napi::CallbackInfo& info) {
  (new MatmulWorker(info))->Queue();
  return info.Env().Undefined();
}

// matmulPath(n, type, rows, cols, group, bf16Activations) -> name of the kernel that call would take
Napi::Value MatmulPathFn(const Napi::CallbackInfo& info) {
  WeightRef w;
  w.type = int(num(info[1]));
  w.rows = num(info[2]);
  w.cols = num(info[3]);
  const long g = num(info[4]);
  w.group = g > 0 ? g : w.cols;
  return Napi::String::New(info.Env(), matmul_path(num(info[0]), w, info[5].As<Napi::Boolean>().Value()));
}

// attention(q, out | null, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len][], scale, statsFrom, max[] | null, sum[] | null, queryWeight | null)
Napi::Value AttentionFn(const Napi::CallbackInfo& info) {
  attention_op(info)();
  return info.Env().Undefined();
}

Napi::Value RmsnormFn(const Napi::CallbackInfo& info) {
  rmsnorm_op(info)();
  return info.Env().Undefined();
}

Napi::Value RopeFn(const Napi::CallbackInfo& info) {
  rope_op(info)();
  return info.Env().Undefined();
}

Napi::Value SiluMulFn(const Napi::CallbackInfo& info) {
  silu_mul_op(info)();
  return info.Env().Undefined();
}

Napi::Value EmbeddingFn(const Napi::CallbackInfo& info) {
  embedding_op(info)();
  return info.Env().Undefined();
}

Napi::Value AddFn(const Napi::CallbackInfo& info) {
  add_op(info)();
  return info.Env().Undefined();
}

Napi::Value AddRowBiasFn(const Napi::CallbackInfo& info) {
  add_row_bias_op(info)();
  return info.Env().Undefined();
}

Napi::Value CopyRowsFn(const Napi::CallbackInfo& info) {
  copy_rows_op(info)();
  return info.Env().Undefined();
}

// Step op codes, as src/tensor/step-list.ts numbers them.
enum OpCode { OP_MATMUL, OP_ATTENTION, OP_RMSNORM, OP_ROPE, OP_SILU_MUL, OP_EMBEDDING, OP_ADD, OP_ADD_ROW_BIAS, OP_COPY_ROWS, OP_COUNT };
const char* const OP_NAMES[OP_COUNT] = {"matmul", "attention", "rmsnorm", "rope", "siluMul", "embedding", "add", "addRowBias", "copyRows"};

// One-shot failure injection for tests: the next step fails at this op index (setTuning('step_fail_at', i)).
std::atomic<long> step_fail_at{-1};

// runStep(ops: [code, label, ...args][], done(err)): one forward step's kernel calls, unpacked on the JS
// thread and run in order as one napi async work. The op list (and through it every array the ops name)
// stays referenced until `done` runs. The C++ side only dispatches kernels; the order is the TypeScript
// forward pass's.
class StepWorker : public Napi::AsyncWorker {
 public:
  StepWorker(Napi::Function done, Napi::Array ops) : Napi::AsyncWorker(done, "kvlab.step"), keep_(Napi::Persistent(ops)), fail_at_(step_fail_at.exchange(-1)) {}

  // False (with a JS exception pending) if an op is malformed.
  bool Parse(Napi::Env env, Napi::Array ops) {
    const uint32_t n = ops.Length();
    kernels_.reserve(n);
    labels_.reserve(n);
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value item = ops.Get(i);
      if (!item.IsArray()) return fail(env, i, "not an array");
      ArrayArgs a{item.As<Napi::Array>(), 2};
      const Napi::Value code = a.a.Get(0u);
      const long c = code.IsNumber() ? num(code) : -1;
      if (c < 0 || c >= OP_COUNT) return fail(env, i, "unknown op code");
      const Napi::Value label = a.a.Get(1u);
      labels_.push_back(label.IsString() ? label.As<Napi::String>().Utf8Value() : OP_NAMES[c]);
      switch (c) {
        case OP_MATMUL: kernels_.push_back(matmul_op(a)); break;
        case OP_ATTENTION: kernels_.push_back(attention_op(a)); break;
        case OP_RMSNORM: kernels_.push_back(rmsnorm_op(a)); break;
        case OP_ROPE: kernels_.push_back(rope_op(a)); break;
        case OP_SILU_MUL: kernels_.push_back(silu_mul_op(a)); break;
        case OP_EMBEDDING: kernels_.push_back(embedding_op(a)); break;
        case OP_ADD: kernels_.push_back(add_op(a)); break;
        case OP_ADD_ROW_BIAS: kernels_.push_back(add_row_bias_op(a)); break;
        case OP_COPY_ROWS: kernels_.push_back(copy_rows_op(a)); break;
      }
      if (env.IsExceptionPending()) return false;
    }
    return true;
  }

  void Execute() override {
    PoolPlacement spread;
    const size_t n = kernels_.size();
    for (size_t i = 0; i < n; i++) {
      try {
        if (long(i) == fail_at_) throw std::runtime_error("failure injected by setTuning('step_fail_at')");
        kernels_[i]();
      } catch (const std::exception& e) {
        SetError("step op " + std::to_string(i) + " of " + std::to_string(n) + " (" + labels_[i] + ") failed: " + e.what());
        return;
      }
    }
  }

  void OnOK() override { Callback().Call({Env().Null()}); }

 private:
  bool fail(Napi::Env env, uint32_t i, const char* why) {
    Napi::TypeError::New(env, "runStep: op " + std::to_string(i) + " is malformed (" + why + ")").ThrowAsJavaScriptException();
    return false;
  }

  Napi::Reference<Napi::Array> keep_;
  long fail_at_;
  std::vector<Kernel> kernels_;
  std::vector<std::string> labels_;
};

Napi::Value RunStepFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray() || !info[1].IsFunction()) {
    Napi::TypeError::New(env, "runStep(ops, done) takes an array and a function").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* w = new StepWorker(info[1].As<Napi::Function>(), info[0].As<Napi::Array>());
  if (!w->Parse(env, info[0].As<Napi::Array>())) {
    delete w;
    return env.Undefined();
  }
  w->Queue();
  return env.Undefined();
}

// quantizeInt8(src, type, rows, cols, scales | null, group, outGroup, q: Int8Array, scales: Float32Array)
Napi::Value QuantizeFn(const Napi::CallbackInfo& info) {
  quantize_int8(weight_arg(info, 0), num(info[6]), data_of<int8_t>(info[7]), data_of<float>(info[8]));
  return info.Env().Undefined();
}

// Sum of p[0, S part) read as S streams side by side, 64 bytes from each in turn; AHEAD > 0: each stream also
// prefetches AHEAD bytes ahead into L1. On an AMD EPYC Zen 3 (AVX2) three plain streams per thread read
// fastest (26.5 vs 23.6 GB/s for one; two 17.8); on a Zen 5 (standalone, 2 threads) three plain streams read
// 37-55 GB/s where four with a prefetch 1 KiB ahead read 67-72. The probe takes the faster of the two.
template <int S, long AHEAD>
__attribute__((target("avx2")))
double sum_streams_avx2(const float* p, long part) {
  __m256 acc[6] = {};
  for (long i = 0; i < part; i += 16)
    #pragma GCC unroll 8
    for (int s = 0; s < S; s++) {
      if constexpr (AHEAD > 0) _mm_prefetch(reinterpret_cast<const char*>(p + s * part + i) + AHEAD, _MM_HINT_T0);
      acc[s % 3] = _mm256_add_ps(acc[s % 3], _mm256_loadu_ps(p + s * part + i));
      acc[3 + s % 3] = _mm256_add_ps(acc[3 + s % 3], _mm256_loadu_ps(p + s * part + i + 8));
    }
  alignas(32) float t[8];
  double r = 0;
  for (const __m256& x : acc) {
    _mm256_store_ps(t, x);
    for (float v : t) r += v;
  }
  return r;
}

// streamRead(buf: Float32Array, prefetching: boolean) -> sum: a streaming read over the whole buffer on every
// pool thread, each thread's share as three plain streams, or as four streams that prefetch ahead.
Napi::Value StreamReadFn(const Napi::CallbackInfo& info) {
  Napi::Float32Array a = info[0].As<Napi::Float32Array>();
  const bool prefetching = info.Length() > 1 && info[1].ToBoolean().Value();
  const float* p = a.Data();
  const long n = long(a.ElementLength());
  std::vector<double> parts(pool_threads(), 0.0);
  const CpuFeatures& f = cpu();
  pool_run([&](int t, int T) {
    long b, e;
    split_range(n, t, T, &b, &e);
    double s = 0;
    long i = b;
    if (f.avx2_fma) {
      const int streams = prefetching ? 4 : 3;
      const long part = (e - b) / streams / 16 * 16;
      s = prefetching ? sum_streams_avx2<4, 1024>(p + b, part) : sum_streams_avx2<3, 0>(p + b, part);
      i = b + streams * part;
    }
    for (; i < e; i++) s += p[i];
    parts[t] = s;
  });
  double s = 0;
  for (double x : parts) s += x;
  return Napi::Number::New(info.Env(), s);
}

// poolWaitProbe(ms) -> {wallMs, callerCpuMs} | null: one pool job in which every worker sleeps `ms` while the
// caller has nothing to do; the caller's CPU time shows whether it waits parked or busy (null with 1 thread).
Napi::Value PoolWaitProbeFn(const Napi::CallbackInfo& info) {
  const double ms = info[0].As<Napi::Number>().DoubleValue();
  if (pool_threads() < 2) return info.Env().Null();
  const auto cpu_ms = [] {
    rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
  };
  const double c0 = cpu_ms();
  const auto t0 = std::chrono::steady_clock::now();
  pool_run([&](int t, int) {
    if (t > 0) std::this_thread::sleep_for(std::chrono::microseconds(long(ms * 1000)));
  });
  const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("wallMs", wall);
  out.Set("callerCpuMs", cpu_ms() - c0);
  return out;
}

// poolPlacementProbe() -> {placed, secondPlaced, cpus, allowedDuring, allowedAfter, callerMaskRestored}: one pool
// job under a PoolPlacement made by this thread (and a second placement tried while it lives) and one job after
// it; per thread t, cpus[t] is the CPU it ran the first job on and allowedDuring[t] / allowedAfter[t] how many
// CPUs its affinity allowed in each job.
Napi::Value PoolPlacementProbeFn(const Napi::CallbackInfo& info) {
  cpu_set_t before, after;
  sched_getaffinity(0, sizeof before, &before);
  const int T = pool_threads();
  std::vector<int> cpus(T, -1), during(T, 0), later(T, 0);
  const auto allowed = [] {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : -1;
  };
  bool placed, second_placed;
  {
    PoolPlacement spread;
    placed = spread.placed();
    second_placed = PoolPlacement().placed();
    pool_run([&](int t, int) {
      cpus[t] = sched_getcpu();
      during[t] = allowed();
    });
  }
  pool_run([&](int t, int) { later[t] = allowed(); });
  sched_getaffinity(0, sizeof after, &after);
  Napi::Env env = info.Env();
  const auto array = [&](const std::vector<int>& v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); i++) a.Set(uint32_t(i), v[i]);
    return a;
  };
  Napi::Object out = Napi::Object::New(env);
  out.Set("placed", placed);
  out.Set("secondPlaced", second_placed);
  out.Set("cpus", array(cpus));
  out.Set("allowedDuring", array(during));
  out.Set("allowedAfter", array(later));
  out.Set("callerMaskRestored", CPU_EQUAL(&before, &after) != 0);
  return out;
}

// fmaPeak(threads) -> GFLOP/s: register-resident AVX2 FMA throughput, the compute ceiling of the AVX2 GEMM
// (0 on a CPU without AVX2+FMA).
Napi::Value FmaPeakFn(const Napi::CallbackInfo& info) {
  const int threads = info.Length() > 0 ? info[0].As<Napi::Number>().Int32Value() : pool_threads();
  return Napi::Number::New(info.Env(), cpu().avx2_fma ? fma_peak_gflops(threads) : 0.0);
}

// ---------- read-only file mappings handed out as zero-copy ArrayBuffers ----------

// One mmap of a whole file, freed when the last ArrayBuffer over it and its handle are collected.
struct Mapping {
  void* base;
  size_t size;
  std::atomic<long> refs;
};

void unref(Mapping* m) {
  if (m->refs.fetch_sub(1) == 1) {
    if (m->size) munmap(m->base, m->size);
    delete m;
  }
}

void release_region(napi_env, void*, void* hint) { unref(static_cast<Mapping*>(hint)); }

Mapping* map_file(Napi::Env env, const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    Napi::Error::New(env, "cannot open " + path + ": " + std::strerror(errno)).ThrowAsJavaScriptException();
    return nullptr;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    close(fd);
    Napi::Error::New(env, "cannot stat " + path + ": " + std::strerror(e)).ThrowAsJavaScriptException();
    return nullptr;
  }
  void* base = nullptr;
  if (st.st_size > 0) {
    // Private and writable: a stray write into a weight view copies that page instead of faulting,
    // and never reaches the file.
    base = mmap(nullptr, size_t(st.st_size), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
      const int e = errno;
      close(fd);
      Napi::Error::New(env, "cannot mmap " + path + ": " + std::strerror(e)).ThrowAsJavaScriptException();
      return nullptr;
    }
  }
  close(fd);
  return new Mapping{base, size_t(st.st_size), {1}};
}

Napi::Value region(Napi::Env env, Mapping* m, double offset, double length, const std::string& what) {
  if (!(offset >= 0 && length >= 0 && offset + length <= double(m->size)) || offset != std::floor(offset) || length != std::floor(length)) {
    Napi::RangeError::New(env, "region [" + std::to_string(long(offset)) + ", +" + std::to_string(long(length)) + ") outside " + what + " (" +
                                   std::to_string(m->size) + " bytes)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (length == 0) return Napi::ArrayBuffer::New(env, 0);
  m->refs.fetch_add(1);
  napi_value ab;
  const napi_status s = napi_create_external_arraybuffer(env, static_cast<uint8_t*>(m->base) + size_t(offset), size_t(length), release_region, m, &ab);
  if (s != napi_ok) {
    m->refs.fetch_sub(1);
    Napi::Error::New(env, "external ArrayBuffers are not supported by this runtime").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (length >= (1 << 20)) madvise(reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(m->base) + size_t(offset)) & ~uintptr_t(4095)), size_t(length), MADV_WILLNEED);
  return Napi::Value(env, ab);
}

// mapFile(path) -> handle (an external with the file size as `size`)
Napi::Value MapFileFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  Mapping* m = map_file(env, path);
  if (!m) return env.Undefined();
  auto handle = Napi::External<Mapping>::New(env, m, [](Napi::Env, Mapping* mm) { unref(mm); });
  return handle;
}

// mapRegion(handle, offset, length) -> ArrayBuffer over the mapping (zero copy)
Napi::Value MapRegionFn(const Napi::CallbackInfo& info) {
  Mapping* m = info[0].As<Napi::External<Mapping>>().Data();
  return region(info.Env(), m, info[1].As<Napi::Number>().DoubleValue(), info[2].As<Napi::Number>().DoubleValue(), "the mapped file");
}

// mappedSize(handle) -> bytes
Napi::Value MappedSizeFn(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(info[0].As<Napi::External<Mapping>>().Data()->size));
}

// alignOffset(buffer: ArrayBuffer, alignment) -> bytes from the buffer's start to its first address that is a
// multiple of alignment (V8 never moves an ArrayBuffer's backing store).
Napi::Value AlignOffsetFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsArrayBuffer() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "alignOffset(buffer: ArrayBuffer, alignment: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const uintptr_t at = reinterpret_cast<uintptr_t>(info[0].As<Napi::ArrayBuffer>().Data());
  const uint32_t alignment = info[1].As<Napi::Number>().Uint32Value();
  if (alignment == 0 || (alignment & (alignment - 1))) {
    Napi::RangeError::New(env, "alignOffset: alignment must be a power of two").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, double((alignment - at % alignment) % alignment));
}

// mapRegions(path, [[offset, length], ...]) -> ArrayBuffer[] viewing the file through one mmap.
Napi::Value MapRegionsFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array regions = info[1].As<Napi::Array>();
  Mapping* m = map_file(env, path);
  if (!m) return env.Undefined();
  Napi::Array out = Napi::Array::New(env, regions.Length());
  for (uint32_t i = 0; i < regions.Length(); i++) {
    Napi::Array r = regions.Get(i).As<Napi::Array>();
    Napi::Value ab = region(env, m, r.Get(0u).As<Napi::Number>().DoubleValue(), r.Get(1u).As<Napi::Number>().DoubleValue(), path);
    if (env.IsExceptionPending()) break;
    out.Set(i, ab);
  }
  unref(m);
  return out;
}

// setTuning(key, value) -> whether the knob exists (benchmarks A/B kernel variants in one process)
Napi::Value SetTuningFn(const Napi::CallbackInfo& info) {
  if (info[0].As<Napi::String>().Utf8Value() == "step_placement") {
    pool_set_placement(num(info[1]) != 0);
    return Napi::Boolean::New(info.Env(), true);
  }
  if (info[0].As<Napi::String>().Utf8Value() == "step_fail_at") {
    step_fail_at = long(num(info[1]));
    return Napi::Boolean::New(info.Env(), true);
  }
  return Napi::Boolean::New(info.Env(), set_tuning(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Number>().DoubleValue()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  cpu();  // detection (and the AMX permission request) before the pool starts
  pool_init(default_threads());
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("matmul", Napi::Function::New(env, MatmulFn));
  exports.Set("matmulAsync", Napi::Function::New(env, MatmulAsyncFn));
  exports.Set("matmulPath", Napi::Function::New(env, MatmulPathFn));
  exports.Set("attention", Napi::Function::New(env, AttentionFn));
  exports.Set("rmsnorm", Napi::Function::New(env, RmsnormFn));
  exports.Set("rope", Napi::Function::New(env, RopeFn));
  exports.Set("siluMul", Napi::Function::New(env, SiluMulFn));
  exports.Set("embedding", Napi::Function::New(env, EmbeddingFn));
  exports.Set("add", Napi::Function::New(env, AddFn));
  exports.Set("addRowBias", Napi::Function::New(env, AddRowBiasFn));
  exports.Set("copyRows", Napi::Function::New(env, CopyRowsFn));
  exports.Set("runStep", Napi::Function::New(env, RunStepFn));
  exports.Set("quantizeInt8", Napi::Function::New(env, QuantizeFn));
  exports.Set("mapFile", Napi::Function::New(env, MapFileFn));
  exports.Set("mapRegion", Napi::Function::New(env, MapRegionFn));
  exports.Set("mappedSize", Napi::Function::New(env, MappedSizeFn));
  exports.Set("alignOffset", Napi::Function::New(env, AlignOffsetFn));
  exports.Set("mapRegions", Napi::Function::New(env, MapRegionsFn));
  exports.Set("setTuning", Napi::Function::New(env, SetTuningFn));
  exports.Set("streamRead", Napi::Function::New(env, StreamReadFn));
  exports.Set("fmaPeak", Napi::Function::New(env, FmaPeakFn));
  exports.Set("poolWaitProbe", Napi::Function::New(env, PoolWaitProbeFn));
  exports.Set("poolPlacementProbe", Napi::Function::New(env, PoolPlacementProbeFn));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvlab_native, Init)
