// The GPU planner: a problem's (q head, query) rows and visible keys as tiles, one block each. Plain
// C++ without GPU headers, so tests/plugins/test_gpu_planner.cpp checks it on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "plugins/plugin_abi.h"
#include "plugins/gpu/device_grid.h"
#include "plugins/gpu/tile.h"

namespace rpa_gpu {

struct PlanLimits {
  bool decode_eligible;  // one-token sequences take decode tiles (decode_kernel can read the KV)
  int decode_max_rows;   // q heads of a decode tile
  int max_rows;          // rows of any other tile
  int tile_keys;         // keys of a K/V tile: split ranges are cut at multiples of it
  int64_t target_blocks; // blocks that fill the device once; kinds with fewer tiles split long key ranges
  bool direct_slots = true;  // device metadata: a direct grid where the bounds allow (DeviceGrid::direct)
};

// Decode tiles, then the other attention tiles, then one merge tile per split key range.
struct TilePlan {
  std::vector<Tile> tiles;
  size_t decode_tiles = 0, attention_tiles = 0;
  int decode_rows = 0;  // the most rows of a decode tile
  int64_t partial_rows = 0;
};

// Why `problem` exceeds what the tile fields (int32) and the launch can hold, or "" when it fits. The
// validated contract bounds positions and rows by int32 already; heads, widths and tile counts are not.
std::string plan_limit_error(const rpa_problem& problem);

// Every visible (row, key) pair of the problem's first num_seqs sequences belongs to exactly one tile
// (split ranges of one row range follow each other in key order, merged in that order).
TilePlan make_tile_plan(const rpa_problem& problem, const PlanLimits& limits);

// The slot grid of a device-metadata problem (its bounds max_query_len and max_context_len), with the
// same tile shapes as make_tile_plan and splits chosen for the bounds. Its metadata pointers are the
// problem's, seq_ok and row_chunks null; `partial_rows` receives the partial rows its splits need.
DeviceGrid make_device_grid(const rpa_problem& problem, const PlanLimits& limits, int64_t& partial_rows);

}  // namespace rpa_gpu
