// Quantised KV caches (fp8 e4m3, fp8 e5m2, int8 with scales) and rpa_write_kv: the 8-bit formats code by
// code against tables built here from their bit fields, rounding against a brute-force nearest code,
// attention with quantised caches on every backend against the reference (which must equal the f32
// problem holding the dequantised values), and the cache write against a scalar model.
#define BOOST_TEST_MODULE quantized
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

constexpr double kTolerance = 2e-5;
const rpa_dtype kQuantised[] = {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8};
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

std::string name(rpa_dtype dtype) {
  return dtype == RPA_DTYPE_FP8_E4M3 ? "fp8_e4m3" : dtype == RPA_DTYPE_FP8_E5M2 ? "fp8_e5m2" : "int8";
}

// The value each format defines for `code`, from its sign, exponent and mantissa fields.
double defined_value(rpa_dtype dtype, int code) {
  if (dtype == RPA_DTYPE_INT8) return code < 128 ? code : code - 256;
  const double sign = (code & 0x80) ? -1.0 : 1.0;
  if (dtype == RPA_DTYPE_FP8_E4M3) {  // bias 7, 3 mantissa bits, S.1111.111 NaN, no infinities
    const int exponent = (code >> 3) & 15, mantissa = code & 7;
    if (exponent == 15 && mantissa == 7) return std::nan("");
    return sign * (exponent == 0 ? std::ldexp(mantissa, -9) : std::ldexp(8 + mantissa, exponent - 10));
  }
  const int exponent = (code >> 2) & 31, mantissa = code & 3;  // e5m2: bias 15, 2 mantissa bits
  if (exponent == 31) return mantissa == 0 ? sign * INFINITY : std::nan("");
  return sign * (exponent == 0 ? std::ldexp(mantissa, -16) : std::ldexp(4 + mantissa, exponent - 17));
}

bool same_value(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

// The code rounding x should give, by search: the nearest finite value (ties to the even code), saturated
// (e4m3, int8) or infinite (e5m2, from half a step past the largest finite value).
int nearest_code(rpa_dtype dtype, double x) {
  const double largest = dtype == RPA_DTYPE_FP8_E4M3 ? 448 : dtype == RPA_DTYPE_FP8_E5M2 ? 57344 : 127;
  if (dtype == RPA_DTYPE_FP8_E5M2 && std::abs(x) >= 61440) return x > 0 ? 0x7c : 0xfc;
  if (std::abs(x) > largest) x = std::copysign(largest, x);
  int best = -1;
  double best_error = INFINITY;
  for (int code = 0; code < 256; ++code) {
    const double value = defined_value(dtype, code);
    if (!std::isfinite(value) || (dtype == RPA_DTYPE_INT8 && code == 0x80)) continue;
    if (value == 0 && std::signbit(value) != std::signbit(x) && dtype != RPA_DTYPE_INT8) continue;  // keep the sign of 0
    const double error = std::abs(value - x);
    if (error < best_error || (error == best_error && (code & 1) == 0)) best = code, best_error = error;
  }
  return best;
}

Case quantised_case(const RandomSpec& spec, uint64_t seed, rpa_dtype dtype, int scales) {
  Case c = random_case(spec, seed);
  c.kv_dtype = dtype;
  // Codes spread over the format's range (fp8 up to ~8, e4m3 subnormals included; scaled int8 up to ~60),
  // dequantised values of order 1 like the other tests' (the 2e-5 bound is absolute).
  if (dtype == RPA_DTYPE_INT8 && scales != 0)
    for (float& x : c.kv) x *= 20.0f;
  c.round_to_dtypes();
  if (scales == 1) c.k_scale = {0.125f}, c.v_scale = {dtype == RPA_DTYPE_INT8 ? 0.03f : 0.7f};
  if (scales == 2)
    for (int64_t h = 0; h < c.num_kv_heads; ++h) {
      c.k_scale.push_back((dtype == RPA_DTYPE_INT8 ? 0.01f : 0.2f) * static_cast<float>(h + 1));
      c.v_scale.push_back((dtype == RPA_DTYPE_INT8 ? 0.05f : 1.5f) / static_cast<float>(h + 1));
    }
  return c;
}

// Decode (GQA 4, head_dim 128 and 64: the in-place paths), a long split decode, prefill and mixed
// batches, head dims that take the scalar tails.
std::vector<RandomSpec> shapes() {
  return {
    spec_of({1, 1, 1, 1}, {1, 40, 700, 33}, 8, 2, 128, 16),
    spec_of({1, 1}, {2100, 90}, 4, 1, 64, 8),
    spec_of({5, 0, 17, 1}, {9, 4, 40, 33}, 4, 2, 32, 4, 2, 1),
    spec_of({3, 1}, {70, 50}, 6, 3, 13, 3),
    spec_of({40, 1}, {90, 20}, 8, 2, 80, 16)
  };
}

void expect_close(const Result& got, const Result& expected, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(got.status == RPA_STATUS_OK, what << ": " << got.message);
  BOOST_TEST(max_abs_diff(got.out, expected.out) <= kTolerance, what << ": out differs by " << max_abs_diff(got.out, expected.out));
  BOOST_TEST(max_abs_diff(got.lse, expected.lse) <= kTolerance, what << ": lse");
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_code_decodes_to_the_value_its_format_defines) {
  for (rpa_dtype dtype : kQuantised)
    for (int code = 0; code < 256; ++code) {
      const float got = rpa::code_to_float(dtype, static_cast<uint8_t>(code));
      BOOST_TEST(same_value(got, defined_value(dtype, code)), name(dtype) << " code " << code << " decodes to " << got
                                                                         << ", expected " << defined_value(dtype, code));
    }
  // Landmarks of the formats.
  BOOST_TEST(rpa::e4m3_to_float(0x7e) == 448.0f);
  BOOST_TEST(rpa::e4m3_to_float(0x01) == std::ldexp(1.0f, -9));
  BOOST_TEST(rpa::e5m2_to_float(0x7b) == 57344.0f);
  BOOST_TEST(rpa::e5m2_to_float(0x7c) == kInf);
  BOOST_TEST(rpa::int8_to_float(0x80) == -128.0f);
}

BOOST_AUTO_TEST_CASE(every_code_survives_encoding_its_value) {
  for (rpa_dtype dtype : kQuantised)
    for (int code = 0; code < 256; ++code) {
      const float value = rpa::code_to_float(dtype, static_cast<uint8_t>(code));
      const int again = rpa::float_to_code(dtype, value, 1.0f);
      if (std::isnan(value)) {
        BOOST_TEST(std::isnan(rpa::code_to_float(dtype, static_cast<uint8_t>(again))), name(dtype) << " NaN code " << code);
      } else if (dtype == RPA_DTYPE_INT8 && code == 0x80) {
        BOOST_TEST(again == 0x81, "int8 -128 is never written: it saturates to -127");
      } else {
        BOOST_TEST(again == code, name(dtype) << " code " << code << " (" << value << ") encodes to " << again);
      }
    }
}

BOOST_AUTO_TEST_CASE(encoding_rounds_to_the_nearest_code_ties_to_even) {
  std::mt19937_64 rng(12);
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  std::uniform_int_distribution<int> exponent(-20, 17);
  for (rpa_dtype dtype : kQuantised) {
    std::vector<float> xs;
    for (int i = 0; i < 4000; ++i) xs.push_back(static_cast<float>(std::ldexp(unit(rng), exponent(rng))));
    // Ties and edges: half-way points between neighbouring codes, the largest values, beyond them.
    for (int code = 0; code < 255; ++code) {
      const double a = defined_value(dtype, code), b = defined_value(dtype, code + 1);
      if (std::isfinite(a) && std::isfinite(b) && !((code + 1) & 0x80 && !(code & 0x80))) xs.push_back(static_cast<float>((a + b) / 2));
    }
    for (float x : {448.0f, 464.0f, 480.0f, 1e9f, 57344.0f, 61439.0f, 61440.0f, 70000.0f, 127.0f, 127.5f, 128.0f, 300.0f,
                    2.5f, 3.5f, 0.0f, std::ldexp(1.0f, -10), std::ldexp(3.0f, -10), std::ldexp(1.0f, -17), 1e-30f})
      xs.push_back(x), xs.push_back(-x);
    for (float x : xs) {
      const int got = rpa::float_to_code(dtype, x, 1.0f), expected = nearest_code(dtype, x);
      BOOST_TEST(same_value(defined_value(dtype, got), defined_value(dtype, expected)),
                 name(dtype) << ": " << x << " encodes to code " << got << " (" << defined_value(dtype, got)
                             << "), expected " << expected << " (" << defined_value(dtype, expected) << ")");
    }
    // Infinities saturate or stay infinite; NaN stays NaN (int8: 0).
    const int positive_inf = rpa::float_to_code(dtype, kInf, 1.0f), negative_inf = rpa::float_to_code(dtype, -kInf, 1.0f);
    BOOST_TEST(positive_inf == (dtype == RPA_DTYPE_FP8_E4M3 ? 0x7e : dtype == RPA_DTYPE_FP8_E5M2 ? 0x7c : 0x7f));
    BOOST_TEST(negative_inf == (dtype == RPA_DTYPE_FP8_E4M3 ? 0xfe : dtype == RPA_DTYPE_FP8_E5M2 ? 0xfc : 0x81));
    const float nan_back = rpa::code_to_float(dtype, rpa::float_to_code(dtype, kNaN, 1.0f));
    BOOST_TEST((dtype == RPA_DTYPE_INT8 ? nan_back == 0.0f : std::isnan(nan_back)));
  }
  // The scale divides before rounding: 10 / 4 = 2.5 -> 2 (even), 14 / 4 = 3.5 -> 4.
  BOOST_TEST(rpa::float_to_code(RPA_DTYPE_INT8, 10.0f, 4.0f) == 2);
  BOOST_TEST(rpa::float_to_code(RPA_DTYPE_INT8, 14.0f, 4.0f) == 4);
  BOOST_TEST(rpa::float_to_code(RPA_DTYPE_FP8_E4M3, 900.0f, 2.0f) == 0x7e);  // 450 saturates to 448
}

BOOST_AUTO_TEST_CASE(reference_computes_the_dequantised_problem) {
  const std::vector<RandomSpec> specs = shapes();
  for (rpa_dtype dtype : kQuantised)
    for (int scales = 0; scales < 3; ++scales) {
      const Case c = quantised_case(specs[2], 40 + scales, dtype, scales);
      const Result quantised = run_case(c, RPA_BACKEND_REFERENCE), f32 = run_case(dequantised(c), RPA_BACKEND_REFERENCE);
      BOOST_REQUIRE_MESSAGE(quantised.status == RPA_STATUS_OK, quantised.message);
      BOOST_TEST(max_abs_diff(quantised.out, f32.out) == 0.0, name(dtype) << " scales " << scales);
      BOOST_TEST(max_abs_diff(quantised.lse, f32.lse) == 0.0, name(dtype) << " scales " << scales);
    }
}

// Per-tensor, per-head and absent scales, combined and separate strided layouts, windows, caps, sinks,
// with NaN (and infinity or saturated) codes in every invisible slot (random_case).
BOOST_AUTO_TEST_CASE(every_backend_matches_the_reference_within_2e5) {
  const std::vector<RandomSpec> specs = shapes();
  std::mt19937_64 rng(5);
  int n = 0;
  for (rpa_dtype dtype : kQuantised)
    for (int scales = 0; scales < 3; ++scales)
      for (size_t i = 0; i < specs.size(); ++i, ++n) {
        Case c = quantised_case(specs[i], 100 + n, dtype, scales);
        c.separate_kv = n % 2;
        c.strided = n % 3 == 0;
        if (n % 4 == 1) c.sliding_window = 7;
        if (n % 5 == 2) c.logits_soft_cap = 5.0;
        if (n % 3 == 2) c.sinks = {0.5f}, c.sink_heads = 1, c.sinks_per_head = 1;
        if (n % 2 == 0) c.query_dtype = RPA_DTYPE_BF16, c.round_to_dtypes();
        const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
        BOOST_REQUIRE_MESSAGE(expected.status == RPA_STATUS_OK, expected.message);
        const std::string what = name(dtype) + " scales " + std::to_string(scales) + " shape " + std::to_string(i);
        BOOST_TEST(max_abs_diff(expected.out, expected.out) == 0.0, what << ": the reference has NaN");
        for (rpa_backend backend : available_backends())
          if (backend != RPA_BACKEND_REFERENCE) expect_close(run_case(c, backend), expected, what + " on " + rpa_backend_string(backend));
      }
}

BOOST_AUTO_TEST_CASE(nan_codes_outside_the_window_never_leak) {
  const RandomSpec spec = spec_of({1, 3}, {300, 200}, 8, 2, 64, 16);
  for (rpa_dtype dtype : {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2}) {
    Case c = quantised_case(spec, 9, dtype, 1);
    c.sliding_window = 50;
    // Every key before the window (and its V) is NaN; the rows must not see them.
    for (int32_t s = 0; s < 2; ++s)
      for (int64_t j = 0; j + 60 < c.context_lens[s]; ++j) {
        const int64_t page = c.block_tables[s * c.pages_per_seq + j / c.page_size], slot = j % c.page_size;
        for (int64_t h = 0; h < c.num_kv_heads; ++h)
          for (int64_t d = 0; d < c.head_dim; ++d) c.k(page, slot, h, d) = c.v(page, slot, h, d) = kNaN;
      }
    const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
    for (float x : expected.out) BOOST_REQUIRE(std::isfinite(x));
    for (rpa_backend backend : available_backends())
      expect_close(run_case(c, backend), expected, name(dtype) + " on " + rpa_backend_string(backend));
  }
}

// ---- rpa_write_kv ----

namespace {

// A cache of `dtype` ([P, page_size, KVH, D], combined or separate, with gaps when strided) filled with a
// sentinel byte pattern, new keys and values, and the call's arguments.
struct WriteCase {
  int64_t num_tokens = 9, num_kv_heads = 2, head_dim = 8, num_pages = 3, page_size = 4;
  rpa_dtype kv_dtype = RPA_DTYPE_FP8_E4M3, new_dtype = RPA_DTYPE_F32;
  bool separate = false, strided = false;
  std::vector<int32_t> slots;
  std::vector<float> k_scale, v_scale;
  std::vector<float> keys, values;  // [N, KVH, D] values, exactly representable in new_dtype
  float value_spread = 100.0f;      // standard deviation of the values: some saturate
  std::vector<uint8_t> kv, k_cache, v_cache, key_bytes, value_bytes;
  int64_t page_stride = 0, slot_stride = 0, head_stride = 0;  // of one cache view (combined: K's)
  rpa_write_kv_args args;

  void build(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    const int size = rpa::dtype_size(kv_dtype);
    keys.resize(num_tokens * num_kv_heads * head_dim), values.resize(keys.size());
    key_bytes.resize(keys.size() * rpa::dtype_size(new_dtype)), value_bytes.resize(key_bytes.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      rpa::store_float(key_bytes.data(), new_dtype, i, normal(rng) * (kv_dtype == RPA_DTYPE_INT8 ? 10.0f : 1.0f));
      rpa::store_float(value_bytes.data(), new_dtype, i, normal(rng) * value_spread);
      keys[i] = rpa::load_float(key_bytes.data(), new_dtype, i), values[i] = rpa::load_float(value_bytes.data(), new_dtype, i);
    }
    const int64_t gap = strided ? 3 : 0;
    rpa_write_kv_args_init(&args);
    args.keys = rpa_tensor{key_bytes.data(), new_dtype, 3, {num_tokens, num_kv_heads, head_dim}, {0}};
    args.values = rpa_tensor{value_bytes.data(), new_dtype, 3, {num_tokens, num_kv_heads, head_dim}, {0}};
    args.slot_mapping = rpa_tensor{slots.data(), RPA_DTYPE_I32, 1, {num_tokens}, {0}};
    if (separate) {
      head_stride = head_dim + gap, slot_stride = num_kv_heads * head_stride + gap, page_stride = page_size * slot_stride + gap;
      k_cache.assign(num_pages * page_stride * size, 0x5a), v_cache.assign(k_cache.size(), 0xa5);
      const rpa_tensor view{nullptr, kv_dtype, 4, {num_pages, page_size, num_kv_heads, head_dim}, {page_stride, slot_stride, head_stride, 1}};
      args.k_cache = view, args.v_cache = view;
      args.k_cache.data = k_cache.data(), args.v_cache.data = v_cache.data();
    } else {
      head_stride = 2 * head_dim, slot_stride = num_kv_heads * head_stride, page_stride = page_size * slot_stride;
      kv.assign(num_pages * page_stride * size, 0x5a);
      args.kv_pages = rpa_tensor{kv.data(), kv_dtype, 4, {num_pages, page_size, 2 * num_kv_heads, head_dim}, {0}};
    }
    if (!k_scale.empty()) args.k_scale = rpa_tensor{k_scale.data(), RPA_DTYPE_F32, 1, {int64_t(k_scale.size())}, {1}};
    if (!v_scale.empty()) args.v_scale = rpa_tensor{v_scale.data(), RPA_DTYPE_F32, 1, {int64_t(v_scale.size())}, {1}};
  }

  // The scalar model: token by token in order (so a later token overwrites an earlier one), skipping -1.
  std::pair<std::vector<uint8_t>, std::vector<uint8_t>> model() const {
    std::vector<uint8_t> k = separate ? k_cache : kv, v = separate ? v_cache : std::vector<uint8_t>{};
    const int64_t v_offset = separate ? 0 : head_dim;  // combined: V of head h right after K
    std::vector<uint8_t>& v_target = separate ? v : k;
    for (int64_t i = 0; i < num_tokens; ++i) {
      if (slots[i] == -1) continue;
      const int64_t base = slots[i] / page_size * page_stride + slots[i] % page_size * slot_stride;
      for (int64_t h = 0; h < num_kv_heads; ++h)
        for (int64_t d = 0; d < head_dim; ++d) {
          const int64_t e = (i * num_kv_heads + h) * head_dim + d;
          const float ks = k_scale.empty() ? 1.0f : k_scale[k_scale.size() == 1 ? 0 : h];
          const float vs = v_scale.empty() ? 1.0f : v_scale[v_scale.size() == 1 ? 0 : h];
          rpa::store_kv(k.data(), kv_dtype, base + h * head_stride + d, keys[e], ks);
          rpa::store_kv(v_target.data(), kv_dtype, base + h * head_stride + v_offset + d, values[e], vs);
        }
    }
    return {k, v};
  }
};

rpa_status write_on(rpa_backend backend, WriteCase& w, std::string* message = nullptr) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = backend;
  rpa_context* context = nullptr;
  rpa_status status = rpa_context_create(&options, &context);
  if (status == RPA_STATUS_OK) status = rpa_write_kv(context, &w.args);
  if (message) *message = rpa_last_error();
  rpa_context_destroy(context);
  return status;
}

}  // namespace

BOOST_AUTO_TEST_CASE(write_kv_matches_the_scalar_model) {
  int n = 0;
  for (rpa_dtype kv_dtype : {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8, RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16})
    for (rpa_dtype new_dtype : {RPA_DTYPE_F32, RPA_DTYPE_BF16, RPA_DTYPE_F16})
      for (rpa_backend backend : available_backends()) {
        WriteCase w;
        w.kv_dtype = kv_dtype, w.new_dtype = new_dtype;
        w.separate = n % 2, w.strided = n % 3 == 0;
        // Skipped tokens, a slot written three times (token 7 wins), the first and the last slot.
        w.slots = {5, -1, 11, 0, 5, 3, -1, 5, 11};
        if (rpa::is_quantised_dtype(kv_dtype)) {
          w.k_scale = n % 2 ? std::vector<float>{0.5f} : std::vector<float>{0.25f, 2.0f};
          w.v_scale = {3.0f, 0.1f};
        }
        w.build(50 + n++);
        const auto [k, v] = w.model();
        const std::string what = std::string("cache dtype ") + std::to_string(kv_dtype) + ", new " +
                                 std::to_string(new_dtype) + " on " + rpa_backend_string(backend);
        std::string message;
        BOOST_REQUIRE_MESSAGE(write_on(backend, w, &message) == RPA_STATUS_OK, what << ": " << message);
        BOOST_TEST((w.separate ? w.k_cache == k : w.kv == k), what << ": K (or the combined cache) differs from the model");
        if (w.separate) BOOST_TEST((w.v_cache == v), what << ": V differs from the model");
      }
}

BOOST_AUTO_TEST_CASE(written_tokens_are_what_attention_reads) {
  // Write every token of a fresh quantised cache, then attend: the same as attention over a case that
  // holds the codes the model wrote.
  for (rpa_dtype dtype : kQuantised) {
    WriteCase w;
    w.kv_dtype = dtype;
    w.num_tokens = 12, w.num_pages = 3, w.page_size = 4;
    w.slots = {4, 5, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11};  // page 1, then 0, then 2
    w.k_scale = {0.05f}, w.v_scale = {0.2f, 0.3f};
    w.value_spread = 2.0f;
    w.build(3);
    BOOST_REQUIRE(write_on(RPA_BACKEND_REFERENCE, w) == RPA_STATUS_OK);
    Case c;
    c.num_tokens = 1, c.num_q_heads = 4, c.num_kv_heads = 2, c.head_dim = 8;
    c.num_pages = 3, c.page_size = 4, c.pages_per_seq = 3, c.num_seqs = 1;
    c.kv_dtype = dtype, c.k_scale = w.k_scale, c.v_scale = w.v_scale;
    c.kv.resize(w.kv.size());
    for (size_t i = 0; i < w.kv.size(); ++i) c.kv[i] = rpa::code_to_float(dtype, w.kv[i]);
    c.queries.assign(c.num_q_heads * c.head_dim, 0.3f);
    c.context_lens = {12}, c.block_tables = {1, 0, 2}, c.query_start_loc = {0, 1};
    // Each value the page holds for a token, dequantised, is within half a step of the value given (when
    // the format's range holds it): relative 2^-4 (e4m3) or 2^-3 (e5m2) of normals, half a unit for int8.
    Case f = dequantised(c);
    const double largest = dtype == RPA_DTYPE_FP8_E4M3 ? 448 : dtype == RPA_DTYPE_FP8_E5M2 ? 57344 : 127;
    const double relative = dtype == RPA_DTYPE_FP8_E4M3 ? 1.0 / 16 : dtype == RPA_DTYPE_FP8_E5M2 ? 1.0 / 8 : 0.0;
    const double smallest = dtype == RPA_DTYPE_FP8_E4M3 ? std::ldexp(1.0, -9) : dtype == RPA_DTYPE_FP8_E5M2 ? std::ldexp(1.0, -16) : 1.0;
    int checked = 0;
    for (int64_t i = 0; i < w.num_tokens; ++i) {
      const int64_t page = w.slots[i] / 4, slot = w.slots[i] % 4;
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t d = 0; d < 8; ++d) {
          const double given = w.values[(i * 2 + h) * 8 + d] / double(w.v_scale[h]);
          const double stored = f.v(page, slot, h, d) / double(w.v_scale[h]);
          if (std::abs(given) > largest) continue;
          ++checked;
          BOOST_TEST(std::abs(given - stored) <= std::abs(given) * relative + smallest / 2 + 1e-6,
                     name(dtype) << ": token " << i << " stored " << stored << " for " << given);
        }
    }
    BOOST_TEST(checked > 20);
    for (rpa_backend backend : available_backends()) {
      const Result got = run_case(c, backend), expected = run_case(f, RPA_BACKEND_REFERENCE);
      expect_close(got, expected, name(dtype) + " on " + rpa_backend_string(backend));
    }
  }
}

BOOST_AUTO_TEST_CASE(write_kv_validation_names_the_argument) {
  const auto expect_rejected = [](const std::function<void(WriteCase&)>& breaks, std::vector<std::string> fragments) {
    WriteCase w;
    w.slots = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    w.k_scale = {1.0f};
    breaks(w);
    w.build(1);
    if (w.slots.size() == 9) w.args.slot_mapping.data = w.slots.data();
    const std::vector<uint8_t> before = w.kv;
    std::string message;
    BOOST_TEST(write_on(RPA_BACKEND_REFERENCE, w, &message) == RPA_STATUS_INVALID_ARGUMENT, message);
    for (const std::string& fragment : fragments)
      BOOST_TEST(message.find(fragment) != std::string::npos, "message '" << message << "' lacks '" << fragment << "'");
    BOOST_TEST((w.kv == before), "a rejected write changed the cache");
  };
  expect_rejected([](WriteCase& w) { w.slots[4] = 12; }, {"'slot_mapping'", "element [4]", "12", "P * page_size = 12"});
  expect_rejected([](WriteCase& w) { w.slots[2] = -2; }, {"'slot_mapping'", "element [2]", "-2"});
  expect_rejected([](WriteCase& w) { w.k_scale = {-1.0f}; }, {"'k_scale'", "element [0]"});
  expect_rejected([](WriteCase& w) { w.v_scale = {1.0f, 2.0f, 3.0f}; }, {"'v_scale'", "shape[0]"});
  expect_rejected([](WriteCase& w) { w.kv_dtype = RPA_DTYPE_BF16; }, {"'k_scale'", "not quantised"});
  // Shapes and dtypes: keys of another head count, a slot mapping of another length, 8-bit new keys.
  WriteCase w;
  w.slots = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  w.k_scale = {0.5f};
  w.build(2);
  std::string message;
  w.args.keys.dtype = RPA_DTYPE_INT8;
  BOOST_TEST(write_on(RPA_BACKEND_REFERENCE, w, &message) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(message.find("'keys'") != std::string::npos, message);
  w.args.keys.dtype = RPA_DTYPE_F32;
  w.args.keys.shape[1] = 1;
  BOOST_TEST(write_on(RPA_BACKEND_REFERENCE, w, &message) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(message.find("'values'") != std::string::npos, message);
  w.args.keys.shape[1] = 2, w.args.slot_mapping.shape[0] = 8;
  BOOST_TEST(write_on(RPA_BACKEND_REFERENCE, w, &message) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(message.find("'slot_mapping'") != std::string::npos, message);
  w.args.slot_mapping.shape[0] = 9, w.args.memory = RPA_MEMORY_DEVICE;
  BOOST_TEST(write_on(RPA_BACKEND_REFERENCE, w, &message) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(message.find("'memory'") != std::string::npos, message);
  // A k_cache described without data beside kv_pages is given too (as for a plan): one layout, not both.
  w.args.memory = RPA_MEMORY_HOST;
  w.args.k_cache = rpa_tensor{nullptr, RPA_DTYPE_F32, 4, {1, 1, 1, 1}, {0}};
  BOOST_TEST(write_on(RPA_BACKEND_REFERENCE, w, &message) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(message.find("argument 'k_cache': give either kv_pages or k_cache and v_cache, not both") != std::string::npos,
             message);
  w.args.k_cache = rpa_tensor{};
  // New keys, slots or scales in the cache's own bytes: the write would read what it wrote.
  const float valid_scale = 1.0f;  // so that the scale's value rule passes and the overlap rule decides
  std::memcpy(w.kv.data() + 16, &valid_scale, sizeof valid_scale);
  const std::vector<uint8_t> before = w.kv;
  for (rpa_tensor* input : {&w.args.keys, &w.args.slot_mapping, &w.args.k_scale}) {
    void* const own = input->data;
    input->data = w.kv.data() + 16;
    BOOST_TEST(write_on(RPA_BACKEND_REFERENCE, w, &message) == RPA_STATUS_INVALID_ARGUMENT);
    const std::string name = input == &w.args.keys ? "'keys'" : input == &w.args.k_scale ? "'k_scale'" : "'slot_mapping'";
    BOOST_TEST(message.find("argument 'kv_pages': its bytes overlap those of " + name) != std::string::npos, message);
    input->data = own;
  }
  BOOST_TEST((w.kv == before), "a rejected write changed the cache");
  BOOST_TEST(write_on(RPA_BACKEND_REFERENCE, w, &message) == RPA_STATUS_OK, message);
}

// Scales are run-time arguments: one plan, runs with other scales, each equal to its one-call result.
BOOST_AUTO_TEST_CASE(plan_runs_take_the_scales_of_each_run) {
  const RandomSpec spec = spec_of({1, 5}, {40, 30}, 8, 2, 32, 8);
  for (rpa_backend backend : available_backends()) {
    Case c = quantised_case(spec, 77, RPA_DTYPE_FP8_E5M2, 2);
    rpa_context_options options;
    rpa_context_options_init(&options);
    options.backend = backend;
    rpa_context* context = nullptr;
    BOOST_REQUIRE(rpa_context_create(&options, &context) == RPA_STATUS_OK);
    Prepared planned = prepare(c);
    rpa_plan* plan = nullptr;
    BOOST_REQUIRE_MESSAGE(rpa_plan_create(context, &planned.args, &plan) == RPA_STATUS_OK, rpa_last_error());
    for (const std::vector<float>& k_scale : {std::vector<float>{0.5f}, std::vector<float>{0.25f, 4.0f}}) {
      c.k_scale = k_scale;
      const Result expected = run_case(c, backend);
      Prepared run = prepare(c);
      BOOST_REQUIRE_MESSAGE(rpa_plan_run(plan, &run.args) == RPA_STATUS_OK, rpa_last_error());
      std::vector<float> got;
      for (int64_t i = 0; i < c.num_tokens * c.num_q_heads * c.head_dim; ++i)
        got.push_back(rpa::load_float(run.out.data(), c.out_dtype, i));
      BOOST_TEST(max_abs_diff(got, expected.out) == 0.0, rpa_backend_string(backend) << " k_scale size " << k_scale.size());
    }
    rpa_plan_destroy(plan);
    rpa_context_destroy(context);
  }
}
