// The GPU planner (plugins/gpu/planner.cpp, plain C++) on the CPU: every visible (q head, row, key) of a
// problem belongs to exactly one tile, the splits of a key range partition it in order, and counts near
// the int32 limits neither wrap nor pass unnamed.
#define BOOST_TEST_MODULE gpu_planner
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <random>
#include <vector>

#include "plugins/gpu/planner.h"

using rpa_gpu::PlanLimits;
using rpa_gpu::Tile;
using rpa_gpu::TilePlan;

namespace {

struct Metadata {
  std::vector<int32_t> context_lens, query_start_loc;
  rpa_problem problem{};
};

Metadata metadata(const std::vector<int32_t>& q_lens, const std::vector<int32_t>& context_lens, int64_t q_heads,
                  int64_t kv_heads, int64_t window) {
  Metadata m;
  m.context_lens = context_lens;
  m.query_start_loc = {3};  // rows before the first sequence are padding
  for (int32_t q : q_lens) m.query_start_loc.push_back(m.query_start_loc.back() + q);
  rpa_problem& p = m.problem;
  p.num_seqs = static_cast<int32_t>(q_lens.size());
  p.num_tokens = m.query_start_loc.back() + 2;
  p.num_q_heads = q_heads;
  p.num_kv_heads = kv_heads;
  p.head_dim = 128;
  p.page_size = 16;
  p.pages_per_seq = 1 << 20;
  p.sliding_window = window;
  p.context_lens = m.context_lens.data();
  p.query_start_loc = m.query_start_loc.data();
  return m;
}

// How often each (head, row, key) is covered, dense: keys below max_keys.
struct Coverage {
  int64_t rows, max_keys;
  std::vector<uint8_t> count;
  uint8_t& at(int64_t head, int64_t row, int64_t key) { return count[(head * rows + row) * max_keys + key]; }
};

// Checks the plan's structure and counts its coverage (with `count` false only the structure).
Coverage coverage(const rpa_problem& p, const TilePlan& plan, const PlanLimits& limits, bool count_pairs = true) {
  int64_t max_keys = 1;
  for (int32_t s = 0; s < p.num_seqs; ++s) max_keys = std::max<int64_t>(max_keys, p.context_lens[s]);
  Coverage count{p.num_tokens, max_keys, {}};
  if (count_pairs) count.count.assign(static_cast<size_t>(p.num_q_heads * p.num_tokens * max_keys), 0);
  BOOST_TEST_REQUIRE(plan.decode_tiles <= plan.attention_tiles);
  BOOST_TEST_REQUIRE(plan.attention_tiles <= plan.tiles.size());
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  for (size_t i = 0; i < plan.attention_tiles; ++i) {
    const Tile& t = plan.tiles[i];
    const bool decode = i < plan.decode_tiles;
    BOOST_TEST(t.heads * t.rows <= (decode ? rpa_gpu::kDecodeMaxRows : limits.max_rows));
    BOOST_TEST(t.head_begin / group == (t.head_begin + t.heads - 1) / group, "a tile spans kv heads");
    BOOST_TEST(t.key_begin >= 0);
    BOOST_TEST(t.key_begin < t.key_end);
    BOOST_TEST(t.key_end <= p.context_lens[t.seq]);
    const int32_t q_len = p.query_start_loc[t.seq + 1] - p.query_start_loc[t.seq];
    BOOST_TEST(t.first_pos == p.context_lens[t.seq] - q_len + (t.row_begin - p.query_start_loc[t.seq]));
    // The range holds only keys some row of the tile can see.
    BOOST_TEST(t.key_end - 1 <= t.first_pos + t.rows - 1);
    BOOST_TEST(t.key_begin >= (p.sliding_window > 0 ? std::max<int64_t>(0, t.first_pos - p.sliding_window + 1) : 0));
    for (int64_t h = t.head_begin; h < t.head_begin + t.heads; ++h)
      for (int64_t r = 0; r < t.rows; ++r) {
        const int64_t pos = t.first_pos + r;
        const int64_t first = p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
        if (count_pairs)
          for (int64_t j = std::max<int64_t>(first, t.key_begin); j <= std::min<int64_t>(pos, t.key_end - 1); ++j)
            ++count.at(h, t.row_begin + r, j);
      }
  }
  // Merge tiles: their splits are consecutive partial slots whose key ranges partition the merged range
  // in ascending order.
  for (size_t i = plan.attention_tiles; i < plan.tiles.size(); ++i) {
    const Tile& merge = plan.tiles[i];
    BOOST_TEST_REQUIRE(merge.splits >= 2);
    std::vector<const Tile*> splits;
    for (size_t j = 0; j < plan.attention_tiles; ++j) {
      const Tile& t = plan.tiles[j];
      if (t.partial >= merge.partial && t.partial < merge.partial + merge.splits * merge.heads * merge.rows)
        splits.push_back(&t);
    }
    BOOST_TEST_REQUIRE(splits.size() == static_cast<size_t>(merge.splits));
    std::sort(splits.begin(), splits.end(), [](const Tile* a, const Tile* b) { return a->partial < b->partial; });
    int64_t next = merge.key_begin;
    for (size_t s = 0; s < splits.size(); ++s) {
      BOOST_TEST(splits[s]->partial == merge.partial + static_cast<int32_t>(s) * merge.heads * merge.rows);
      BOOST_TEST(splits[s]->seq == merge.seq);
      BOOST_TEST(splits[s]->row_begin == merge.row_begin);
      BOOST_TEST(splits[s]->head_begin == merge.head_begin);
      BOOST_TEST(splits[s]->key_begin == next);
      if (s + 1 < splits.size()) BOOST_TEST((splits[s]->key_end - splits[s]->key_begin) % limits.tile_keys == 0);
      next = splits[s]->key_end;
    }
    BOOST_TEST(next == merge.key_end);
  }
  return count;
}

// Every visible (head, row, key) of p's sequences is covered by exactly one tile of `plan`.
void expect_exact_cover(const rpa_problem& p, const TilePlan& plan, const PlanLimits& limits) {
  Coverage count = coverage(p, plan, limits);
  size_t visible = 0;
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int32_t first_row = p.query_start_loc[s], q_len = p.query_start_loc[s + 1] - first_row;
    for (int32_t i = 0; i < q_len; ++i) {
      const int64_t pos = p.context_lens[s] - q_len + i;
      const int64_t first = p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
      for (int64_t h = 0; h < p.num_q_heads; ++h)
        for (int64_t j = first; j <= pos; ++j) {
          ++visible;
          const int covered = count.at(h, first_row + i, j);
          if (covered != 1)
            BOOST_FAIL("seq " << s << " head " << h << " row " << first_row + i << " key " << j << " covered "
                              << covered << " times");
        }
    }
  }
  size_t covered = 0;
  for (uint8_t c : count.count) covered += c;
  BOOST_TEST(covered == visible);
}

// 1-6 sequences (a third of them decodes) with up to max_extra_keys keys before their queries, 1-2 kv
// heads of 1-6 q heads each, and a sliding window half the time.
Metadata random_batch(std::mt19937& rng, int max_extra_keys) {
  std::vector<int32_t> q_lens, contexts;
  const int seqs = 1 + static_cast<int>(rng() % 6);
  for (int s = 0; s < seqs; ++s) {
    const int32_t q = rng() % 3 == 0 ? 1 : static_cast<int32_t>(rng() % 80);
    q_lens.push_back(q);
    contexts.push_back(q + static_cast<int32_t>(rng() % max_extra_keys));
  }
  const int64_t kv_heads = 1 + rng() % 2, group = 1 + rng() % 6;
  const int64_t window = rng() % 2 ? 0 : 1 + rng() % 300;
  return metadata(q_lens, contexts, kv_heads * group, kv_heads, window);
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_visible_row_key_pair_is_covered_exactly_once) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 40; ++trial) {
    const Metadata m = random_batch(rng, 600);
    for (bool decode : {false, true})
      for (int target : {1, 64, 4000}) {
        const PlanLimits limits{decode, rpa_gpu::kDecodeMaxRows, trial % 2 ? 64 : 32, trial % 3 ? 64 : 32, target};
        BOOST_TEST_CONTEXT("trial " << trial << " decode " << decode << " target " << target)
        expect_exact_cover(m.problem, rpa_gpu::make_tile_plan(m.problem, limits), limits);
      }
  }
}

BOOST_AUTO_TEST_CASE(key_ranges_near_the_int32_limit_split_without_wrapping) {
  const int32_t huge = 2147483647 - 5;
  Metadata m = metadata({1, 3}, {huge, huge}, 4, 4, 0);
  const TilePlan plan = rpa_gpu::make_tile_plan(m.problem, PlanLimits{true, rpa_gpu::kDecodeMaxRows, 64, 64, 4000});
  BOOST_TEST(plan.tiles.size() > plan.attention_tiles, "long ranges should split");
  (void)coverage(m.problem, plan, PlanLimits{true, rpa_gpu::kDecodeMaxRows, 64, 64, 4000}, false);
  for (const Tile& t : plan.tiles) BOOST_TEST(t.key_end <= huge);
}

BOOST_AUTO_TEST_CASE(counts_beyond_the_tile_fields_are_refused_by_name) {
  Metadata m = metadata({1}, {5}, 8, 2, 0);
  BOOST_TEST(rpa_gpu::plan_limit_error(m.problem).empty());
  m.problem.num_q_heads = int64_t{1} << 31;
  BOOST_TEST(rpa_gpu::plan_limit_error(m.problem).find("'queries': shape[1]") != std::string::npos);
  m.problem.num_q_heads = 64;
  m.problem.num_tokens = int64_t{1} << 25;  // 2^31 rows
  BOOST_TEST(rpa_gpu::plan_limit_error(m.problem).find("T * QH") != std::string::npos);
  m.problem.num_tokens = 10;
  m.problem.pages_per_seq = int64_t{1} << 32;
  BOOST_TEST(rpa_gpu::plan_limit_error(m.problem).find("'block_tables'") != std::string::npos);
}

// Divisor's multiply and shift against the plain division: every divisor up to 2^12, the powers of two and
// their neighbours up to 2^31 - 1, page sizes and random ones; each with the dividends around its
// multiples, around 2^31, and random ones.
BOOST_AUTO_TEST_CASE(divisor_quotients_equal_the_division) {
  std::mt19937 rng(11);
  std::vector<int32_t> divisors;
  for (int32_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int k = 12; k <= 31; ++k)
    for (int64_t d : {(int64_t{1} << k) - 1, int64_t{1} << k, (int64_t{1} << k) + 1})
      if (d <= 2147483647) divisors.push_back(static_cast<int32_t>(d));
  for (int i = 0; i < 2000; ++i) divisors.push_back(static_cast<int32_t>(rng() % 2147483647) + 1);
  int64_t checked = 0;
  for (int32_t d : divisors) {
    const rpa_gpu::Divisor divisor(d);
    BOOST_TEST_REQUIRE(int32_t(divisor) == d);
    std::vector<int64_t> dividends = {0, 1, 2147483646, 2147483647};
    for (int64_t multiple : {int64_t{1}, int64_t{2}, int64_t{1000}, int64_t{2147483647 / d}})
      for (int64_t n : {multiple * d - 1, multiple * d, multiple * d + 1}) dividends.push_back(n);
    for (int i = 0; i < 64; ++i) dividends.push_back(rng() % 2147483648u);
    for (int64_t n : dividends) {
      if (n < 0 || n > 2147483647) continue;
      const auto n32 = static_cast<int32_t>(n);
      const auto [quotient, remainder] = divisor.divide_with_remainder(n32);
      if (quotient != n / d || remainder != n % d || divisor.divide_up(n32) != (n + d - 1) / d)
        BOOST_FAIL("d = " << d << ", n = " << n << ": " << quotient << " r " << remainder << ", up "
                          << divisor.divide_up(n32));
      ++checked;
    }
  }
  BOOST_TEST(checked > 100000);
  BOOST_TEST(rpa_gpu::Divisor(7).divide_up(-5) == 0);  // a negative count has no chunks
}

namespace {

// Every slot of a device grid resolved on the host, in make_tile_plan's order: decode, other, merges;
// the row chunks listed as list_row_chunks lists them (its order within a key bucket aside), which a
// direct grid does not read.
TilePlan resolve_grid(rpa_gpu::DeviceGrid grid) {
  std::vector<rpa_gpu::RowChunk> chunks;
  for (int32_t s = 0; s < grid.num_seqs; ++s) {
    const rpa_gpu::SequenceRows rows = rpa_gpu::sequence_rows(grid, s);
    for (int32_t r = 0; r < rpa_gpu::attention_chunks(grid, rows, grid.seq_ok[s]); ++r)
      chunks.push_back(rpa_gpu::row_chunk(grid, s, rows, r));
  }
  BOOST_TEST_REQUIRE(chunks.size() <= static_cast<size_t>(grid.attention.chunks), "more row chunks than the grid's bound");
  std::stable_sort(chunks.begin(), chunks.end(), [&](const rpa_gpu::RowChunk& a, const rpa_gpu::RowChunk& b) {
    return rpa_gpu::key_bucket(grid, a) > rpa_gpu::key_bucket(grid, b);
  });
  chunks.resize(static_cast<size_t>(grid.attention.chunks), rpa_gpu::RowChunk{-1, 0, 0, 0});
  grid.row_chunks = chunks.data();
  TilePlan plan;
  std::vector<Tile> merges;
  for (rpa_gpu::GridKind kind : {rpa_gpu::kGridDecode, rpa_gpu::kGridAttention, rpa_gpu::kGridMergeDecode,
                                 rpa_gpu::kGridMergeAttention}) {
    for (int64_t block = 0; block < rpa_gpu::grid_blocks(grid, kind); ++block) {
      Tile tile{};
      if (!rpa_gpu::grid_tile(grid, kind, block, tile)) continue;
      if (kind == rpa_gpu::kGridMergeDecode || kind == rpa_gpu::kGridMergeAttention) merges.push_back(tile);
      else plan.tiles.push_back(tile);
      if (tile.partial >= 0) plan.partial_rows = std::max<int64_t>(plan.partial_rows, tile.partial + tile.heads * tile.rows);
    }
    if (kind == rpa_gpu::kGridDecode) plan.decode_tiles = plan.tiles.size();
  }
  plan.attention_tiles = plan.tiles.size();
  plan.tiles.insert(plan.tiles.end(), merges.begin(), merges.end());
  return plan;
}

}  // namespace

// Device metadata: the slots a grid made from bounds resolves to cover every visible pair exactly once,
// for any metadata within the bounds, and a sequence marked broken gets no tile.
BOOST_AUTO_TEST_CASE(device_grid_slots_cover_every_pair_exactly_once) {
  std::mt19937 rng(5);
  int direct_grids = 0, listed_grids = 0;
  for (int trial = 0; trial < 40; ++trial) {
    Metadata m = random_batch(rng, 900);
    // Bounds at or above the values.
    int32_t max_q_len = 0;
    for (int32_t s = 0; s < m.problem.num_seqs; ++s)
      max_q_len = std::max(max_q_len, m.query_start_loc[s + 1] - m.query_start_loc[s]);
    m.problem.max_query_len = max_q_len + static_cast<int32_t>(rng() % 20);
    m.problem.max_context_len =
        *std::max_element(m.context_lens.begin(), m.context_lens.end()) + static_cast<int32_t>(rng() % 700);
    std::vector<int32_t> seq_ok(m.context_lens.size(), 1);
    for (bool decode : {false, true})
      for (int target : {1, 64, 4000}) {
        const PlanLimits limits{decode, rpa_gpu::kDecodeMaxRows, trial % 2 ? 64 : 32, trial % 3 ? 64 : 32, target};
        BOOST_TEST_CONTEXT("trial " << trial << " decode " << decode << " target " << target) {
          int64_t partial_rows = 0;
          rpa_gpu::DeviceGrid grid = rpa_gpu::make_device_grid(m.problem, limits, partial_rows);
          grid.seq_ok = seq_ok.data();
          const TilePlan plan = resolve_grid(grid);
          BOOST_TEST(plan.partial_rows <= partial_rows, "a split writes beyond the plan's partial rows");
          expect_exact_cover(m.problem, plan, limits);
          // Tiles start in slot order, which keeps the list's order: buckets of fewer keys after more. A
          // direct grid starts each sequence's tiles of more keys first, the last rows' first.
          ++(grid.direct ? direct_grids : listed_grids);
          int32_t last_bucket = rpa_gpu::kKeyBuckets;
          std::vector<int32_t> last_row(m.context_lens.size(), INT32_MAX);
          for (size_t i = plan.decode_tiles; i < plan.attention_tiles; ++i) {
            const Tile& t = plan.tiles[i];
            if (grid.direct) {
              BOOST_TEST(t.row_begin <= last_row[t.seq], "seq " << t.seq << " row " << t.row_begin);
              last_row[t.seq] = t.row_begin;
              continue;
            }
            const int32_t bucket = rpa_gpu::key_bucket(grid, rpa_gpu::RowChunk{t.seq, t.row_begin, t.rows, t.first_pos});
            BOOST_TEST(bucket <= last_bucket, "seq " << t.seq << " row " << t.row_begin);
            last_bucket = bucket;
          }
        }
      }
    // A broken sequence gets no tile, the others keep theirs.
    seq_ok[0] = 0;
    int64_t partial_rows = 0;
    rpa_gpu::DeviceGrid grid =
        rpa_gpu::make_device_grid(m.problem, PlanLimits{true, rpa_gpu::kDecodeMaxRows, 64, 64, 64}, partial_rows);
    grid.seq_ok = seq_ok.data();
    for (const Tile& tile : resolve_grid(grid).tiles) BOOST_TEST(tile.seq != 0);
  }
  BOOST_TEST(direct_grids > 0);
  BOOST_TEST(listed_grids > 0);
}

// A direct grid (DeviceGrid::direct) holds no more slots than the list would, takes one-token sequences
// too (no decode slots), and starts the chunks with the most keys first: the last chunk of every
// sequence, then the one before. Tight bounds over few sequences make one; a bound of the whole batch's
// tokens for each sequence does not, nor does PlanLimits::direct_slots off (RPA_GPU_DIRECT_SLOTS=0), nor
// an output of 2^31 elements or more.
BOOST_AUTO_TEST_CASE(device_grid_of_few_prefills_resolves_its_slots_directly) {
  Metadata m = metadata({48, 45, 1}, {100, 60, 70}, 8, 2, 0);
  m.problem.max_query_len = 48, m.problem.max_context_len = 100;
  const PlanLimits limits{true, rpa_gpu::kDecodeMaxRows, 64, 64, 1};  // 4 q heads x 16 rows a tile, unsplit
  int64_t partial_rows = 0;
  rpa_gpu::DeviceGrid grid = rpa_gpu::make_device_grid(m.problem, limits, partial_rows);
  BOOST_TEST_REQUIRE(grid.direct);
  BOOST_TEST(grid.attention.chunks == 3 * 3);  // 3 sequences x ceil(48 / 16); the list's bound: (99 + 3 * 15) / 16
  BOOST_TEST(rpa_gpu::grid_blocks(grid, rpa_gpu::kGridDecode) == 0);
  const std::vector<int32_t> seq_ok(3, 1);
  grid.seq_ok = seq_ok.data();
  const TilePlan plan = resolve_grid(grid);
  expect_exact_cover(m.problem, plan, limits);
  // Slot order, kv head 0: sequence 0's rows [35, 51), sequence 1's [83, 96) (make_tile_plan's last
  // chunks) and sequence 2's row 96, then [19, 35) and [67, 83), then [3, 19) and [51, 67).
  BOOST_TEST(plan.decode_tiles == 0u);
  std::vector<std::pair<int32_t, int32_t>> rows;
  for (size_t i = plan.decode_tiles; i < plan.attention_tiles; ++i)
    if (plan.tiles[i].head_begin == 0) rows.emplace_back(plan.tiles[i].row_begin, plan.tiles[i].rows);
  const std::vector<std::pair<int32_t, int32_t>> expected{{35, 16}, {83, 13}, {96, 1}, {19, 16},
                                                          {67, 16}, {3, 16},  {51, 16}};
  BOOST_TEST((rows == expected));
  PlanLimits listed = limits;
  listed.direct_slots = false;
  BOOST_TEST(!rpa_gpu::make_device_grid(m.problem, listed, partial_rows).direct);
  // Its zeroing blocks count the output's elements (T * QH * D) in 32 bits (direct_slot_tile).
  const int64_t tokens = m.problem.num_tokens, per_token = m.problem.num_q_heads * m.problem.head_dim;
  m.problem.num_tokens = ((int64_t(1) << 31) + per_token - 1) / per_token;  // 2^31 elements or just more
  BOOST_TEST(!rpa_gpu::make_device_grid(m.problem, limits, partial_rows).direct);
  m.problem.num_tokens = (int64_t(1) << 31) / per_token - 1;
  BOOST_TEST(rpa_gpu::make_device_grid(m.problem, limits, partial_rows).direct);
  m.problem.num_tokens = tokens;
  m.problem.max_query_len = m.problem.num_tokens;  // 3 x 7 pairs against the list's 9
  BOOST_TEST(!rpa_gpu::make_device_grid(m.problem, limits, partial_rows).direct);
}

// The split slots of a long bound: a short sequence uses one split (written directly), a long one all.
BOOST_AUTO_TEST_CASE(device_grid_splits_follow_each_sequences_keys) {
  Metadata m = metadata({1, 1}, {100, 4000}, 8, 8, 0);
  m.problem.max_query_len = 1;
  m.problem.max_context_len = 4096;
  int64_t partial_rows = 0;
  rpa_gpu::DeviceGrid grid =
      rpa_gpu::make_device_grid(m.problem, PlanLimits{true, rpa_gpu::kDecodeMaxRows, 64, 64, 64}, partial_rows);
  const std::vector<int32_t> seq_ok{1, 1};
  grid.seq_ok = seq_ok.data();
  BOOST_TEST(grid.attention.row_chunks == 0, "one-token bounds need no other tiles");
  BOOST_TEST_REQUIRE(grid.decode.splits == 4);  // 64 blocks over 16 units
  BOOST_TEST(grid.decode.chunk_keys == 1024);
  const TilePlan plan = resolve_grid(grid);
  int direct = 0, split = 0;
  for (size_t i = 0; i < plan.attention_tiles; ++i) (plan.tiles[i].partial < 0 ? direct : split) += 1;
  BOOST_TEST(direct == 8);      // sequence 0: 100 keys, one split per kv head
  BOOST_TEST(split == 8 * 4);   // sequence 1: 4000 keys in four
  BOOST_TEST(plan.tiles.size() - plan.attention_tiles == 8u);  // its merges
  BOOST_TEST(partial_rows == 16 * 4);
}

// A mixed batch (W3's shape): the non-decode slots follow its tokens, not num_seqs * max_query_len.
BOOST_AUTO_TEST_CASE(device_grid_slots_follow_the_tokens) {
  std::vector<int32_t> q_lens(32, 1), contexts(32, 2048);
  q_lens.push_back(512), q_lens.push_back(512), contexts.push_back(1024), contexts.push_back(1024);
  Metadata m = metadata(q_lens, contexts, 32, 8, 0);
  m.problem.max_query_len = 512;
  m.problem.max_context_len = 2048;
  int64_t partial_rows = 0;
  const PlanLimits limits{true, rpa_gpu::kDecodeMaxRows, 64, 64, 264};
  rpa_gpu::DeviceGrid grid = rpa_gpu::make_device_grid(m.problem, limits, partial_rows);
  // rows 16 a tile (64 rows over 4 heads): 2 * 32 chunks hold the tokens, plus one partial chunk per sequence.
  BOOST_TEST(grid.attention.chunks == (m.problem.num_tokens + 34 * 15) / 16);
  const std::vector<int32_t> seq_ok(34, 1);
  grid.seq_ok = seq_ok.data();
  const TilePlan plan = resolve_grid(grid);
  BOOST_TEST(plan.attention_tiles - plan.decode_tiles >= 2u * 32 * 8);
  expect_exact_cover(m.problem, plan, limits);
  expect_exact_cover(m.problem, rpa_gpu::make_tile_plan(m.problem, limits), limits);  // the host planner's too
}

// The launches the bounds leave (rpa bench's W1-W3 shapes on an H100: 132 multiprocessors x 3 blocks):
// one-token bounds launch no other slots; decode slots split to fill the device, beside other slots too
// (their merge follows them on the side stream, launch.cpp), except in W2's direct grid, which takes
// every sequence; the prefill slots of W2 and W3 need no
// split. Each grid still covers its batch exactly.
BOOST_AUTO_TEST_CASE(device_grid_launches_follow_the_bounds) {
  const PlanLimits limits{true, rpa_gpu::kDecodeMaxRows, 64, 64, 396};
  const auto blocks = [](const rpa_gpu::DeviceGrid& grid, rpa_gpu::GridKind kind) {
    return rpa_gpu::grid_blocks(grid, kind);
  };
  int64_t partial_rows = 0;
  {  // W1: 64 decodes of 2048 keys, max_query_len 1
    Metadata m = metadata(std::vector<int32_t>(64, 1), std::vector<int32_t>(64, 2048), 32, 8, 0);
    m.problem.max_query_len = 1, m.problem.max_context_len = 2048;
    const rpa_gpu::DeviceGrid grid = rpa_gpu::make_device_grid(m.problem, limits, partial_rows);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridDecode) == 64 * 8);  // 512 units fill 396 slots unsplit
    BOOST_TEST(blocks(grid, rpa_gpu::kGridAttention) == 0);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridMergeDecode) == 0);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridMergeAttention) == 0);
    // Fewer decodes alone split (8 units of 2048 keys: 8 splits of 256), and merge.
    Metadata few = metadata({1}, {2048}, 32, 8, 0);
    few.problem.max_query_len = 1, few.problem.max_context_len = 2048;
    const rpa_gpu::DeviceGrid alone = rpa_gpu::make_device_grid(few.problem, limits, partial_rows);
    BOOST_TEST(alone.decode.splits == 8);
    BOOST_TEST(blocks(alone, rpa_gpu::kGridMergeDecode) == 8);
  }
  {  // W2: 4 prefills of 1024 tokens, a direct grid: 4 x 64 chunks, no more than the list's (4101 + 4 * 15) / 16
    Metadata m = metadata(std::vector<int32_t>(4, 1024), std::vector<int32_t>(4, 1024), 32, 8, 0);
    m.problem.max_query_len = 1024, m.problem.max_context_len = 1024;
    rpa_gpu::DeviceGrid grid = rpa_gpu::make_device_grid(m.problem, limits, partial_rows);
    BOOST_TEST(grid.direct);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridDecode) == 0);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridAttention) == 4 * 64 * 8);  // 16 rows a tile, unsplit
    BOOST_TEST(blocks(grid, rpa_gpu::kGridMergeDecode) == 0);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridMergeAttention) == 0);
    BOOST_TEST(partial_rows == 0);
    // The same bounds hold a batch of decodes too: one slot of each kv head a sequence, covered exactly.
    Metadata decodes = metadata({1, 1, 1, 1}, {1024, 900, 1, 1024}, 32, 8, 0);
    grid.context_lens = decodes.problem.context_lens, grid.query_start_loc = decodes.problem.query_start_loc;
    const std::vector<int32_t> seq_ok(4, 1);
    grid.seq_ok = seq_ok.data();
    const TilePlan plan = resolve_grid(grid);
    BOOST_TEST(plan.decode_tiles == 0u);
    BOOST_TEST(plan.attention_tiles == 4u * 8);
    expect_exact_cover(decodes.problem, plan, limits);
    // Listed (RPA_GPU_DIRECT_SLOTS=0): 32 decode units split in 4 (1024 keys, 256 a split) beside them.
    PlanLimits listed = limits;
    listed.direct_slots = false;
    grid = rpa_gpu::make_device_grid(m.problem, listed, partial_rows);
    BOOST_TEST(!grid.direct);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridDecode) == 4 * 8 * 4);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridMergeDecode) == 4 * 8);
    BOOST_TEST(partial_rows == 4 * 8 * 4 * 4);  // the decode splits' rows: a kv head's 4 q heads each
  }
  {  // W3: 32 decodes of 2048 keys and 2 prefills of 512 tokens
    std::vector<int32_t> q_lens(32, 1), contexts(32, 2048);
    q_lens.push_back(512), q_lens.push_back(512), contexts.push_back(1024), contexts.push_back(1024);
    Metadata m = metadata(q_lens, contexts, 32, 8, 0);
    m.problem.max_query_len = 512, m.problem.max_context_len = 2048;
    rpa_gpu::DeviceGrid grid = rpa_gpu::make_device_grid(m.problem, limits, partial_rows);
    BOOST_TEST(!grid.direct);  // 34 x 32 chunks against the list's (1061 + 34 * 15) / 16
    BOOST_TEST(blocks(grid, rpa_gpu::kGridDecode) == 34 * 8 * 2);  // 272 units split in 2 fill 396 slots
    BOOST_TEST(blocks(grid, rpa_gpu::kGridMergeDecode) == 34 * 8);
    BOOST_TEST(blocks(grid, rpa_gpu::kGridMergeAttention) == 0);
    const std::vector<int32_t> seq_ok(34, 1);
    grid.seq_ok = seq_ok.data();
    expect_exact_cover(m.problem, resolve_grid(grid), limits);
  }
}
