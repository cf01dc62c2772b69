// The matrix product of the simd backend's tile path (prefill on AMX): C (f32) += A (bf16) times B (bf16
// pairs), with AMX-BF16's semantics, and which implementation of it runs. Plain C++: the AMX code is
// compiled apart from the Highway kernels (simd/amx.cc, with -mamx-tile -mamx-bf16).
#pragma once

#include <cstddef>
#include <cstdint>

namespace rpa::simd {

// The blocks a tile product works in: C in blocks of kTileBlock x kTileBlock (2 x 2 AMX tiles of 16 rows
// x 16 f32), K in steps of kTileBlock bf16 (one 64-byte tile row).
inline constexpr size_t kTileBlock = 32;

// c[i][n] (row stride ldc) = (accumulate ? c[i][n] : 0) + sum over k of A[i][k] * B[k][n], for i < m,
// n < n_cols, k < depth, all multiples of kTileBlock. A is bf16 bits, row-major (row stride lda); B is in
// AMX's pair layout: B[k][n] at b[(k / 2) * 2 * n_cols + 2 * n + k % 2]. Each pair of products is added
// to the f32 accumulator in turn, rounding to nearest even; bf16 subnormal inputs count as 0 and
// subnormal results are flushed to 0 (TDPBF16PS).
using TileProduct = void (*)(const uint16_t* a, size_t lda, const uint16_t* b, float* c, size_t ldc, size_t m,
                             size_t n_cols, size_t depth, bool accumulate);

// The scalar twin of TDPBF16PS above: runs anywhere, for the tests of the tile path's driver.
void emulated_tile_product(const uint16_t* a, size_t lda, const uint16_t* b, float* c, size_t ldc, size_t m,
                           size_t n_cols, size_t depth, bool accumulate);

// The AMX product, or nullptr where the CPU lacks AMX-BF16 or the kernel refuses this process the tile
// state (Linux's arch_prctl(ARCH_REQ_XCOMP_PERM)). The check runs once per process.
TileProduct amx_tile_product();

// The tile product the simd backend's contexts use: AMX where amx_tile_product() has it, unless the
// environment variable RPA_SIMD_TILES (read at each call: contexts take it when created) says "off" (the
// FMA kernels for everything) or "emulated" (the scalar twin: the tile path's driver on any CPU, slowly;
// for tests).
TileProduct tile_product_in_use();

// The AMX bf16 peak in FLOP/s (2 per multiply-add) of `threads` threads each running TDPBF16PS on tiles
// already loaded, best of a few tries; 0 without AMX (rpa bench).
double amx_peak_flops(int threads);

}  // namespace rpa::simd
