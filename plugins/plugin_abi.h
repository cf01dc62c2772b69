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
 */
#ifndef RPA_PLUGIN_ABI_H
#define RPA_PLUGIN_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "core/problem.h"
#include "rpa/rpa.h"

#ifdef __cplusplus
extern "C" {
#endif

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

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* RPA_PLUGIN_ABI_H */
