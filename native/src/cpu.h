#pragma once
#include <string>

namespace kvlab {

// What the CPU (and OS) offer, after the KVLAB_ISA cap. Kernels pick their path from these at run time;
// the addon itself is compiled for generic x86-64.
struct CpuFeatures {
  bool avx2_fma = false;
  bool f16c = false;
  bool avx512 = false;       // F + BW + VL + DQ
  bool avx512_bf16 = false;  // vdpbf16ps, vcvtne2ps2bf16
  bool avx512_vnni = false;  // vpdpbusd
  bool amx_bf16 = false;     // AMX-TILE + AMX-BF16 in cpuid, the OS saves tile state and granted this process its use
  bool amx_emulated = false; // KVLAB_AMX_EMULATE=1: the AMX GEMM runs on a scalar tile emulator (tests its logic)
  std::string amx_status;    // why AMX is or is not used
  std::string isa_cap;       // KVLAB_ISA value, if any
  long l2_bytes = 1L << 20;  // one core's L2 cache (sysconf; 1 MiB when the OS does not say)
};

const CpuFeatures& cpu();

// The AMX GEMM disabled itself (its start-up self-test disagreed with the AVX-512 result).
void amx_disable(const std::string& why);

}  // namespace kvlab
