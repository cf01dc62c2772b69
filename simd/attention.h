// Entry points of the Highway kernels (attention.cc). Each call dispatches at run time to the best
// target the CPU supports (or the one hwy::SetSupportedTargetsForTest selects).
#pragma once

#include <cstdint>

#include "plugins/plugin_abi.h"
#include "simd/plan.h"
#include "simd/tiles.h"

namespace rpa::simd {

// Computes one work item. `scratch` holds scratch_floats(head_dim) floats, 64-byte aligned, used by
// no other thread meanwhile; `partial` is the plan's partial buffer. Prefill items of 16-bit queries and
// KV run their products on `tiles` when it is not null (tile_product_in_use()).
void attend_item(const rpa_problem& problem, const WorkItem& item, float* scratch, float* partial, TileProduct tiles);

// Merges the splits of one group and writes its rows. Same scratch contract.
void merge_splits(const rpa_problem& problem, const MergeGroup& group, const float* partial, float* scratch);

// Whether the CPU supports at least one of the targets compiled into the kernels.
bool cpu_supported();

// Name of the target the kernels dispatch to now (for tests and the benchmark).
const char* active_target();

}  // namespace rpa::simd
