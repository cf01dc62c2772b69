/* Fake GPU plugins for the loader tests, compiled once per FAKE_* kind (tests/plugins/meson.build):
 * each breaks the plugin ABI in one way, and the core must reject it with the matching reason. One,
 * FAKE_LIMITED, is usable: a "GPU" on host memory that runs only head_dim <= 64 (writing a marker, so a
 * test can tell who ran a call), for the tests of rpa_context_supports and AUTO's CPU fallback. It is
 * built as a plugin older than this core: its rpa_problem ends before the device-metadata fields, so
 * every call it serves also checks that an older plugin reads a grown struct correctly. */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "plugins/plugin_abi.h"

#define EXPORT __attribute__((visibility("default")))

#ifdef FAKE_RE_ENTER
/* The constructor calls back into librpa (found in the process's global scope) while the core is loading
 * this plugin; what librpa answered becomes the init failure's message, for the test to read. */
static char nested_answer[512] = "fake plugin: the constructor did not run";

__attribute__((constructor)) static void call_librpa_while_loaded(void) {
  typedef rpa_status (*get_report_fn)(int32_t, rpa_plugin_report*);
  typedef const char* (*text_fn)(void);
  typedef const char* (*status_string_fn)(rpa_status);
  const get_report_fn get_report = (get_report_fn)dlsym(RTLD_DEFAULT, "rpa_get_plugin_report");
  const text_fn last_error = (text_fn)dlsym(RTLD_DEFAULT, "rpa_last_error");
  const status_string_fn status_string = (status_string_fn)dlsym(RTLD_DEFAULT, "rpa_status_string");
  if (!get_report || !last_error || !status_string) {
    snprintf(nested_answer, sizeof nested_answer, "fake plugin: librpa's symbols are not visible");
    return;
  }
  rpa_plugin_report report;
  const rpa_status status = get_report(0, &report);
  snprintf(nested_answer, sizeof nested_answer, "fake plugin: nested rpa_get_plugin_report answered %s: %s",
           status_string(status), last_error());
}

static const char* fake_last_error(void) { return nested_answer; }
#elif defined(FAKE_LIMITED)
static char limited_error[256];
static const char* fake_last_error(void) { return limited_error; }
#else
static const char* fake_last_error(void) { return "fake plugin: initialisation refused on purpose"; }
#endif

static rpa_status fake_init(void) {
#if defined(FAKE_INIT_FAILS) || defined(FAKE_RE_ENTER)
  return RPA_STATUS_DEVICE_ERROR;
#else
  return RPA_STATUS_OK;
#endif
}

static rpa_status fake_device_count(int32_t* count) {
#if defined(FAKE_MANY_DEVICES)
  *count = INT32_MAX;
#elif defined(FAKE_LIMITED)
  *count = 1;
#else
  *count = 0; /* FAKE_NO_DEVICE; the other fakes are rejected before they are asked */
#endif
  return RPA_STATUS_OK;
}

static rpa_status fake_describe_device(int32_t ordinal, char* text, size_t text_size) {
  (void)ordinal;
#if defined(FAKE_MANY_DEVICES)
  memset(text, 'x', text_size); /* no terminator: the core must bound what it reads */
  return RPA_STATUS_OK;
#elif defined(FAKE_LIMITED)
  snprintf(text, text_size, "fake device with head_dim <= %d", FAKE_LIMITED_MAX_HEAD_DIM);
  return RPA_STATUS_OK;
#else
  (void)text, (void)text_size;
  return RPA_STATUS_UNAVAILABLE;
#endif
}

#ifdef FAKE_LIMITED
static int limited_state; /* the one context's state: nothing to hold */

/* The rpa_problem of a plugin built before metadata_memory was appended: the core's problem read through
 * rpa_plugin_read_problem into a struct of that older size. */
#define FAKE_OLD_PROBLEM_SIZE ((uint32_t)offsetof(rpa_problem, metadata_memory))
typedef union {
  rpa_problem fields; /* the fields before metadata_memory: what this plugin knows */
  unsigned char bytes[FAKE_OLD_PROBLEM_SIZE];
} old_problem;

static int read_old(const rpa_problem* given, old_problem* copy) {
  if (rpa_plugin_read_problem(copy->bytes, FAKE_OLD_PROBLEM_SIZE, given, FAKE_OLD_PROBLEM_SIZE)) return 1;
  snprintf(limited_error, sizeof limited_error, "the core's problem is smaller than this plugin's");
  return 0;
}

static rpa_status fake_create(int32_t ordinal, rpa_plugin_state** state) {
  (void)ordinal;
  *state = (rpa_plugin_state*)&limited_state;
  return RPA_STATUS_OK;
}

static rpa_status fake_supports(rpa_plugin_state* state, const rpa_problem* given) {
  old_problem copy;
  const rpa_problem* problem = &copy.fields;
  (void)state;
  if (!read_old(given, &copy)) return RPA_STATUS_UNSUPPORTED;
  if (problem->head_dim <= FAKE_LIMITED_MAX_HEAD_DIM) return RPA_STATUS_OK;
  snprintf(limited_error, sizeof limited_error, "head_dim %lld is above this fake device's %d",
           (long long)problem->head_dim, FAKE_LIMITED_MAX_HEAD_DIM);
  return RPA_STATUS_UNSUPPORTED;
}

/* Every output element becomes FAKE_LIMITED_MARKER (f32 outputs only: enough for the tests). */
static rpa_status fake_run(rpa_plugin_state* state, const rpa_problem* given) {
  old_problem copy;
  const rpa_problem* problem = &copy.fields;
  const rpa_status supported = fake_supports(state, given);
  if (supported != RPA_STATUS_OK) return supported;
  if (!read_old(given, &copy)) return RPA_STATUS_UNSUPPORTED;
  if (problem->out_dtype != RPA_DTYPE_F32 || problem->memory != RPA_MEMORY_HOST) {
    snprintf(limited_error, sizeof limited_error, "the fake device writes f32 host outputs only");
    return RPA_STATUS_UNSUPPORTED;
  }
  for (int64_t t = 0; t < problem->num_tokens; ++t)
    for (int64_t h = 0; h < problem->num_q_heads; ++h)
      for (int64_t d = 0; d < problem->head_dim; ++d)
        ((float*)problem->out)[t * problem->out_token_stride + h * problem->out_head_stride + d] = FAKE_LIMITED_MARKER;
  return RPA_STATUS_OK;
}

static rpa_status fake_plan_create(rpa_plugin_state* state, const rpa_problem* problem, rpa_plugin_plan** plan) {
  *plan = (rpa_plugin_plan*)state;
  return fake_supports(state, problem);
}

static rpa_status fake_plan_run(rpa_plugin_plan* plan, const rpa_problem* problem) {
  return fake_run((rpa_plugin_state*)plan, problem);
}
#else
static rpa_status fake_create(int32_t ordinal, rpa_plugin_state** state) {
  (void)ordinal;
  *state = NULL;
  return RPA_STATUS_UNAVAILABLE;
}

static rpa_status fake_supports(rpa_plugin_state* state, const rpa_problem* problem) {
  (void)state, (void)problem;
  return RPA_STATUS_UNAVAILABLE;
}

static rpa_status fake_run(rpa_plugin_state* state, const rpa_problem* problem) {
  (void)state, (void)problem;
  return RPA_STATUS_UNAVAILABLE;
}

static rpa_status fake_plan_create(rpa_plugin_state* state, const rpa_problem* problem, rpa_plugin_plan** plan) {
  (void)state, (void)problem;
  *plan = NULL;
  return RPA_STATUS_UNAVAILABLE;
}

static rpa_status fake_plan_run(rpa_plugin_plan* plan, const rpa_problem* problem) {
  (void)plan, (void)problem;
  return RPA_STATUS_UNAVAILABLE;
}
#endif

static void fake_destroy(rpa_plugin_state* state) { (void)state; }

static rpa_status fake_plan_time(rpa_plugin_plan* plan, const rpa_problem* problem, int32_t iterations,
                                 double* milliseconds, int32_t whole_runs) {
  (void)plan, (void)problem, (void)iterations, (void)milliseconds, (void)whole_runs;
  return RPA_STATUS_UNAVAILABLE;
}

static void fake_plan_destroy(rpa_plugin_plan* plan) { (void)plan; }

static rpa_status fake_device_alloc(rpa_plugin_state* state, size_t bytes, void** pointer) {
  (void)state, (void)bytes;
  *pointer = NULL;
  return RPA_STATUS_UNAVAILABLE;
}

static rpa_status fake_device_free(rpa_plugin_state* state, void* pointer) {
  (void)state, (void)pointer;
  return RPA_STATUS_UNAVAILABLE;
}

static rpa_status fake_device_copy(rpa_plugin_state* state, void* dst, const void* src, size_t bytes,
                                   rpa_copy_kind kind) {
  (void)state, (void)dst, (void)src, (void)bytes, (void)kind;
  return RPA_STATUS_UNAVAILABLE;
}

static rpa_status fake_write_kv(rpa_plugin_state* state, const rpa_write_problem* problem) {
  (void)state, (void)problem;
  return RPA_STATUS_UNAVAILABLE;
}

static rpa_status fake_merge_states(rpa_plugin_state* state, const rpa_merge_problem* problem) {
  (void)state, (void)problem;
  return RPA_STATUS_UNAVAILABLE;
}

#ifdef FAKE_WRONG_ABI
#define FAKE_ABI_VERSION (RPA_PLUGIN_ABI_VERSION + 1000)
#else
#define FAKE_ABI_VERSION RPA_PLUGIN_ABI_VERSION
#endif

/* A table without the optional entries, as a plugin built before they were appended has. */
static const rpa_plugin_api fake_api = {
    FAKE_ABI_VERSION, RPA_PLUGIN_API_REQUIRED_SIZE, FAKE_NAME, fake_last_error, fake_init, fake_device_count,
    fake_describe_device, fake_create, fake_destroy, fake_run, fake_plan_create, fake_plan_run, fake_plan_time,
    fake_plan_destroy, fake_device_alloc, fake_device_free, fake_device_copy, fake_supports, fake_merge_states, fake_write_kv,
    NULL};

#ifdef FAKE_NO_ENTRY
/* Exports something, but not the entry point. */
EXPORT const rpa_plugin_api* rpa_plugin_entry_misspelt(void) { return &fake_api; }
#else
EXPORT const rpa_plugin_api* rpa_plugin_entry(void) { return &fake_api; }
#endif
