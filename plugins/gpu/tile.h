// The unit of GPU work, shared by the planner (plain C++, tested on the CPU) and the kernels.
#pragma once

#include <stdint.h>

namespace rpa_gpu {

constexpr int kDecodeMaxRows = 8;  // q heads of a decode tile (decode_kernel takes 4 or 8)
constexpr int kMatrixRows = 64;  // rows of a matrix-core tile, 16 per warp (128 rows measured slower on H100 W3)
constexpr int kMaxTileRows = 128;  // the most rows of any tile (the warp-specialised kernel's)
constexpr int kMaxScaleHeads = 128;  // kv heads of a quantised cache (their scales are kernel parameters)
static_assert(kMatrixRows <= kMaxTileRows, "merge_kernel keeps per-row state for a whole tile");

// One block's work. Positions and rows are absolute (row_begin indexes the queries tensor).
struct Tile {
  int32_t seq;
  int32_t head_begin;  // first q head; all heads of a tile share one kv head
  int32_t heads;
  int32_t row_begin;   // first query row (token index)
  int32_t rows;
  int32_t first_pos;   // position of the first row in its sequence
  int32_t key_begin;   // keys [key_begin, key_end) of the sequence
  int32_t key_end;
  int32_t partial;     // -1: write the output directly; else its first partial row (see merge_kernel)
  int32_t splits;      // merge tiles: how many splits, whose partial rows follow each other from `partial` on
};

}  // namespace rpa_gpu
