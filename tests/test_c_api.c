/* Uses the C ABI from C99 (no C++ anywhere in this translation unit): a hand-computed case on the
 * reference backend, one call and planned runs, the error path, and the versioned-struct defaults. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "rpa/rpa.h"

static int failures = 0;

#define CHECK(condition)                                                     \
  do {                                                                       \
    if (!(condition)) {                                                      \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      ++failures;                                                            \
    }                                                                        \
  } while (0)

static rpa_tensor tensor(void* data, rpa_dtype dtype, int32_t ndim, const int64_t* shape) {
  rpa_tensor t;
  memset(&t, 0, sizeof t); /* all-zero strides: contiguous */
  t.data = data;
  t.dtype = dtype;
  t.ndim = ndim;
  for (int32_t i = 0; i < ndim; ++i) t.shape[i] = shape[i];
  return t;
}

int main(void) {
  /* One query at position 1 over keys k0 = (0, 0), k1 = (ln 3, 0) with scale 1: weights 1/4 and 3/4,
   * values v0 = (4, 0), v1 = (0, 8): out = (1, 6), lse = ln 4. Combined layout [P=2, 1, 2, D=2]. */
  float queries[2] = {1.0f, 0.0f};
  float kv[2][1][2][2] = {{{{0.0f, 0.0f}, {4.0f, 0.0f}}}, {{{(float)log(3.0), 0.0f}, {0.0f, 8.0f}}}};
  int32_t context_lens[1] = {2};
  int32_t block_tables[1][2] = {{0, 1}};
  int32_t query_start_loc[2] = {0, 1};
  float out[2] = {-1.0f, -1.0f};
  float lse[1] = {0.0f};

  const int64_t q_shape[3] = {1, 1, 2}, kv_shape[4] = {2, 1, 2, 2}, s_shape[1] = {1}, bt_shape[2] = {1, 2},
                qsl_shape[1] = {2}, lse_shape[2] = {1, 1};
  rpa_attention_args args;
  rpa_attention_args_init(&args);
  CHECK(args.struct_size == sizeof(rpa_attention_args));
  CHECK(args.memory == RPA_MEMORY_HOST);
  args.queries = tensor(queries, RPA_DTYPE_F32, 3, q_shape);
  args.kv_pages = tensor(kv, RPA_DTYPE_F32, 4, kv_shape);
  args.context_lens = tensor(context_lens, RPA_DTYPE_I32, 1, s_shape);
  args.block_tables = tensor(block_tables, RPA_DTYPE_I32, 2, bt_shape);
  args.query_start_loc = tensor(query_start_loc, RPA_DTYPE_I32, 1, qsl_shape);
  args.num_seqs = 1;
  args.softmax_scale = 1.0;
  args.out = tensor(out, RPA_DTYPE_F32, 3, q_shape);
  args.lse = tensor(lse, RPA_DTYPE_F32, 2, lse_shape);

  rpa_context_options options;
  rpa_context_options_init(&options);
  CHECK(options.backend == RPA_BACKEND_AUTO);
  options.backend = RPA_BACKEND_REFERENCE;
  rpa_context* context = NULL;
  CHECK(rpa_context_create(&options, &context) == RPA_STATUS_OK);
  rpa_backend backend = RPA_BACKEND_AUTO;
  CHECK(rpa_context_get_backend(context, &backend) == RPA_STATUS_OK && backend == RPA_BACKEND_REFERENCE);

  CHECK(rpa_attention(context, &args) == RPA_STATUS_OK);
  CHECK(fabsf(out[0] - 1.0f) < 1e-6f && fabsf(out[1] - 6.0f) < 1e-6f);
  CHECK(fabsf(lse[0] - (float)log(4.0)) < 1e-6f);

  /* Plan once (metadata and layouts; no float data needed), run twice with new tensors. */
  {
    rpa_attention_args layout = args;
    rpa_plan* plan = NULL;
    float out2[2] = {-1.0f, -1.0f};
    layout.queries.data = NULL;
    layout.kv_pages.data = NULL;
    layout.out.data = NULL;
    layout.lse.data = NULL;
    CHECK(rpa_plan_create(context, &layout, &plan) == RPA_STATUS_OK && plan != NULL);
    context_lens[0] = 1; /* the plan keeps its own copy */
    out[0] = out[1] = -1.0f;
    CHECK(rpa_plan_run(plan, &args) == RPA_STATUS_OK);
    CHECK(fabsf(out[0] - 1.0f) < 1e-6f && fabsf(out[1] - 6.0f) < 1e-6f);
    args.out.data = out2;
    args.softmax_scale = 0.0; /* 1/sqrt(2): weights 1 : 3^(1/sqrt 2) */
    CHECK(rpa_plan_run(plan, &args) == RPA_STATUS_OK);
    {
      const double w = pow(3.0, 1.0 / sqrt(2.0));
      CHECK(fabs(out2[0] - 4.0 / (1.0 + w)) < 1e-5 && fabs(out2[1] - 8.0 * w / (1.0 + w)) < 1e-5);
    }
    args.out.shape[2] = 3;
    CHECK(rpa_plan_run(plan, &args) == RPA_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(rpa_last_error(), "'out'") != NULL);
    CHECK(rpa_plan_get_error(plan) == RPA_STATUS_OK); /* host metadata: no device record */
    CHECK(rpa_plan_get_error(NULL) == RPA_STATUS_INVALID_ARGUMENT);
    rpa_plan_destroy(plan);
    rpa_plan_destroy(NULL);
    args.out = tensor(out, RPA_DTYPE_F32, 3, q_shape);
    args.softmax_scale = 1.0;
    context_lens[0] = 2;
  }

  args.sliding_window = -1;
  CHECK(rpa_attention(context, &args) == RPA_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(rpa_last_error(), "sliding_window") != NULL);

  CHECK(strcmp(rpa_status_string(RPA_STATUS_UNAVAILABLE), "unavailable") == 0);
  CHECK(strcmp(rpa_backend_string(RPA_BACKEND_SIMD), "simd") == 0);
  CHECK(rpa_get_version() == RPA_VERSION);
  {
    char text[40];
    snprintf(text, sizeof text, "%d.%d.%d", RPA_VERSION_MAJOR, RPA_VERSION_MINOR, RPA_VERSION_PATCH);
    CHECK(strcmp(text, RPA_VERSION_STRING) == 0);
  }
  CHECK(rpa_backend_available(RPA_BACKEND_REFERENCE) == 1);
  rpa_context_destroy(context);
  rpa_context_destroy(NULL);

  printf("%s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
