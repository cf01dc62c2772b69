/*
 * The ABI between librpa and a GPU plugin (librpa_hip.so, librpa_cuda.so) that the core loads with
 * dlopen. Plain C: only C types and rpa_status codes cross it, never a C++ exception. The plugin keeps
 * the detailed text of its calling thread's last failure, readable through last_error().
 *
 * A plugin exports:
 *   rpa_plugin_entry (required): returns its static function table; it must not fail or touch a device.
 *   rpa_plugin_score (optional): a cheap probe run before init(); 0 means "cannot run on this machine"
 *     (for instance its driver is absent), otherwise a priority: the usable plugin with the highest score
 *     serves the gpu backend. A plugin without it scores 1.
 *
 * The table starts with its ABI version and its own size. Entries are only ever appended, so a core may
 * use a larger table than it knows. The entries up to write_kv are required (a smaller table is
 * rejected); the later ones are optional: absent from an older plugin's shorter table, or NULL, the core
 * uses its default (see each entry).
 *
 * The problems the core hands over (rpa_problem, rpa_merge_problem, rpa_write_problem: validated calls,
 * also what every backend inside librpa receives) live here too. Each starts with the size the core wrote;
 * fields are only appended, each with zero as its default, so a plugin reads one through
 * rpa_plugin_read_problem: its own struct gets what both know, zero for what an older core lacks, and a
 * core too old for what the plugin needs is named. A feature a plugin cannot see (a field appended after
 * it was built) is the core's to gate, through an optional entry (as plan_take_error gates device
 * metadata).
 */
#ifndef RPA_PLUGIN_ABI_H
#define RPA_PLUGIN_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "rpa/rpa.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The validated, normalised form of one call, handed to every backend (and across this ABI, so plain C).
 * The core builds it only after every contract rule has passed: a backend may trust every field and index
 * in it. */

/* Element strides of one KV cache (K or V) [page, slot, head, D]; D is contiguous. */
typedef struct rpa_kv_view {
  const void* data;
  int64_t page_stride;
  int64_t slot_stride;
  int64_t head_stride;
} rpa_kv_view;

typedef struct rpa_problem {
  uint32_t struct_size; /* sizeof(rpa_problem) of the core that wrote it (see rpa_plugin_read_problem) */

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
  uint32_t struct_size; /* sizeof(rpa_merge_problem) of the core that wrote it */
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
  uint32_t struct_size; /* sizeof(rpa_write_problem) of the core that wrote it */
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

/** The fields of each problem every plugin of this ABI version may read: a core writes at least these. */
#define RPA_PROBLEM_REQUIRED_SIZE (offsetof(rpa_problem, max_context_len) + sizeof(int32_t))
#define RPA_MERGE_PROBLEM_REQUIRED_SIZE (offsetof(rpa_merge_problem, synchronize) + sizeof(int32_t))
#define RPA_WRITE_PROBLEM_REQUIRED_SIZE (offsetof(rpa_write_problem, synchronize) + sizeof(int32_t))

/** Raised when an entry changes meaning or is removed (appending entries keeps the version). */
#define RPA_PLUGIN_ABI_VERSION 2

#define RPA_PLUGIN_ENTRY_SYMBOL "rpa_plugin_entry"
#define RPA_PLUGIN_SCORE_SYMBOL "rpa_plugin_score"

/** One context's state inside the plugin (its device, stream, scratch). */
typedef struct rpa_plugin_state rpa_plugin_state;

/** One planned problem inside the plugin (its work list and metadata on the device). */
typedef struct rpa_plugin_plan rpa_plugin_plan;

typedef struct rpa_plugin_api {
  uint32_t abi_version; /* RPA_PLUGIN_ABI_VERSION the plugin was built with */
  uint32_t struct_size; /* sizeof(rpa_plugin_api) as the plugin was built */
  const char* name;     /* short name, e.g. "hip" or "cuda" */

  /* Detailed message of the calling thread's last failure inside the plugin; never NULL. */
  const char* (*last_error)(void);

  /* Initialises the GPU runtime; called once, before anything else below. */
  rpa_status (*init)(void);
  /* Devices this plugin can drive, and a one-line description of device `ordinal`. */
  rpa_status (*device_count)(int32_t* count);
  rpa_status (*describe_device)(int32_t ordinal, char* text, size_t text_size);

  /* A context on device `ordinal`; destroy waits for its pending work. */
  rpa_status (*create)(int32_t ordinal, rpa_plugin_state** state);
  void (*destroy)(rpa_plugin_state* state);

  /* One attention call, validated by the core, planned into the state's scratch. Safe to call from
   * several threads on one state. */
  rpa_status (*run)(rpa_plugin_state* state, const rpa_problem* problem);

  /* A plan of a validated problem whose tensor pointers may be NULL; its metadata pointers stay valid
   * until plan_destroy. The plan uploads what it needs once. */
  rpa_status (*plan_create)(rpa_plugin_state* state, const rpa_problem* problem, rpa_plugin_plan** plan);
  /* One run: `problem` is the planned one with tensors and scalars. Safe from several threads at once. */
  rpa_status (*plan_run)(rpa_plugin_plan* plan, const rpa_problem* problem);
  /* `iterations` runs timed with device events, in milliseconds: whole runs (whole_runs != 0) or only
   * the kernels, enqueued back to back. */
  rpa_status (*plan_time)(rpa_plugin_plan* plan, const rpa_problem* problem, int32_t iterations,
                          double* milliseconds, int32_t whole_runs);
  /* Waits for the plan's enqueued work and frees it; NULL is a no-op. */
  void (*plan_destroy)(rpa_plugin_plan* plan);

  rpa_status (*device_alloc)(rpa_plugin_state* state, size_t bytes, void** pointer);
  rpa_status (*device_free)(rpa_plugin_state* state, void* pointer);
  /* Synchronous copy between host and the state's device (or within the device). */
  rpa_status (*device_copy)(rpa_plugin_state* state, void* dst, const void* src, size_t bytes,
                            rpa_copy_kind kind);

  /* RPA_STATUS_OK when the plugin can run the validated problem, else RPA_STATUS_UNSUPPORTED and why. */
  rpa_status (*supports)(rpa_plugin_state* state, const rpa_problem* problem);
  /* rpa_merge_states on device memory, queued on problem->stream. */
  rpa_status (*merge_states)(rpa_plugin_state* state, const rpa_merge_problem* problem);
  /* One rpa_write_kv() call, validated by the core (slots on the host, each written at most once). */
  rpa_status (*write_kv)(rpa_plugin_state* state, const rpa_write_problem* problem);

  /* Optional entries (RPA_PLUGIN_API_REQUIRED_SIZE). */

  /* Device metadata (problem->metadata_memory): waits for the plan's enqueued work, stores in *first_seq
   * the lowest sequence a run since the last call skipped for breaking a rule (or -1) and clears the
   * record. Without it the core answers RPA_STATUS_UNSUPPORTED for device metadata. */
  rpa_status (*plan_take_error)(rpa_plugin_plan* plan, int32_t* first_seq);
} rpa_plugin_api;

/** The size of the required part of the table: a plugin's struct_size must be at least this. */
#define RPA_PLUGIN_API_REQUIRED_SIZE (offsetof(rpa_plugin_api, write_kv) + sizeof(void*))

/** Whether `api` has optional entry `member` (its table reaches it, and it is not NULL). */
#define RPA_PLUGIN_HAS(api, member)                                                        \
  ((api)->struct_size >= offsetof(rpa_plugin_api, member) + sizeof((api)->member) && (api)->member != NULL)

typedef const rpa_plugin_api* (*rpa_plugin_entry_fn)(void);
typedef int32_t (*rpa_plugin_score_fn)(void);

/* Host code only: the run-time compilers (hipRTC, NVRTC) that see this header through the kernels have no
 * C library. */
#if !defined(__CUDACC_RTC__) && !defined(__HIPCC_RTC__)
#include <string.h>

/**
 * A plugin's copy of a problem the core wrote (`given`: an rpa_problem, rpa_merge_problem or
 * rpa_write_problem) into the plugin's own struct of that type (`copy`, `copy_size` bytes as the plugin
 * was built): the fields both know, zero for those the core predates, struct_size set to `copy_size`.
 * Returns 0, copying nothing, when the core wrote fewer than `required` bytes, the fields the plugin
 * cannot do without.
 */
static inline int rpa_plugin_read_problem(void* copy, uint32_t copy_size, const void* given, uint32_t required) {
  uint32_t given_size;
  memcpy(&given_size, given, sizeof given_size);
  if (given_size < required) return 0;
  memset(copy, 0, copy_size);
  memcpy(copy, given, given_size < copy_size ? given_size : copy_size);
  memcpy(copy, &copy_size, sizeof copy_size);
  return 1;
}
#endif

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* RPA_PLUGIN_ABI_H */
