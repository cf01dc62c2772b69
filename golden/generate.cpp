#include "golden/generate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>

#include "core/dtype.h"

namespace rpa::golden {
namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

int64_t pages_for(int64_t tokens, int64_t page_size) { return (tokens + page_size - 1) / page_size; }

}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names{"decode", "prefill", "mixed", "long", "window", "sinks", "softcap", "gqa"};
  return names;
}

Spec preset(const std::string& name) {
  Spec s;
  if (name == "decode") {
    s.q_lens = {1, 1, 1, 1};
    s.context_lens = {17, 64, 100, 250};
  } else if (name == "prefill") {
    s.q_lens = {40, 23};
    s.context_lens = {40, 23};
  } else if (name == "mixed") {
    s.q_lens = {1, 13, 1, 0, 30};
    s.context_lens = {90, 45, 33, 12, 130};
    s.padding_tokens = 3;
  } else if (name == "long") {
    s.q_lens = {1, 8};
    s.context_lens = {3000, 2100};
    s.page_size = 8;
  } else if (name == "window") {
    s.q_lens = {1, 20, 4};
    s.context_lens = {300, 60, 150};
    s.sliding_window = 48;
  } else if (name == "sinks") {
    s.q_lens = {1, 9};
    s.context_lens = {40, 30};
    s.sink_heads = 8;
  } else if (name == "softcap") {
    s.q_lens = {1, 9};
    s.context_lens = {40, 30};
    s.logits_soft_cap = 5;
    s.query_scale = 4;
  } else if (name == "gqa") {
    s.q_lens = {1, 6};
    s.context_lens = {50, 20};
    s.q_heads = 16;
    s.kv_heads = 2;
  } else {
    throw std::invalid_argument("unknown preset '" + name + "'");
  }
  return s;
}

Case make_case(const Spec& spec) {
  const int64_t S = static_cast<int64_t>(spec.q_lens.size());
  require(S > 0, "--q-lens: at least one sequence");
  require(spec.context_lens.size() == spec.q_lens.size(), "--context-lens: one per sequence, like --q-lens");
  require(spec.q_heads > 0 && spec.kv_heads > 0 && spec.q_heads % spec.kv_heads == 0,
          "--q-heads: a positive multiple of --kv-heads");
  require(spec.head_dim > 0 && spec.page_size > 0, "--head-dim and --page-size: positive");
  for (int64_t s = 0; s < S; ++s)
    require(spec.q_lens[s] >= 0 && spec.context_lens[s] >= spec.q_lens[s],
            "sequence " + std::to_string(s) + ": needs 0 <= q_len <= context_len");
  require(spec.padding_tokens >= 0 && spec.padding_seqs >= 0 && spec.extra_pages >= 1,
          "--padding-tokens, --padding-seqs >= 0 and --extra-pages >= 1");
  require(spec.sink_heads == 0 || spec.sink_heads == 1 || spec.sink_heads == spec.kv_heads ||
              spec.sink_heads == spec.q_heads,
          "--sinks: the first dimension must be 1, the kv heads or the q heads");
  require(spec.sinks_per_head > 0, "--sinks: at least one sink per head");

  std::mt19937_64 rng(spec.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t ps = spec.page_size, D = spec.head_dim, QH = spec.q_heads, KVH = spec.kv_heads;
  int64_t needed_max = 1, used_pages = 0;
  for (int64_t s = 0; s < S; ++s) {
    needed_max = std::max(needed_max, pages_for(spec.context_lens[s], ps));
    used_pages += pages_for(spec.context_lens[s], ps);
  }
  const int64_t W = spec.table_width > 0 ? spec.table_width : needed_max + 1;
  require(W >= needed_max, "--table-width: " + std::to_string(W) + " is narrower than the " +
                               std::to_string(needed_max) + " pages a sequence needs");
  const int64_t P = used_pages + spec.extra_pages;
  // Page 0 and the other extra pages stay unused (page 0 is the null page unneeded entries point at, as
  // in vLLM); the used pages are a shuffle of the rest.
  std::vector<int32_t> pool(static_cast<size_t>(P - 1));
  std::iota(pool.begin(), pool.end(), 1);
  std::shuffle(pool.begin(), pool.end(), rng);

  const int64_t total_seqs = S + spec.padding_seqs;
  const int64_t real_tokens = std::accumulate(spec.q_lens.begin(), spec.q_lens.end(), int64_t{0});
  const int64_t T = std::max<int64_t>(1, real_tokens + spec.padding_tokens);
  std::vector<int32_t> context_lens(total_seqs, 0), tables(total_seqs * W, 0), qsl(total_seqs + 1, 0);
  size_t next = 0;
  for (int64_t s = 0; s < S; ++s) {
    context_lens[s] = spec.context_lens[s];
    qsl[s + 1] = qsl[s] + spec.q_lens[s];
    for (int64_t p = 0; p < pages_for(spec.context_lens[s], ps); ++p) {
      tables[s * W + p] = pool[next++];
    }
  }
  // Padding sequences split the padding tokens and see pages of the real ones: only a kernel that ignores
  // num_seqs computes them.
  for (int64_t s = S; s < total_seqs; ++s) {
    const int64_t share = spec.padding_tokens / spec.padding_seqs + (s - S < spec.padding_tokens % spec.padding_seqs);
    qsl[s + 1] = static_cast<int32_t>(qsl[s] + share);
    context_lens[s] = static_cast<int32_t>(std::min<int64_t>(share + 3, needed_max * ps));
    for (int64_t p = 0; p < pages_for(context_lens[s], ps); ++p) tables[s * W + p] = pool[rng() % next];
  }
  if (spec.stale_entries) {
    // Entries a sequence does not need (past its context, or wholly before its window) hold other pages.
    for (int64_t s = 0; s < S; ++s) {
      const int64_t q_len = spec.q_lens[s], ctx = spec.context_lens[s];
      const int64_t first_key = spec.sliding_window > 0 ? std::max<int64_t>(0, ctx - q_len - spec.sliding_window + 1) : 0;
      for (int64_t p = 0; p < W; ++p) {
        const bool needed = q_len > 0 && p >= first_key / ps && p < pages_for(ctx, ps);
        if (!needed && next > 0) tables[s * W + p] = pool[rng() % next];
      }
    }
  }

  Case c;
  c.num_seqs = static_cast<int32_t>(S);
  c.softmax_scale = spec.softmax_scale;
  c.logits_soft_cap = spec.logits_soft_cap;
  c.sliding_window = spec.sliding_window;
  c.queries = Array::zeros(spec.query_dtype, {T, QH, D});
  for (int64_t i = 0; i < c.queries.size(); ++i) c.queries.set(i, spec.query_scale * normal(rng));
  if (spec.separate_kv) {
    c.k_cache = Array::zeros(spec.kv_dtype, {P, ps, KVH, D});
    c.v_cache = Array::zeros(spec.kv_dtype, {P, ps, KVH, D});
  } else {
    c.kv_pages = Array::zeros(spec.kv_dtype, {P, ps, 2 * KVH, D});
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<int64_t> valid_slots(P, 0);  // per page: slots holding real tokens
  for (int64_t s = 0; s < S; ++s)
    for (int64_t p = 0; p < pages_for(spec.context_lens[s], ps); ++p)
      valid_slots[tables[s * W + p]] = std::min<int64_t>(ps, spec.context_lens[s] - p * ps);
  for (int64_t page = 0; page < P; ++page)
    for (int64_t slot = 0; slot < ps; ++slot)
      for (int64_t h = 0; h < KVH; ++h)
        for (int64_t d = 0; d < D; ++d) {
          const float k = normal(rng), v = normal(rng);
          const bool unused = slot >= valid_slots[page];
          c.set_kv(page, slot, h, d, spec.nan_unused && unused ? nan : k, spec.nan_unused && unused ? nan : v);
        }
  c.context_lens = Array::of_ints(context_lens, {total_seqs});
  c.block_tables = Array::of_ints(tables, {total_seqs, W});
  c.query_start_loc = Array::of_ints(qsl, {total_seqs + 1});
  if (spec.sink_heads > 0) {
    c.softmax_aux = Array::zeros(spec.sink_dtype, {spec.sink_heads, spec.sinks_per_head});
    for (int64_t i = 0; i < c.softmax_aux.size(); ++i)
      c.softmax_aux.set(i, spec.minus_inf_sink && i % spec.sinks_per_head == 0
                               ? -std::numeric_limits<float>::infinity()
                               : 1.5f + normal(rng));
  }
  return c;
}

}  // namespace rpa::golden
