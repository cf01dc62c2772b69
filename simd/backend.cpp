// The simd backend: plans a call as one flat list of work items, runs them in the context's own
// tbb::task_arena, and hands each to the Highway kernels (attention.cc) with that thread's scratch.
#include <tbb/blocked_range.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <hwy/aligned_allocator.h>
#include <limits>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "simd/attention.h"
#include "simd/plan.h"

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

namespace {

// Rows no processed sequence covers are 0 with lse -inf. Sequences cover [qsl[0], qsl[num_seqs]).
void zero_uncovered_rows(const rpa_problem& p) {
  const int64_t covered_begin = p.query_start_loc[0], covered_end = p.query_start_loc[p.num_seqs];
  const size_t row_bytes = static_cast<size_t>(p.head_dim) * dtype_size(p.out_dtype);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    if (t >= covered_begin && t < covered_end) continue;
    for (int64_t h = 0; h < p.num_q_heads; ++h) {
      std::memset(static_cast<char*>(p.out) + (t * p.out_token_stride + h * p.out_head_stride) * dtype_size(p.out_dtype),
                  0, row_bytes);
      if (p.lse) p.lse[t * p.lse_token_stride + h * p.lse_head_stride] = -std::numeric_limits<float>::infinity();
    }
  }
}

class SimdBackend final : public Backend {
 public:
  explicit SimdBackend(int num_threads)
      // More threads than cores only cost scratch memory (one slot each) and oversubscription.
      : num_threads_(std::min(num_threads > 0 ? num_threads : INT_MAX, tbb::info::default_concurrency())),
        arena_(num_threads_),
        scratch_(static_cast<size_t>(num_threads_)) {
    for (Scratch& scratch : scratch_) scratch.reserve(simd::scratch_floats(256));
  }

  rpa_backend kind() const override { return RPA_BACKEND_SIMD; }
  int num_threads() const override { return num_threads_; }

  void run(const rpa_problem& p) override {
    zero_uncovered_rows(p);
    const simd::Plan plan = simd::make_plan(p);
    if (plan.items.empty()) return;
    std::vector<float> partial(static_cast<size_t>(plan.partial_floats));
    const size_t floats = static_cast<size_t>(simd::scratch_floats(p.head_dim));
    arena_.execute([&] {
      // Items run one per task (they are coarse); the arena's threads each own one scratch slot.
      tbb::parallel_for(
          tbb::blocked_range<size_t>(0, plan.items.size(), 1),
          [&](const tbb::blocked_range<size_t>& range) {
            float* scratch = scratch_of_this_thread(floats);
            for (size_t i = range.begin(); i != range.end(); ++i)
              simd::attend_item(p, plan.items[i], scratch, partial.data());
          },
          tbb::simple_partitioner());
      tbb::parallel_for(
          tbb::blocked_range<size_t>(0, plan.merges.size(), 1),
          [&](const tbb::blocked_range<size_t>& range) {
            float* scratch = scratch_of_this_thread(floats);
            for (size_t i = range.begin(); i != range.end(); ++i)
              simd::merge_splits(p, plan.merges[i], partial.data(), scratch);
          },
          tbb::simple_partitioner());
    });
  }

 private:
  // Scratch of one arena slot. A slot is held by one thread at a time and a task never waits inside
  // the kernels, so concurrent calls on this backend never share a slot's memory.
  struct Scratch {
    hwy::AlignedFreeUniquePtr<float[]> data{nullptr, hwy::AlignedFreer()};
    size_t floats = 0;
    void reserve(size_t wanted) {
      if (wanted <= floats) return;
      data = hwy::AllocateAligned<float>(wanted);
      if (!data) throw std::bad_alloc();
      floats = wanted;
    }
  };

  float* scratch_of_this_thread(size_t floats) {
    const int slot = tbb::this_task_arena::current_thread_index();
    if (slot < 0 || static_cast<size_t>(slot) >= scratch_.size())
      fail(RPA_STATUS_INTERNAL, "simd backend: arena slot " + std::to_string(slot) + " outside its scratch");
    Scratch& scratch = scratch_[static_cast<size_t>(slot)];
    scratch.reserve(floats);  // grows only for a head_dim above 256
    return scratch.data.get();
  }

  int num_threads_;
  tbb::task_arena arena_;
  std::vector<Scratch> scratch_;
};

}  // namespace

bool simd_backend_available() { return simd::cpu_supported(); }

std::unique_ptr<Backend> make_simd_backend(int num_threads) {
  if (!simd_backend_available())
    fail(RPA_STATUS_UNAVAILABLE, "the simd backend needs an x86-64 CPU with SSE4.2, AES and CLMUL (or better)");
  return std::make_unique<SimdBackend>(num_threads);
}

}  // namespace rpa
