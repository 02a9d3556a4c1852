// Bench-only probes: the machine's streaming-read bandwidth and FMA peak (the bounds the benchmarks report
// kernels against), and how the pool waits and places its threads (tested in test/pool.test.ts).
#include <sched.h>
#include <sys/resource.h>

#include <immintrin.h>
#include <napi.h>

#include <chrono>
#include <thread>
#include <vector>

#include "bindings.h"
#include "cpu.h"
#include "gemm_avx2.h"
#include "pool.h"

namespace kvlab::bind {
namespace {

// Sum of p[0, S part) read as S streams side by side, 64 bytes from each in turn; AHEAD > 0: each stream also
// prefetches AHEAD bytes ahead into L1. Which of the two read loops reads faster depends on the CPU (three plain
// streams on some, four prefetching ones on others), so the probe takes the faster of the two.
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

}  // namespace

void register_probes(Napi::Env env, Napi::Object exports) {
  exports.Set("streamRead", Napi::Function::New(env, StreamReadFn));
  exports.Set("fmaPeak", Napi::Function::New(env, FmaPeakFn));
  exports.Set("poolWaitProbe", Napi::Function::New(env, PoolWaitProbeFn));
  exports.Set("poolPlacementProbe", Napi::Function::New(env, PoolPlacementProbeFn));
}

}  // namespace kvlab::bind
