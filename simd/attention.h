// Entry points of the Highway kernels (attention.cc). Each call dispatches at run time to the best
// target the CPU supports (or the one hwy::SetSupportedTargetsForTest selects).
#pragma once

#include <cstdint>

#include "plugins/plugin_abi.h"
#include "simd/plan.h"
#include "simd/tiles.h"

namespace rpa::simd {

// What the tile path's items of one wave read: the tile product, the plan's packs, the wave's pack buffer
// (bf16 elements, then the flag bytes).
struct TileWork {
  TileProduct product;
  const Pack* packs;
  uint16_t* buffer;
  uint8_t* flags;
};

// Packs keys [job.key_begin, job.key_end) of a pack into the buffer (simd/plan.h's PackLayout). Same
// scratch contract as attend_item.
void pack_kv(const rpa_problem& problem, const PackJob& job, const TileWork& tiles, float* scratch);

// Computes one work item. `scratch` holds scratch_floats(head_dim) floats, 64-byte aligned, used by
// no other thread meanwhile; `partial` is the plan's partial buffer. An item with a pack (the tile path)
// reads it from `tiles`, whose wave's jobs have all run.
void attend_item(const rpa_problem& problem, const WorkItem& item, float* scratch, float* partial, const TileWork& tiles);

// Merges the splits of one group and writes its rows. Same scratch contract.
void merge_splits(const rpa_problem& problem, const MergeGroup& group, const float* partial, float* scratch);

// Whether the CPU supports at least one of the targets compiled into the kernels.
bool cpu_supported();

// Name of the target the kernels dispatch to now (for tests and the benchmark).
const char* active_target();

}  // namespace rpa::simd
