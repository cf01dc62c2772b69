// The work decomposition of the simd backend, shared by the planner (backend.cpp, plain C++) and the
// per-target kernels (attention.cc). A plan depends only on the problem, never on the thread count, so
// every row is computed by the same operations in the same order however many threads run it.
#pragma once

#include <cstdint>
#include <vector>

#include "plugins/plugin_abi.h"
#include "simd/tiles.h"

namespace rpa::simd {

// The rows of a sequence are its (kv head, query token, q head of the kv head's group) triples,
// flattened kv head first: (kv_head * q_len + token) * group + head_in_group. An item takes up to kMaxRows
// consecutive rows, so any group size fills it, and a decode item spans several kv heads: together they
// read whole KV slots (all heads of a token are adjacent in memory) instead of a few lines per page.
inline constexpr int64_t kMaxRows = 64;
// Keys of one K/V tile, converted to f32 once and shared by all rows of the item. A multiple of every
// target's f32 lane count (16 on AVX3).
inline constexpr int64_t kTileKeys = 32;
// Scratch rows are padded to a multiple of the lane count; sizing for 64 lanes covers every target.
inline constexpr int64_t kScratchLanes = 64;

// One unit of parallel work: rows [row_begin, row_end) of sequence `seq`, over keys
// [key_begin, key_end) (already clipped to what those rows can see). An item that covers a
// sequence's whole visible range writes the output; one split of a longer range writes its running
// softmax state (per row: max, sum, unnormalised D values) at `partial` floats into the partial buffer.
struct WorkItem {
  int32_t seq;
  int32_t row_begin, row_end;
  int64_t key_begin, key_end;
  int64_t partial;  // -1: final item
  int64_t cost;     // estimated work, for ordering
};

// The splits of one row range, merged by log-sum-exp in split order.
struct MergeGroup {
  int32_t seq;
  int32_t row_begin, row_end;
  int64_t partial;         // first split's state
  int64_t partial_stride;  // floats between consecutive splits' states
  int32_t num_splits;
};

struct Plan {
  std::vector<WorkItem> items;  // largest cost first
  std::vector<MergeGroup> merges;
  int64_t partial_floats = 0;
  TileProduct tiles = nullptr;  // the backend's prefill tile product (simd/tiles.h), or null
};

// Floats in a per-row partial state: max, sum and D values.
inline int64_t partial_row_floats(int64_t head_dim) { return head_dim + 2; }

// Floats of per-thread scratch one item needs for head_dim (any target).
inline int64_t scratch_floats(int64_t head_dim) {
  const int64_t padded = (head_dim + kScratchLanes - 1) / kScratchLanes * kScratchLanes;
  // The FMA kernels: queries and output accumulators, K and V tiles, scores, running max and sum. The tile
  // path (attention.cc's AttendItemTiles), which needs more: up to four copies of Q^T in bf16 pairs, O^T,
  // the K and V tiles, S^T, the running max and sum, K and V^T in up to four bf16 copies, P^T's pairs.
  return 4 * kMaxRows * padded + 4 * kTileKeys * padded + 3 * kMaxRows * kTileKeys + 2 * kMaxRows + kScratchLanes;
}

Plan make_plan(const rpa_problem& problem);

}  // namespace rpa::simd
