// Random cases: explicit shapes and lengths, or a named preset, from a seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "golden/case.h"

namespace rpa::golden {

struct Spec {
  std::vector<int32_t> q_lens{1}, context_lens{64};  // one per processed sequence
  int64_t q_heads = 8, kv_heads = 2, head_dim = 64, page_size = 16;
  rpa_dtype query_dtype = RPA_DTYPE_F32, kv_dtype = RPA_DTYPE_F32, sink_dtype = RPA_DTYPE_F32;
  bool separate_kv = false;
  double softmax_scale = 0, logits_soft_cap = 0;
  int32_t sliding_window = 0;
  int64_t sink_heads = 0, sinks_per_head = 1;  // sink_heads 0: no sinks
  bool minus_inf_sink = false;                  // the first sink of each head is -inf
  int64_t padding_tokens = 0;  // query rows after the last sequence's
  int64_t padding_seqs = 0;    // metadata rows beyond num_seqs; they claim the padding tokens
  int64_t extra_pages = 2;     // pool pages no sequence uses (page 0 is one: unneeded entries point there)
  int64_t table_width = 0;     // block-table columns; 0: the most any sequence needs, plus one
  bool nan_unused = false;     // unused pages and the slots past each context hold NaN
  bool stale_entries = false;  // unneeded block-table entries point at other sequences' pages
  float query_scale = 1;       // multiplies the queries (large logits exercise the soft cap)
  uint64_t seed = 0;
};

// The names of the presets: decode, prefill, mixed, long, window, sinks, softcap, gqa.
const std::vector<std::string>& preset_names();
// A preset's spec (std::invalid_argument for an unknown name); the caller may change it further.
Spec preset(const std::string& name);

// Validates the spec's own consistency (std::invalid_argument naming the field), then draws the case:
// queries and KV standard normal, pages shuffled through the pool.
Case make_case(const Spec& spec);

}  // namespace rpa::golden
