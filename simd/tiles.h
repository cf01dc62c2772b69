// The matrix product of the simd backend's tile path (prefill on AMX): C (f32) += A (bf16) times B (bf16
// pairs), with AMX-BF16's semantics, and which implementation of it runs. Plain C++: the AMX code is
// compiled apart from the Highway kernels (simd/amx.cc, with -mamx-tile -mamx-bf16).
#pragma once

#include <cstddef>
#include <cstdint>

namespace rpa::simd {

// The blocks a tile product works in: C in blocks of kTileBlock x kTileBlock (2 x 2 AMX tiles of 16 rows
// x 16 f32), the depth in steps of kTileBlock bf16 (one 64-byte tile row).
inline constexpr size_t kTileBlock = 32;

// An operand of a tile product: `parts` matrices of bf16 bits, part p at data + p * part_stride, each
// with row stride ld (in bf16 elements). As A (m x depth) element [i][k] of a part is at i * ld + k; as B
// (depth x n, AMX's pair layout) element [k][n] is at (k / 2) * ld + 2 * n + k % 2.
struct TileOperand {
  const uint16_t* data;
  size_t ld;
  size_t parts = 1;
  size_t part_stride = 0;
};

// c[i][n] (row stride ldc) = (accumulate ? c[i][n] : 0) + sum over k of sum over the parts of A and B of
// A_pa[i][k] * B_pb[k][n], for i < m, n < n_cols, k < depth, all multiples of kTileBlock: a value held as
// a sum of bf16 parts (pack-inl.h) enters as all of them. The terms are added in the order of k's
// blocks of kTileBlock, then B's parts, then A's parts, then k within the block, each pair of products
// in turn, rounding to nearest even; bf16 subnormal inputs count as 0 and subnormal results are flushed
// to 0 (TDPBF16PS).
using TileProduct = void (*)(const TileOperand& a, const TileOperand& b, float* c, size_t ldc, size_t m,
                             size_t n_cols, size_t depth, bool accumulate);

// The scalar twin of TDPBF16PS above: runs anywhere, for the tests of the tile path's driver.
void emulated_tile_product(const TileOperand& a, const TileOperand& b, float* c, size_t ldc, size_t m, size_t n_cols,
                           size_t depth, bool accumulate);

// The AMX product, or nullptr where the CPU lacks AMX-BF16 or the kernel refuses this process the tile
// state (Linux's arch_prctl(ARCH_REQ_XCOMP_PERM)). The check runs once per process.
TileProduct amx_tile_product();

// The tile product the simd backend's contexts use: AMX where amx_tile_product() has it, unless the
// environment variable RPA_SIMD_TILES (read at each call: contexts take it when created) says "off" (the
// FMA kernels for everything) or "emulated" (the scalar twin: the tile path's driver on any CPU, slowly;
// for tests).
TileProduct tile_product_in_use();

// The tile path as `rpa info` shows it: "amx", "emulated" or "off", and why (empty for "amx").
const char* tile_path_name();
const char* tile_path_reason();

// The AMX bf16 peak in FLOP/s (2 per multiply-add) of `threads` threads each running TDPBF16PS on tiles
// already loaded, best of a few tries; 0 without AMX (rpa bench).
double amx_peak_flops(int threads);

}  // namespace rpa::simd
