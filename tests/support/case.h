// Test problems held in host vectors, run through the public C ABI on any backend. Shared by every
// C++ test program, so each backend is checked by the same cases.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "rpa/rpa.h"

namespace rpa::testing {

// One attention problem. Float data is kept as f32 values already rounded to the dtype it is stored in,
// so a case stored as f16 and the same case stored as f32 hold the same numbers. A quantised KV dtype holds
// the codes' values (before the scales) in kv, and the scales in k_scale / v_scale.
struct Case {
  int64_t num_tokens = 0, num_q_heads = 1, num_kv_heads = 1, head_dim = 1;
  int64_t num_pages = 1, page_size = 1, pages_per_seq = 1;
  int32_t num_seqs = 0;
  std::vector<float> queries;             // [T, QH, D]
  std::vector<float> kv;                  // combined [P, page_size, 2*KVH, D]
  std::vector<int32_t> context_lens;      // [S]
  std::vector<int32_t> block_tables;      // [S, W]
  std::vector<int32_t> query_start_loc;   // [S+1]
  double softmax_scale = 0, logits_soft_cap = 0;
  int32_t sliding_window = 0;
  std::vector<float> sinks;               // [sink_heads, sinks_per_head]
  int64_t sink_heads = 0, sinks_per_head = 0;
  rpa_dtype query_dtype = RPA_DTYPE_F32, kv_dtype = RPA_DTYPE_F32, out_dtype = RPA_DTYPE_F32;
  bool separate_kv = false;  // pass K and V as two [P, page_size, KVH, D] caches
  bool strided = false;      // queries, out, lse and separate caches laid out with gaps (non-trivial strides)
  std::vector<float> k_scale, v_scale;  // [1] or [KVH]; empty: absent

  float& k(int64_t page, int64_t slot, int64_t head, int64_t d) { return kv[kv_index(page, slot, 2 * head, d)]; }
  float& v(int64_t page, int64_t slot, int64_t head, int64_t d) { return kv[kv_index(page, slot, 2 * head + 1, d)]; }
  float& q(int64_t token, int64_t head, int64_t d) { return queries[(token * num_q_heads + head) * head_dim + d]; }
  int64_t kv_index(int64_t page, int64_t slot, int64_t combined_head, int64_t d) const {
    return ((page * page_size + slot) * 2 * num_kv_heads + combined_head) * head_dim + d;
  }
  // Rounds every float input to its storage dtype (call after editing values).
  void round_to_dtypes();
};

struct Result {
  rpa_status status = RPA_STATUS_OK;
  std::string message;
  std::vector<float> out;  // [T, QH, D] as f32
  std::vector<float> lse;  // [T, QH]
};

// The same problem with an f32 cache holding each quantised value times its scale (rounded once to f32):
// what the contract says a quantised cache means.
Case dequantised(const Case& c);

// A case laid out as the C ABI takes it: args points into the vectors (moving keeps them valid). All
// strides are explicit, so a test can edit args to break one rule at a time.
struct Prepared {
  std::vector<uint8_t> queries, kv, k_cache, v_cache, out;
  std::vector<int32_t> context_lens, block_tables, query_start_loc;
  std::vector<float> sinks, lse, k_scale, v_scale;
  rpa_attention_args args;
};

Prepared prepare(const Case& c, bool with_lse = true);

// Runs prepared.args on a new context of `backend`; out and lse are read back through args.
Result run_prepared(Prepared& prepared, rpa_backend backend);

// Runs the case on a context of `backend`. Fills result.status/message on failure.
Result run_case(const Case& c, rpa_backend backend, bool with_lse = true);

// A context of `backend`, destroyed with the object. Throws std::runtime_error carrying the library's
// message when it cannot be made (Boost.Test reports it as the test's error).
struct OwnedContext {
  explicit OwnedContext(rpa_backend backend);
  ~OwnedContext();
  OwnedContext(const OwnedContext&) = delete;
  OwnedContext& operator=(const OwnedContext&) = delete;
  rpa_context* context = nullptr;
};

// The bytes of prepared's out followed by those of its lse: what bitwise comparisons compare.
std::vector<uint8_t> output_bytes(const Prepared& prepared);

// output_bytes after one call of prepared.args on a new simd context of `threads` threads. Throws
// std::runtime_error carrying the library's message when the context or the call fails.
std::vector<uint8_t> simd_output_bytes(Prepared& prepared, int threads);

// The backends this build can run (reference first).
std::vector<rpa_backend> available_backends();

struct RandomSpec {
  std::vector<int32_t> q_lens;        // one per sequence
  std::vector<int32_t> context_lens;  // one per sequence, >= q_len
  int64_t num_q_heads = 4, num_kv_heads = 2, head_dim = 16, page_size = 4;
  int64_t extra_pages = 3;     // unused pages in the pool
  int64_t padding_tokens = 0;  // rows after the last sequence
  int64_t padding_seqs = 0;    // sequences beyond num_seqs in the metadata
};

// A RandomSpec in one line, for tables of shapes (the other fields keep their defaults).
inline RandomSpec spec_of(std::vector<int32_t> q_lens, std::vector<int32_t> context_lens, int64_t num_q_heads,
                          int64_t num_kv_heads, int64_t head_dim, int64_t page_size, int64_t padding_tokens = 0,
                          int64_t padding_seqs = 0) {
  RandomSpec spec;
  spec.q_lens = std::move(q_lens), spec.context_lens = std::move(context_lens);
  spec.num_q_heads = num_q_heads, spec.num_kv_heads = num_kv_heads, spec.head_dim = head_dim;
  spec.page_size = page_size, spec.padding_tokens = padding_tokens, spec.padding_seqs = padding_seqs;
  return spec;
}

// A random problem: pages shuffled through the pool, unused pages and slots filled with garbage.
Case random_case(const RandomSpec& spec, uint64_t seed);

// Largest |a - b| (equal infinities count as 0); infinity when either holds a NaN or the lengths differ.
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace rpa::testing
