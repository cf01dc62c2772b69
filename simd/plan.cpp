// The simd planner: a call's rows and keys as one flat list of work items (simd/plan.h), made once per
// plan. Plain C++, no Highway.
#include "simd/plan.h"

#include <algorithm>

namespace rpa {
namespace simd {
namespace {

// Splitting a long key range (flash-decoding) pays when the unsplit items are too few to keep the
// cores busy. Both constants are fixed, so the plan does not depend on the machine or thread count.
constexpr int64_t kMinItems = 128;
constexpr int64_t kMinSplitKeys = 512;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Plan make_plan(const rpa_problem& p) {
  Plan plan;
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  std::vector<WorkItem> whole;
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int64_t q_len = p.query_start_loc[s + 1] - p.query_start_loc[s];
    const int64_t first_pos = p.context_lens[s] - q_len, head_rows = q_len * group;
    for (int64_t r0 = 0; r0 < head_rows * p.num_kv_heads; r0 += kMaxRows) {
      const int64_t r1 = std::min(r0 + kMaxRows, head_rows * p.num_kv_heads);
      // Tokens of the rows: a range within one kv head, or all of them when the rows span heads.
      const bool one_head = r0 / head_rows == (r1 - 1) / head_rows;
      const int64_t first_token = one_head ? r0 % head_rows / group : 0;
      const int64_t last_token = one_head ? (r1 - 1) % head_rows / group : q_len - 1;
      const int64_t first_query = first_pos + first_token;
      const int64_t key_begin = p.sliding_window > 0 ? std::max<int64_t>(0, first_query - p.sliding_window + 1) : 0;
      whole.push_back({s, static_cast<int32_t>(r0), static_cast<int32_t>(r1), key_begin, first_pos + last_token + 1,
                       -1, 0});
    }
  }
  if (whole.empty()) return plan;

  const int64_t max_splits = std::max<int64_t>(1, ceil_div(kMinItems, static_cast<int64_t>(whole.size())));
  const int64_t row_floats = partial_row_floats(p.head_dim);
  for (const WorkItem& item : whole) {
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
  // Largest first, so a long prefill item does not start last while the other threads idle.
  std::stable_sort(plan.items.begin(), plan.items.end(),
                   [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
  return plan;
}

}  // namespace simd
}  // namespace rpa
