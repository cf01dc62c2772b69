// The tile product of simd/tiles.h on AMX (TDPBF16PS), its run-time detection, and its scalar twin.
// Compiled with -mamx-tile -mamx-bf16; nothing here runs an AMX instruction unless amx_tile_product()
// found the CPU and the kernel willing.
#include "simd/tiles.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core/dtype.h"

namespace rpa::simd {
namespace {

// Linux's request for permission to use an extended state component (arch_prctl), and AMX's tile data.
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

// Tile configuration (palette 1): every tile 16 rows of 64 bytes, the shape of all the products here.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = 64;
      rows[t] = 16;
    }
  }
};

// A thread's tile configuration is its own register state: each thread loads it before its first
// product (oneTBB's workers included) and keeps it.
void configure_this_thread() {
  thread_local bool configured = false;
  if (configured) return;
  static const TileConfig config;
  _tile_loadconfig(&config);
  configured = true;
}

bool cpu_and_kernel_allow_amx() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = edx & (1u << 22), amx_tile = edx & (1u << 24);
  if (!amx_bf16 || !amx_tile) return false;
  // Linux grants the 8 KiB tile state per process on request; a refusal (old kernel, seccomp, a limit
  // on the signal stack size) leaves the FMA kernels in charge.
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// C blocks of 32 x 32 in four tiles (0-3), A in tiles 4-5, B in tiles 6-7; a B part is loaded once per
// depth block and used with every A part.
void amx_product(const TileOperand& a, const TileOperand& b, float* c, size_t ldc, size_t m, size_t n_cols,
                 size_t depth, bool accumulate) {
  configure_this_thread();
  const size_t a_stride = a.ld * sizeof(uint16_t), b_stride = b.ld * sizeof(uint16_t), c_stride = ldc * sizeof(float);
  for (size_t i = 0; i < m; i += kTileBlock)
    for (size_t n = 0; n < n_cols; n += kTileBlock) {
      float* c00 = c + i * ldc + n;
      float* c10 = c00 + 16 * ldc;
      if (accumulate) {
        _tile_loadd(0, c00, c_stride);
        _tile_loadd(1, c00 + 16, c_stride);
        _tile_loadd(2, c10, c_stride);
        _tile_loadd(3, c10 + 16, c_stride);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (size_t k = 0; k < depth; k += kTileBlock)
        for (size_t pb = 0; pb < b.parts; ++pb) {
          const uint16_t* b_rows = b.data + pb * b.part_stride + k / 2 * b.ld + 2 * n;
          _tile_loadd(6, b_rows, b_stride);
          _tile_loadd(7, b_rows + 32, b_stride);
          for (size_t pa = 0; pa < a.parts; ++pa) {
            const uint16_t* a_rows = a.data + pa * a.part_stride + i * a.ld + k;
            _tile_loadd(4, a_rows, a_stride);
            _tile_loadd(5, a_rows + 16 * a.ld, a_stride);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
      _tile_stored(0, c00, c_stride);
      _tile_stored(1, c00 + 16, c_stride);
      _tile_stored(2, c10, c_stride);
      _tile_stored(3, c10 + 16, c_stride);
    }
}

// bf16 bits to f32 with subnormals as 0 (TDPBF16PS's inputs), and f32 subnormals flushed (its results).
float daz(uint16_t bits) { return (bits & 0x7f80u) == 0 ? (bits & 0x8000u ? -0.0f : 0.0f) : bf16_to_float(bits); }
float ftz(float x) {
  return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x;
}

// Runs TDPBF16PS on loaded tiles until `seconds` pass; returns the FLOPs done.
double amx_spin(double seconds) {
  configure_this_thread();
  alignas(64) static const uint16_t zeros[16 * 32] = {};
  alignas(64) float sink[16 * 16];
  _tile_loadd(4, zeros, 64);
  _tile_loadd(5, zeros, 64);
  _tile_loadd(6, zeros, 64);
  _tile_loadd(7, zeros, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  constexpr int kRounds = 4096;
  double flops = 0;
  const auto start = std::chrono::steady_clock::now();
  do {
    for (int r = 0; r < kRounds; ++r) {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    flops += kRounds * 4 * 2.0 * 16 * 16 * 32;
  } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds);
  _tile_stored(0, sink, 64);
  return flops;
}

}  // namespace

void emulated_tile_product(const TileOperand& a, const TileOperand& b, float* c, size_t ldc, size_t m, size_t n_cols,
                           size_t depth, bool accumulate) {
  for (size_t i = 0; i < m; ++i)
    for (size_t n = 0; n < n_cols; ++n) {
      float acc = accumulate ? c[i * ldc + n] : 0.0f;
      for (size_t k0 = 0; k0 < depth; k0 += kTileBlock)
        for (size_t pb = 0; pb < b.parts; ++pb)
          for (size_t pa = 0; pa < a.parts; ++pa) {
            const uint16_t* row = a.data + pa * a.part_stride + i * a.ld;
            for (size_t k = k0; k < k0 + kTileBlock; k += 2) {
              const uint16_t* pair = b.data + pb * b.part_stride + k / 2 * b.ld + 2 * n;
              acc = ftz(acc + daz(row[k]) * daz(pair[0]));  // the product of two bf16 is exact in f32
              acc = ftz(acc + daz(row[k + 1]) * daz(pair[1]));
            }
          }
      c[i * ldc + n] = acc;
    }
}

TileProduct amx_tile_product() {
  static const bool usable = cpu_and_kernel_allow_amx();
  return usable ? amx_product : nullptr;
}

TileProduct tile_product_in_use() {
  const char* choice = std::getenv("RPA_SIMD_TILES");
  if (choice != nullptr && std::strcmp(choice, "off") == 0) return nullptr;
  if (choice != nullptr && std::strcmp(choice, "emulated") == 0) return emulated_tile_product;
  return amx_tile_product();
}

const char* tile_path_name() {
  const TileProduct product = tile_product_in_use();
  return product == nullptr ? "off" : product == amx_tile_product() ? "amx" : "emulated";
}

const char* tile_path_reason() {
  const TileProduct product = tile_product_in_use();
  if (product == emulated_tile_product) return "RPA_SIMD_TILES=emulated: the scalar twin of the AMX product (tests)";
  if (product != nullptr) return "";
  if (amx_tile_product() != nullptr) return "RPA_SIMD_TILES=off";
  return "this CPU lacks AMX-BF16, or Linux refused the tile state: prefill takes the FMA kernels";
}

double amx_peak_flops(int threads) {
  if (amx_tile_product() == nullptr) return 0;
  double best = 0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::vector<double> flops(static_cast<size_t>(threads));
    std::vector<std::thread> pool;
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { flops[t] = amx_spin(0.1); });
    for (std::thread& thread : pool) thread.join();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double total = 0;
    for (double f : flops) total += f;
    best = std::max(best, total / seconds);
  }
  return best;
}

}  // namespace rpa::simd
