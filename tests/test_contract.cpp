// The contract, checked on every available backend: small cases computed by hand, then properties
// that must hold whatever the implementation (page order, GQA, windows, sinks, layouts, dtypes...).
#define BOOST_TEST_MODULE contract
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <thread>

#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

const double inf = std::numeric_limits<double>::infinity();

// f32 agreement between backends and between equivalent problems (the contract's 2e-5 bound).
constexpr double kTolerance = 2e-5;

// One sequence of two keys and one query at position 1, D = 2, scale 1:
//   q = (1, 0); k0 = (0, 0) -> score 0; k1 = (ln 3, 0) -> score ln 3
//   weights 1/4 and 3/4; v0 = (4, 0), v1 = (0, 8) -> out = (1, 6); lse = ln(1 + 3) = ln 4.
// Page 0 holds token 1 and page 1 token 0 (page_size 1), so the block table is followed.
Case two_key_case() {
  Case c;
  c.num_tokens = 1;
  c.head_dim = 2;
  c.num_pages = 2;
  c.page_size = 1;
  c.pages_per_seq = 2;
  c.num_seqs = 1;
  c.softmax_scale = 1.0;
  c.queries = {1, 0};
  c.kv.assign(2 * 1 * 2 * 2, 0.0f);
  c.k(1, 0, 0, 0) = 0, c.k(1, 0, 0, 1) = 0;
  c.v(1, 0, 0, 0) = 4, c.v(1, 0, 0, 1) = 0;
  c.k(0, 0, 0, 0) = static_cast<float>(std::log(3.0)), c.k(0, 0, 0, 1) = 0;
  c.v(0, 0, 0, 0) = 0, c.v(0, 0, 0, 1) = 8;
  c.context_lens = {2};
  c.block_tables = {1, 0};
  c.query_start_loc = {0, 1};
  return c;
}

void check_close(const std::vector<float>& got, const std::vector<double>& expected, double tolerance,
                 const char* what) {
  BOOST_TEST_REQUIRE(got.size() == expected.size());
  for (size_t i = 0; i < got.size(); ++i)
    BOOST_TEST(std::abs(got[i] - expected[i]) <= tolerance, what << "[" << i << "] = " << got[i] << ", expected "
                                                                  << expected[i]);
}

Result run_ok(const Case& c, rpa_backend backend) {
  Result r = run_case(c, backend);
  BOOST_TEST_REQUIRE(r.status == RPA_STATUS_OK, rpa_backend_string(backend) << ": " << r.message);
  return r;
}

// Runs a hand-computed case on every backend and compares out and lse with the hand's numbers.
void check_by_hand(const Case& c, const std::vector<double>& out, const std::vector<double>& lse) {
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT("backend " << rpa_backend_string(backend)) {
      const Result r = run_ok(c, backend);
      check_close(r.out, out, 1e-6, "out");
      check_close(r.lse, lse, 1e-6, "lse");
    }
  }
}

// Runs `a` and `b` on every backend and requires equal outputs (and lse) within tolerance.
void check_equivalent(const Case& a, const Case& b, double tolerance = kTolerance) {
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT("backend " << rpa_backend_string(backend)) {
      const Result ra = run_ok(a, backend), rb = run_ok(b, backend);
      BOOST_TEST(max_abs_diff(ra.out, rb.out) <= tolerance);
      BOOST_TEST(max_abs_diff(ra.lse, rb.lse) <= tolerance);
    }
  }
}

RandomSpec mixed_spec() {
  RandomSpec spec;
  spec.q_lens = {1, 5, 0, 3};
  spec.context_lens = {9, 5, 4, 13};
  return spec;
}

}  // namespace

BOOST_AUTO_TEST_CASE(two_keys_by_hand) {
  check_by_hand(two_key_case(), {1.0, 6.0}, {std::log(4.0)});
}

BOOST_AUTO_TEST_CASE(sink_by_hand) {
  // A sink of ln 4 adds 4 to the denominator 1 + 3: out = (4 * 1/8, 8 * 3/8) = (0.5, 3); lse = ln 8.
  Case c = two_key_case();
  c.sinks = {static_cast<float>(std::log(4.0))};
  c.sink_heads = c.sinks_per_head = 1;
  check_by_hand(c, {0.5, 3.0}, {std::log(8.0)});
}

BOOST_AUTO_TEST_CASE(soft_cap_by_hand) {
  // Cap 1: scores 0 and tanh(ln 3) = (9 - 1) / (9 + 1) = 0.8; w1 = e^0.8 / (1 + e^0.8).
  Case c = two_key_case();
  c.logits_soft_cap = 1.0;
  const double w1 = std::exp(0.8) / (1 + std::exp(0.8));
  check_by_hand(c, {4 * (1 - w1), 8 * w1}, {std::log(1 + std::exp(0.8))});
}

BOOST_AUTO_TEST_CASE(window_of_one_sees_only_its_own_position) {
  // Window 1 at position 1 keeps key 1 only: out = v1 = (0, 8), lse = ln 3.
  Case c = two_key_case();
  c.sliding_window = 1;
  check_by_hand(c, {0.0, 8.0}, {std::log(3.0)});
}

BOOST_AUTO_TEST_CASE(default_scale_is_inverse_sqrt_head_dim) {
  // Scale 1/sqrt(2) on scores (0, ln 3): weights 1 : 3^(1/sqrt 2); lse = ln(1 + 3^(1/sqrt 2)).
  Case c = two_key_case();
  c.softmax_scale = 0;
  const double e = std::pow(3.0, 1 / std::sqrt(2.0)), w1 = e / (1 + e);
  check_by_hand(c, {4 * (1 - w1), 8 * w1}, {std::log(1 + e)});
}

BOOST_AUTO_TEST_CASE(padding_rows_are_zero_even_with_sinks) {
  // A covered row always sees its own position, so only rows no sequence covers are keyless:
  // T = 3 with one covered row; rows 1 and 2 must be 0 with lse -inf, even with sinks.
  Case c = two_key_case();
  c.num_tokens = 3;
  c.queries = {1, 0, 5, 5, 7, 7};
  c.sinks = {0.5f};
  c.sink_heads = c.sinks_per_head = 1;
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT("backend " << rpa_backend_string(backend)) {
      const Result r = run_ok(c, backend);
      BOOST_TEST_REQUIRE(r.out.size() == 6u);
      for (int i = 2; i < 6; ++i) BOOST_TEST(r.out[i] == 0.0f);
      BOOST_TEST(r.lse[1] == -inf);
      BOOST_TEST(r.lse[2] == -inf);
    }
  }
}

BOOST_AUTO_TEST_CASE(minus_infinity_sinks_by_hand) {
  // Two sinks of -inf add exp(-inf) = 0 to the denominator: out and lse stay (1, 6) and ln 4.
  Case c = two_key_case();
  c.sinks = {-std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  c.sink_heads = 1;
  c.sinks_per_head = 2;
  check_by_hand(c, {1.0, 6.0}, {std::log(4.0)});
}

BOOST_AUTO_TEST_CASE(backends_agree_with_reference) {
  const auto backends = available_backends();
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    RandomSpec spec = mixed_spec();
    spec.padding_tokens = 2;
    spec.padding_seqs = 2;
    Case c = random_case(spec, seed);
    c.sliding_window = seed % 2 ? 0 : 4;
    c.logits_soft_cap = seed % 3 ? 0 : 2.5;
    const Result expected = run_ok(c, RPA_BACKEND_REFERENCE);
    for (rpa_backend backend : backends) {
      BOOST_TEST_CONTEXT("seed " << seed << " backend " << rpa_backend_string(backend)) {
        const Result r = run_ok(c, backend);
        BOOST_TEST(max_abs_diff(r.out, expected.out) <= kTolerance);
        BOOST_TEST(max_abs_diff(r.lse, expected.lse) <= kTolerance);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(page_order_does_not_matter) {
  Case a = random_case(mixed_spec(), 11);
  // Move every page to a new slot of the pool (reversed) and rewrite the block tables accordingly.
  Case b = a;
  const int64_t page_elems = a.page_size * 2 * a.num_kv_heads * a.head_dim;
  for (int64_t p = 0; p < a.num_pages; ++p)
    std::copy_n(a.kv.begin() + p * page_elems, page_elems, b.kv.begin() + (a.num_pages - 1 - p) * page_elems);
  for (int32_t& entry : b.block_tables)
    if (entry >= 0 && entry < a.num_pages) entry = static_cast<int32_t>(a.num_pages - 1 - entry);
  check_equivalent(a, b);
}

BOOST_AUTO_TEST_CASE(gqa_equals_repeated_kv_heads) {
  RandomSpec spec = mixed_spec();
  spec.num_q_heads = 6;
  spec.num_kv_heads = 2;
  Case gqa = random_case(spec, 21);
  // MHA: kv head h of the MHA case is kv head h / 3 of the GQA case.
  Case mha = gqa;
  mha.num_kv_heads = 6;
  mha.kv.assign(mha.num_pages * mha.page_size * 2 * 6 * mha.head_dim, 0.0f);
  for (int64_t p = 0; p < gqa.num_pages; ++p)
    for (int64_t s = 0; s < gqa.page_size; ++s)
      for (int64_t h = 0; h < 6; ++h)
        for (int64_t d = 0; d < gqa.head_dim; ++d) {
          mha.k(p, s, h, d) = gqa.k(p, s, h / 3, d);
          mha.v(p, s, h, d) = gqa.v(p, s, h / 3, d);
        }
  check_equivalent(gqa, mha);
}

BOOST_AUTO_TEST_CASE(single_sequence_equals_dense_causal_attention) {
  // Dense causal attention over contiguous K/V, computed here in double, independent of rpa.
  RandomSpec spec;
  spec.q_lens = {6};
  spec.context_lens = {10};
  spec.num_q_heads = 2;
  spec.num_kv_heads = 1;
  spec.head_dim = 8;
  spec.page_size = 3;
  const Case c = random_case(spec, 31);
  const int64_t L = 10, Q = 6, D = 8;
  std::vector<double> expected;
  for (int64_t i = 0; i < Q; ++i)
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t pos = L - Q + i;
      std::vector<double> scores;
      double max_score = -inf;
      for (int64_t j = 0; j <= pos; ++j) {
        const int64_t page = c.block_tables[j / 3], slot = j % 3;
        double dot = 0;
        for (int64_t d = 0; d < D; ++d)
          dot += double{c.queries[(i * 2 + h) * D + d]} * c.kv[c.kv_index(page, slot, 0, d)];
        scores.push_back(dot / std::sqrt(double(D)));
        max_score = std::max(max_score, scores.back());
      }
      double sum = 0;
      for (double& s : scores) sum += (s = std::exp(s - max_score));
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0;
        for (int64_t j = 0; j <= pos; ++j) acc += scores[j] / sum * c.kv[c.kv_index(c.block_tables[j / 3], j % 3, 1, d)];
        expected.push_back(acc);
      }
    }
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT("backend " << rpa_backend_string(backend)) {
      check_close(run_ok(c, backend).out, expected, kTolerance, "out");
    }
  }
}

BOOST_AUTO_TEST_CASE(window_covering_the_context_equals_no_window) {
  Case a = random_case(mixed_spec(), 41);
  Case b = a;
  b.sliding_window = 13;  // the longest context
  check_equivalent(a, b);
}

BOOST_AUTO_TEST_CASE(minus_infinity_sink_equals_no_sink) {
  Case a = random_case(mixed_spec(), 51);
  Case b = a;
  b.sinks.assign(4, -std::numeric_limits<float>::infinity());
  b.sink_heads = 4;  // per q head
  b.sinks_per_head = 1;
  check_equivalent(a, b);
}

BOOST_AUTO_TEST_CASE(sink_shapes_shared_per_kv_head_and_per_q_head_agree) {
  // Shared sinks [1, 2] equal per-kv-head sinks [KVH, 2] and per-q-head sinks [QH, 2] repeating them.
  Case shared = random_case(mixed_spec(), 52);
  shared.sinks = {0.3f, -1.2f};
  shared.sink_heads = 1;
  shared.sinks_per_head = 2;
  Case per_kv = shared, per_q = shared;
  per_kv.sinks = {0.3f, -1.2f, 0.3f, -1.2f};
  per_kv.sink_heads = 2;
  per_q.sinks.clear();
  for (int h = 0; h < 4; ++h) per_q.sinks.insert(per_q.sinks.end(), {0.3f, -1.2f});
  per_q.sink_heads = 4;
  check_equivalent(shared, per_kv);
  check_equivalent(shared, per_q);
}

BOOST_AUTO_TEST_CASE(huge_soft_cap_approaches_none) {
  Case a = random_case(mixed_spec(), 61);
  Case b = a;
  b.logits_soft_cap = 1e6;  // tanh(x / c) * c = x (1 - x^2 / 3c^2): relative change ~1e-12
  check_equivalent(a, b);
}

BOOST_AUTO_TEST_CASE(combined_and_separate_strided_layouts_agree) {
  Case a = random_case(mixed_spec(), 71);
  Case b = a;
  b.separate_kv = true;
  b.strided = true;
  check_equivalent(a, b);
}

BOOST_AUTO_TEST_CASE(half_precision_inputs_equal_f32_holding_the_same_values) {
  for (rpa_dtype dtype : {RPA_DTYPE_F16, RPA_DTYPE_BF16}) {
    BOOST_TEST_CONTEXT("dtype " << dtype) {
      Case half = random_case(mixed_spec(), 81);
      half.query_dtype = half.kv_dtype = dtype;
      half.round_to_dtypes();
      Case single = half;
      single.query_dtype = single.kv_dtype = RPA_DTYPE_F32;
      check_equivalent(half, single);
    }
  }
}

BOOST_AUTO_TEST_CASE(half_precision_outputs_are_rounded_f32_outputs) {
  const Case single = random_case(mixed_spec(), 82);
  for (rpa_dtype dtype : {RPA_DTYPE_F16, RPA_DTYPE_BF16}) {
    Case half = single;
    half.out_dtype = dtype;
    // One rounding of |x| < 4 to 11 (f16) or 8 (bf16) significant bits, plus f32 noise.
    const double tolerance = dtype == RPA_DTYPE_F16 ? 4.0 / 2048 : 4.0 / 256;
    for (rpa_backend backend : available_backends()) {
      BOOST_TEST_CONTEXT("dtype " << dtype << " backend " << rpa_backend_string(backend)) {
        BOOST_TEST(max_abs_diff(run_ok(half, backend).out, run_ok(single, backend).out) <= tolerance);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(invisible_kv_values_never_matter) {
  // random_case already fills unused pages and slots with NaN/Inf; here the keys outside the window,
  // which are real values, are overwritten with NaN too: the windowed result must not change.
  Case a = random_case(mixed_spec(), 91);
  a.sliding_window = 2;
  Case b = a;
  for (int32_t s = 0; s < a.num_seqs; ++s) {
    const int64_t q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
    const int64_t first_visible = std::max<int64_t>(0, a.context_lens[s] - q_len - a.sliding_window + 1);
    for (int64_t j = 0; j < (q_len ? first_visible : a.context_lens[s]); ++j)
      for (int64_t h = 0; h < a.num_kv_heads; ++h)
        for (int64_t d = 0; d < a.head_dim; ++d) {
          const int32_t page = a.block_tables[s * a.pages_per_seq + j / a.page_size];
          b.k(page, j % a.page_size, h, d) = std::numeric_limits<float>::quiet_NaN();
          b.v(page, j % a.page_size, h, d) = std::numeric_limits<float>::quiet_NaN();
        }
  }
  check_equivalent(a, b, 0.0);
}

BOOST_AUTO_TEST_CASE(zero_length_queries_and_padding_sequences) {
  // Sequences with q_len 0 write nothing; sequences beyond num_seqs are never read (their context_lens
  // are invalid on purpose); rows after the last covered row are 0 with lse -inf.
  RandomSpec spec;
  spec.q_lens = {0, 2, 0};
  spec.context_lens = {5, 7, 0};
  spec.padding_tokens = 3;
  spec.padding_seqs = 3;
  const Case c = random_case(spec, 101);
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT("backend " << rpa_backend_string(backend)) {
      const Result r = run_ok(c, backend);
      const size_t row = c.num_q_heads * c.head_dim;
      for (size_t i = 2 * row; i < r.out.size(); ++i) BOOST_TEST_REQUIRE(r.out[i] == 0.0f);
      for (size_t i = 2 * c.num_q_heads; i < r.lse.size(); ++i) BOOST_TEST_REQUIRE(r.lse[i] == -inf);
      for (size_t i = 0; i < 2 * row; ++i) BOOST_TEST_REQUIRE(std::isfinite(r.out[i]));
    }
  }
}

BOOST_AUTO_TEST_CASE(num_seqs_zero_writes_all_rows_zero) {
  Case c = random_case(mixed_spec(), 111);
  c.num_seqs = 0;
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT("backend " << rpa_backend_string(backend)) {
      const Result r = run_ok(c, backend);
      for (float x : r.out) BOOST_TEST_REQUIRE(x == 0.0f);
      for (float x : r.lse) BOOST_TEST_REQUIRE(x == -inf);
    }
  }
}

BOOST_AUTO_TEST_CASE(one_context_serves_several_threads_at_once) {
  RandomSpec spec = mixed_spec();
  spec.context_lens = {90, 5, 4, 130};
  const Case c = random_case(spec, 121);
  for (rpa_backend backend : available_backends()) {
    BOOST_TEST_CONTEXT("backend " << rpa_backend_string(backend)) {
      const Result expected = run_ok(c, backend);
      rpa_context_options options;
      rpa_context_options_init(&options);
      options.backend = backend;
      rpa_context* context = nullptr;
      BOOST_TEST_REQUIRE(rpa_context_create(&options, &context) == RPA_STATUS_OK);
      std::vector<Prepared> calls;
      for (int i = 0; i < 4; ++i) calls.push_back(prepare(c));
      std::vector<rpa_status> statuses(calls.size());
      std::vector<std::thread> threads;
      for (size_t i = 0; i < calls.size(); ++i)
        threads.emplace_back([&, i] {
          for (int repeat = 0; repeat < 5 && statuses[i] == RPA_STATUS_OK; ++repeat)
            statuses[i] = rpa_attention(context, &calls[i].args);
        });
      for (std::thread& t : threads) t.join();
      rpa_context_destroy(context);
      for (size_t i = 0; i < calls.size(); ++i) {
        BOOST_TEST_REQUIRE(statuses[i] == RPA_STATUS_OK);
        // The case is f32 and unstrided: out is dense, and must equal the lone call's bit for bit.
        const Prepared& p = calls[i];
        std::vector<float> out;
        for (int64_t e = 0; e < c.num_tokens * c.num_q_heads * c.head_dim; ++e)
          out.push_back(reinterpret_cast<const float*>(p.out.data())[e]);
        BOOST_TEST(max_abs_diff(out, expected.out) == 0.0);
      }
    }
  }
}

// The reference rounds its double result once into a 16-bit out (the contract's "rounded once"). Two
// keys with score 0 average their values exactly in double; each pair sits where rounding to f32 first
// lands on a 16-bit tie and rounds the other way (worked out in tests/test_dtype.cpp's terms).
BOOST_AUTO_TEST_CASE(reference_rounds_its_double_result_once) {
  struct Tie {
    rpa_dtype out_dtype;
    double v0, v1, expected;
  };
  const auto p2 = [](int e) { return std::ldexp(1.0, e); };
  const Tie ties[] = {
      // mean 1 + 2^-8 + 2^-24: bf16 1 + 2^-7 (through f32: 1.0)
      {RPA_DTYPE_BF16, 1 + p2(-8) + p2(-23), 1 + p2(-8), 1.0078125},
      // mean 1 + 2^-11 + 2^-24: f16 1 + 2^-10 (through f32: 1.0)
      {RPA_DTYPE_F16, 1 + p2(-11) + p2(-23), 1 + p2(-11), 1.0009765625},
      // mean 2^-25 + 2^-49: the smallest f16 subnormal 2^-24 (through f32: 0)
      {RPA_DTYPE_F16, p2(-25) + p2(-48), p2(-25), p2(-24)},
      // mean 65520 - 2^-9: f16 65504 (through f32: 65520, then infinity)
      {RPA_DTYPE_F16, 65520 - p2(-8), 65520, 65504},
  };
  for (const Tie& tie : ties) {
    BOOST_TEST_CONTEXT("out dtype " << tie.out_dtype << ", v " << tie.v0 << " and " << tie.v1) {
      Case c;
      c.num_tokens = 1, c.page_size = 2, c.num_seqs = 1;
      c.out_dtype = tie.out_dtype;
      c.queries = {0};  // both scores 0: weights exactly 1/2
      c.kv = {0, static_cast<float>(tie.v0), 0, static_cast<float>(tie.v1)};
      BOOST_TEST_REQUIRE(c.kv[1] == tie.v0);  // the values are exact f32
      BOOST_TEST_REQUIRE(c.kv[3] == tie.v1);
      c.context_lens = {2};
      c.block_tables = {0};
      c.query_start_loc = {0, 1};
      const Result r = run_ok(c, RPA_BACKEND_REFERENCE);
      BOOST_TEST(r.out.at(0) == tie.expected);
    }
  }
}
