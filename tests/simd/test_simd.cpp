// The simd backend against the reference, on every Highway target compiled into the kernels, plus the
// properties the kernel's design promises: bitwise identical results for any thread count, and no
// influence from NaN in keys no query can see.
#define BOOST_TEST_MODULE simd
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstring>
#include <hwy/targets.h>
#include <limits>
#include <random>
#include <thread>

#include "core/dtype.h"
#include "simd/attention.h"
#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr rpa_dtype kFloatTypes[] = {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16};

// A random case plus the features RandomSpec leaves out. Sinks are stored as `sink_dtype`.
struct Variant {
  Case c;
  rpa_dtype sink_dtype = RPA_DTYPE_F32;
  std::string name;
};

// Sinks of dtype `dtype` replacing the f32 ones prepare() sets up (values already rounded to dtype).
struct SinkStore {
  std::vector<uint8_t> bytes;
  void attach(Prepared& prepared, const Variant& v) {
    if (v.c.sinks.empty()) return;
    bytes.resize(v.c.sinks.size() * rpa::dtype_size(v.sink_dtype));
    for (size_t i = 0; i < v.c.sinks.size(); ++i)
      rpa::store_float(bytes.data(), v.sink_dtype, static_cast<int64_t>(i), v.c.sinks[i]);
    prepared.args.softmax_aux.data = bytes.data();
    prepared.args.softmax_aux.dtype = v.sink_dtype;
  }
};

float round_to(rpa_dtype dtype, float x) {
  switch (dtype) {
    case RPA_DTYPE_F16: return rpa::f16_to_float(rpa::float_to_f16(x));
    case RPA_DTYPE_BF16: return rpa::bf16_to_float(rpa::float_to_bf16(x));
    default: return x;
  }
}

// Case `index` of the randomized sweep: dtype combination index % 27, head dims, GQA groups, page
// sizes, windows, caps, sinks, layouts and batch shapes varied by a seeded generator.
Variant random_variant(int index) {
  std::mt19937_64 rng(1000 + index);
  auto pick = [&](auto const& options) { return options[rng() % options.size()]; };
  auto uniform = [&](int lo, int hi) { return lo + static_cast<int>(rng() % static_cast<uint64_t>(hi - lo + 1)); };
  static const std::vector<int64_t> dims{32, 64, 80, 96, 112, 128, 256, 33, 40, 1, 72};
  static const std::vector<int64_t> groups{1, 2, 3, 4, 5, 8};
  static const std::vector<int64_t> pages{1, 3, 16, 128, 5, 32};

  RandomSpec spec;
  spec.head_dim = dims[index % dims.size()];
  spec.num_kv_heads = uniform(1, 2);
  spec.num_q_heads = spec.num_kv_heads * pick(groups);
  spec.page_size = pick(pages);
  spec.extra_pages = uniform(0, 3);
  spec.padding_tokens = uniform(0, 2);
  spec.padding_seqs = uniform(0, 2);
  const int num_seqs = uniform(1, 4);
  for (int s = 0; s < num_seqs; ++s) {
    int32_t context = uniform(1, spec.head_dim >= 128 ? 160 : 300), q_len = 1;
    switch (rng() % 4) {
      case 0: q_len = 1; break;                        // decode
      case 1: context = uniform(1, 90); q_len = context; break;  // prefill
      case 2: q_len = uniform(1, std::min(context, 40)); break;  // chunked prefill
      case 3: q_len = uniform(0, 1); context = std::max(context, q_len); break;
    }
    spec.q_lens.push_back(q_len);
    spec.context_lens.push_back(context);
  }
  Variant v;
  v.c = random_case(spec, 7 * index + 1);
  Case& c = v.c;
  c.query_dtype = kFloatTypes[index % 3];
  c.kv_dtype = kFloatTypes[index / 3 % 3];
  c.out_dtype = kFloatTypes[index / 9 % 3];
  if (rng() % 3 == 0) c.sliding_window = uniform(1, 64);
  if (rng() % 3 == 0) c.logits_soft_cap = uniform(2, 30);
  if (rng() % 4 == 0) c.softmax_scale = 0.05 * uniform(1, 10);
  if (rng() % 2 == 0) {
    const int64_t heads[] = {1, c.num_kv_heads, c.num_q_heads};
    c.sink_heads = heads[rng() % 3];
    c.sinks_per_head = uniform(1, 2);
    v.sink_dtype = kFloatTypes[rng() % 3];
    std::normal_distribution<float> normal(0.0f, 2.0f);
    for (int64_t i = 0; i < c.sink_heads * c.sinks_per_head; ++i)
      c.sinks.push_back(rng() % 5 == 0 ? -std::numeric_limits<float>::infinity() : round_to(v.sink_dtype, normal(rng)));
  }
  c.separate_kv = rng() % 2;
  c.strided = rng() % 2;
  c.round_to_dtypes();
  v.name = "case " + std::to_string(index) + ": D " + std::to_string(c.head_dim) + ", QH/KVH " +
           std::to_string(c.num_q_heads) + "/" + std::to_string(c.num_kv_heads) + ", page " +
           std::to_string(c.page_size) + ", window " + std::to_string(c.sliding_window) + ", cap " +
           std::to_string(c.logits_soft_cap) + ", sinks " + std::to_string(c.sink_heads) + ", dtypes q/kv/out " +
           std::to_string(c.query_dtype) + std::to_string(c.kv_dtype) + std::to_string(c.out_dtype);
  return v;
}

// Long contexts with few sequences: the plan splits their keys (flash-decoding) and merges the splits;
// a window leaves some rows without keys in some splits.
Variant long_variant(int index) {
  RandomSpec spec;
  spec.num_kv_heads = 1 + index % 2;
  spec.num_q_heads = spec.num_kv_heads * 4;
  spec.head_dim = index == 0 ? 128 : 64;
  spec.page_size = index == 0 ? 16 : 7;
  spec.q_lens = index == 0 ? std::vector<int32_t>{1} : std::vector<int32_t>{40, 1};
  spec.context_lens = index == 0 ? std::vector<int32_t>{3000} : std::vector<int32_t>{1500, 2100};
  Variant v;
  v.c = random_case(spec, 99 + index);
  v.c.kv_dtype = index == 0 ? RPA_DTYPE_BF16 : RPA_DTYPE_F32;
  if (index == 1) {
    v.c.sliding_window = 700;
    v.c.sinks = {0.5f};
    v.c.sink_heads = v.c.sinks_per_head = 1;
  }
  v.c.round_to_dtypes();
  v.name = "long case " + std::to_string(index);
  return v;
}

Result run(const Variant& v, rpa_backend backend) {
  Prepared prepared = prepare(v.c);
  SinkStore sinks;
  sinks.attach(prepared, v);
  return run_prepared(prepared, backend);
}

// The stated bounds: 2e-5 absolute for f32 output; for f16/bf16 output one unit in the last place of
// the reference value on top (both sides round an f32 result; they may round to neighbours).
void check_close(const Result& got, const Result& want, rpa_dtype out_dtype, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(got.status == RPA_STATUS_OK, what << ": " << got.message);
  BOOST_REQUIRE_EQUAL(got.out.size(), want.out.size());
  const double relative = out_dtype == RPA_DTYPE_F16 ? std::ldexp(1.0, -10) : out_dtype == RPA_DTYPE_BF16 ? std::ldexp(1.0, -7) : 0.0;
  double worst = 0;
  size_t bad = 0;
  for (size_t i = 0; i < want.out.size(); ++i) {
    const double diff = std::isnan(got.out[i]) ? INFINITY : std::abs(double(got.out[i]) - want.out[i]);
    if (diff > 2e-5 + relative * std::abs(want.out[i])) ++bad;
    worst = std::max(worst, diff);
  }
  BOOST_CHECK_MESSAGE(bad == 0, what << ": " << bad << " outputs off, worst " << worst);
  BOOST_CHECK_MESSAGE(max_abs_diff(got.lse, want.lse) <= 2e-5, what << ": lse off by " << max_abs_diff(got.lse, want.lse));
}

std::vector<Variant> sweep() {
  std::vector<Variant> variants;
  for (int i = 0; i < 54; ++i) variants.push_back(random_variant(i));
  for (int i = 0; i < 2; ++i) variants.push_back(long_variant(i));
  return variants;
}

// Runs `body` once per Highway target compiled into the kernels that this CPU supports.
template <typename Body>
void for_each_target(Body&& body) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  BOOST_REQUIRE(!targets.empty());
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    BOOST_TEST_MESSAGE("target " << hwy::TargetName(target));
    BOOST_CHECK_EQUAL(std::string(rpa::simd::active_target()), hwy::TargetName(target));
    body(std::string(hwy::TargetName(target)));
  }
  hwy::SetSupportedTargetsForTest(0);
}


}  // namespace

BOOST_AUTO_TEST_CASE(matches_reference_on_every_target) {
  const std::vector<Variant> variants = sweep();
  std::vector<Result> expected;
  for (const Variant& v : variants) {
    expected.push_back(run(v, RPA_BACKEND_REFERENCE));
    BOOST_REQUIRE_MESSAGE(expected.back().status == RPA_STATUS_OK, v.name << ": " << expected.back().message);
  }
  for_each_target([&](const std::string& target) {
    for (size_t i = 0; i < variants.size(); ++i)
      check_close(run(variants[i], RPA_BACKEND_SIMD), expected[i], variants[i].c.out_dtype, target + " " + variants[i].name);
  });
}

BOOST_AUTO_TEST_CASE(bitwise_identical_for_any_thread_count) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int counts[] = {1, 2, static_cast<int>(cores) + 3};
  std::vector<Variant> variants{long_variant(0), long_variant(1), random_variant(5), random_variant(22)};
  RandomSpec prefill;  // many items of unequal cost
  prefill.num_q_heads = 8;
  prefill.num_kv_heads = 2;
  prefill.head_dim = 128;
  prefill.page_size = 16;
  prefill.q_lens = {300, 1, 1, 17};
  prefill.context_lens = {300, 900, 40, 600};
  variants.push_back({random_case(prefill, 5), RPA_DTYPE_F32, "prefill mix"});
  for_each_target([&](const std::string& target) {
    for (const Variant& v : variants) {
      Prepared prepared = prepare(v.c);
      SinkStore sinks;
      sinks.attach(prepared, v);
      const std::vector<uint8_t> first = simd_output_bytes(prepared, counts[0]);
      for (int threads : counts) {
        BOOST_CHECK_MESSAGE(simd_output_bytes(prepared, threads) == first, target << " " << v.name << ": " << threads << " threads differ");
        BOOST_CHECK_MESSAGE(simd_output_bytes(prepared, threads) == first, target << " " << v.name << ": a rerun differs");
      }
    }
  });
}

// Keys before every query's window, slots past the context, unused pages and stale block-table entries
// all hold garbage in `dirty` and finite values in `clean`: the outputs must be identical.
void check_garbage_never_leaks(const RandomSpec& spec, int32_t window, rpa_dtype kv_dtype, const std::string& name) {
  Case dirty = random_case(spec, 42);
  dirty.sliding_window = window;
  dirty.kv_dtype = kv_dtype;
  dirty.round_to_dtypes();
  Case clean = dirty;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (float& x : clean.kv)
    if (!std::isfinite(x)) x = round_to(kv_dtype, normal(rng));
  for (int32_t s = 0; s < dirty.num_seqs; ++s) {
    const int32_t q_len = dirty.query_start_loc[s + 1] - dirty.query_start_loc[s];
    const int64_t first_key = std::max<int64_t>(0, dirty.context_lens[s] - q_len - dirty.sliding_window + 1);
    for (int64_t j = 0; j < first_key; ++j) {
      const int64_t page = dirty.block_tables[s * dirty.pages_per_seq + j / dirty.page_size];
      for (int64_t h = 0; h < dirty.num_kv_heads; ++h)
        for (int64_t d = 0; d < dirty.head_dim; ++d) {
          dirty.k(page, j % dirty.page_size, h, d) = kNaN;
          dirty.v(page, j % dirty.page_size, h, d) = kNaN;
        }
    }
    for (int64_t page = 0; (page + 1) * dirty.page_size <= first_key; ++page)
      dirty.block_tables[s * dirty.pages_per_seq + page] = -1;  // never needed: must not be read
  }
  for (bool separate : {false, true}) {
    dirty.separate_kv = clean.separate_kv = separate;
    const Result want = run_case(clean, RPA_BACKEND_REFERENCE);
    for_each_target([&](const std::string& target) {
      const Result from_clean = run_case(clean, RPA_BACKEND_SIMD), from_dirty = run_case(dirty, RPA_BACKEND_SIMD);
      BOOST_REQUIRE_MESSAGE(from_dirty.status == RPA_STATUS_OK, from_dirty.message);
      BOOST_CHECK_MESSAGE(from_dirty.out == from_clean.out && from_dirty.lse == from_clean.lse,
                          target << " " << name << ": garbage leaked");
      check_close(from_dirty, want, dirty.out_dtype, target + " " + name + " dirty");
    });
  }
}

BOOST_AUTO_TEST_CASE(nan_where_no_query_looks_changes_nothing) {
  // Chunked prefills with windows, through the kernels that convert K and V tiles.
  RandomSpec spec;
  spec.num_q_heads = 6;
  spec.num_kv_heads = 2;
  spec.head_dim = 80;
  spec.page_size = 5;
  spec.q_lens = {9, 1, 30};
  spec.context_lens = {200, 130, 77};
  spec.extra_pages = 4;
  check_garbage_never_leaks(spec, 33, RPA_DTYPE_F32, "chunked prefill");
  // Groups of 4 q heads, whose rows of one token share their softmax (SharedBlock).
  spec.num_q_heads = 8;
  check_garbage_never_leaks(spec, 33, RPA_DTYPE_F32, "chunked prefill, group 4");
  // bf16 decodes in groups of 4 q heads: the kernels that read K and V in place from the cache, with
  // windows and contexts that end inside a tile (its padding keys must not be read from the cache).
  spec.head_dim = 128;
  spec.page_size = 16;
  spec.q_lens = {1, 1, 1};
  spec.context_lens = {200, 130, 77};
  check_garbage_never_leaks(spec, 33, RPA_DTYPE_BF16, "bf16 decode");
}

BOOST_AUTO_TEST_CASE(one_context_from_several_threads) {
  // Calls on one context share its arena and scratch slots: each must still get its own answer.
  std::vector<Variant> variants{random_variant(3), random_variant(17), long_variant(1), random_variant(40)};
  std::vector<std::vector<uint8_t>> alone;
  for (const Variant& v : variants) {
    Prepared prepared = prepare(v.c);
    SinkStore sinks;
    sinks.attach(prepared, v);
    alone.push_back(simd_output_bytes(prepared, 2));
  }
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_SIMD;
  options.num_threads = 2;
  rpa_context* context = nullptr;
  BOOST_REQUIRE_EQUAL(rpa_context_create(&options, &context), RPA_STATUS_OK);
  std::vector<int> mismatches(variants.size(), 0);
  std::vector<std::thread> callers;
  for (size_t i = 0; i < variants.size(); ++i)
    callers.emplace_back([&, i] {
      Prepared prepared = prepare(variants[i].c);
      SinkStore sinks;
      sinks.attach(prepared, variants[i]);
      for (int round = 0; round < 5; ++round) {
        std::fill(prepared.out.begin(), prepared.out.end(), 0xff);
        if (rpa_attention(context, &prepared.args) != RPA_STATUS_OK) ++mismatches[i];
        if (output_bytes(prepared) != alone[i]) ++mismatches[i];
      }
    });
  for (std::thread& caller : callers) caller.join();
  rpa_context_destroy(context);
  for (size_t i = 0; i < variants.size(); ++i) BOOST_CHECK_MESSAGE(mismatches[i] == 0, variants[i].name);
}

// Quantised caches on every target: decode reads the codes in place (DecodeCodes, head dims 128 and the
// run-time path), prefill converts each tile; per-head scales; NaN codes in every invisible slot.
BOOST_AUTO_TEST_CASE(quantised_kv_on_every_target) {
  std::vector<RandomSpec> specs;
  RandomSpec s;
  s.q_lens = {1, 1, 1}, s.context_lens = {700, 5, 64};
  s.num_q_heads = 8, s.num_kv_heads = 2, s.head_dim = 128, s.page_size = 16;
  specs.push_back(s);
  s.head_dim = 48, s.q_lens = {1, 6}, s.context_lens = {90, 40};
  specs.push_back(s);
  s.head_dim = 20, s.q_lens = {9, 1}, s.context_lens = {33, 50}, s.page_size = 5;
  specs.push_back(s);
  int n = 0;
  for (rpa_dtype dtype : {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8})
    for (const RandomSpec& spec : specs) {
      Case c = random_case(spec, 300 + n++);
      c.kv_dtype = dtype;
      c.round_to_dtypes();
      c.k_scale = {0.3f, 0.7f}, c.v_scale = {1.25f, 0.5f};
      if (dtype == RPA_DTYPE_INT8) c.k_scale = {0.02f}, c.v_scale = {0.4f, 0.03f};
      const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
      BOOST_REQUIRE_MESSAGE(expected.status == RPA_STATUS_OK, expected.message);
      for_each_target([&](const std::string& target) {
        check_close(run_case(c, RPA_BACKEND_SIMD), expected, c.out_dtype,
                    target + " kv dtype " + std::to_string(dtype) + " head_dim " + std::to_string(spec.head_dim));
      });
    }
}
