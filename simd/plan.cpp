// The simd planner: a call's rows and keys as one flat list of work items, in waves (simd/plan.h), made
// once per plan. Plain C++, no Highway.
#include "simd/plan.h"

#include <algorithm>

namespace rpa {
namespace simd {
namespace {

// Splitting a long key range (flash-decoding) pays when the unsplit items are too few to keep the
// cores busy. Both constants are fixed, so the plan does not depend on the machine or thread count.
constexpr int64_t kMinItems = 128;
constexpr int64_t kMinSplitKeys = 512;
// Keys of one packing job.
constexpr int64_t kPackJobKeys = 4 * kTileStep;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool sixteen_bit(rpa_dtype dtype) { return dtype == RPA_DTYPE_BF16 || dtype == RPA_DTYPE_F16; }

// Rows [r0, r1) of sequence s as an item over the keys they can see.
WorkItem item_of(const rpa_problem& p, int32_t s, int64_t r0, int64_t r1, int32_t pack) {
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  const int64_t q_len = p.query_start_loc[s + 1] - p.query_start_loc[s];
  const int64_t first_pos = p.context_lens[s] - q_len, head_rows = q_len * group;
  // Tokens of the rows: a range within one kv head, or all of them when the rows span heads.
  const bool one_head = r0 / head_rows == (r1 - 1) / head_rows;
  const int64_t first_token = one_head ? r0 % head_rows / group : 0;
  const int64_t last_token = one_head ? (r1 - 1) % head_rows / group : q_len - 1;
  const int64_t first_query = first_pos + first_token;
  const int64_t key_begin = p.sliding_window > 0 ? std::max<int64_t>(0, first_query - p.sliding_window + 1) : 0;
  return {s, static_cast<int32_t>(r0), static_cast<int32_t>(r1), key_begin, first_pos + last_token + 1, -1, 0, pack};
}

}  // namespace

Plan make_plan(const rpa_problem& p, TileProduct tiles) {
  Plan plan;
  plan.tiles = tiles;
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  const bool tile_dtypes = tiles != nullptr && sixteen_bit(p.query_dtype) && sixteen_bit(p.kv_dtype);
  std::vector<WorkItem> whole;
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int64_t q_len = p.query_start_loc[s + 1] - p.query_start_loc[s];
    const int64_t first_pos = p.context_lens[s] - q_len, head_rows = q_len * group;
    if (tile_dtypes && q_len > 1 && head_rows >= 16) {
      // The tile path: each kv head's rows in near-equal items of at most kTileRows, over one pack of
      // the keys any of its rows sees.
      const int64_t first_key = p.sliding_window > 0 ? std::max<int64_t>(0, first_pos - p.sliding_window + 1) : 0;
      const int64_t key_begin = first_key / kTileStep * kTileStep;
      const int64_t keys = ceil_div(p.context_lens[s], kTileStep) * kTileStep - key_begin;
      const int64_t count = ceil_div(head_rows, kTileRows), rows = ceil_div(head_rows, count);
      for (int64_t h = 0; h < p.num_kv_heads; ++h) {
        const int32_t pack = static_cast<int32_t>(plan.packs.size());
        plan.packs.push_back({s, static_cast<int32_t>(h), key_begin, keys, 0, 0});
        for (int64_t r0 = h * head_rows; r0 < (h + 1) * head_rows; r0 += rows)
          whole.push_back(item_of(p, s, r0, std::min(r0 + rows, (h + 1) * head_rows), pack));
      }
      continue;
    }
    for (int64_t r0 = 0; r0 < head_rows * p.num_kv_heads; r0 += kMaxRows)
      whole.push_back(item_of(p, s, r0, std::min(r0 + kMaxRows, head_rows * p.num_kv_heads), -1));
  }
  if (whole.empty()) return plan;

  // Waves: packs in order, a new wave when the next pack would pass the budget.
  std::vector<size_t> wave_of(plan.packs.size());
  plan.waves.push_back({0, 0, 0, 0, 0, 0});
  for (size_t i = 0; i < plan.packs.size(); ++i) {
    Pack& pack = plan.packs[i];
    const int64_t elements = pack_layout(p, pack.keys).elements(), flags = pack.keys / kTileStep;
    Wave* wave = &plan.waves.back();
    if (wave->elements > 0 && (wave->elements + elements) * 2 > kPackBudget) {
      plan.waves.push_back({0, 0, 0, 0, 0, 0});
      wave = &plan.waves.back();
    }
    wave_of[i] = plan.waves.size() - 1;
    pack.offset = wave->elements;
    pack.flags = wave->flags;
    wave->elements += elements;
    wave->flags += flags;
  }

  const int64_t max_splits = std::max<int64_t>(1, ceil_div(kMinItems, static_cast<int64_t>(whole.size())));
  const int64_t row_floats = partial_row_floats(p.head_dim);
  for (size_t w = 0; w < plan.waves.size(); ++w) {
    Wave& wave = plan.waves[w];
    wave.item_begin = plan.items.size();
    wave.job_begin = plan.jobs.size();
    for (size_t i = 0; i < plan.packs.size(); ++i)
      if (wave_of[i] == w)
        for (int64_t k = 0; k < plan.packs[i].keys; k += kPackJobKeys)
          plan.jobs.push_back({static_cast<int32_t>(i), plan.packs[i].key_begin + k,
                               plan.packs[i].key_begin + std::min(k + kPackJobKeys, plan.packs[i].keys)});
    wave.job_end = plan.jobs.size();
    for (const WorkItem& item : whole) {
      if ((item.pack < 0 ? 0 : wave_of[static_cast<size_t>(item.pack)]) != w) continue;
      const int64_t rows = item.row_end - item.row_begin, keys = item.key_end - item.key_begin;
      int64_t splits = std::min(max_splits, ceil_div(keys, kMinSplitKeys));
      const int64_t chunk = splits > 1 ? ceil_div(ceil_div(keys, splits), kTileKeys) * kTileKeys : keys;
      splits = ceil_div(keys, chunk);
      if (splits <= 1) {
        plan.items.push_back(item);
        plan.items.back().cost = rows * (keys + kTileKeys);
        continue;
      }
      const int64_t stride = rows * row_floats;
      plan.merges.push_back({item.seq, item.row_begin, item.row_end, plan.partial_floats, stride,
                             static_cast<int32_t>(splits)});
      for (int64_t i = 0; i < splits; ++i) {
        WorkItem split = item;
        split.key_begin = item.key_begin + i * chunk;
        split.key_end = std::min(item.key_end, split.key_begin + chunk);
        split.partial = plan.partial_floats + i * stride;
        split.cost = rows * (split.key_end - split.key_begin + kTileKeys);
        plan.items.push_back(split);
      }
      plan.partial_floats += splits * stride;
    }
    wave.item_end = plan.items.size();
    // Largest first, so a long prefill item does not start last while the other threads idle.
    std::stable_sort(plan.items.begin() + static_cast<std::ptrdiff_t>(wave.item_begin), plan.items.end(),
                     [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
  }
  return plan;
}

}  // namespace simd
}  // namespace rpa
