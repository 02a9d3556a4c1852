// runStep: a forward step's kernel calls run in order as one napi async work.
#include <napi.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.h"
#include "kernel_args.h"
#include "pool.h"

namespace kvlab::bind {
namespace {

// Step op codes, as src/tensor/step-list.ts numbers them.
enum OpCode { OP_MATMUL, OP_ATTENTION, OP_RMSNORM, OP_ROPE, OP_SILU_MUL, OP_EMBEDDING, OP_ADD, OP_ADD_ROW_BIAS, OP_COPY_ROWS, OP_ATTENTION_PREFIXED, OP_ATTENTION_QUANT, OP_ATTENTION_PRUNED, OP_COUNT };
const char* const OP_NAMES[OP_COUNT] = {"matmul", "attention", "rmsnorm", "rope", "siluMul", "embedding", "add", "addRowBias", "copyRows", "attentionPrefixed", "attentionQuant", "attentionPruned"};

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
        case OP_ATTENTION_PREFIXED: kernels_.push_back(attention_prefixed_op(a)); break;
        case OP_ATTENTION_QUANT: kernels_.push_back(attention_quant_op(a)); break;
        case OP_ATTENTION_PRUNED: kernels_.push_back(attention_pruned_op(a)); break;
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

}  // namespace

void step_fail_next_at(long op) { step_fail_at = op; }

void register_step(Napi::Env env, Napi::Object exports) { exports.Set("runStep", Napi::Function::New(env, RunStepFn)); }

}  // namespace kvlab::bind
