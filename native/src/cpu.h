#pragma once

namespace kvlab {

struct CpuFeatures {
  bool avx2_fma = false;
  bool avx512 = false;       // F + BW + VL + DQ
  bool avx512_bf16 = false;  // vdpbf16ps, vcvtne2ps2bf16
  bool avx512_vnni = false;
  bool amx_bf16 = false;     // reported, not used: no AMX kernel is built into this addon yet
};

const CpuFeatures& cpu();

}  // namespace kvlab
