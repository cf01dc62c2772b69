// The simd planner's tile-path plan (simd/plan.h) on problems whose packs pass the wave budget: waves
// bound the pack buffer, every pack's keys are packed exactly once, each item runs in its pack's wave
// after its jobs, and packs of one wave do not overlap. Metadata only: nothing is computed.
#define BOOST_TEST_MODULE simd_plan
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd/plan.h"

namespace {

// A stand-in product: the planner only asks whether there is one.
void no_product(const rpa::simd::TileOperand&, const rpa::simd::TileOperand&, float*, size_t, size_t, size_t, size_t,
                bool) {}

struct Problem {
  std::vector<int32_t> query_start_loc, context_lens;
  rpa_problem p{};
  Problem(const std::vector<int32_t>& q_lens, const std::vector<int32_t>& contexts, int64_t window) {
    query_start_loc.push_back(0);
    for (int32_t q : q_lens) query_start_loc.push_back(query_start_loc.back() + q);
    context_lens = contexts;
    p.struct_size = sizeof(rpa_problem);
    p.num_q_heads = 32;
    p.num_kv_heads = 8;
    p.head_dim = 256;
    p.num_seqs = static_cast<int32_t>(q_lens.size());
    p.query_start_loc = query_start_loc.data();
    p.context_lens = context_lens.data();
    p.query_dtype = RPA_DTYPE_BF16;
    p.kv_dtype = RPA_DTYPE_F16;
    p.sliding_window = window;
  }
};

void check_waves(const rpa_problem& p, size_t want_waves_at_least) {
  const rpa::simd::Plan plan = rpa::simd::make_plan(p, no_product);
  BOOST_REQUIRE_GE(plan.waves.size(), want_waves_at_least);
  std::vector<int64_t> packed(plan.packs.size(), 0);
  size_t items = 0, jobs = 0;
  for (size_t w = 0; w < plan.waves.size(); ++w) {
    const rpa::simd::Wave& wave = plan.waves[w];
    BOOST_CHECK_EQUAL(wave.item_begin, items);
    BOOST_CHECK_EQUAL(wave.job_begin, jobs);
    items = wave.item_end;
    jobs = wave.job_end;
    std::vector<int32_t> packs_here;
    for (size_t j = wave.job_begin; j < wave.job_end; ++j) {
      const rpa::simd::PackJob& job = plan.jobs[j];
      const rpa::simd::Pack& pack = plan.packs[static_cast<size_t>(job.pack)];
      BOOST_CHECK(job.key_begin >= pack.key_begin && job.key_end <= pack.key_begin + pack.keys && job.key_begin < job.key_end);
      BOOST_CHECK_EQUAL(job.key_begin % rpa::simd::kTileStep, 0);
      packed[static_cast<size_t>(job.pack)] += job.key_end - job.key_begin;
      packs_here.push_back(job.pack);
    }
    std::sort(packs_here.begin(), packs_here.end());
    packs_here.erase(std::unique(packs_here.begin(), packs_here.end()), packs_here.end());
    // The wave's packs lie side by side within its buffer, which stays within the budget unless it is one pack.
    int64_t end = 0;
    for (int32_t i : packs_here) {
      const rpa::simd::Pack& pack = plan.packs[static_cast<size_t>(i)];
      BOOST_CHECK_EQUAL(pack.offset, end);
      end += rpa::simd::pack_layout(p, pack.keys).elements();
    }
    BOOST_CHECK_EQUAL(end, wave.elements);
    BOOST_CHECK(packs_here.size() <= 1 || wave.elements * 2 <= rpa::simd::kPackBudget);
    for (size_t i = wave.item_begin; i < wave.item_end; ++i) {
      const rpa::simd::WorkItem& item = plan.items[i];
      if (item.pack < 0) {
        BOOST_CHECK_EQUAL(w, 0u);  // the FMA kernels' items run in the first wave
        continue;
      }
      BOOST_CHECK(std::binary_search(packs_here.begin(), packs_here.end(), item.pack));
      const rpa::simd::Pack& pack = plan.packs[static_cast<size_t>(item.pack)];
      BOOST_CHECK(item.key_begin >= pack.key_begin && item.key_end <= pack.key_begin + pack.keys);
      BOOST_CHECK_LE(item.row_end - item.row_begin, rpa::simd::kTileRows);
    }
  }
  BOOST_CHECK_EQUAL(items, plan.items.size());
  BOOST_CHECK_EQUAL(jobs, plan.jobs.size());
  for (size_t i = 0; i < plan.packs.size(); ++i) BOOST_CHECK_EQUAL(packed[i], plan.packs[i].keys);
}

}  // namespace

// Two long chunked prefills (each (sequence, kv head) pack of f16 KV at head dim 256 is 40 MiB: one per
// wave) beside decodes.
BOOST_AUTO_TEST_CASE(waves_bound_the_pack_buffer) {
  const Problem problem({512, 1, 300, 1}, {20000, 70, 20000, 9}, 0);
  check_waves(problem.p, 16);
}

// Many short prefills share waves; a sliding window starts the packs past key 0.
BOOST_AUTO_TEST_CASE(short_prefills_share_waves) {
  const Problem problem(std::vector<int32_t>(40, 100), std::vector<int32_t>(40, 5000), 700);
  check_waves(problem.p, 2);
  const rpa::simd::Plan plan = rpa::simd::make_plan(problem.p, no_product);
  BOOST_CHECK_EQUAL(plan.packs[0].key_begin, (5000 - 100 - 700 + 1) / rpa::simd::kTileStep * rpa::simd::kTileStep);
}

// Without a tile product every item takes the FMA kernels and nothing is packed.
BOOST_AUTO_TEST_CASE(no_product_no_packs) {
  const Problem problem({512, 1}, {2000, 70}, 0);
  const rpa::simd::Plan plan = rpa::simd::make_plan(problem.p, nullptr);
  BOOST_CHECK(plan.packs.empty() && plan.jobs.empty());
  BOOST_REQUIRE_EQUAL(plan.waves.size(), 1u);
  for (const rpa::simd::WorkItem& item : plan.items) BOOST_CHECK_EQUAL(item.pack, -1);
}
