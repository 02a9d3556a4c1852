#include "cpu.h"

#include <cpuid.h>

#include <cstdlib>
#include <string>

namespace kvlab {

static CpuFeatures detect() {
  CpuFeatures f;
  __builtin_cpu_init();
  f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
  unsigned a, b, c, d;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx512_vnni = f.avx512 && (c & (1u << 11));
    f.amx_bf16 = (d & (1u << 22)) && (d & (1u << 24));
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = f.avx512 && (a & (1u << 5));
  // KVLAB_ISA caps the paths (avx512 | avx2 | scalar), so every fallback can be exercised on this machine.
  if (const char* isa = std::getenv("KVLAB_ISA")) {
    std::string want(isa);
    if (want == "avx2" || want == "scalar") f.avx512 = f.avx512_bf16 = f.avx512_vnni = f.amx_bf16 = false;
    if (want == "scalar") f.avx2_fma = false;
  }
  return f;
}

const CpuFeatures& cpu() {
  static CpuFeatures f = detect();
  return f;
}

}  // namespace kvlab
