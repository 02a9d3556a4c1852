// N-API surface of the kernels. Model logic stays in TypeScript; every function here is one kernel call.
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <immintrin.h>

#include <atomic>
#include <vector>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <napi.h>
#include <thread>

#include "attention.h"
#include "cpu.h"
#include "vecmath.h"
#include "matmul.h"
#include "pool.h"

using namespace kvlab;

namespace {

template <typename T>
T* data_of(const Napi::Value& v) {
  Napi::TypedArray a = v.As<Napi::TypedArray>();
  return reinterpret_cast<T*>(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
}

int default_threads() {
  if (const char* s = std::getenv("KVLAB_THREADS")) {
    int n = std::atoi(s);
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
  Napi::Object paths = Napi::Object::New(env);
  paths.Set("decode_matmul", matmul_path(1, W_BF16, true));
  paths.Set("decode_matmul_int8", matmul_path(1, W_I8, true));
  paths.Set("prefill_matmul_bf16", matmul_path(512, W_BF16, true));
  paths.Set("prefill_matmul_f32", matmul_path(512, W_BF16, false));
  paths.Set("attention", f.avx512 ? "avx512" : "scalar");
  paths.Set("amx", f.amx_bf16 ? "available, no AMX kernel built (AVX512-BF16 GEMM used)" : "not available on this CPU");
  o.Set("paths", paths);
  return o;
}

// matmul(out, x, n, w, type, rows, cols, scales | null, bf16Activations)
Napi::Value MatmulFn(const Napi::CallbackInfo& info) {
  Matmul m;
  m.out = data_of<float>(info[0]);
  m.x = data_of<float>(info[1]);
  m.n = info[2].As<Napi::Number>().Int32Value();
  m.w = data_of<void>(info[3]);
  m.type = info[4].As<Napi::Number>().Int32Value();
  m.rows = info[5].As<Napi::Number>().Int32Value();
  m.cols = info[6].As<Napi::Number>().Int32Value();
  m.scales = info[7].IsNull() || info[7].IsUndefined() ? nullptr : data_of<float>(info[7]);
  if (info.Length() > 9 && info[9].IsTypedArray()) m.row_sums = data_of<int32_t>(info[9]);
  matmul(m, info[8].As<Napi::Boolean>().Value());
  return info.Env().Undefined();
}

// attention(q, out | null, nq, nHeads, nKv, d, qPos, heads: [k, v, pos, len][], scale, statsFrom, max[] | null, sum[] | null)
Napi::Value AttentionFn(const Napi::CallbackInfo& info) {
  Attention a;
  a.q = data_of<float>(info[0]);
  a.out = info[1].IsNull() ? nullptr : data_of<float>(info[1]);
  a.nq = info[2].As<Napi::Number>().Int32Value();
  a.n_heads = info[3].As<Napi::Number>().Int32Value();
  a.n_kv = info[4].As<Napi::Number>().Int32Value();
  a.d = info[5].As<Napi::Number>().Int32Value();
  a.q_pos = data_of<int32_t>(info[6]);
  Napi::Array heads = info[7].As<Napi::Array>();
  for (uint32_t g = 0; g < heads.Length(); g++) {
    Napi::Array h = heads.Get(g).As<Napi::Array>();
    a.heads.push_back({data_of<float>(h.Get(0u)), data_of<float>(h.Get(1u)), data_of<int32_t>(h.Get(2u)), h.Get(3u).As<Napi::Number>().Int32Value()});
  }
  a.scale = info[8].As<Napi::Number>().FloatValue();
  a.stats_from = info[9].As<Napi::Number>().Int32Value();
  for (int s = 10; s <= 11; s++) {
    if (info[s].IsNull() || info[s].IsUndefined()) continue;
    Napi::Array arr = info[s].As<Napi::Array>();
    auto& dst = s == 10 ? a.stat_max : a.stat_sum;
    for (uint32_t g = 0; g < arr.Length(); g++) dst.push_back(data_of<float>(arr.Get(g)));
  }
  if (info.Length() > 12 && info[12].IsTypedArray()) a.query_weight = data_of<float>(info[12]);
  attention(a);
  return info.Env().Undefined();
}

// rmsnorm(out, x, n, dim, weight, eps)
Napi::Value RmsnormFn(const Napi::CallbackInfo& info) {
  float* out = data_of<float>(info[0]);
  const float* x = data_of<float>(info[1]);
  const long n = info[2].As<Napi::Number>().Int64Value(), dim = info[3].As<Napi::Number>().Int64Value();
  const float* w = data_of<float>(info[4]);
  const float eps = info[5].As<Napi::Number>().FloatValue();
  for (long i = 0; i < n; i++) {
    const float* xi = x + i * dim;
    double ss = 0;
    for (long c = 0; c < dim; c++) ss += double(xi[c]) * xi[c];
    const float inv = 1.0f / std::sqrt(float(ss / dim) + eps);
    float* o = out + i * dim;
    for (long c = 0; c < dim; c++) o[c] = (xi[c] * inv) * w[c];
  }
  return info.Env().Undefined();
}

// rope(x, n, nHeads, headDim, positions, invFreq, scaling)
Napi::Value RopeFn(const Napi::CallbackInfo& info) {
  float* x = data_of<float>(info[0]);
  const int n = info[1].As<Napi::Number>().Int32Value(), nh = info[2].As<Napi::Number>().Int32Value(), d = info[3].As<Napi::Number>().Int32Value();
  const int32_t* pos = data_of<int32_t>(info[4]);
  const float* inv = data_of<float>(info[5]);
  const float scaling = info[6].As<Napi::Number>().FloatValue();
  const int half = d / 2;
  std::vector<float> cs(half), sn(half);
  for (int i = 0; i < n; i++) {
    for (int f = 0; f < half; f++) {
      const float angle = float(pos[i]) * inv[f];
      cs[f] = float(std::cos(double(angle))) * scaling;
      sn[f] = float(std::sin(double(angle))) * scaling;
    }
    for (int h = 0; h < nh; h++) {
      float* r = x + (long(i) * nh + h) * d;
      for (int f = 0; f < half; f++) {
        const float a = r[f], b = r[f + half];
        r[f] = a * cs[f] - b * sn[f];
        r[f + half] = b * cs[f] + a * sn[f];
      }
    }
  }
  return info.Env().Undefined();
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
long silu_mul_avx512(float* out, const float* g, const float* u, long len) {
  long i = 0;
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= len; i += 16) {
    __m512 x = _mm512_loadu_ps(g + i);
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
  }
  return i;
}

// siluMul(out, gate, up, len)
Napi::Value SiluMulFn(const Napi::CallbackInfo& info) {
  float* out = data_of<float>(info[0]);
  const float* g = data_of<float>(info[1]);
  const float* u = data_of<float>(info[2]);
  const long len = info[3].As<Napi::Number>().Int64Value();
  long i = cpu().avx512 ? silu_mul_avx512(out, g, u, len) : 0;
  for (; i < len; i++) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  return info.Env().Undefined();
}

__attribute__((target("avx512f")))
double sum_avx512(const float* p, long n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  long i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
  }
  double s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; i++) s += p[i];
  return s;
}

// streamRead(buf: Float32Array) -> sum: a streaming read over the whole buffer on every pool thread,
// the memory-bandwidth probe benchmarks report their figures against.
Napi::Value StreamReadFn(const Napi::CallbackInfo& info) {
  Napi::Float32Array a = info[0].As<Napi::Float32Array>();
  const float* p = a.Data();
  const long n = long(a.ElementLength());
  std::vector<double> parts(pool_threads(), 0.0);
  pool_run([&](int t, int T) {
    long b, e;
    split_range(n, t, T, &b, &e);
    parts[t] = cpu().avx512 ? sum_avx512(p + b, e - b) : 0.0;
    if (!cpu().avx512)
      for (long i = b; i < e; i++) parts[t] += p[i];
  });
  double s = 0;
  for (double x : parts) s += x;
  return Napi::Number::New(info.Env(), s);
}

struct Mapping {
  void* base;
  size_t size;
  std::atomic<int> refs;
};

void release_region(napi_env, void*, void* hint) {
  Mapping* m = static_cast<Mapping*>(hint);
  if (m->refs.fetch_sub(1) == 1) {
    munmap(m->base, m->size);
    delete m;
  }
}

// mapRegions(path, [[offset, length], ...]) -> ArrayBuffer[] viewing the file through one read-only mmap.
Napi::Value MapRegionsFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array regions = info[1].As<Napi::Array>();
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    Napi::Error::New(env, "cannot open " + path + ": " + std::strerror(errno)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  struct stat st;
  fstat(fd, &st);
  void* base = mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (base == MAP_FAILED) {
    Napi::Error::New(env, "cannot mmap " + path + ": " + std::strerror(errno)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Mapping* m = new Mapping{base, size_t(st.st_size), {1}};
  Napi::Array out = Napi::Array::New(env, regions.Length());
  for (uint32_t i = 0; i < regions.Length(); i++) {
    Napi::Array r = regions.Get(i).As<Napi::Array>();
    const size_t off = size_t(r.Get(0u).As<Napi::Number>().Int64Value()), len = size_t(r.Get(1u).As<Napi::Number>().Int64Value());
    if (off + len > m->size) {
      Napi::RangeError::New(env, "region outside " + path).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    m->refs.fetch_add(1);
    napi_value ab;
    napi_status s = napi_create_external_arraybuffer(env, static_cast<uint8_t*>(base) + off, len, release_region, m, &ab);
    if (s != napi_ok) {
      m->refs.fetch_sub(1);
      Napi::Error::New(env, "external ArrayBuffers are not supported here").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    out.Set(i, Napi::Value(env, ab));
  }
  release_region(env, nullptr, m);
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  pool_init(default_threads());
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("matmul", Napi::Function::New(env, MatmulFn));
  exports.Set("attention", Napi::Function::New(env, AttentionFn));
  exports.Set("rmsnorm", Napi::Function::New(env, RmsnormFn));
  exports.Set("rope", Napi::Function::New(env, RopeFn));
  exports.Set("siluMul", Napi::Function::New(env, SiluMulFn));
  exports.Set("mapRegions", Napi::Function::New(env, MapRegionsFn));
  exports.Set("streamRead", Napi::Function::New(env, StreamReadFn));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvlab_native, Init)
