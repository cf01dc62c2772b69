// rpa_plan_create / rpa_plan_run / rpa_plan_destroy on every available backend: a plan run with new
// tensors gives bitwise the output of a one-call rpa_attention on the same data; one plan serves several
// threads; the plan keeps its own metadata; a run's tensors must have the plan's layout.
#define BOOST_TEST_MODULE plan
#include <boost/test/unit_test.hpp>

#include <cstring>
#include <random>
#include <thread>

#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

// Decodes and chunked prefills with splits (long contexts), a window and sinks, bf16 queries and KV.
Case mixed_case(uint64_t seed, rpa_dtype dtype, bool strided) {
  RandomSpec spec;
  spec.q_lens = {1, 7, 1, 40, 0, 1};
  spec.context_lens = {700, 300, 1, 1200, 9, 2500};
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size = 16;
  spec.padding_tokens = 3;
  spec.padding_seqs = 1;
  Case c = random_case(spec, seed);
  c.query_dtype = c.kv_dtype = c.out_dtype = dtype;
  c.strided = strided;
  c.sliding_window = 1000;
  c.sink_heads = 2;
  c.sinks_per_head = 1;
  c.sinks = {0.5f, -1.0f};
  c.round_to_dtypes();
  return c;
}

// The same metadata with other queries and KV values.
Case with_new_values(Case c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : c.queries) x = normal(rng);
  for (float& x : c.kv) x = normal(rng);
  c.round_to_dtypes();
  return c;
}

struct Plan {
  rpa_plan* plan = nullptr;
  Plan(rpa_context* context, const rpa_attention_args& args) {
    BOOST_TEST_REQUIRE(rpa_plan_create(context, &args, &plan) == RPA_STATUS_OK, rpa_last_error());
  }
  ~Plan() { rpa_plan_destroy(plan); }
};

// One-call output bytes of `c` on `context`.
Prepared one_call(rpa_context* context, const Case& c) {
  Prepared p = prepare(c);
  BOOST_TEST_REQUIRE(rpa_attention(context, &p.args) == RPA_STATUS_OK, rpa_last_error());
  return p;
}

void expect_same_output(const Prepared& got, const Prepared& expected) {
  BOOST_TEST((got.out == expected.out), "out differs from the one-call output");
  BOOST_TEST(std::memcmp(got.lse.data(), expected.lse.data(), expected.lse.size() * sizeof(float)) == 0,
             "lse differs from the one-call output");
}

std::string run_error(rpa_plan* plan, const rpa_attention_args& args) {
  const rpa_status status = rpa_plan_run(plan, &args);
  BOOST_TEST(status == RPA_STATUS_INVALID_ARGUMENT);
  return rpa_last_error();
}

}  // namespace

BOOST_AUTO_TEST_CASE(plan_reuse_with_new_tensors_is_bitwise_the_one_call_output) {
  for (rpa_backend backend : available_backends())
    for (rpa_dtype dtype : {RPA_DTYPE_BF16, RPA_DTYPE_F32})
      for (bool strided : {false, true}) {
        BOOST_TEST_CONTEXT(rpa_backend_string(backend) << " dtype " << dtype << " strided " << strided) {
          OwnedContext context(backend);
          const Case base = mixed_case(5, dtype, strided);
          Prepared planned = prepare(base);
          // The plan sees no float data at all.
          rpa_attention_args layout_only = planned.args;
          for (rpa_tensor* t : {&layout_only.queries, &layout_only.kv_pages, &layout_only.out, &layout_only.lse,
                                &layout_only.softmax_aux})
            t->data = nullptr;
          Plan plan(context.context, layout_only);
          for (uint64_t layer = 0; layer < 3; ++layer) {
            const Case values = with_new_values(base, 100 + layer);
            Prepared run = prepare(values);
            BOOST_TEST_REQUIRE(rpa_plan_run(plan.plan, &run.args) == RPA_STATUS_OK, rpa_last_error());
            expect_same_output(run, one_call(context.context, values));
          }
        }
      }
}

BOOST_AUTO_TEST_CASE(one_plan_runs_from_four_threads_at_once) {
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT(rpa_backend_string(backend)) {
      OwnedContext context(backend);
      const Case base = mixed_case(9, RPA_DTYPE_BF16, false);
      Prepared first = prepare(base);
      Plan plan(context.context, first.args);
      std::vector<Case> cases;
      std::vector<Prepared> runs;
      for (uint64_t i = 0; i < 4; ++i) cases.push_back(with_new_values(base, 200 + i));
      for (const Case& c : cases) runs.push_back(prepare(c));
      std::vector<rpa_status> statuses(runs.size(), RPA_STATUS_OK);
      std::vector<std::thread> threads;
      for (size_t i = 0; i < runs.size(); ++i)
        threads.emplace_back([&, i] {
          for (int repeat = 0; repeat < 5 && statuses[i] == RPA_STATUS_OK; ++repeat)
            statuses[i] = rpa_plan_run(plan.plan, &runs[i].args);
        });
      for (std::thread& t : threads) t.join();
      for (size_t i = 0; i < runs.size(); ++i) {
        BOOST_TEST_REQUIRE(statuses[i] == RPA_STATUS_OK);
        expect_same_output(runs[i], one_call(context.context, cases[i]));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(the_plan_keeps_its_own_metadata) {
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT(rpa_backend_string(backend)) {
      OwnedContext context(backend);
      const Case c = mixed_case(13, RPA_DTYPE_F32, false);
      Prepared p = prepare(c);
      Plan plan(context.context, p.args);
      // The caller reuses its metadata arrays for the next step; the plan must not see it.
      std::fill(p.context_lens.begin(), p.context_lens.end(), -5);
      std::fill(p.block_tables.begin(), p.block_tables.end(), 1 << 30);
      std::fill(p.query_start_loc.begin(), p.query_start_loc.end(), 99999);
      BOOST_TEST_REQUIRE(rpa_plan_run(plan.plan, &p.args) == RPA_STATUS_OK, rpa_last_error());
      expect_same_output(p, one_call(context.context, c));
    }
  }
}

BOOST_AUTO_TEST_CASE(a_run_must_match_the_plan) {
  OwnedContext context(RPA_BACKEND_REFERENCE);
  const Case c = mixed_case(17, RPA_DTYPE_F32, false);
  Prepared p = prepare(c);
  Plan plan(context.context, p.args);
  const std::vector<uint8_t> out_before = p.out;
  const auto broken = [&](auto&& change) {
    rpa_attention_args args = p.args;
    change(args);
    return run_error(plan.plan, args);
  };
  BOOST_TEST(broken([](rpa_attention_args& a) { a.queries.data = nullptr; }).find("'queries': data is NULL") !=
             std::string::npos);
  const std::string shape = broken([](rpa_attention_args& a) { a.queries.shape[0] -= 1, a.out.shape[0] -= 1, a.lse.shape[0] -= 1; });
  BOOST_TEST(shape.find("'queries': shape[0] is") != std::string::npos, shape);
  BOOST_TEST(shape.find("the plan was made for") != std::string::npos, shape);
  const std::string strides = broken([](rpa_attention_args& a) { a.out.strides[0] += 8; });
  BOOST_TEST(strides.find("'out': strides[0]") != std::string::npos, strides);
  const std::string dtype = broken([](rpa_attention_args& a) { a.out.dtype = RPA_DTYPE_F16; });
  BOOST_TEST(dtype.find("'out': dtype is f16, but the plan was made for f32") != std::string::npos, dtype);
  const std::string lse = broken([](rpa_attention_args& a) { a.lse = rpa_tensor{}; });
  BOOST_TEST(lse.find("'lse': absent at run time but given when the plan was made") != std::string::npos, lse);
  const std::string memory = broken([](rpa_attention_args& a) { a.memory = RPA_MEMORY_DEVICE; });
  BOOST_TEST(memory.find("'memory'") != std::string::npos, memory);
  const std::string scale = broken([](rpa_attention_args& a) { a.softmax_scale = 1.0 / 0.0; });
  BOOST_TEST(scale.find("'softmax_scale'") != std::string::npos, scale);
  BOOST_TEST((p.out == out_before), "a rejected run wrote its output");
  // Metadata fields of a run are not read: the plan's copy serves.
  rpa_attention_args args = p.args;
  args.context_lens.data = nullptr;
  args.num_seqs = -3;
  BOOST_TEST(rpa_plan_run(plan.plan, &args) == RPA_STATUS_OK, rpa_last_error());
}

BOOST_AUTO_TEST_CASE(null_handles) {
  OwnedContext context(RPA_BACKEND_REFERENCE);
  Prepared p = prepare(mixed_case(19, RPA_DTYPE_F32, false));
  rpa_plan* plan = reinterpret_cast<rpa_plan*>(&p);
  BOOST_TEST(rpa_plan_create(nullptr, &p.args, &plan) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(plan == nullptr);
  BOOST_TEST(std::string(rpa_last_error()).find("'context'") != std::string::npos);
  BOOST_TEST(rpa_plan_create(context.context, nullptr, &plan) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(rpa_plan_create(context.context, &p.args, nullptr) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(rpa_plan_run(nullptr, &p.args) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(std::string(rpa_last_error()).find("'plan'") != std::string::npos);
  rpa_plan_destroy(nullptr);
}

BOOST_AUTO_TEST_CASE(plan_time_reports_every_run) {
  for (rpa_backend backend : available_backends()) {
    OwnedContext context(backend);
    Prepared p = prepare(mixed_case(23, RPA_DTYPE_BF16, false));
    Plan plan(context.context, p.args);
    std::vector<double> ms(4, -1.0);
    BOOST_TEST_REQUIRE(rpa_plan_time(plan.plan, &p.args, 4, ms.data()) == RPA_STATUS_OK, rpa_last_error());
    for (double m : ms) BOOST_TEST(m > 0.0);
    BOOST_TEST(rpa_plan_time(plan.plan, &p.args, 0, ms.data()) == RPA_STATUS_INVALID_ARGUMENT);
  }
}
