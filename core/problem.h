/*
 * The validated, normalised form of one rpa_attention() call, handed to every backend (also across
 * the plugin ABI, so it is plain C). The core builds it only after every contract rule has passed:
 * a backend may trust every field and index in it.
 */
#ifndef RPA_CORE_PROBLEM_H
#define RPA_CORE_PROBLEM_H

#include <stdint.h>

#include "rpa/rpa.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element strides of one KV cache (K or V) [page, slot, head, D]; D is contiguous. */
typedef struct rpa_kv_view {
  const void* data;
  int64_t page_stride;
  int64_t slot_stride;
  int64_t head_stride;
} rpa_kv_view;

typedef struct rpa_problem {
  /* Sizes. */
  int64_t num_tokens;      /* T */
  int64_t num_q_heads;     /* QH */
  int64_t num_kv_heads;    /* KVH */
  int64_t head_dim;        /* D */
  int64_t num_pages;       /* P */
  int64_t page_size;
  int64_t pages_per_seq;   /* W, the block table's width */
  int32_t num_seqs;        /* sequences to process (<= the metadata's S) */

  /* Metadata, host memory, validated for sequences 0..num_seqs-1. */
  const int32_t* context_lens;    /* [num_seqs] used */
  const int32_t* block_tables;    /* row s at block_tables + s * block_table_stride */
  int64_t block_table_stride;
  const int32_t* query_start_loc; /* [num_seqs + 1] used */

  /* Queries [T, QH, D]. */
  const void* queries;
  rpa_dtype query_dtype;
  int64_t query_token_stride;
  int64_t query_head_stride;

  /* K and V (the combined layout becomes two views with doubled head stride). */
  rpa_kv_view k;
  rpa_kv_view v;
  rpa_dtype kv_dtype;

  /* Output [T, QH, D]. */
  void* out;
  rpa_dtype out_dtype;
  int64_t out_token_stride;
  int64_t out_head_stride;

  /* Optional lse [T, QH] float32 (NULL = not requested). */
  float* lse;
  int64_t lse_token_stride;
  int64_t lse_head_stride;

  /* Optional sinks [sink_heads, sinks_per_head] (NULL = none); raw logits. */
  const void* sinks;
  rpa_dtype sink_dtype;
  int64_t sink_heads;          /* 1, KVH or QH */
  int64_t sinks_per_head;
  int64_t sink_head_stride;
  int64_t sink_stride;

  /* Scalars, resolved: scale is never the 0 default here, 0 means none for cap and window. */
  double softmax_scale;
  double logits_soft_cap;
  int64_t sliding_window;

  /* Where the float tensors live, and the GPU stream. */
  rpa_memory_kind memory;
  void* stream;
  int32_t synchronize;

  /* Quantised KV (kv_dtype FP8_E4M3, FP8_E5M2 or INT8): kv head h's scales are k_scale[h * k_scale_stride]
     and v_scale[h * v_scale_stride], host memory (stride 0: one per tensor). Otherwise both point at 1.0. */
  const float* k_scale;
  int64_t k_scale_stride;
  const float* v_scale;
  int64_t v_scale_stride;
  /* RPA_MEMORY_DEVICE: context_lens, block_tables and query_start_loc above are the caller's device arrays,
     their values unvalidated but meant to respect num_seqs and these bounds (<= T and
     <= W * page_size). RPA_MEMORY_HOST: validated host copies; the bounds are the exact maxima. */
  rpa_memory_kind metadata_memory;
  int32_t max_query_len;
  int32_t max_context_len;
} rpa_problem;

/* rpa_merge_states(), validated: two partial states (out, lse) of the same rows merged into one. */
typedef struct rpa_merge_problem {
  int64_t num_tokens; /* T */
  int64_t num_heads;  /* H */
  int64_t head_dim;   /* D */
  /* The states a and b, then the result; out tensors [T, H, D], lse tensors [T, H] float32. */
  const void* out_a;
  rpa_dtype out_a_dtype;
  int64_t out_a_token_stride, out_a_head_stride;
  const float* lse_a;
  int64_t lse_a_token_stride, lse_a_head_stride;
  const void* out_b;
  rpa_dtype out_b_dtype;
  int64_t out_b_token_stride, out_b_head_stride;
  const float* lse_b;
  int64_t lse_b_token_stride, lse_b_head_stride;
  void* out;
  rpa_dtype out_dtype;
  int64_t out_token_stride, out_head_stride;
  float* lse; /* NULL = not requested */
  int64_t lse_token_stride, lse_head_stride;
  rpa_memory_kind memory;
  void* stream;
  int32_t synchronize;
} rpa_merge_problem;
/* A writable KV cache view [page, slot, head, D] in elements; D is contiguous. */
typedef struct rpa_kv_target {
  void* data;
  int64_t page_stride;
  int64_t slot_stride;
  int64_t head_stride;
} rpa_kv_target;

/* The validated form of one rpa_write_kv() call. */
typedef struct rpa_write_problem {
  int64_t num_tokens;  /* N */
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t num_slots;   /* P * page_size */
  int64_t page_size;

  /* New keys and values [N, KVH, D]. */
  const void* keys;
  rpa_dtype key_dtype;
  int64_t key_token_stride, key_head_stride;
  const void* values;
  rpa_dtype value_dtype;
  int64_t value_token_stride, value_head_stride;

  /* Host memory, [N]: a slot in [0, num_slots) or -1. A slot that a later token also maps to reads -1
     here, so every slot is written at most once and the order of the writes does not matter. */
  const int32_t* slots;

  rpa_kv_target k, v;
  rpa_dtype kv_dtype;
  const float* k_scale; /* as in rpa_problem */
  int64_t k_scale_stride;
  const float* v_scale;
  int64_t v_scale_stride;

  rpa_memory_kind memory;
  void* stream;
  int32_t synchronize;
} rpa_write_problem;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* RPA_CORE_PROBLEM_H */
