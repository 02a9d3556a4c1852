// N-API surface of the kernels. Model logic stays in TypeScript; every function here is one kernel call.
// The kernels are called directly (sync), matmulAsync on a napi worker; runStep (step.cc), the bench probes
// (probes.cc) and file mappings (mmap.cc) register their own functions.
#include <sched.h>

#include <napi.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "bindings.h"
#include "cpu.h"
#include "kernel_args.h"
#include "pool.h"

using namespace kvlab;
using namespace kvlab::bind;

namespace {

int default_threads() {
  if (const char* s = std::getenv("KVLAB_THREADS")) {
    const int n = std::atoi(s);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
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
  paths.Set("attention_quant_cache", std::string(attention_quant_path(64, 32)) + ", int4 / int2 codes widened in registers, shared by up to 4 query heads");
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

// attention(q, out | null, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len][], scale, statsFrom, max[] | null, sum[] | null, queryWeight | null, window)
Napi::Value AttentionFn(const Napi::CallbackInfo& info) {
  attention_op(info)();
  return info.Env().Undefined();
}

// attentionQuant(q, out | null, nq, nHeads, nKv, d, qPos, heads, prefix | null, scale, statsFrom, max[] | null, sum[] | null, queryWeight | null, window, bits, group)
Napi::Value AttentionQuantFn(const Napi::CallbackInfo& info) {
  attention_quant_op(info)();
  return info.Env().Undefined();
}

// attentionPruned(q, out, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len, channels | null][], prefix | null, scale, window)
Napi::Value AttentionPrunedFn(const Napi::CallbackInfo& info) {
  attention_pruned_op(info)();
  return info.Env().Undefined();
}

// attentionPrefixed(q, out, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len][], prefix: [k, v, pos, len][], scale, window)
Napi::Value AttentionPrefixedFn(const Napi::CallbackInfo& info) {
  attention_prefixed_op(info)();
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

// quantizeInt8(src, type, rows, cols, scales | null, group, outGroup, q: Int8Array, scales: Float32Array)
Napi::Value QuantizeFn(const Napi::CallbackInfo& info) {
  quantize_int8(weight_arg(info, 0), num(info[6]), data_of<int8_t>(info[7]), data_of<float>(info[8]));
  return info.Env().Undefined();
}

// setTuning(key, value) -> whether the key exists. Run-time switches with a meaning beyond speed, for tests that
// compare both sides in one process: "int8_vnni" (0/1, the int8 decode GEMV's arithmetic; KVLAB_INT8_GEMV),
// "step_placement" (0/1, async steps pin their threads; KVLAB_STEP_PLACEMENT), "step_fail_at" (the next runStep
// fails at that op index).
Napi::Value SetTuningFn(const Napi::CallbackInfo& info) {
  const std::string key = info[0].As<Napi::String>().Utf8Value();
  const long value = num(info[1]);
  if (key == "int8_vnni") set_int8_vnni(value != 0);
  else if (key == "step_placement") pool_set_placement(value != 0);
  else if (key == "step_fail_at") step_fail_next_at(value);
  else return Napi::Boolean::New(info.Env(), false);
  return Napi::Boolean::New(info.Env(), true);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  cpu();  // detection (and the AMX permission request) before the pool starts
  pool_init(default_threads());
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("matmul", Napi::Function::New(env, MatmulFn));
  exports.Set("matmulAsync", Napi::Function::New(env, MatmulAsyncFn));
  exports.Set("matmulPath", Napi::Function::New(env, MatmulPathFn));
  exports.Set("attention", Napi::Function::New(env, AttentionFn));
  exports.Set("attentionPrefixed", Napi::Function::New(env, AttentionPrefixedFn));
  exports.Set("attentionQuant", Napi::Function::New(env, AttentionQuantFn));
  exports.Set("attentionPruned", Napi::Function::New(env, AttentionPrunedFn));
  exports.Set("rmsnorm", Napi::Function::New(env, RmsnormFn));
  exports.Set("rope", Napi::Function::New(env, RopeFn));
  exports.Set("siluMul", Napi::Function::New(env, SiluMulFn));
  exports.Set("embedding", Napi::Function::New(env, EmbeddingFn));
  exports.Set("add", Napi::Function::New(env, AddFn));
  exports.Set("addRowBias", Napi::Function::New(env, AddRowBiasFn));
  exports.Set("copyRows", Napi::Function::New(env, CopyRowsFn));
  exports.Set("quantizeInt8", Napi::Function::New(env, QuantizeFn));
  exports.Set("setTuning", Napi::Function::New(env, SetTuningFn));
  register_step(env, exports);
  register_mmap(env, exports);
  register_probes(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(kvlab_native, Init)
