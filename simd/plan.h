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

// The tile path (prefill of 16-bit queries and KV on a tile product, simd/tiles.h): an item takes up to
// kTileRows rows of one kv head, so that each K and V block it reads serves that many rows, and walks the
// keys in steps of kTileStep (whole multiples of kTileStep from key 0, so steps fall on the packed
// blocks). K and V are packed once per call for each (sequence, kv head) the tile path reads (Pack) and
// shared by all its items: K^T and V as bf16 parts in the pair layout the products read.
inline constexpr int64_t kTileRows = 128;
inline constexpr int64_t kTileStep = 128;

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
  int32_t pack;     // the tile path's packed K and V (Plan::packs), or -1: the FMA kernels
};

// K and V of one (sequence, kv head) for the tile path, keys [key_begin, key_begin + keys) (multiples of
// kTileStep; keys no row of the sequence sees are 0), at `offset` bf16 elements into the wave's pack
// buffer, laid out as pack_layout() says; one byte per kTileStep keys at `flags` (V holds Inf or NaN).
struct Pack {
  int32_t seq;
  int32_t kv_head;
  int64_t key_begin, keys;
  int64_t offset, flags;
};

// Where a Pack's parts lie: parts of `part_elements` bf16 each, K^T's kv_parts (pair layout, row stride
// 2 * keys: word [d / 2][j] holds K[j][d], K[j][d + 1]) then V's (pair layout, row stride 2 * width:
// word [j / 2][d] holds V[j][d], V[j + 1][d]); width is head_dim rounded up to kTileBlock.
struct PackLayout {
  int64_t width, kv_parts, part_elements;
  int64_t elements() const { return 2 * kv_parts * part_elements; }
};
inline PackLayout pack_layout(const rpa_problem& problem, int64_t keys) {
  const int64_t block = static_cast<int64_t>(kTileBlock), width = (problem.head_dim + block - 1) / block * block;
  return {width, problem.kv_dtype == RPA_DTYPE_F16 ? 2 : 1, width * keys};
}

// Packing work: keys [key_begin, key_end) (multiples of kTileStep) of pack `pack`.
struct PackJob {
  int32_t pack;
  int64_t key_begin, key_end;
};

// A call runs in waves, each packing its packs (jobs) and then computing their items (the first wave
// also takes the items of the FMA kernels); merges follow the last wave. Waves bound the pack buffer:
// a wave holds at most kPackBudget bytes of packs, or one pack larger than that.
struct Wave {
  size_t item_begin, item_end;
  size_t job_begin, job_end;
  int64_t elements, flags;  // the pack buffer it needs: bf16 elements, flag bytes
};
inline constexpr int64_t kPackBudget = int64_t{64} << 20;

// The splits of one row range, merged by log-sum-exp in split order.
struct MergeGroup {
  int32_t seq;
  int32_t row_begin, row_end;
  int64_t partial;         // first split's state
  int64_t partial_stride;  // floats between consecutive splits' states
  int32_t num_splits;
};

struct Plan {
  std::vector<WorkItem> items;  // by wave, largest cost first within one
  std::vector<MergeGroup> merges;
  int64_t partial_floats = 0;
  TileProduct tiles = nullptr;  // the backend's prefill tile product (simd/tiles.h), or null
  std::vector<Pack> packs;
  std::vector<PackJob> jobs;
  std::vector<Wave> waves;
};

// Floats in a per-row partial state: max, sum and D values.
inline int64_t partial_row_floats(int64_t head_dim) { return head_dim + 2; }

// Floats of per-thread scratch one item needs for head_dim (any target).
inline int64_t scratch_floats(int64_t head_dim) {
  const int64_t padded = (head_dim + kScratchLanes - 1) / kScratchLanes * kScratchLanes;
  // The FMA kernels: queries and output accumulators, K and V tiles, scores, running max and sum.
  const int64_t fma = 4 * kMaxRows * padded + 4 * kTileKeys * padded + 3 * kMaxRows * kTileKeys + 2 * kMaxRows;
  // The tile path (attention.cc's AttendItemTiles): Q in up to two bf16 parts, O, V in f32 for a step
  // that needs it, S, P in two bf16 parts, five per-row values.
  const int64_t tiles = 2 * kTileRows * padded + kTileStep * padded + 2 * kTileRows * kTileStep + 5 * kTileRows;
  return (fma > tiles ? fma : tiles) + kScratchLanes;
}

// The plan of a problem for a backend whose prefill tile product is `tiles` (null: none).
Plan make_plan(const rpa_problem& problem, TileProduct tiles);

}  // namespace rpa::simd
