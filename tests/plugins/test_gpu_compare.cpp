// The gpu backend against the reference on random problems covering the whole contract: GQA/MQA, head
// dims up to 256 (vector and scalar load paths), page sizes, windows, soft caps, sinks of every shape,
// lse, padding rows and sequences, empty sequences, long contexts split across blocks, every dtype
// combination, combined/separate and strided layouts, host and device memory. Skips without a GPU.
#define BOOST_TEST_MODULE gpu_compare
#define BOOST_TEST_NO_MAIN
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

// f32 output: 2e-5 absolute. A 16-bit output may round the other way at a tie: one unit in its last place.
double tolerance(rpa_dtype out_dtype, float expected) {
  const double relative = out_dtype == RPA_DTYPE_BF16 ? std::ldexp(1.0, -7) : out_dtype == RPA_DTYPE_F16 ? std::ldexp(1.0, -10) : 0.0;
  return 2e-5 + relative * std::abs(expected);
}

void expect_close(const Result& got, const Result& expected, rpa_dtype out_dtype, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(got.status == RPA_STATUS_OK, what << ": " << got.message);
  BOOST_REQUIRE_EQUAL(got.out.size(), expected.out.size());
  double worst = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.out.size(); ++i) {
    // NaN exactly where the reference has NaN (a NaN in V that the row sees).
    const double error = std::isnan(expected.out[i]) || std::isnan(got.out[i])
                             ? (std::isnan(expected.out[i]) && std::isnan(got.out[i]) ? 0.0 : INFINITY)
                             : std::abs(double(got.out[i]) - expected.out[i]);
    if (error > tolerance(out_dtype, expected.out[i])) ++bad;
    if (out_dtype == RPA_DTYPE_F32) worst = std::max(worst, error);
  }
  BOOST_TEST(bad == 0u, what << ": " << bad << " output elements outside tolerance");
  if (out_dtype == RPA_DTYPE_F32) BOOST_TEST(worst <= 2e-5, what << ": max abs error " << worst);
  BOOST_TEST(max_abs_diff(got.lse, expected.lse) <= 2e-5, what << ": lse");
}

// The same prepared call with every float tensor in device memory (rpa_device_alloc/copy).
Result run_on_device(Prepared prepared) {
  Result result;
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_GPU;
  rpa_context* context = nullptr;
  BOOST_REQUIRE(rpa_context_create(&options, &context) == RPA_STATUS_OK);
  rpa_attention_args& args = prepared.args;
  struct Buffer {
    void* host;
    size_t bytes;
    void* device;
  };
  std::vector<Buffer> buffers;
  auto to_device = [&](rpa_tensor& tensor, void* host, size_t bytes) {
    if (!tensor.data) return;
    void* device = nullptr;
    BOOST_REQUIRE(rpa_device_alloc(context, bytes, &device) == RPA_STATUS_OK);
    BOOST_REQUIRE(rpa_device_copy(context, device, host, bytes, RPA_COPY_HOST_TO_DEVICE) == RPA_STATUS_OK);
    tensor.data = device;
    buffers.push_back({host, bytes, device});
  };
  to_device(args.queries, prepared.queries.data(), prepared.queries.size());
  to_device(args.kv_pages, prepared.kv.data(), prepared.kv.size());
  to_device(args.k_cache, prepared.k_cache.data(), prepared.k_cache.size());
  to_device(args.v_cache, prepared.v_cache.data(), prepared.v_cache.size());
  to_device(args.softmax_aux, prepared.sinks.data(), prepared.sinks.size() * sizeof(float));
  to_device(args.out, prepared.out.data(), prepared.out.size());
  to_device(args.lse, prepared.lse.data(), prepared.lse.size() * sizeof(float));
  args.memory = RPA_MEMORY_DEVICE;
  args.synchronize = 1;
  result.status = rpa_attention(context, &args);
  if (result.status != RPA_STATUS_OK) result.message = rpa_last_error();
  for (const Buffer& buffer : buffers) {
    BOOST_REQUIRE(rpa_device_copy(context, buffer.host, buffer.device, buffer.bytes, RPA_COPY_DEVICE_TO_HOST) ==
                  RPA_STATUS_OK);
    BOOST_REQUIRE(rpa_device_free(context, buffer.device) == RPA_STATUS_OK);
  }
  rpa_context_destroy(context);
  const rpa_tensor &out = args.out, &lse = args.lse;
  const bool has_lse = !prepared.lse.empty() && lse.data;
  for (int64_t t = 0; t < out.shape[0]; ++t)
    for (int64_t h = 0; h < out.shape[1]; ++h) {
      for (int64_t d = 0; d < out.shape[2]; ++d)
        result.out.push_back(rpa::load_float(prepared.out.data(), out.dtype, t * out.strides[0] + h * out.strides[1] + d));
      if (has_lse) result.lse.push_back(prepared.lse[t * lse.strides[0] + h]);
    }
  return result;
}

void compare(const Case& c, const std::string& what) {
  const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
  BOOST_REQUIRE_MESSAGE(expected.status == RPA_STATUS_OK, what << ": reference: " << expected.message);
  expect_close(run_case(c, RPA_BACKEND_GPU), expected, c.out_dtype, what + " (host memory)");
  expect_close(run_on_device(prepare(c)), expected, c.out_dtype, what + " (device memory)");
}

// Shapes that reach every path of the kernels: decode, prefill, split long contexts, head dims that
// take the 16-byte and the element-wise loads, q-head groups larger than one block's rows.
std::vector<RandomSpec> shapes() {
  return {
    spec_of({1, 1, 1, 1, 1, 1}, {1, 17, 300, 64, 650, 33}, 8, 2, 64, 16),
    spec_of({5, 0, 17, 1}, {9, 4, 40, 33}, 4, 4, 16, 4, 3, 2),
    spec_of({1, 2}, {3000, 1500}, 32, 8, 128, 16),
    spec_of({3, 1}, {300, 900}, 2, 1, 256, 7),
    spec_of({40, 2}, {70, 2}, 48, 1, 80, 5, 1),
    spec_of({33, 7}, {100, 7}, 6, 3, 13, 1),
    spec_of({130}, {600}, 4, 1, 96, 32)
  };
}

// Adds a random subset of the features to a case.
void add_features(Case& c, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> coin(0, 1), pick(0, 3);
  if (coin(rng)) c.sliding_window = std::vector<int>{1, 5, 64, 1000}[pick(rng)];
  if (coin(rng)) c.logits_soft_cap = std::vector<double>{0.5, 5.0, 30.0, 1e4}[pick(rng)];
  if (coin(rng)) c.softmax_scale = 0.3;
  const int sinks = pick(rng);  // none, shared, per kv head, per q head
  if (sinks) {
    c.sink_heads = sinks == 1 ? 1 : sinks == 2 ? c.num_kv_heads : c.num_q_heads;
    c.sinks_per_head = 2;
    std::normal_distribution<float> normal(0.0f, 2.0f);
    c.sinks.resize(c.sink_heads * c.sinks_per_head);
    for (float& x : c.sinks) x = normal(rng);
    c.sinks[0] = -std::numeric_limits<float>::infinity();  // allowed: contributes nothing
  }
  c.separate_kv = coin(rng);
  c.strided = coin(rng);
}

const rpa_dtype kDtypes[] = {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16};

}  // namespace

BOOST_AUTO_TEST_CASE(f32_matches_reference_within_2e5) {
  std::mt19937_64 rng(2024);
  const std::vector<RandomSpec> specs = shapes();
  for (int round = 0; round < 3; ++round)
    for (size_t i = 0; i < specs.size(); ++i) {
      Case c = random_case(specs[i], 100 * round + i);
      if (round > 0) add_features(c, rng);
      compare(c, "f32 shape " + std::to_string(i) + " round " + std::to_string(round));
    }
}

BOOST_AUTO_TEST_CASE(every_dtype_combination) {
  std::mt19937_64 rng(7);
  const std::vector<RandomSpec> specs = shapes();
  int n = 0;
  for (rpa_dtype q : kDtypes)
    for (rpa_dtype kv : kDtypes)
      for (rpa_dtype out : kDtypes) {
        Case c = random_case(specs[n % specs.size()], 1000 + n);
        add_features(c, rng);
        c.query_dtype = q, c.kv_dtype = kv, c.out_dtype = out;
        c.round_to_dtypes();
        compare(c, "dtypes " + std::to_string(q) + "/" + std::to_string(kv) + "/" + std::to_string(out) + " shape " +
                       std::to_string(n % specs.size()));
        ++n;
      }
}

// 16-bit Q and KV of one type take the tensor-core kernels on NVIDIA (wgmma on Hopper, or its
// warp-specialised kernel with RPA_GPU_MATRIX_CORES=specialised; mma.sync from sm_80; =0 the FMA
// products): with an f32 output they too stay within 2e-5, since the
// probabilities enter the products as hi + lo 16-bit parts.
BOOST_AUTO_TEST_CASE(sixteen_bit_prefill_within_2e5) {
  std::vector<RandomSpec> specs;
  specs.push_back(spec_of({100, 257, 3}, {300, 257, 40}, 32, 8, 128, 16));  // GQA 4, head_dim 128, like the benchmarks
  specs.push_back(spec_of({70, 33}, {70, 95}, 2, 2, 64, 8, 2));  // head_dim 64, MHA
  for (const RandomSpec& spec : shapes())
    if (spec.head_dim % 8 == 0 && spec.head_dim <= 128 && spec.q_lens.front() > 1) specs.push_back(spec);
  std::mt19937_64 rng(16);
  int n = 0;
  for (rpa_dtype dtype : {RPA_DTYPE_F16, RPA_DTYPE_BF16})
    for (int round = 0; round < 3; ++round)
      for (const RandomSpec& spec : specs) {
        Case c = random_case(spec, 5000 + n++);
        if (round > 0) add_features(c, rng);
        c.query_dtype = c.kv_dtype = dtype;
        c.round_to_dtypes();
        compare(c, "16-bit prefill " + std::to_string(dtype) + " shape " + std::to_string(n) + " round " +
                       std::to_string(round));
      }
}

// A query of 2048 tokens or more (kSpecialisedMinQuery) in a batch without decode tiles takes, on Hopper,
// the warp-specialised kernel by default: within 2e-5 too, with and without the features.
BOOST_AUTO_TEST_CASE(long_sixteen_bit_prefill_within_2e5) {
  RandomSpec s;
  s.q_lens = {2050, 20}, s.context_lens = {2050, 100};
  s.num_q_heads = 4, s.num_kv_heads = 2, s.head_dim = 64, s.page_size = 16;
  std::mt19937_64 rng(17);
  int n = 0;
  for (rpa_dtype dtype : {RPA_DTYPE_F16, RPA_DTYPE_BF16})
    for (int round = 0; round < 2; ++round) {
      Case c = random_case(s, 6000 + n++);
      if (round > 0) add_features(c, rng);
      c.query_dtype = c.kv_dtype = dtype;
      c.round_to_dtypes();
      compare(c, "long 16-bit prefill " + std::to_string(dtype) + " round " + std::to_string(round));
    }
}

// NaN and Inf in keys that are inside the context but outside every query's window never reach the output.
BOOST_AUTO_TEST_CASE(nan_outside_the_window_never_leaks) {
  const RandomSpec spec = spec_of({4, 1}, {900, 700}, 4, 2, 64, 16);
  Case c = random_case(spec, 5);
  c.sliding_window = 100;
  for (int32_t s = 0; s < c.num_seqs; ++s) {
    const int32_t q_len = c.query_start_loc[s + 1] - c.query_start_loc[s];
    const int32_t first_visible = c.context_lens[s] - q_len - c.sliding_window + 1;
    for (int32_t j = 0; j < first_visible; ++j) {
      const int32_t page = c.block_tables[s * c.pages_per_seq + j / c.page_size];
      for (int64_t h = 0; h < c.num_kv_heads; ++h)
        for (int64_t d = 0; d < c.head_dim; ++d) {
          c.k(page, j % c.page_size, h, d) = std::numeric_limits<float>::infinity();
          c.v(page, j % c.page_size, h, d) = std::numeric_limits<float>::quiet_NaN();
        }
    }
  }
  compare(c, "NaN outside the window");
}

// A NaN in V that some rows of a tile see and others do not (a key after an earlier query's position, a
// key that left a later query's window) reaches exactly the rows that see it: on the FMA path (f32), the
// matrix-core path (16-bit), and decode tiles beside them.
BOOST_AUTO_TEST_CASE(nan_reaches_only_the_rows_that_see_it) {
  for (rpa_dtype dtype : kDtypes) {
    const RandomSpec spec = spec_of({24, 1}, {300, 200}, 8, 2, 64, 16);
    Case c = random_case(spec, 11);
    c.sliding_window = 150;
    c.query_dtype = c.kv_dtype = dtype;
    c.round_to_dtypes();
    // Sequence 0's queries are at positions 276..299: key 290 is seen from position 290 on, key 130 only up
    // to position 279.
    for (int32_t j : {290, 130}) {
      const int32_t page = c.block_tables[j / c.page_size];
      for (int64_t h = 0; h < c.num_kv_heads; ++h)
        for (int64_t d = 0; d < c.head_dim; ++d) c.v(page, j % c.page_size, h, d) = std::numeric_limits<float>::quiet_NaN();
    }
    compare(c, "NaN seen by some rows, dtype " + std::to_string(dtype));
  }
}

// Quantised caches (fp8 e4m3, fp8 e5m2, int8) with absent, per-tensor and per-head scales over every shape:
// decode (on NVIDIA the tensor-core kernel up to head dim 128, 4 or 8 q heads a tile, head dims 64, 80,
// 128; decode_kernel for 256), prefill (bf16 queries: codes widened into the tensor-core kernel's bf16
// tiles; f32 queries: tiles dequantised into shared memory), split contexts, the element-wise path (head
// dims not a multiple of 16); NaN and infinity codes in every invisible slot; host and device memory;
// f32 outputs within 2e-5.
BOOST_AUTO_TEST_CASE(quantised_kv_matches_reference_within_2e5) {
  std::mt19937_64 rng(99);
  const std::vector<RandomSpec> specs = shapes();
  int n = 0;
  for (rpa_dtype dtype : {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8})
    for (int scales = 0; scales < 3; ++scales)
      for (size_t i = 0; i < specs.size(); ++i, ++n) {
        Case c = random_case(specs[i], 7000 + n);
        if (n % 2) add_features(c, rng);
        c.kv_dtype = dtype;
        if (n % 3 != 0) c.query_dtype = RPA_DTYPE_BF16;
        if (dtype == RPA_DTYPE_INT8 && scales != 0)
          for (float& x : c.kv) x *= 20.0f;
        c.round_to_dtypes();
        const float small = dtype == RPA_DTYPE_INT8 ? 0.05f : 1.0f;
        if (scales == 1) c.k_scale = {0.4f * small}, c.v_scale = {1.3f * small};
        if (scales == 2)
          for (int64_t h = 0; h < c.num_kv_heads; ++h)
            c.k_scale.push_back(small * (0.5f + 0.25f * h)), c.v_scale.push_back(small * (2.0f - 0.1f * h));
        compare(c, "kv dtype " + std::to_string(dtype) + " scales " + std::to_string(scales) + " shape " +
                       std::to_string(i));
      }
}

// Every code of each 8-bit format through the decode kernel, written as raw bytes (so int8's -128 and every
// NaN code are there): 8 one-token sequences of one key each, 32 q heads of one kv head. V rows holding all
// 256 codes come out as their values times v_scale (exactly: the one key's weight is 1; NaN codes give NaN
// in their column only), and q head h, one-hot at dimension h, reads K code 32 s + h of sequence s through
// its lse (softmax_scale * k_scale * value). Then a NaN K code beside a finite key makes its rows NaN.
BOOST_AUTO_TEST_CASE(decode_reads_every_8bit_code) {
  for (rpa_dtype dtype : {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8}) {
    Case c;
    c.num_tokens = c.num_seqs = 8, c.num_q_heads = 32, c.num_kv_heads = 1, c.head_dim = 128;
    c.page_size = 16, c.num_pages = 9, c.pages_per_seq = 1;
    c.queries.assign(c.num_tokens * c.num_q_heads * c.head_dim, 0.0f);
    c.kv.assign(c.num_pages * c.page_size * 2 * c.head_dim, 0.0f);
    for (int32_t s = 0; s < c.num_seqs; ++s) {
      c.context_lens.push_back(1), c.block_tables.push_back(s + 1), c.query_start_loc.push_back(s);
      for (int64_t h = 0; h < c.num_q_heads; ++h) c.q(s, h, h) = 1.0f;
    }
    c.query_start_loc.push_back(c.num_seqs);
    c.kv_dtype = dtype;
    c.k_scale = {dtype == RPA_DTYPE_FP8_E5M2 ? 0x1p-12f : 1.0f};  // lse stays small enough for 2e-5 in f32
    c.v_scale = {0.75f};
    Prepared prepared = prepare(c);
    for (int32_t s = 0; s < c.num_seqs; ++s)
      for (int64_t d = 0; d < c.head_dim; ++d) {
        const uint8_t v_code = uint8_t(s * c.head_dim + d), k_code = uint8_t(s * 32 + d);
        prepared.kv[c.kv_index(s + 1, 0, 1, d)] = v_code;
        // A non-finite K code would make the whole row NaN (and its lse): checked below.
        if (d < 32 && std::isfinite(rpa::code_to_float(dtype, k_code))) prepared.kv[c.kv_index(s + 1, 0, 0, d)] = k_code;
      }
    const std::string what = "every code, kv dtype " + std::to_string(dtype);
    const Result expected = run_prepared(prepared, RPA_BACKEND_REFERENCE);
    BOOST_REQUIRE_MESSAGE(expected.status == RPA_STATUS_OK, what << ": reference: " << expected.message);
    expect_close(run_prepared(prepared, RPA_BACKEND_GPU), expected, c.out_dtype, what + " (host memory)");
    expect_close(run_on_device(prepared), expected, c.out_dtype, what + " (device memory)");
    if (dtype == RPA_DTYPE_INT8) continue;  // no NaN code
    c.context_lens[0] = 2;  // key 1 of sequence 0: all zero codes
    Prepared nan = prepare(c, false);
    nan.kv[c.kv_index(1, 0, 0, 100)] = dtype == RPA_DTYPE_FP8_E4M3 ? 0xff : 0x7e;  // key 0, where q is 0
    const Result nan_expected = run_prepared(nan, RPA_BACKEND_REFERENCE);
    BOOST_REQUIRE(nan_expected.status == RPA_STATUS_OK);
    BOOST_REQUIRE(std::isnan(nan_expected.out[0]) && !std::isnan(nan_expected.out[c.num_q_heads * c.head_dim]));
    expect_close(run_prepared(nan, RPA_BACKEND_GPU), nan_expected, c.out_dtype, what + ", a NaN K code");
  }
}

// e5m2 infinities that rows see, which the tensor-core decode's unchecked pass either keeps as scores of
// -Inf or turns into non-finite sums (the tile then runs again, checking each step): a key whose score is
// -Inf (-Inf K codes where every q head of its group is positive), the same with an Inf V code (NaN in that
// column, 0 * Inf as in the reference), Inf and -Inf V codes of a visible key (infinite columns), and then
// a score of +Inf (NaN rows, so without lse). 4 and 8 q heads a tile, head dims 64 and 128, one key among
// many steps and warps.
BOOST_AUTO_TEST_CASE(e5m2_infinities_in_view_match_the_reference) {
  for (int64_t group : {4, 8}) {
    RandomSpec spec;
    spec.q_lens = {1, 1, 1, 1, 1}, spec.context_lens = {40, 300, 650, 90, 17};
    spec.num_kv_heads = 2, spec.num_q_heads = 2 * group, spec.head_dim = group == 4 ? 128 : 64, spec.page_size = 16;
    Case c = random_case(spec, 77 + group);
    c.kv_dtype = RPA_DTYPE_FP8_E5M2;
    const auto at = [&](int32_t s, int64_t j) {  // (page, slot) of key j of sequence s
      return std::pair<int64_t, int64_t>{c.block_tables[s * c.pages_per_seq + j / c.page_size], j % c.page_size};
    };
    // Key j of sequence s, kv head h: K = sign * Inf at dimension d, where its q heads are made positive.
    const auto infinite_k = [&](int32_t s, int64_t j, int64_t h, int64_t d, float sign) {
      for (int64_t q = h * group; q < (h + 1) * group; ++q) c.q(s, q, d) = 0.25f + std::abs(c.q(s, q, d));
      const auto [page, slot] = at(s, j);
      c.k(page, slot, h, d) = sign * INFINITY;
    };
    infinite_k(0, 5, 0, 3, -1.0f), infinite_k(0, 5, 0, 40, -1.0f);
    infinite_k(2, 400, 1, 7, -1.0f);
    c.v(at(2, 400).first, at(2, 400).second, 1, 20) = INFINITY;
    c.v(at(1, 100).first, at(1, 100).second, 0, 10) = INFINITY;
    c.v(at(1, 100).first, at(1, 100).second, 0, 11) = -INFINITY;
    c.round_to_dtypes();
    const std::string what = "e5m2 infinities, " + std::to_string(group) + " q heads a kv head";
    {
      const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
      BOOST_REQUIRE(expected.status == RPA_STATUS_OK);
      const auto out = [&](int64_t t, int64_t q, int64_t d) { return expected.out[(t * c.num_q_heads + q) * c.head_dim + d]; };
      BOOST_REQUIRE(std::isfinite(out(0, 0, 3)) && std::isnan(out(2, group, 20)) && std::isfinite(out(2, group, 21)));
      BOOST_REQUIRE(out(1, 0, 10) == INFINITY && out(1, 0, 11) == -INFINITY);
    }
    compare(c, what);
    infinite_k(3, 2, 1, 9, 1.0f);
    c.round_to_dtypes();
    Prepared prepared = prepare(c, false);
    const Result expected = run_prepared(prepared, RPA_BACKEND_REFERENCE);
    BOOST_REQUIRE(expected.status == RPA_STATUS_OK);
    BOOST_REQUIRE(std::isnan(expected.out[(3 * c.num_q_heads + group) * c.head_dim]));
    expect_close(run_prepared(prepared, RPA_BACKEND_GPU), expected, c.out_dtype, what + ", a score of +Inf");
    expect_close(run_on_device(prepared), expected, c.out_dtype, what + ", a score of +Inf (device memory)");
  }
}

// The GPU takes at most 128 kv heads of a quantised cache (their scales are kernel parameters):
// rpa_context_supports says so, the gpu backend refuses, and an AUTO context runs the host-memory call on the
// CPU instead.
BOOST_AUTO_TEST_CASE(quantised_cache_beyond_128_kv_heads_is_unsupported_on_the_gpu) {
  for (int64_t heads : {128, 129}) {
    RandomSpec spec;
    spec.q_lens = {1, 3}, spec.context_lens = {5, 20};
    spec.num_q_heads = spec.num_kv_heads = heads, spec.head_dim = 16, spec.page_size = 4;
    Case c = random_case(spec, 5);
    c.kv_dtype = RPA_DTYPE_INT8;
    for (float& x : c.kv) x *= 20.0f;
    c.round_to_dtypes();
    c.k_scale = c.v_scale = {0.05f};
    Prepared prepared = prepare(c);
    rpa_context_options options;
    rpa_context_options_init(&options);
    options.backend = RPA_BACKEND_GPU;
    rpa_context* gpu = nullptr;
    BOOST_REQUIRE(rpa_context_create(&options, &gpu) == RPA_STATUS_OK);
    const rpa_status supported = rpa_context_supports(gpu, &prepared.args);
    const std::string message = supported == RPA_STATUS_OK ? "" : rpa_last_error();
    rpa_context_destroy(gpu);
    const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
    if (heads == 128) {
      BOOST_TEST(supported == RPA_STATUS_OK);
      expect_close(run_case(c, RPA_BACKEND_GPU), expected, c.out_dtype, "128 kv heads on the gpu");
      continue;
    }
    BOOST_TEST(supported == RPA_STATUS_UNSUPPORTED);
    BOOST_TEST(message.find("129 kv heads; the GPU kernels take at most 128") != std::string::npos, message);
    BOOST_TEST(run_case(c, RPA_BACKEND_GPU).status == RPA_STATUS_UNSUPPORTED);
    expect_close(run_case(c, RPA_BACKEND_AUTO), expected, c.out_dtype, "129 kv heads on an AUTO context");
  }
}

// rpa_write_kv with device memory (keys, values and the cache on the device, queued on the default
// stream) writes the same bytes as the reference on the host: every cache dtype, combined and separate.
BOOST_AUTO_TEST_CASE(write_kv_on_the_device_matches_the_reference) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  rpa_context *gpu = nullptr, *reference = nullptr;
  options.backend = RPA_BACKEND_GPU;
  BOOST_REQUIRE(rpa_context_create(&options, &gpu) == RPA_STATUS_OK);
  options.backend = RPA_BACKEND_REFERENCE;
  BOOST_REQUIRE(rpa_context_create(&options, &reference) == RPA_STATUS_OK);
  std::mt19937_64 rng(8);
  std::normal_distribution<float> normal(0.0f, 40.0f);
  const int64_t N = 37, KVH = 3, D = 40, P = 5, page_size = 8;
  std::vector<int32_t> slots(N);
  for (int64_t i = 0; i < N; ++i) slots[i] = static_cast<int32_t>((i * 7) % (P * page_size + 4)) - 2;  // -2.. : -1 skips
  for (int32_t& slot : slots) slot = slot < -1 ? -1 : slot >= P * page_size ? 3 : slot;  // 3 repeats
  int n = 0;
  for (rpa_dtype kv_dtype : {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8, RPA_DTYPE_BF16, RPA_DTYPE_F32})
    for (rpa_dtype new_dtype : {RPA_DTYPE_F32, RPA_DTYPE_F16})
      for (bool separate : {false, true}) {
        const int size = rpa::dtype_size(kv_dtype), new_size = rpa::dtype_size(new_dtype);
        std::vector<uint8_t> keys(N * KVH * D * new_size), values(keys.size());
        for (int64_t e = 0; e < N * KVH * D; ++e) {
          rpa::store_float(keys.data(), new_dtype, e, normal(rng));
          rpa::store_float(values.data(), new_dtype, e, normal(rng) / 8);
        }
        const int64_t cache_elements = P * page_size * (separate ? 1 : 2) * KVH * D;
        std::vector<uint8_t> host_k(cache_elements * size, 0x3c), host_v(separate ? host_k.size() : 0, 0xc3);
        std::vector<float> k_scale{0.5f, 2.0f, 0.125f}, v_scale{0.25f};
        rpa_write_kv_args args;
        rpa_write_kv_args_init(&args);
        args.keys = rpa_tensor{keys.data(), new_dtype, 3, {N, KVH, D}, {0}};
        args.values = rpa_tensor{values.data(), new_dtype, 3, {N, KVH, D}, {0}};
        args.slot_mapping = rpa_tensor{slots.data(), RPA_DTYPE_I32, 1, {N}, {0}};
        if (separate) {
          args.k_cache = rpa_tensor{host_k.data(), kv_dtype, 4, {P, page_size, KVH, D}, {0}};
          args.v_cache = rpa_tensor{host_v.data(), kv_dtype, 4, {P, page_size, KVH, D}, {0}};
        } else {
          args.kv_pages = rpa_tensor{host_k.data(), kv_dtype, 4, {P, page_size, 2 * KVH, D}, {0}};
        }
        if (rpa::is_quantised_dtype(kv_dtype)) {
          args.k_scale = rpa_tensor{k_scale.data(), RPA_DTYPE_F32, 1, {KVH}, {0}};
          args.v_scale = rpa_tensor{v_scale.data(), RPA_DTYPE_F32, 1, {1}, {0}};
        }
        // The device copies start from the same bytes.
        std::vector<std::pair<void**, std::vector<uint8_t>*>> buffers{{&args.keys.data, &keys}, {&args.values.data, &values}};
        if (separate) buffers.push_back({&args.k_cache.data, &host_k}), buffers.push_back({&args.v_cache.data, &host_v});
        else buffers.push_back({&args.kv_pages.data, &host_k});
        rpa_write_kv_args device_args = args;
        std::vector<void*> device(buffers.size());
        for (size_t b = 0; b < buffers.size(); ++b) {
          BOOST_REQUIRE(rpa_device_alloc(gpu, buffers[b].second->size(), &device[b]) == RPA_STATUS_OK);
          BOOST_REQUIRE(rpa_device_copy(gpu, device[b], buffers[b].second->data(), buffers[b].second->size(),
                                        RPA_COPY_HOST_TO_DEVICE) == RPA_STATUS_OK);
        }
        device_args.keys.data = device[0], device_args.values.data = device[1];
        if (separate) device_args.k_cache.data = device[2], device_args.v_cache.data = device[3];
        else device_args.kv_pages.data = device[2];
        device_args.memory = RPA_MEMORY_DEVICE;
        device_args.synchronize = n++ % 2;  // unsynchronised: the copy back (default stream) orders after it
        BOOST_REQUIRE_MESSAGE(rpa_write_kv(gpu, &device_args) == RPA_STATUS_OK, rpa_last_error());
        BOOST_REQUIRE_MESSAGE(rpa_write_kv(reference, &args) == RPA_STATUS_OK, rpa_last_error());
        for (size_t b = 2; b < buffers.size(); ++b) {
          std::vector<uint8_t> back(buffers[b].second->size());
          BOOST_REQUIRE(rpa_device_copy(gpu, back.data(), device[b], back.size(), RPA_COPY_DEVICE_TO_HOST) == RPA_STATUS_OK);
          BOOST_TEST((back == *buffers[b].second), "kv dtype " << kv_dtype << ", new " << new_dtype << ", separate "
                                                                << separate << ": cache " << b - 2 << " differs");
        }
        for (void* pointer : device) BOOST_REQUIRE(rpa_device_free(gpu, pointer) == RPA_STATUS_OK);
      }
  rpa_context_destroy(gpu);
  rpa_context_destroy(reference);
}

BOOST_AUTO_TEST_CASE(timing_reports_each_run) {
  RandomSpec spec;
  spec.q_lens = {1, 1}, spec.context_lens = {100, 200};
  Prepared prepared = prepare(random_case(spec, 3));
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_GPU;
  rpa_context* context = nullptr;
  BOOST_REQUIRE(rpa_context_create(&options, &context) == RPA_STATUS_OK);
  std::vector<double> milliseconds(5, -1.0);
  BOOST_REQUIRE(rpa_time_attention(context, &prepared.args, 5, milliseconds.data()) == RPA_STATUS_OK);
  for (double ms : milliseconds) BOOST_TEST((ms > 0.0 && ms < 1000.0), ms);
  rpa_context_destroy(context);
}

// Meson counts exit status 77 as a skipped test: without a GPU this program has nothing to check.
int main(int argc, char** argv) {
  if (!rpa_backend_available(RPA_BACKEND_GPU)) {
    std::puts("skipped: no usable GPU plugin or device");
    return 77;
  }
  return boost::unit_test::unit_test_main(init_unit_test, argc, argv);
}
