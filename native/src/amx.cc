// AMX-BF16 GEMM. The weight is the tile A operand, read in place (bf16, row-major, stride = 2 * cols bytes):
// no packed copy of any weight is kept. Activations are rounded to bf16 once per call and laid out as B tiles
// (pairs of consecutive k, 16 tokens per row). Each step computes a 32 (weight rows) x 32 (tokens) block in
// four accumulator tiles; results are transposed into out[token][row] through a 4 KiB buffer.
//
// The tile operations sit behind a policy: HwTiles uses the instructions, EmuTiles a scalar model of them
// (KVLAB_AMX_EMULATE=1), so the tiling, packing and tails are exercised on CPUs without AMX, and a machine
// with AMX checks its hardware against the model once before trusting it.
#include "amx.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "cpu.h"
#include "pool.h"

namespace kvlab {
namespace {

constexpr long AMX_MIN_N = 32;
constexpr long TILE_K = 32;     // bf16 elements per A-tile row (64 bytes)
constexpr long B_TILE = 256;    // dwords per B tile: 16 k-pairs x 16 tokens

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

TileConfig make_config() {
  TileConfig c;
  for (int i = 0; i < 8; i++) {
    c.colsb[i] = 64;
    c.rows[i] = 16;
  }
  return c;
}
// A global, so every byte of it is in memory when ldtilecfg reads it.
const TileConfig config = make_config();

// tmm0..3: C (rows 0-15 x tokens 0-15, rows 0-15 x tokens 16-31, rows 16-31 x tokens 0-15, rows 16-31 x tokens 16-31)
// tmm4, tmm5: A (weight rows 0-15, 16-31); tmm6, tmm7: B (tokens 0-15, 16-31). All 16 rows x 64 bytes.
struct HwTiles {
  __attribute__((target("amx-tile"))) static void begin() { _tile_loadconfig(&config); }
  __attribute__((target("amx-tile"))) static void end() { _tile_release(); }
  __attribute__((target("amx-tile"))) static void zero_c() {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  __attribute__((target("amx-tile"))) static void load(const uint16_t* a0, const uint16_t* a1, long a_stride, const uint32_t* b0, const uint32_t* b1) {
    _tile_loadd(4, a0, a_stride);
    _tile_loadd(5, a1, a_stride);
    _tile_loadd(6, b0, 64);
    _tile_loadd(7, b1, 64);
  }
  __attribute__((target("amx-tile,amx-bf16"))) static void dp() {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  __attribute__((target("amx-tile"))) static void store(float* c) {  // c: [32][32] fp32
    _tile_stored(0, c, 128);
    _tile_stored(1, c + 16, 128);
    _tile_stored(2, c + 16 * 32, 128);
    _tile_stored(3, c + 16 * 32 + 16, 128);
  }
};

// Scalar model of the same operations: C[m][n] += sum over pairs kk of A[m][2kk] * B[kk][n].lo + A[m][2kk+1] * B[kk][n].hi.
struct EmuState {
  float c[4][16][16];
  uint16_t a[2][16][32];
  uint32_t b[2][16][16];
};
thread_local EmuState emu;

inline float bf(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct EmuTiles {
  static void begin() {}
  static void end() {}
  static void zero_c() { std::memset(emu.c, 0, sizeof emu.c); }
  static void load(const uint16_t* a0, const uint16_t* a1, long a_stride, const uint32_t* b0, const uint32_t* b1) {
    for (int r = 0; r < 16; r++) {
      std::memcpy(emu.a[0][r], reinterpret_cast<const char*>(a0) + r * a_stride, 64);
      std::memcpy(emu.a[1][r], reinterpret_cast<const char*>(a1) + r * a_stride, 64);
    }
    std::memcpy(emu.b[0], b0, 1024);
    std::memcpy(emu.b[1], b1, 1024);
  }
  static void dp() {
    for (int ci = 0; ci < 4; ci++) {
      const int ai = ci / 2, bi = ci % 2;
      for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
          float acc = emu.c[ci][m][n];
          for (int kk = 0; kk < 16; kk++) {
            const uint32_t p = emu.b[bi][kk][n];
            acc += bf(emu.a[ai][m][2 * kk]) * bf(uint16_t(p & 0xffff)) + bf(emu.a[ai][m][2 * kk + 1]) * bf(uint16_t(p >> 16));
          }
          emu.c[ci][m][n] = acc;
        }
    }
  }
  static void store(float* c) {
    for (int ci = 0; ci < 4; ci++)
      for (int m = 0; m < 16; m++) std::memcpy(c + (16 * (ci / 2) + m) * 32 + 16 * (ci % 2), emu.c[ci][m], 64);
  }
};

inline uint16_t to_bf16(float f) { return f32_to_bf16(f); }

// Activations [n, K] -> B tiles: [token block of 16 (count rounded up to even)][K/32][16 pairs][16 tokens].
void pack_activations(const Matmul& m, long K32, long tblocks, std::vector<uint32_t>& xp) {
  const long K = m.w.cols;
  xp.assign(size_t(tblocks * K32 * B_TILE), 0u);
  pool_run([&](int t, int T) {
    long i0, i1;
    split_range(m.n, t, T, &i0, &i1);
    for (long i = i0; i < i1; i++) {
      const float* x = m.x + i * K;
      uint32_t* dst = xp.data() + (i / 16) * K32 * B_TILE + (i % 16);
      for (long kc = 0; kc < K32; kc++)
        for (long kk = 0; kk < 16; kk++) {
          const long k = kc * TILE_K + 2 * kk;
          dst[(kc * 16 + kk) * 16] = uint32_t(to_bf16(x[k])) | (uint32_t(to_bf16(x[k + 1])) << 16);
        }
    }
  });
}

// One thread's share: weight row blocks [b0, b1) of 32 rows. (The target lets the tile operations inline.)
template <class P>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-bf16")))
void amx_rows(const Matmul& m, const uint32_t* xp, long K32, long tblocks, long b0, long b1) {
  const long K = m.w.cols, R = m.w.rows;
  std::vector<uint16_t> scratch;  // the block as bf16 when the weight is not bf16 or the block is short
  std::vector<float> row;
  alignas(64) float c[32 * 32];
  P::begin();
  for (long blk = b0; blk < b1; blk++) {
    const long r0 = blk * 32, rvalid = std::min<long>(32, R - r0);
    const uint16_t* A;
    if (m.w.type == W_BF16 && rvalid == 32) {
      A = static_cast<const uint16_t*>(m.w.data) + r0 * K;
    } else {
      scratch.assign(size_t(32 * K), 0);
      row.resize(K + 16);
      for (long r = 0; r < rvalid; r++) {
        if (m.w.type == W_BF16) {
          std::memcpy(scratch.data() + r * K, static_cast<const uint16_t*>(m.w.data) + (r0 + r) * K, size_t(K) * 2);
        } else {
          widen_row(m.w, r0 + r, 0, K, row.data());
          for (long k = 0; k < K; k++) scratch[r * K + k] = to_bf16(row[k]);
        }
      }
      A = scratch.data();
    }
    __asm__ volatile("" ::: "memory");  // the tile loads below read what was just written
    for (long tb = 0; tb < tblocks; tb += 2) {
      P::zero_c();
      const uint32_t* bt0 = xp + tb * K32 * B_TILE;
      const uint32_t* bt1 = bt0 + K32 * B_TILE;
      for (long kc = 0; kc < K32; kc++) P::load(A + kc * TILE_K, A + 16 * K + kc * TILE_K, 2 * K, bt0 + kc * B_TILE, bt1 + kc * B_TILE), P::dp();
      P::store(c);
      const long t0 = tb * 16, tvalid = std::min<long>(32, m.n - t0);
      for (long t = 0; t < tvalid; t++) {
        float* o = m.out + (t0 + t) * R + r0;
        for (long r = 0; r < rvalid; r++) o[r] = c[r * 32 + t];
      }
    }
  }
  P::end();
}

template <class P>
void amx_gemm_with(const Matmul& m) {
  const long K32 = m.w.cols / TILE_K;
  const long tblocks = ((m.n + 15) / 16 + 1) / 2 * 2;
  std::vector<uint32_t> xp;
  pack_activations(m, K32, tblocks, xp);
  const long blocks = (m.w.rows + 31) / 32;
  pool_run([&](int t, int T) {
    long b0, b1;
    split_range(blocks, t, T, &b0, &b1);
    if (b0 < b1) amx_rows<P>(m, xp.data(), K32, tblocks, b0, b1);
  });
}

// First use on real AMX: the hardware must agree with the model on a small problem with every tail.
bool hardware_agrees() {
  const long n = 37, rows = 45, K = 96;
  std::vector<uint16_t> w(size_t(rows * K));
  std::vector<float> x(size_t(n * K)), a(size_t(n * rows)), b(size_t(n * rows));
  uint32_t s = 12345;
  auto rnd = [&] { return float(((s = s * 1664525u + 1013904223u) >> 9) & 0xffff) / 65536.f - 0.5f; };
  for (auto& v : w) v = f32_to_bf16(rnd());
  for (auto& v : x) v = rnd();
  Matmul m{a.data(), x.data(), n, WeightRef{w.data(), W_BF16, rows, K}};
  amx_gemm_with<HwTiles>(m);
  m.out = b.data();
  amx_gemm_with<EmuTiles>(m);
  for (size_t i = 0; i < a.size(); i++)
    if (!(std::fabs(a[i] - b[i]) <= 1e-4f * (1 + std::fabs(b[i])))) return false;
  return true;
}

}  // namespace

bool amx_usable(long n, const WeightRef& w) {
  const CpuFeatures& f = cpu();
  return (f.amx_bf16 || f.amx_emulated) && n >= AMX_MIN_N && w.cols % TILE_K == 0;
}

bool amx_gemm(const Matmul& m) {
  const CpuFeatures& f = cpu();
  if (f.amx_emulated) {
    amx_gemm_with<EmuTiles>(m);
    return true;
  }
  static std::once_flag checked;
  static bool ok = false;
  std::call_once(checked, [] {
    ok = hardware_agrees();
    if (!ok) amx_disable("disabled: the start-up self-test disagreed with the tile model");
  });
  if (!ok || !f.amx_bf16) return false;
  amx_gemm_with<HwTiles>(m);
  return true;
}

}  // namespace kvlab
