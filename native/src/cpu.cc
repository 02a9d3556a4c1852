#include "cpu.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace kvlab {
namespace {

constexpr int ARCH_REQ_XCOMP_PERM = 0x1023;
constexpr int XFEATURE_XTILEDATA = 18;

uint64_t xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

CpuFeatures detect() {
  CpuFeatures f;
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 > 0) f.l2_bytes = l2;
  unsigned a, b, c, d;
  bool osxsave = false;
  uint64_t xcr = 0;
  if (__get_cpuid(1, &a, &b, &c, &d)) {
    osxsave = c & (1u << 27);
    f.f16c = c & (1u << 29);
    if (osxsave) xcr = xcr0();
  }
  const bool os_avx = osxsave && (xcr & 0x6) == 0x6;            // XMM + YMM state
  const bool os_avx512 = os_avx && (xcr & 0xe0) == 0xe0;       // opmask + ZMM state
  const bool os_amx = osxsave && (xcr & 0x60000) == 0x60000;   // XTILECFG + XTILEDATA
  bool amx_cpu = false;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    const bool fma = [] {
      unsigned a1, b1, c1, d1;
      return __get_cpuid(1, &a1, &b1, &c1, &d1) && (c1 & (1u << 12));
    }();
    f.avx2_fma = os_avx && (b & (1u << 5)) && fma;
    f.avx512 = os_avx512 && (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));
    f.avx512_vnni = f.avx512 && (c & (1u << 11));
    amx_cpu = (d & (1u << 24)) && (d & (1u << 22));  // AMX-TILE, AMX-BF16
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = f.avx512 && (a & (1u << 5));
  if (!amx_cpu) f.amx_status = "not available on this CPU";
  else if (!os_amx) f.amx_status = "the OS does not enable tile state (XCR0)";
  else if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) f.amx_status = "the kernel refused tile-data permission";
  else if (!f.avx512_bf16) f.amx_status = "needs AVX512-BF16 alongside for packing";
  else {
    f.amx_bf16 = true;
    f.amx_status = "active";
  }
  // KVLAB_ISA caps the paths (amx | avx512 | avx512f | avx2 | scalar) so every fallback can be exercised on one
  // machine; avx512f keeps AVX-512 F/BW/VL/DQ without BF16 and VNNI.
  if (const char* isa = std::getenv("KVLAB_ISA")) {
    const std::string want(isa);
    f.isa_cap = want;
    if (want != "amx" && f.amx_bf16) {
      f.amx_bf16 = false;
      f.amx_status = "disabled by KVLAB_ISA=" + want;
    }
    if (want == "avx512f") f.avx512_bf16 = f.avx512_vnni = false;
    if (want == "avx2" || want == "scalar") f.avx512 = f.avx512_bf16 = f.avx512_vnni = false;
    if (want == "scalar") f.avx2_fma = f.f16c = false;
  }
  // KVLAB_AMX_EMULATE=1 runs the AMX GEMM's tiling, packing and tails on a scalar tile emulator, so its logic is
  // tested on CPUs without AMX (slow; tests only).
  if (const char* e = std::getenv("KVLAB_AMX_EMULATE"); e && std::string(e) == "1" && !f.amx_bf16 && f.avx512_bf16) {
    f.amx_emulated = true;
    f.amx_status = "emulated (KVLAB_AMX_EMULATE=1)";
  }
  return f;
}

CpuFeatures& mutable_cpu() {
  static CpuFeatures f = detect();
  return f;
}

}  // namespace

const CpuFeatures& cpu() { return mutable_cpu(); }

void amx_disable(const std::string& why) {
  CpuFeatures& f = mutable_cpu();
  f.amx_bf16 = false;
  f.amx_emulated = false;
  f.amx_status = why;
}

}  // namespace kvlab
