{
  "targets": [
    {
      "target_name": "kvlab_native",
      "sources": ["src/addon.cc", "src/step.cc", "src/probes.cc", "src/mmap.cc", "src/pool.cc", "src/cpu.cc", "src/matmul.cc", "src/gemm_avx2.cc", "src/gemv_avx2.cc", "src/gemv_avx512.cc", "src/amx.cc", "src/ops.cc", "src/attention.cc", "src/attention_common.cc", "src/attention_scalar.cc", "src/attention_avx2.cc", "src/attention_avx512.cc", "src/attention_prefixed.cc", "src/attention_window.cc", "src/attention_quant.cc", "src/attention_quant_scalar.cc", "src/attention_quant_avx2.cc", "src/attention_quant_avx512.cc", "src/attention_pruned.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-math-errno", "-fexceptions", "-Wno-maybe-uninitialized"],
      "cflags": ["-O3"]
    }
  ]
}
