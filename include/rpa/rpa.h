/**
 * @file rpa.h
 * @brief rpa: ragged paged attention over a paged KV cache. The stable C ABI.
 *
 * Everything here is plain C99. Every function returns an ::rpa_status (or a value that cannot fail);
 * no C++ exception ever leaves the library. On failure, rpa_last_error() gives the calling thread's
 * detailed message, which names the offending argument and index.
 *
 * The full contract (shapes, semantics, validation rules) is stated in README.md.
 */
#ifndef RPA_RPA_H
#define RPA_RPA_H

#include <stddef.h>
#include <stdint.h>

#include "rpa/version.h"

/* Building librpa (RPA_BUILDING_LIBRARY, set by core's Meson target only) exports these functions; a user
 * of the library imports them (nothing to say outside Windows). */
#if defined(_WIN32)
#if defined(RPA_BUILDING_LIBRARY)
#define RPA_EXPORT __declspec(dllexport)
#else
#define RPA_EXPORT __declspec(dllimport)
#endif
#elif defined(RPA_BUILDING_LIBRARY)
#define RPA_EXPORT __attribute__((visibility("default")))
#else
#define RPA_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** Status of every call. */
typedef enum rpa_status {
  RPA_STATUS_OK = 0,               /**< Success. */
  RPA_STATUS_INVALID_ARGUMENT = 1, /**< An argument breaks the contract; the message names it. */
  RPA_STATUS_UNSUPPORTED = 2,      /**< Valid, but not implemented (e.g. reserved dtypes). */
  RPA_STATUS_UNAVAILABLE = 3,      /**< The requested backend cannot run here (no plugin, no device). */
  RPA_STATUS_OUT_OF_MEMORY = 4,    /**< Host or device allocation failed. */
  RPA_STATUS_DEVICE_ERROR = 5,     /**< The GPU runtime reported an error. */
  RPA_STATUS_INTERNAL = 6          /**< A bug in rpa; please report the message. */
} rpa_status;

/**
 * Element types. Queries, KV and out each take F32, F16 or BF16, independently; the KV cache may also be
 * quantised (FP8_E4M3, FP8_E5M2, INT8), a stored code x meaning x * k_scale (K) or x * v_scale (V).
 */
typedef enum rpa_dtype {
  RPA_DTYPE_F32 = 0,      /**< IEEE binary32. */
  RPA_DTYPE_F16 = 1,      /**< IEEE binary16. */
  RPA_DTYPE_BF16 = 2,     /**< bfloat16 (upper half of binary32). */
  RPA_DTYPE_FP8_E4M3 = 3, /**< KV only: OCP fp8 e4m3fn (no infinities, NaN = S.1111.111, max 448). */
  RPA_DTYPE_FP8_E5M2 = 4, /**< KV only: OCP fp8 e5m2 (the upper byte of an IEEE binary16). */
  RPA_DTYPE_INT8 = 5,     /**< KV only: symmetric int8, -127..127 written (-128 read as -128). */
  RPA_DTYPE_I32 = 6       /**< int32: the metadata (context_lens, block_tables, query_start_loc). */
} rpa_dtype;

/** Which implementation runs the attention. */
typedef enum rpa_backend {
  RPA_BACKEND_AUTO = 0,      /**< GPU if a plugin finds a device, else the CPU (simd). */
  RPA_BACKEND_REFERENCE = 1, /**< Scalar, accumulates in double: the executable contract. */
  RPA_BACKEND_SIMD = 2,      /**< Highway SIMD kernel parallelised with oneTBB. */
  RPA_BACKEND_GPU = 3        /**< The HIP/CUDA plugin, loaded at run time. */
} rpa_backend;

/** Where tensor data lives (metadata tensors always live on the host). */
typedef enum rpa_memory_kind {
  RPA_MEMORY_HOST = 0,  /**< Host memory; a GPU backend copies in and out and synchronises. */
  RPA_MEMORY_DEVICE = 1 /**< Device memory of the context's GPU; work is queued on `stream`. */
} rpa_memory_kind;

/** Most dimensions a tensor descriptor carries. */
#define RPA_MAX_DIMS 4

/**
 * A strided view of memory the caller owns. Strides count elements, not bytes. A descriptor whose
 * strides are all 0 is taken as contiguous row-major. The last dimension of every float tensor must be
 * contiguous (stride 1); the other strides must be non-negative.
 */
typedef struct rpa_tensor {
  void* data;                    /**< First element; NULL means "absent" for optional tensors. */
  rpa_dtype dtype;               /**< Element type. */
  int32_t ndim;                  /**< Number of dimensions used in shape/strides. */
  int64_t shape[RPA_MAX_DIMS];   /**< Extent of each dimension. */
  int64_t strides[RPA_MAX_DIMS]; /**< Element stride of each dimension. */
} rpa_tensor;

/** Options for rpa_context_create(). Initialise with rpa_context_options_init(). */
typedef struct rpa_context_options {
  size_t struct_size;     /**< sizeof(rpa_context_options), set by rpa_context_options_init(). */
  rpa_backend backend;    /**< Backend to use; AUTO by default. */
  int32_t num_threads;    /**< CPU threads; 0 = all cores. */
  int32_t device_ordinal; /**< GPU device index for the gpu backend; 0 by default. */
} rpa_context_options;

/** An execution context: a backend, its threads or device, and its scratch memory. */
typedef struct rpa_context rpa_context;

/**
 * A planned call: the metadata and layouts of one batch, validated and decomposed into work once
 * (on the GPU backend also uploaded once), to be run any number of times, for instance once per layer.
 */
typedef struct rpa_plan rpa_plan;

/**
 * Arguments of one attention call, and of a plan: rpa_plan_create() reads the metadata, num_seqs,
 * sliding_window, memory and every tensor's shape, dtype and strides; rpa_plan_run() reads the float
 * tensors' data, softmax_scale, logits_soft_cap, stream and synchronize. An optional tensor is present
 * when its data is non-NULL or its ndim is nonzero. Initialise with rpa_attention_args_init(), which sets
 * struct_size so that fields appended in later versions read as their defaults.
 */
typedef struct rpa_attention_args {
  size_t struct_size;    /**< sizeof(rpa_attention_args), set by rpa_attention_args_init(). */
  rpa_tensor queries;    /**< [T, QH, D] new query tokens of all sequences, concatenated. */
  rpa_tensor kv_pages;   /**< [P, page_size, 2*KVH, D] combined cache: K of head h at 2h, V at 2h+1. */
  rpa_tensor k_cache;    /**< [P, page_size, KVH, D] separate K cache (used when kv_pages.data is NULL). */
  rpa_tensor v_cache;    /**< [P, page_size, KVH, D] separate V cache, same shape and dtype as k_cache. */
  rpa_tensor context_lens;    /**< [S] int32: total KV length of each sequence. */
  rpa_tensor block_tables;    /**< [S, W] int32: page of token j of sequence s is [s][j / page_size]. */
  rpa_tensor query_start_loc; /**< [S+1] int32: queries of sequence s are rows [qsl[s], qsl[s+1]). */
  int32_t num_seqs;           /**< Sequences 0..num_seqs-1 are processed; 0 <= num_seqs <= S. */
  double softmax_scale;       /**< Multiplies q.k; 0 selects the default 1/sqrt(D). */
  double logits_soft_cap;     /**< 0 = none; else score = cap * tanh(score / cap). */
  int32_t sliding_window;     /**< 0 = none; else a query sees the last `sliding_window` positions. */
  rpa_tensor softmax_aux;     /**< Optional sinks [H_s, n], H_s in {1, KVH, QH}: extra denominator logits. */
  rpa_tensor out;             /**< [T, QH, D] output, written for every row. */
  rpa_tensor lse;             /**< Optional [T, QH] float32 log of the softmax denominator. */
  rpa_memory_kind memory;     /**< Where queries, KV, sinks, out and lse live. */
  void* stream;               /**< GPU stream (hipStream_t / cudaStream_t) for device memory; NULL = default. */
  int32_t synchronize;        /**< Device memory: nonzero waits for the work to finish before returning. */
  /**
   * Scales of a quantised KV cache: f32 in host memory, shape [1] (per tensor) or [KVH] (per kv head);
   * absent (data NULL) means 1.0. Only with a quantised KV dtype; finite and > 0.
   */
  rpa_tensor k_scale;
  rpa_tensor v_scale; /**< As k_scale, for V. */
  /**
   * Where context_lens, block_tables and query_start_loc live. RPA_MEMORY_DEVICE (gpu backend, with
   * `memory` RPA_MEMORY_DEVICE too): a plan keeps pointers to the caller's device arrays and reads their
   * values on the device at every run, so an engine may rewrite them in place between runs (or between
   * replays of a captured graph); they must stay allocated while the plan lives. Their values are bounded
   * by num_seqs (fixed; pad with empty sequences, qsl[s+1] = qsl[s]), max_query_len and max_context_len,
   * and are not validated on the host: the kernels skip a sequence that breaks a rule and record it for
   * rpa_plan_get_error().
   */
  rpa_memory_kind metadata_memory;
  int32_t max_query_len;   /**< Device metadata: the most query tokens of a sequence; 0 = T. */
  int32_t max_context_len; /**< Device metadata: the longest context_lens value; 0 = W * page_size (2^31 - 1 at most). */
} rpa_attention_args;

/**
 * Arguments of rpa_merge_states(). Initialise with rpa_merge_args_init(). The states are two
 * attentions of the same query rows over disjoint key sets (a shared prefix and a suffix, or two splits
 * of one key range); their merge is the attention over the union.
 */
typedef struct rpa_merge_args {
  size_t struct_size;     /**< sizeof(rpa_merge_args), set by rpa_merge_args_init(). */
  rpa_tensor out_a;       /**< [T, H, D] f32, f16 or bf16: the first state's output. */
  rpa_tensor lse_a;       /**< [T, H] f32: its natural-log softmax denominator (-inf: no key). */
  rpa_tensor out_b;       /**< [T, H, D]: the second state's output (any float dtype). */
  rpa_tensor lse_b;       /**< [T, H] f32. */
  rpa_tensor out;         /**< [T, H, D] result; may be out_a or out_b itself (rows are merged in place). */
  rpa_tensor lse;         /**< Optional [T, H] f32 result; may be lse_a or lse_b. */
  rpa_memory_kind memory; /**< Where all six tensors live. */
  void* stream;           /**< GPU stream for device memory; NULL = default. */
  int32_t synchronize;    /**< Device memory: nonzero waits for the work to finish before returning. */
} rpa_merge_args;

/**
 * Arguments of rpa_write_kv(). Initialise with rpa_write_kv_args_init(). Token i's key and value go to
 * slot slot_mapping[i] = page * page_size + offset of the cache; -1 skips the token. When two tokens map to
 * the same slot, the later one (larger i) wins.
 */
typedef struct rpa_write_kv_args {
  size_t struct_size;       /**< sizeof(rpa_write_kv_args), set by rpa_write_kv_args_init(). */
  rpa_tensor keys;          /**< [N, KVH, D] new keys, f32, f16 or bf16. */
  rpa_tensor values;        /**< [N, KVH, D] new values, same shape (any float dtype). */
  rpa_tensor slot_mapping;  /**< [N] int32, host memory: a slot in [0, P * page_size), or -1 to skip. */
  rpa_tensor kv_pages;      /**< The cache to write, combined [P, page_size, 2*KVH, D] ... */
  rpa_tensor k_cache;       /**< ... or separate [P, page_size, KVH, D] K and V caches (as in rpa_attention_args). */
  rpa_tensor v_cache;
  rpa_tensor k_scale;       /**< Quantised caches: the scales the codes are written with (as in rpa_attention_args). */
  rpa_tensor v_scale;
  rpa_memory_kind memory;   /**< Where keys, values and the cache live. */
  void* stream;             /**< GPU stream for device memory; NULL = default. */
  int32_t synchronize;      /**< Device memory: nonzero waits for the writes to finish before returning. */
} rpa_write_kv_args;

/** Identity of one plugin the core tried to load. Strings live as long as the process. */
typedef struct rpa_plugin_report {
  const char* path;     /**< File that was opened. */
  const char* name;     /**< The plugin's own name, or "" if it could not say. */
  int32_t usable;       /**< Nonzero when the plugin loaded and found at least one device. */
  int32_t device_count; /**< Devices the plugin reported (0 if rejected). */
  const char* reason;   /**< Why it was rejected, or a device summary when usable. */
} rpa_plugin_report;

/** Version of the library as RPA_VERSION encodes it, for comparison with the header's. */
RPA_EXPORT int32_t rpa_get_version(void);

/** Static English name of a status ("ok", "invalid argument", ...); never NULL. */
RPA_EXPORT const char* rpa_status_string(rpa_status status);

/** Static name of a backend ("auto", "reference", "simd", "gpu"); never NULL. */
RPA_EXPORT const char* rpa_backend_string(rpa_backend backend);

/**
 * Detailed message of the calling thread's last failed call ("" if none failed). Valid until the
 * thread's next rpa call.
 */
RPA_EXPORT const char* rpa_last_error(void);

/** Fills *options with defaults: AUTO backend, all cores, device 0. */
RPA_EXPORT void rpa_context_options_init(rpa_context_options* options);

/**
 * Creates a context. AUTO never fails for lack of a GPU; an explicit backend that cannot run here
 * returns RPA_STATUS_UNAVAILABLE with a message that says why.
 * @param options NULL for defaults.
 * @param out receives the context; set to NULL on failure.
 */
RPA_EXPORT rpa_status rpa_context_create(const rpa_context_options* options, rpa_context** out);

/** Destroys a context created by rpa_context_create(); NULL is a no-op. */
RPA_EXPORT void rpa_context_destroy(rpa_context* context);

/** The backend the context runs (AUTO resolved), or RPA_STATUS_INVALID_ARGUMENT for a NULL context. */
RPA_EXPORT rpa_status rpa_context_get_backend(const rpa_context* context, rpa_backend* out);

/** CPU threads the context uses (its arena's concurrency). */
RPA_EXPORT rpa_status rpa_context_get_num_threads(const rpa_context* context, int32_t* out);

/** Fills *args with defaults: everything absent or zero, host memory, struct_size set. */
RPA_EXPORT void rpa_attention_args_init(rpa_attention_args* args);

/**
 * Ragged paged attention: rpa_plan_create() and rpa_plan_run() with the same args, in one call.
 * Validates every argument first, then writes out (and lse) for every row. Safe to call from several
 * threads on the same context at once.
 * @return RPA_STATUS_OK; RPA_STATUS_INVALID_ARGUMENT (a NULL context or args, or a contract rule broken:
 *   the message names the argument and index; nothing is written); RPA_STATUS_UNSUPPORTED (a reserved
 *   dtype, or a problem the backend cannot run, e.g. head_dim > 256 on the gpu backend);
 *   RPA_STATUS_OUT_OF_MEMORY; RPA_STATUS_DEVICE_ERROR (the GPU runtime failed); RPA_STATUS_INTERNAL.
 */
RPA_EXPORT rpa_status rpa_attention(rpa_context* context, const rpa_attention_args* args);

/**
 * Plans a call: validates the metadata, num_seqs, sliding_window, memory and every tensor's layout
 * (the rules of rpa_attention that do not depend on tensor data), copies the metadata it needs, and
 * decomposes the work. The float tensors' data may be NULL. The plan does not read `args` afterwards.
 * On the gpu backend the block tables and the work list are uploaded to the device here, once. With
 * device metadata (metadata_memory) the plan validates the metadata's shapes and the bounds and
 * decomposes the work for any values within the bounds; the values are read at each run.
 * A plan must be destroyed before its context.
 * @param out receives the plan; set to NULL on failure.
 * @return RPA_STATUS_OK; RPA_STATUS_INVALID_ARGUMENT (NULL context, args or out; a broken rule);
 *   RPA_STATUS_UNSUPPORTED (reserved dtype; a problem the backend cannot run); RPA_STATUS_OUT_OF_MEMORY;
 *   RPA_STATUS_DEVICE_ERROR; RPA_STATUS_INTERNAL.
 */
RPA_EXPORT rpa_status rpa_plan_create(rpa_context* context, const rpa_attention_args* args, rpa_plan** out);

/**
 * Runs a plan with this call's tensors (queries, KV, out, lse, sinks, k_scale, v_scale) and scalars (softmax_scale,
 * logits_soft_cap, stream, synchronize). Each float tensor must have the plan's presence, dtype, shape
 * and strides, and `memory` the plan's; its data must be non-NULL. The metadata fields of `args` are not
 * read (the plan's copy is used), except with device metadata: there a run whose `context_lens`,
 * `query_start_loc` and `block_tables` have data reads those device arrays instead of the plan's (all
 * three, of the plan's shapes [S], [S+1], [S, W] and dtype int32; any row stride), so a caller whose
 * metadata moves from call to call copies nothing into the plan's; `num_seqs` and the bounds stay the
 * plan's, and rpa_plan_get_error() reads the arrays of the latest run. The output is bitwise the output
 * rpa_attention() gives for the same arguments. Safe to call from several threads on one plan at once.
 * With device memory on the gpu backend the run only enqueues kernels on `stream` (no allocation, no
 * host-device copy, no synchronisation unless `synchronize`), so it may be captured in a CUDA/HIP graph.
 * @return RPA_STATUS_OK; RPA_STATUS_INVALID_ARGUMENT (NULL plan or args; a tensor or scalar rule broken,
 *   or a layout other than the plan's: the message names the argument; nothing is written);
 *   RPA_STATUS_OUT_OF_MEMORY; RPA_STATUS_DEVICE_ERROR; RPA_STATUS_INTERNAL.
 */
RPA_EXPORT rpa_status rpa_plan_run(rpa_plan* plan, const rpa_attention_args* args);

/**
 * Device metadata: turns what the runs since the last call found into a status. A sequence whose metadata
 * breaks a rule (or a bound given at plan time) is skipped by the kernels, which never read or write
 * outside the caller's buffers, and recorded on the device. This call waits for the plan's enqueued work,
 * copies the metadata back and reports it with the message host validation gives (argument, index,
 * value), then clears the record. Not capturable: call it outside a graph, e.g. once per step.
 * @return RPA_STATUS_OK when no run broke a rule (always for host metadata); RPA_STATUS_INVALID_ARGUMENT
 *   with the rule's message (a NULL plan, too); RPA_STATUS_DEVICE_ERROR; RPA_STATUS_INTERNAL.
 */
RPA_EXPORT rpa_status rpa_plan_get_error(rpa_plan* plan);

/** Destroys a plan (waiting for the device work it enqueued); NULL is a no-op. */
RPA_EXPORT void rpa_plan_destroy(rpa_plan* plan);

/**
 * Runs rpa_plan_run(plan, args) `iterations` times back to back and stores each run's duration in
 * milliseconds[0..iterations-1]: device events around each whole run on the GPU backend (host overhead
 * shows where the host cannot keep ahead of the device), a steady clock on the CPU backends. The run's
 * tensors are validated once, not per iteration.
 * @return as rpa_plan_run(), and RPA_STATUS_INVALID_ARGUMENT for iterations <= 0 or NULL milliseconds.
 */
RPA_EXPORT rpa_status rpa_plan_time(rpa_plan* plan, const rpa_attention_args* args, int32_t iterations,
                                    double* milliseconds);
/** Fills *args with defaults: everything absent or zero, host memory, struct_size set. */
RPA_EXPORT void rpa_write_kv_args_init(rpa_write_kv_args* args);

/**
 * Writes new keys and values into their slots of a paged KV cache, converted to the cache's dtype: rounded
 * to nearest even; quantised as x / scale (in f32) rounded to nearest even, saturating at +-448 for
 * FP8_E4M3 and +-127 for INT8, overflowing to +-inf for FP8_E5M2, NaN kept as NaN (INT8: 0). A slot
 * outside [0, P * page_size) other than -1 is an invalid argument naming its index; nothing is written
 * then. On the gpu backend with device memory the writes are queued on `stream` without waiting.
 */
RPA_EXPORT rpa_status rpa_write_kv(rpa_context* context, const rpa_write_kv_args* args);

/**
 * Whether the context's backend can run a call with these args, without running it. Reads what
 * rpa_plan_create() reads (float tensor data may be NULL). An AUTO context that resolved to the GPU
 * answers for the GPU, and runs a host-memory call the GPU answers RPA_STATUS_UNSUPPORTED for on the CPU.
 * @return RPA_STATUS_OK when it can; RPA_STATUS_UNSUPPORTED with rpa_last_error() saying why (a reserved
 *   dtype; on the gpu backend a head_dim above 256, counts beyond its int32 limits, or more than 128
 *   kv heads of an 8-bit cache);
 *   RPA_STATUS_INVALID_ARGUMENT when args break the contract (the message rpa_plan_create() gives).
 */
RPA_EXPORT rpa_status rpa_context_supports(rpa_context* context, const rpa_attention_args* args);

/** Fills *args with defaults: everything absent, host memory, struct_size set. */
RPA_EXPORT void rpa_merge_args_init(rpa_merge_args* args);

/**
 * Merges two partial attention states of the same rows over disjoint key sets into the state over their
 * union (cascade / shared-prefix attention, split inference), on every backend:
 * with m = max(lse_a, lse_b), w_x = exp(lse_x - m): out = (w_a out_a + w_b out_b) / (w_a + w_b) and
 * lse = m + log(w_a + w_b), computed in f32 or better per row. A state whose lse is -inf has no key: it
 * contributes nothing and its output row is not read; two such states give out 0 and lse -inf (the rows
 * rpa_attention gives without keys). An lse of NaN or +inf gives NaN. lse is the natural log of the softmax
 * denominator, as rpa_attention writes it; a base-2 lse (FlashInfer's MLA kernels) converts as
 * lse = lse2 * ln 2. out may be out_a or out_b and lse may be lse_a or lse_b (same tensor, same
 * layout): each row is read before it is written. Host memory runs on the calling thread; device memory
 * (gpu backend) is queued on `stream` without synchronising unless `synchronize`, and may be captured.
 * @return RPA_STATUS_OK; RPA_STATUS_INVALID_ARGUMENT (NULL context or args; a tensor missing, of another
 *   shape, dtype or layout rule; device memory on a CPU backend); RPA_STATUS_DEVICE_ERROR; RPA_STATUS_INTERNAL.
 */
RPA_EXPORT rpa_status rpa_merge_states(rpa_context* context, const rpa_merge_args* args);

/** Direction of rpa_device_copy(). */
typedef enum rpa_copy_kind {
  RPA_COPY_HOST_TO_DEVICE = 0,   /**< dst on the device, src on the host. */
  RPA_COPY_DEVICE_TO_HOST = 1,   /**< dst on the host, src on the device. */
  RPA_COPY_DEVICE_TO_DEVICE = 2  /**< both on the context's device. */
} rpa_copy_kind;

/**
 * Allocates `bytes` of device memory on the context's GPU (gpu backend only; others answer
 * RPA_STATUS_UNSUPPORTED). For callers without a GPU framework of their own: tools, tests, bindings.
 */
RPA_EXPORT rpa_status rpa_device_alloc(rpa_context* context, size_t bytes, void** out);

/** Frees memory from rpa_device_alloc(); NULL is a no-op. */
RPA_EXPORT rpa_status rpa_device_free(rpa_context* context, void* pointer);

/** Copies `bytes` between host and device memory of the context's GPU and waits for the copy. */
RPA_EXPORT rpa_status rpa_device_copy(rpa_context* context, void* dst, const void* src, size_t bytes,
                                      rpa_copy_kind kind);

/**
 * Plans rpa_attention(context, args) once, runs the plan `iterations` times and stores each run's
 * duration in milliseconds[0..iterations-1]: on the GPU backend device events around the kernels alone
 * (no host work counted), on the CPU backends a steady clock around each run. Validation and planning
 * happen once, before the timed runs.
 * @return as rpa_attention(), and RPA_STATUS_INVALID_ARGUMENT for iterations <= 0 or NULL milliseconds.
 */
RPA_EXPORT rpa_status rpa_time_attention(rpa_context* context, const rpa_attention_args* args,
                                         int32_t iterations, double* milliseconds);

/** Whether a backend can run here (the gpu backend needs a usable plugin). Never fails. */
RPA_EXPORT int32_t rpa_backend_available(rpa_backend backend);

/** Number of plugins the core tried to load (loading happens once, on first need). */
RPA_EXPORT int32_t rpa_plugin_report_count(void);

/** Describes plugin `index` (0 <= index < rpa_plugin_report_count()). */
RPA_EXPORT rpa_status rpa_get_plugin_report(int32_t index, rpa_plugin_report* out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* RPA_RPA_H */
