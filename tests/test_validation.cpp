// One test per validation rule of the contract: the status, and a message naming the argument and the
// offending index or value, through rpa_attention and through rpa_plan_create + rpa_plan_run. The
// output must stay untouched when a call is rejected.
#define BOOST_TEST_MODULE validation
#include <boost/test/unit_test.hpp>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>

#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

// Two sequences (q_len 1 and 3, contexts 6 and 9), QH 4, KVH 2, D 8, page_size 4, W 4 (one spare column).
Prepared valid() {
  RandomSpec spec;
  spec.q_lens = {1, 3};
  spec.context_lens = {6, 9};
  spec.head_dim = 8;
  spec.padding_seqs = 1;
  return prepare(random_case(spec, 7));
}

// Applies `breaks` to a valid call and checks the status and that the message holds every fragment.
void expect_rejected(const std::function<void(Prepared&)>& breaks, std::vector<std::string> fragments,
                     rpa_status status = RPA_STATUS_INVALID_ARGUMENT) {
  Prepared p = valid();
  breaks(p);
  const std::vector<uint8_t> out_before = p.out;
  const Result r = run_prepared(p, RPA_BACKEND_REFERENCE);
  BOOST_TEST(r.status == status, "status " << rpa_status_string(r.status) << ": " << r.message);
  for (const std::string& fragment : fragments)
    BOOST_TEST(r.message.find(fragment) != std::string::npos, "message '" << r.message << "' lacks '" << fragment << "'");
  BOOST_TEST((p.out == out_before), "a rejected call wrote its output");

  // The same rule fires, with the same message, when the call is planned then run: at plan time for
  // what decides the work, at run time for tensor data and scalars.
  const OwnedContext owned(RPA_BACKEND_REFERENCE);
  rpa_context* const context = owned.context;
  rpa_plan* plan = nullptr;
  rpa_status planned = rpa_plan_create(context, &p.args, &plan);
  if (planned == RPA_STATUS_OK) {
    planned = rpa_plan_run(plan, &p.args);
    rpa_plan_destroy(plan);
  }
  BOOST_TEST(planned == r.status, "plan/run status " << rpa_status_string(planned));
  BOOST_TEST(std::string(rpa_last_error()) == r.message);
  BOOST_TEST((p.out == out_before), "a rejected plan/run wrote its output");
}

// Stores an arbitrary integer in a C enum field as a C caller can (a C++ enum may not hold it).
template <typename Enum>
void set_enum(Enum& field, int32_t value) {
  static_assert(sizeof field == sizeof value, "rpa.h's enums are int-sized");
  std::memcpy(&field, &value, sizeof value);
}

}  // namespace

BOOST_AUTO_TEST_CASE(the_valid_base_case_passes) {
  Prepared p = valid();
  const Result r = run_prepared(p, RPA_BACKEND_REFERENCE);
  BOOST_TEST(r.status == RPA_STATUS_OK, r.message);
}

BOOST_AUTO_TEST_CASE(null_pointers) {
  expect_rejected([](Prepared& p) { p.args.queries.data = nullptr; }, {"'queries'", "NULL"});
  expect_rejected([](Prepared& p) { p.args.out.data = nullptr; }, {"'out'", "NULL"});
  expect_rejected([](Prepared& p) { p.args.kv_pages.data = nullptr; }, {"'kv_pages'", "NULL"});
  expect_rejected([](Prepared& p) { p.args.context_lens.data = nullptr; }, {"'context_lens'", "NULL"});
  expect_rejected([](Prepared& p) { p.args.block_tables.data = nullptr; }, {"'block_tables'", "NULL"});
  expect_rejected([](Prepared& p) { p.args.query_start_loc.data = nullptr; }, {"'query_start_loc'", "NULL"});
  rpa_context* context = nullptr;
  BOOST_TEST(rpa_context_create(nullptr, &context) == RPA_STATUS_OK);
  BOOST_TEST(rpa_attention(context, nullptr) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(std::string(rpa_last_error()).find("'args'") != std::string::npos);
  rpa_context_destroy(context);
  Prepared p = valid();
  BOOST_TEST(rpa_attention(nullptr, &p.args) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(std::string(rpa_last_error()).find("'context'") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(non_positive_sizes) {
  expect_rejected([](Prepared& p) { p.args.queries.shape[0] = 0; }, {"'queries'", "shape[0]", "0"});
  expect_rejected([](Prepared& p) { p.args.kv_pages.shape[1] = -4; }, {"'kv_pages'", "shape[1]", "-4"});
  expect_rejected([](Prepared& p) { p.args.block_tables.shape[1] = 0; }, {"'block_tables'", "shape[1]"});
}

BOOST_AUTO_TEST_CASE(q_heads_not_a_multiple_of_kv_heads) {
  expect_rejected(
      [](Prepared& p) {
        p.args.queries.shape[1] = 3;  // 3 % 2 != 0
        p.args.out.shape[1] = 3;
      },
      {"'queries'", "QH = 3", "KVH = 2"});
}

BOOST_AUTO_TEST_CASE(head_dim_mismatch) {
  expect_rejected([](Prepared& p) { p.args.kv_pages.shape[3] = 4; }, {"'kv_pages'", "shape[3]", "head_dim 8"});
}

BOOST_AUTO_TEST_CASE(num_seqs_out_of_range) {
  expect_rejected([](Prepared& p) { p.args.num_seqs = -1; }, {"'num_seqs'", "-1"});
  expect_rejected([](Prepared& p) { p.args.num_seqs = 4; }, {"'num_seqs'", "4", "S = 3"});
}

BOOST_AUTO_TEST_CASE(query_start_loc_rules) {
  expect_rejected([](Prepared& p) { p.query_start_loc[0] = -1; }, {"'query_start_loc'", "[0]", "-1"});
  expect_rejected([](Prepared& p) { p.query_start_loc[1] = 3, p.query_start_loc[2] = 2; },
                  {"'query_start_loc'", "[2]", "less than element [1]"});
  expect_rejected([](Prepared& p) { p.query_start_loc[2] = 5; }, {"'query_start_loc'", "[2] = 5", "T = 4"});
}

BOOST_AUTO_TEST_CASE(q_len_longer_than_context) {
  expect_rejected([](Prepared& p) { p.context_lens[1] = 2; }, {"'context_lens'", "[1]", "3 query tokens"});
}

BOOST_AUTO_TEST_CASE(context_len_out_of_range) {
  expect_rejected([](Prepared& p) { p.context_lens[0] = -3; }, {"'context_lens'", "[0]", "-3"});
  // W = 4 columns of page_size 4 hold at most 16 tokens.
  expect_rejected([](Prepared& p) { p.context_lens[1] = 17; }, {"'context_lens'", "[1]", "17", "16"});
}

BOOST_AUTO_TEST_CASE(needed_block_table_entry_outside_the_pool) {
  expect_rejected([](Prepared& p) { p.block_tables[1 * 4 + 2] = 99; }, {"'block_tables'", "[1, 2]", "99"});
  expect_rejected([](Prepared& p) { p.block_tables[0] = -1; }, {"'block_tables'", "[0, 0]", "-1"});
}

BOOST_AUTO_TEST_CASE(entries_a_sequence_does_not_need_are_not_checked) {
  // Column 3 is never needed (contexts 6 and 9 need columns 0..1 and 0..2) and holds -7 already; a
  // window of 2 makes column 0 of sequence 1 unneeded (its first query sits at 6: keys 5..8).
  Prepared p = valid();
  p.args.sliding_window = 2;
  p.block_tables[1 * 4 + 0] = 12345;
  const Result r = run_prepared(p, RPA_BACKEND_REFERENCE);
  BOOST_TEST(r.status == RPA_STATUS_OK, r.message);
}

BOOST_AUTO_TEST_CASE(negative_window) {
  expect_rejected([](Prepared& p) { p.args.sliding_window = -2; }, {"'sliding_window'", "-2"});
}

BOOST_AUTO_TEST_CASE(bad_soft_cap) {
  expect_rejected([](Prepared& p) { p.args.logits_soft_cap = -1; }, {"'logits_soft_cap'", "-1"});
  expect_rejected([](Prepared& p) { p.args.logits_soft_cap = std::numeric_limits<double>::infinity(); },
                  {"'logits_soft_cap'", "inf"});
  expect_rejected([](Prepared& p) { p.args.logits_soft_cap = std::nan(""); }, {"'logits_soft_cap'", "nan"});
}

BOOST_AUTO_TEST_CASE(non_finite_scale) {
  expect_rejected([](Prepared& p) { p.args.softmax_scale = std::numeric_limits<double>::infinity(); },
                  {"'softmax_scale'", "inf"});
  expect_rejected([](Prepared& p) { p.args.softmax_scale = std::nan(""); }, {"'softmax_scale'", "nan"});
}

BOOST_AUTO_TEST_CASE(sink_rules) {
  auto with_sinks = [](Prepared& p, int64_t heads, float value) {
    p.sinks.assign(heads * 2, 0.5f);
    p.sinks.back() = value;
    p.args.softmax_aux.data = p.sinks.data();
    p.args.softmax_aux.dtype = RPA_DTYPE_F32;
    p.args.softmax_aux.ndim = 2;
    p.args.softmax_aux.shape[0] = heads;
    p.args.softmax_aux.shape[1] = 2;
    p.args.softmax_aux.strides[0] = 2;
    p.args.softmax_aux.strides[1] = 1;
  };
  expect_rejected([&](Prepared& p) { with_sinks(p, 3, 0.0f); }, {"'softmax_aux'", "shape[0] is 3", "KVH (2)", "QH (4)"});
  expect_rejected([&](Prepared& p) { with_sinks(p, 2, std::nanf("")); }, {"'softmax_aux'", "[1, 1]", "nan"});
  expect_rejected([&](Prepared& p) { with_sinks(p, 4, std::numeric_limits<float>::infinity()); },
                  {"'softmax_aux'", "[3, 1]", "inf"});
  // -inf is a valid sink.
  Prepared p = valid();
  with_sinks(p, 1, -std::numeric_limits<float>::infinity());
  BOOST_TEST(run_prepared(p, RPA_BACKEND_REFERENCE).status == RPA_STATUS_OK);
}

BOOST_AUTO_TEST_CASE(byte_count_overflow) {
  expect_rejected(
      [](Prepared& p) {
        p.args.kv_pages.shape[0] = INT32_MAX;
        p.args.kv_pages.strides[0] = int64_t{1} << 40;
      },
      {"'kv_pages'", "overflows"});
  expect_rejected([](Prepared& p) { p.args.queries.strides[0] = std::numeric_limits<int64_t>::max() / 2; },
                  {"'queries'", "overflows"});
}

BOOST_AUTO_TEST_CASE(layout_rules) {
  expect_rejected([](Prepared& p) { p.args.queries.strides[2] = 2; }, {"'queries'", "strides[2]", "contiguous"});
  expect_rejected([](Prepared& p) { p.args.out.strides[0] = -1; }, {"'out'", "strides[0]", "-1"});
  expect_rejected([](Prepared& p) { p.args.out.shape[0] = 3; }, {"'out'", "shape[0] is 3", "expected 4"});
  expect_rejected([](Prepared& p) { p.args.kv_pages.shape[2] = 3; }, {"'kv_pages'", "even"});
  expect_rejected([](Prepared& p) { p.args.queries.ndim = 2; }, {"'queries'", "ndim is 2"});
  expect_rejected([](Prepared& p) { p.args.context_lens.dtype = RPA_DTYPE_F32; }, {"'context_lens'", "int32"});
  expect_rejected([](Prepared& p) { p.args.lse.dtype = RPA_DTYPE_F16; }, {"'lse'", "f32"});
  expect_rejected([](Prepared& p) { set_enum(p.args.memory, 7); }, {"'memory'", "7"});
  expect_rejected([](Prepared& p) { set_enum(p.args.queries.dtype, 1000); }, {"'queries'", "unknown"});
  expect_rejected([](Prepared& p) { set_enum(p.args.block_tables.dtype, -5); }, {"'block_tables'", "int32"});
}

BOOST_AUTO_TEST_CASE(device_memory_needs_the_gpu_backend) {
  expect_rejected([](Prepared& p) { p.args.memory = RPA_MEMORY_DEVICE; }, {"'memory'", "gpu backend", "reference"});
}

// Device metadata: its own rules at plan time (the base case has T = 4, W * page_size = 16); the values
// themselves are the GPU's to check (tests/plugins/test_gpu_graph.cpp).
BOOST_AUTO_TEST_CASE(device_metadata_rules) {
  const auto device = [](Prepared& p) {
    p.args.memory = RPA_MEMORY_DEVICE;
    p.args.metadata_memory = RPA_MEMORY_DEVICE;
  };
  expect_rejected([](Prepared& p) { p.args.metadata_memory = RPA_MEMORY_DEVICE; },
                  {"'metadata_memory'", "device memory too"});
  expect_rejected([](Prepared& p) { set_enum(p.args.metadata_memory, 3); }, {"'metadata_memory'", "3", "rpa_memory_kind"});
  expect_rejected([&](Prepared& p) { device(p), p.args.max_query_len = 5; },
                  {"argument 'max_query_len': 5 is outside [0, T = 4]"});
  expect_rejected([&](Prepared& p) { device(p), p.args.max_query_len = -1; }, {"'max_query_len': -1"});
  expect_rejected([&](Prepared& p) { device(p), p.args.max_context_len = 17; },
                  {"argument 'max_context_len': 17 is outside [0, W * page_size = 16]"});
  // Within the bounds, only the backend is wrong here: device memory needs the gpu backend.
  expect_rejected([&](Prepared& p) { device(p), p.args.max_query_len = 3, p.args.max_context_len = 9; },
                  {"'memory'", "gpu backend"});
  // Metadata values are not read at plan time: garbage in them changes nothing of the above.
  expect_rejected([&](Prepared& p) { device(p), p.context_lens[0] = -5, p.query_start_loc[1] = 99; },
                  {"'memory'", "gpu backend"});
}

// A plan may be made before the float data exists; the combined cache's V view is then an offset from NULL,
// which must not be computed by pointer arithmetic (undefined: UBSan aborted here, found by fuzz_args).
BOOST_AUTO_TEST_CASE(a_plan_needs_no_float_data) {
  Prepared p = valid();
  rpa_attention_args layout_only = p.args;
  for (rpa_tensor* t : {&layout_only.queries, &layout_only.kv_pages, &layout_only.out, &layout_only.lse})
    t->data = nullptr;
  const OwnedContext owned(RPA_BACKEND_REFERENCE);
  rpa_context* const context = owned.context;
  rpa_plan* plan = nullptr;
  BOOST_TEST_REQUIRE(rpa_plan_create(context, &layout_only, &plan) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST(rpa_plan_run(plan, &p.args) == RPA_STATUS_OK, rpa_last_error());
  rpa_plan_destroy(plan);
}

// A plan of host metadata has no device error record.
BOOST_AUTO_TEST_CASE(plan_get_error_of_host_metadata_is_ok) {
  Prepared p = valid();
  const OwnedContext owned(RPA_BACKEND_REFERENCE);
  rpa_context* const context = owned.context;
  rpa_plan* plan = nullptr;
  BOOST_TEST_REQUIRE(rpa_plan_create(context, &p.args, &plan) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST(rpa_plan_run(plan, &p.args) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST(rpa_plan_get_error(nullptr) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(std::string(rpa_last_error()).find("'plan'") != std::string::npos);
  rpa_plan_destroy(plan);
}

// A quantised cache (the f32 bytes read as 8-bit codes: in bounds, and validation reads no KV) with scales
// held by the Prepared.
void quantise(Prepared& p, std::vector<float> k_scale, std::vector<float> v_scale) {
  p.args.kv_pages.dtype = RPA_DTYPE_FP8_E4M3;
  p.k_scale = std::move(k_scale), p.v_scale = std::move(v_scale);
  if (!p.k_scale.empty())
    p.args.k_scale = rpa_tensor{p.k_scale.data(), RPA_DTYPE_F32, 1, {static_cast<int64_t>(p.k_scale.size())}, {1}};
  if (!p.v_scale.empty())
    p.args.v_scale = rpa_tensor{p.v_scale.data(), RPA_DTYPE_F32, 1, {static_cast<int64_t>(p.v_scale.size())}, {1}};
}

BOOST_AUTO_TEST_CASE(quantised_dtypes_are_for_kv_only) {
  for (rpa_dtype dtype : {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8}) {
    Prepared p = valid();
    p.args.kv_pages.dtype = dtype;
    BOOST_TEST(run_prepared(p, RPA_BACKEND_REFERENCE).status == RPA_STATUS_OK);
  }
  expect_rejected([](Prepared& p) { p.args.queries.dtype = RPA_DTYPE_FP8_E4M3; }, {"'queries'", "fp8_e4m3", "KV cache only"});
  expect_rejected([](Prepared& p) { p.args.out.dtype = RPA_DTYPE_INT8; }, {"'out'", "int8", "KV cache only"});
  expect_rejected([](Prepared& p) { p.args.kv_pages.dtype = RPA_DTYPE_I32; }, {"'kv_pages'", "int32"});
}

BOOST_AUTO_TEST_CASE(scale_rules) {
  {  // per tensor and per kv head (KVH = 2) are both valid
    Prepared p = valid();
    quantise(p, {0.5f}, {0.25f, 3.0f});
    const Result r = run_prepared(p, RPA_BACKEND_REFERENCE);
    BOOST_TEST(r.status == RPA_STATUS_OK, r.message);
  }
  expect_rejected([](Prepared& p) { quantise(p, {1.0f, 2.0f, 3.0f}, {}); }, {"'k_scale'", "shape[0] is 3", "KVH = 2"});
  expect_rejected([](Prepared& p) { quantise(p, {}, {1.0f, -2.0f}); }, {"'v_scale'", "element [1]", "finite and > 0"});
  expect_rejected([](Prepared& p) { quantise(p, {0.0f}, {}); }, {"'k_scale'", "element [0]", "> 0"});
  expect_rejected([](Prepared& p) { quantise(p, {std::numeric_limits<float>::quiet_NaN()}, {}); }, {"'k_scale'", "element [0]"});
  expect_rejected([](Prepared& p) { quantise(p, {std::numeric_limits<float>::infinity()}, {}); }, {"'k_scale'", "element [0]"});
  expect_rejected([](Prepared& p) {
    quantise(p, {1.0f}, {});
    p.args.k_scale.dtype = RPA_DTYPE_F16;
  }, {"'k_scale'", "expected f32"});
  expect_rejected([](Prepared& p) {
    quantise(p, {1.0f}, {});
    p.args.k_scale.ndim = 2;
  }, {"'k_scale'", "ndim"});
  expect_rejected([](Prepared& p) {
    quantise(p, {}, {1.0f});
    p.args.kv_pages.dtype = RPA_DTYPE_BF16;
  }, {"'v_scale'", "not quantised"});
}

// The scales are tensors like any other (found by fuzz_args: they were read misaligned, through any
// stride, and outputs could overlap them).
BOOST_AUTO_TEST_CASE(scales_follow_every_tensor_rule) {
  expect_rejected([](Prepared& p) {
    quantise(p, {1.0f, 2.0f, 4.0f}, {});
    p.args.k_scale.shape[0] = 2;
    p.args.k_scale.data = reinterpret_cast<char*>(p.k_scale.data()) + 1;
  }, {"'k_scale'", "not aligned"});
  expect_rejected([](Prepared& p) {
    quantise(p, {}, {1.0f, 9.0f, 2.0f});
    p.args.v_scale.shape[0] = 2, p.args.v_scale.strides[0] = 2;
  }, {"'v_scale'", "strides[0] is 2", "contiguous"});
  expect_rejected([](Prepared& p) {
    quantise(p, {}, {});
    p.args.k_scale = rpa_tensor{nullptr, RPA_DTYPE_F32, 1, {1}, {1}};
  }, {"'k_scale'", "data is NULL"});
  // An output sharing bytes with a scale (its first element holds a valid scale, 1).
  expect_rejected([](Prepared& p) {
    quantise(p, {}, {});
    const float one = 1.0f;
    std::memcpy(p.out.data(), &one, sizeof one);
    p.args.v_scale = rpa_tensor{p.out.data(), RPA_DTYPE_F32, 1, {1}, {1}};
  }, {"'out'", "overlap", "'v_scale'"});
}

BOOST_AUTO_TEST_CASE(struct_size_must_be_plausible) {
  expect_rejected([](Prepared& p) { p.args.struct_size = 0; }, {"'args'", "struct_size"});
}

BOOST_AUTO_TEST_CASE(bad_context_options) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.num_threads = -2;
  rpa_context* context = nullptr;
  BOOST_TEST(rpa_context_create(&options, &context) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(context == nullptr);
  BOOST_TEST(std::string(rpa_last_error()).find("'options.num_threads'") != std::string::npos);
  options.num_threads = 0;
  set_enum(options.backend, 9);
  BOOST_TEST(rpa_context_create(&options, &context) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(std::string(rpa_last_error()).find("'options.backend'") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(last_error_is_per_thread) {
  expect_rejected([](Prepared& p) { p.args.sliding_window = -2; }, {"'sliding_window'"});
  std::string other;
  std::thread([&] { other = rpa_last_error(); }).join();
  BOOST_TEST(other.empty());
  BOOST_TEST(std::string(rpa_last_error()).find("'sliding_window'") != std::string::npos);
}

// The kernels compute in f32: a scale or cap outside the normal f32 magnitudes would turn into inf or
// lose its precision there (an outside test saw zero rows and NaN), so it is refused.
BOOST_AUTO_TEST_CASE(scale_and_cap_outside_the_normal_f32_range) {
  for (double scale : {1e39, -1e39, 1e300, 1e-39, -1e-300, 4.9e-324})
    expect_rejected([=](Prepared& p) { p.args.softmax_scale = scale; }, {"'softmax_scale'", "normal f32"});
  for (double cap : {1e39, 1e300, 1e-39, 1e-310})
    expect_rejected([=](Prepared& p) { p.args.logits_soft_cap = cap; }, {"'logits_soft_cap'", "normal f32"});
  // The edges of the accepted range run.
  for (double scale : {double{FLT_MIN}, -double{FLT_MIN}, double{FLT_MAX} / 1e30}) {
    Prepared p = valid();
    p.args.softmax_scale = scale;
    p.args.logits_soft_cap = FLT_MIN;
    BOOST_TEST(run_prepared(p, RPA_BACKEND_REFERENCE).status == RPA_STATUS_OK, "scale " << scale);
  }
}

BOOST_AUTO_TEST_CASE(misaligned_data_is_refused) {
  expect_rejected([](Prepared& p) { p.args.queries.data = p.queries.data() + 2; }, {"'queries'", "aligned", "4-byte"});
  expect_rejected([](Prepared& p) { p.args.out.data = p.out.data() + 1; }, {"'out'", "aligned"});
  expect_rejected([](Prepared& p) { p.args.context_lens.data = reinterpret_cast<char*>(p.context_lens.data()) + 2; },
                  {"'context_lens'", "aligned"});
}

// Every size is at most 2^31 - 1 (so W * page_size and the backends' int32 counts cannot wrap); the
// largest page_size runs, through a slot stride of 0 that makes every slot of a page the same bytes.
BOOST_AUTO_TEST_CASE(sizes_above_2_to_the_31_are_refused) {
  expect_rejected([](Prepared& p) { p.args.kv_pages.shape[1] = int64_t{1} << 31, p.args.kv_pages.strides[1] = 0; },
                  {"'kv_pages'", "shape[1]", "2147483648", "2^31 - 1"});
  expect_rejected([](Prepared& p) { p.args.block_tables.shape[1] = int64_t{1} << 52, p.args.block_tables.strides[1] = 0; },
                  {"'block_tables'", "shape[1]"});
  Prepared p = valid();
  const int64_t width = 4096;  // W * (2^31 - 1) > 2^42
  const int32_t first_page = p.block_tables[0];
  p.block_tables.assign(width, -1);
  p.block_tables[0] = first_page;
  p.args.block_tables.data = p.block_tables.data();
  p.args.block_tables.shape[0] = 1, p.args.block_tables.shape[1] = width;
  p.args.block_tables.strides[0] = width;
  p.args.kv_pages.shape[1] = INT32_MAX;
  p.args.kv_pages.strides[1] = 0;
  p.args.context_lens.shape[0] = 1;
  p.args.query_start_loc.shape[0] = 2;
  p.args.num_seqs = 1;
  const Result r = run_prepared(p, RPA_BACKEND_REFERENCE);
  BOOST_TEST(r.status == RPA_STATUS_OK, r.message);
}

BOOST_AUTO_TEST_CASE(element_count_times_size_overflow) {
  // (2^31 - 1) pages of 2^26 slots, both of stride 0, of 2 x 2 heads x 8: the byte extent is small, but
  // about 2^62 elements of 4 bytes are 2^64 bytes.
  expect_rejected(
      [](Prepared& p) {
        p.args.kv_pages.shape[0] = INT32_MAX, p.args.kv_pages.shape[1] = int64_t{1} << 26;
        p.args.kv_pages.strides[0] = p.args.kv_pages.strides[1] = 0;
      },
      {"'kv_pages'", "element count", "overflows"});
}

BOOST_AUTO_TEST_CASE(more_than_2_to_the_31_rows) {
  // 32769 tokens x 65536 q heads (D 8, zero strides: validation stops before any data is read).
  expect_rejected(
      [](Prepared& p) {
        p.args.queries.shape[0] = 32769, p.args.queries.shape[1] = 65536;
        p.args.queries.strides[0] = p.args.queries.strides[1] = 0;
      },
      {"'queries'", "T * QH", "2^31"});
}

BOOST_AUTO_TEST_CASE(outputs_must_not_overlap_inputs_or_each_other) {
  // In place (out = queries: same shape and dtype here) is refused: the backends write rows while others
  // still read their queries.
  expect_rejected([](Prepared& p) { p.args.out.data = p.args.queries.data; }, {"'out'", "overlap", "'queries'"});
  expect_rejected([](Prepared& p) { p.args.out.data = p.kv.data(); }, {"'out'", "overlap", "'kv_pages'"});
  expect_rejected(
      [](Prepared& p) {
        p.block_tables.resize(1000);  // room for lse inside, so that it overlaps nothing else
        p.args.block_tables.data = p.block_tables.data();
        p.args.lse.data = p.block_tables.data() + 4;
      },
      {"'lse'", "overlap", "'block_tables'"});
  expect_rejected([](Prepared& p) { p.args.lse.data = p.out.data() + 4 * 8; }, {"'out'", "overlap", "'lse'"});
  // An output spanning another buffer partially (its last row over the first query) is caught too.
  expect_rejected(
      [](Prepared& p) {
        p.queries.resize(p.queries.size() + p.out.size());
        p.args.queries.data = p.queries.data();
        p.args.out.data = p.queries.data() + p.out.size() - 4;
      },
      {"'out'", "overlap", "'queries'"});
}

BOOST_AUTO_TEST_CASE(outputs_must_not_reach_an_element_twice) {
  expect_rejected([](Prepared& p) { p.args.out.strides[0] = 0; }, {"'out'", "strides[0]", "more than once"});
  expect_rejected([](Prepared& p) { p.args.out.strides[1] = 4; }, {"'out'", "strides[1] = 4", "more than once"});
  expect_rejected([](Prepared& p) { p.args.lse.strides[0] = 1; }, {"'lse'", "more than once"});
}

BOOST_AUTO_TEST_CASE(num_threads_is_capped_at_the_hardware_concurrency) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_SIMD;
  options.num_threads = 100000;
  rpa_context* context = nullptr;
  if (!rpa_backend_available(RPA_BACKEND_SIMD)) return;
  BOOST_TEST_REQUIRE(rpa_context_create(&options, &context) == RPA_STATUS_OK, rpa_last_error());
  int32_t threads = 0;
  BOOST_TEST(rpa_context_get_num_threads(context, &threads) == RPA_STATUS_OK);
  const int32_t cores = static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
  BOOST_TEST(threads >= 1);
  BOOST_TEST(threads <= cores);
  rpa_context_destroy(context);
}
