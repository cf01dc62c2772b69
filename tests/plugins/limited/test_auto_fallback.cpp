// rpa_context_supports and the AUTO policy against a fake GPU that runs only head_dim <= 64 and writes
// FAKE_LIMITED_MARKER into every output (tests/plugins/fake_plugin.c): the only plugin on RPA_PLUGIN_PATH.
#define BOOST_TEST_MODULE auto_fallback
#include <boost/test/unit_test.hpp>

#include <string>

#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

Case case_with_head_dim(int64_t head_dim) {
  RandomSpec spec;
  spec.q_lens = {3, 1};
  spec.context_lens = {9, 6};
  spec.head_dim = head_dim;
  return random_case(spec, 5);
}

bool all_equal(const std::vector<float>& values, float expected) {
  for (float value : values)
    if (value != expected) return false;
  return !values.empty();
}

}  // namespace

BOOST_AUTO_TEST_CASE(auto_resolves_to_the_usable_plugin) {
  BOOST_TEST(rpa_backend_available(RPA_BACKEND_GPU) == 1);
  const OwnedContext auto_context(RPA_BACKEND_AUTO);
  rpa_backend backend = RPA_BACKEND_AUTO;
  BOOST_TEST_REQUIRE(rpa_context_get_backend(auto_context.context, &backend) == RPA_STATUS_OK);
  BOOST_TEST(backend == RPA_BACKEND_GPU);
}

BOOST_AUTO_TEST_CASE(supports_says_yes_and_the_gpu_runs_what_it_supports) {
  Prepared prepared = prepare(case_with_head_dim(64));
  const OwnedContext gpu(RPA_BACKEND_GPU);
  BOOST_TEST(rpa_context_supports(gpu.context, &prepared.args) == RPA_STATUS_OK, rpa_last_error());
  for (rpa_backend backend : {RPA_BACKEND_GPU, RPA_BACKEND_AUTO}) {
    const Result result = run_case(case_with_head_dim(64), backend);
    BOOST_TEST_REQUIRE(result.status == RPA_STATUS_OK, result.message);
    BOOST_TEST(all_equal(result.out, FAKE_LIMITED_MARKER), "the fake GPU did not run the call");
  }
}

BOOST_AUTO_TEST_CASE(supports_says_no_with_the_plugins_reason) {
  Prepared prepared = prepare(case_with_head_dim(128));
  for (rpa_backend backend : {RPA_BACKEND_GPU, RPA_BACKEND_AUTO}) {
    const OwnedContext context(backend);
    BOOST_TEST(rpa_context_supports(context.context, &prepared.args) == RPA_STATUS_UNSUPPORTED);
    const std::string message = rpa_last_error();
    BOOST_TEST(message == "fake-limited plugin: head_dim 128 is above this fake device's 64", message);
  }
  // A CPU context runs everything valid.
  const OwnedContext simd(rpa_backend_available(RPA_BACKEND_SIMD) ? RPA_BACKEND_SIMD : RPA_BACKEND_REFERENCE);
  BOOST_TEST(rpa_context_supports(simd.context, &prepared.args) == RPA_STATUS_OK, rpa_last_error());
}

BOOST_AUTO_TEST_CASE(supports_rejects_invalid_args_like_plan_create) {
  Prepared prepared = prepare(case_with_head_dim(16));
  prepared.args.num_seqs = -1;
  const OwnedContext gpu(RPA_BACKEND_GPU);
  BOOST_TEST(rpa_context_supports(gpu.context, &prepared.args) == RPA_STATUS_INVALID_ARGUMENT);
  const std::string supports_message = rpa_last_error();
  rpa_plan* plan = nullptr;
  BOOST_TEST(rpa_plan_create(gpu.context, &prepared.args, &plan) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(plan == nullptr);
  BOOST_TEST(supports_message == std::string(rpa_last_error()));
  BOOST_TEST(supports_message.find("num_seqs") != std::string::npos, supports_message);
}

BOOST_AUTO_TEST_CASE(auto_falls_back_to_the_cpu_for_what_the_gpu_cannot_run) {
  const Case c = case_with_head_dim(128);
  const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
  BOOST_TEST_REQUIRE(expected.status == RPA_STATUS_OK, expected.message);

  const Result one_call = run_case(c, RPA_BACKEND_AUTO);
  BOOST_TEST_REQUIRE(one_call.status == RPA_STATUS_OK, one_call.message);
  BOOST_TEST(max_abs_diff(one_call.out, expected.out) <= 2e-5);
  BOOST_TEST(max_abs_diff(one_call.lse, expected.lse) <= 2e-5);

  // A plan of an AUTO context takes the same route, and runs again with the same result.
  Prepared prepared = prepare(c);
  const OwnedContext auto_context(RPA_BACKEND_AUTO);
  rpa_plan* plan = nullptr;
  BOOST_TEST_REQUIRE(rpa_plan_create(auto_context.context, &prepared.args, &plan) == RPA_STATUS_OK, rpa_last_error());
  for (int run = 0; run < 2; ++run) {
    BOOST_TEST_REQUIRE(rpa_plan_run(plan, &prepared.args) == RPA_STATUS_OK, rpa_last_error());
    const float* out = static_cast<const float*>(prepared.args.out.data);
    BOOST_TEST(max_abs_diff(std::vector<float>(out, out + one_call.out.size()), one_call.out) == 0.0);
  }
  rpa_plan_destroy(plan);
}

BOOST_AUTO_TEST_CASE(an_explicit_gpu_context_does_not_fall_back) {
  const Result result = run_case(case_with_head_dim(128), RPA_BACKEND_GPU);
  BOOST_TEST(result.status == RPA_STATUS_UNSUPPORTED);
  BOOST_TEST(result.message == "fake-limited plugin: head_dim 128 is above this fake device's 64", result.message);
}

// The fake's table ends before the optional entries (an older plugin): device metadata is refused cleanly.
BOOST_AUTO_TEST_CASE(a_plugin_without_the_optional_entries_refuses_device_metadata) {
  Prepared prepared = prepare(case_with_head_dim(16));
  prepared.args.memory = RPA_MEMORY_DEVICE;  // validation reads no device data
  prepared.args.metadata_memory = RPA_MEMORY_DEVICE;
  const OwnedContext gpu(RPA_BACKEND_GPU);
  BOOST_TEST(rpa_context_supports(gpu.context, &prepared.args) == RPA_STATUS_UNSUPPORTED);
  BOOST_TEST(std::string(rpa_last_error()) == "argument 'metadata_memory': the fake-limited plugin predates device metadata",
             rpa_last_error());
  rpa_plan* plan = nullptr;
  BOOST_TEST(rpa_plan_create(gpu.context, &prepared.args, &plan) == RPA_STATUS_UNSUPPORTED);
  BOOST_TEST(plan == nullptr);
}
