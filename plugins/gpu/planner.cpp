#include "plugins/gpu/planner.h"

#include <algorithm>

namespace rpa_gpu {
namespace {

constexpr int64_t kInt32Max = 2147483647;
// Tiles never exceed one per (token, q head) plus the splits; this bound keeps their count, the partial
// rows and every launch's grid within int32 with room for the splits.
constexpr int64_t kMaxRows = int64_t(1) << 30;

int64_t align_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// A split covers at least this many keys: a shorter one costs more in its partial write and merge.
constexpr int kMinSplitKeys = 256;

}  // namespace

std::string plan_limit_error(const rpa_problem& p) {
  const auto too_large = [](const char* what, int64_t value, int64_t limit) {
    return std::string(what) + " is " + std::to_string(value) + ", more than the GPU backend's limit " +
           std::to_string(limit);
  };
  if (p.num_q_heads > kInt32Max) return too_large("argument 'queries': shape[1] (QH)", p.num_q_heads, kInt32Max);
  if (p.pages_per_seq > kInt32Max) return too_large("argument 'block_tables': shape[1] (W)", p.pages_per_seq, kInt32Max);
  if (p.page_size > kInt32Max) return too_large("argument 'kv_pages': page_size", p.page_size, kInt32Max);
  if (p.sink_heads > kInt32Max || p.sinks_per_head > kInt32Max)
    return too_large("argument 'softmax_aux': a dimension", std::max(p.sink_heads, p.sinks_per_head), kInt32Max);
  if (p.num_tokens > kMaxRows / p.num_q_heads)
    return "argument 'queries': T * QH = " + std::to_string(p.num_tokens) + " * " + std::to_string(p.num_q_heads) +
           " rows exceed the GPU backend's limit of 2^30";
  return "";
}

TilePlan make_tile_plan(const rpa_problem& p, const PlanLimits& limits) {
  const int group = static_cast<int>(p.num_q_heads / p.num_kv_heads);
  const int kv_heads = static_cast<int>(p.num_kv_heads);
  std::vector<Tile> decode, tiled;
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int32_t first_row = p.query_start_loc[s], q_len = p.query_start_loc[s + 1] - first_row;
    const int32_t context_len = p.context_lens[s];
    const bool is_decode = limits.decode_eligible && q_len == 1;
    const int heads = std::min(group, is_decode ? limits.decode_max_rows : limits.max_rows);
    const int rows = is_decode ? 1 : std::max(1, limits.max_rows / heads);
    for (int kv_head = 0; kv_head < kv_heads; ++kv_head)
      for (int head = 0; head < group; head += heads)
        for (int32_t r = 0; r < q_len; r += rows) {
          Tile tile{};
          tile.seq = s;
          tile.head_begin = kv_head * group + head;
          tile.heads = std::min(heads, group - head);
          tile.row_begin = first_row + r;
          tile.rows = std::min(rows, q_len - r);
          tile.first_pos = context_len - q_len + r;
          // Keys visible to some row: (first_pos - window, last_pos], clipped at 0.
          tile.key_begin = p.sliding_window > 0
                               ? static_cast<int32_t>(std::max<int64_t>(0, tile.first_pos - p.sliding_window + 1))
                               : 0;
          tile.key_end = tile.first_pos + tile.rows;
          tile.partial = -1;
          tile.splits = 1;
          (is_decode ? decode : tiled).push_back(tile);
        }
  }

  TilePlan plan;
  std::vector<Tile> merges;
  const auto add_split = [&](std::vector<Tile>& whole) {
    // Longest key ranges first, so the causal tail of a prefill does not run alone at the end.
    std::stable_sort(whole.begin(), whole.end(),
                     [](const Tile& a, const Tile& b) { return a.key_end - a.key_begin > b.key_end - b.key_begin; });
    const int64_t count = static_cast<int64_t>(whole.size());
    const int64_t wanted_splits = whole.empty() ? 1 : (limits.target_blocks + count - 1) / count;
    for (const Tile& tile : whole) {
      const int64_t keys = tile.key_end - tile.key_begin;
      const int64_t splits = std::min<int64_t>(wanted_splits, keys / kMinSplitKeys);
      if (splits <= 1) {
        plan.tiles.push_back(tile);
        continue;
      }
      const int64_t chunk = align_up((keys + splits - 1) / splits, limits.tile_keys);
      Tile merge = tile;
      merge.partial = static_cast<int32_t>(plan.partial_rows);
      merge.splits = 0;
      for (int64_t begin = tile.key_begin; begin < tile.key_end; begin += chunk) {
        Tile part = tile;
        part.key_begin = static_cast<int32_t>(begin);
        part.key_end = static_cast<int32_t>(std::min<int64_t>(tile.key_end, begin + chunk));
        part.partial = static_cast<int32_t>(plan.partial_rows);
        plan.partial_rows += int64_t(tile.heads) * tile.rows;
        plan.tiles.push_back(part);
        ++merge.splits;
      }
      merges.push_back(merge);
    }
  };
  for (const Tile& tile : decode) plan.decode_rows = std::max(plan.decode_rows, tile.heads * tile.rows);
  add_split(decode);
  plan.decode_tiles = plan.tiles.size();
  add_split(tiled);
  plan.attention_tiles = plan.tiles.size();
  plan.tiles.insert(plan.tiles.end(), merges.begin(), merges.end());
  return plan;
}

DeviceGrid make_device_grid(const rpa_problem& p, const PlanLimits& limits, int64_t& partial_rows) {
  DeviceGrid g{};
  g.context_lens = p.context_lens;
  g.query_start_loc = p.query_start_loc;
  g.num_seqs = Divisor(p.num_seqs);
  g.kv_heads = Divisor(static_cast<int32_t>(p.num_kv_heads));
  g.group = static_cast<int32_t>(p.num_q_heads / p.num_kv_heads);
  g.window = static_cast<int32_t>(p.sliding_window);
  g.decode_eligible = limits.decode_eligible ? 1 : 0;
  while ((p.max_context_len >> g.key_shift) >= kKeyBuckets) ++g.key_shift;
  const auto shape = [&](GridPart& part, int max_heads, bool decode) {
    part.heads = std::min(g.group, max_heads);
    part.head_chunks = Divisor((g.group + part.heads - 1) / part.heads);
    part.rows = Divisor(decode ? 1 : std::max(1, limits.max_rows / part.heads));
    // Without decode tiles every sequence takes this kind; with them, only those of two or more tokens.
    const bool any = decode ? limits.decode_eligible : !(limits.decode_eligible && p.max_query_len <= 1);
    part.row_chunks = !any ? 0 : decode ? 1 : (p.max_query_len + part.rows - 1) / part.rows;
    // A sequence of q tokens has ceil(q / rows) <= (q + rows - 1) / rows chunks, and the tokens sum to <= T.
    part.chunks = decode ? (any ? g.num_seqs : 0)
                         : static_cast<int32_t>(std::min<int64_t>(int64_t(g.num_seqs) * part.row_chunks,
                                                                  (p.num_tokens + int64_t(g.num_seqs) * (part.rows - 1)) / part.rows));
  };
  shape(g.decode, limits.decode_max_rows, true);
  shape(g.attention, limits.max_rows, false);
  // Its zeroing blocks index the output's elements in 32 bits (direct_slot_tile).
  g.direct = limits.direct_slots && g.attention.chunks > 0 &&
             g.attention.chunks == int64_t(g.num_seqs) * g.attention.row_chunks &&
             p.num_tokens * p.num_q_heads * p.head_dim <= kInt32Max;
  if (g.direct) {  // one-token sequences take its slots too: nothing runs beside them (launch.cpp)
    g.decode_eligible = 0;
    g.decode.row_chunks = g.decode.chunks = 0;
  }
  partial_rows = 0;
  for (GridPart* part : {&g.decode, &g.attention}) {
    // As make_tile_plan: split up to target_blocks, never below kMinSplitKeys keys, for the longest key
    // range the bounds allow; the partial rows' offsets stay within int32.
    const int64_t units = grid_units(g, *part), tile_rows = int64_t(part->heads) * part->rows;
    const int64_t wanted = units ? (limits.target_blocks + units - 1) / units : 1;
    int64_t splits = std::max<int64_t>(1, std::min<int64_t>(wanted, p.max_context_len / kMinSplitKeys));
    if (splits > 1 && partial_rows + units * splits * tile_rows > kInt32Max) splits = 1;
    part->splits = Divisor(static_cast<int32_t>(splits));
    part->chunk_keys = Divisor(static_cast<int32_t>(
        std::min<int64_t>(kInt32Max / limits.tile_keys * limits.tile_keys,
                          align_up((std::max<int64_t>(p.max_context_len, 1) + splits - 1) / splits, limits.tile_keys))));
    part->partial_base = partial_rows;
    if (splits > 1) partial_rows += units * splits * tile_rows;
  }
  return g;
}

}  // namespace rpa_gpu
