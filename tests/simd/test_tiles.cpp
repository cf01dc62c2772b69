// The simd backend's tile path (prefill products as bf16 tiles, simd/tiles.h) on the product that
// RPA_SIMD_TILES selects: "emulated" (the scalar twin of TDPBF16PS: runs here, tests the driver) or
// "amx" (the instruction; the program exits 77, meson's SKIP, on a CPU without AMX-BF16). The product
// against a double matrix product, then randomized prefill and mixed problems against the reference
// (f32 outputs within 2e-5), bitwise equality across thread counts, and NaN in invisible slots.
#define BOOST_TEST_MODULE simd_tiles
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "simd/tiles.h"
#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

struct SkipWithoutAmx {
  SkipWithoutAmx() {
    const char* choice = std::getenv("RPA_SIMD_TILES");
    if (choice != nullptr && std::strcmp(choice, "amx") == 0 && rpa::simd::amx_tile_product() == nullptr) {
      std::printf("SKIP: this CPU lacks AMX-BF16 (or Linux refused the tile state): the AMX path cannot run here\n");
      std::exit(77);
    }
  }
};
BOOST_TEST_GLOBAL_FIXTURE(SkipWithoutAmx);

rpa::simd::TileProduct product_under_test() {
  rpa::simd::TileProduct product = rpa::simd::tile_product_in_use();
  if (product == nullptr) throw std::runtime_error("set RPA_SIMD_TILES to emulated or amx");
  return product;
}


// Case `index`: prefill and chunked-prefill sequences (some with decodes beside them), head dims 64..256
// (and one that is no multiple of 32), groups 1..8, 16-bit queries and KV in every combination, windows,
// caps and sinks; random_case puts NaN and Inf in every slot no query sees.
Case tile_case(int index) {
  std::mt19937_64 rng(500 + index);
  auto uniform = [&](int lo, int hi) { return lo + static_cast<int>(rng() % static_cast<uint64_t>(hi - lo + 1)); };
  const int64_t dims[] = {64, 128, 256, 80, 96};
  const int64_t groups[] = {1, 2, 4, 8, 3};
  const rpa_dtype sixteen[] = {RPA_DTYPE_BF16, RPA_DTYPE_F16};
  RandomSpec spec;
  spec.head_dim = dims[index % 5];
  spec.num_kv_heads = 1 + index % 2;
  spec.num_q_heads = spec.num_kv_heads * groups[index / 2 % 5];
  spec.page_size = index % 3 == 0 ? 16 : 7;
  const int num_seqs = uniform(1, 3);
  for (int s = 0; s < num_seqs; ++s) {
    const int32_t q_len = s == 1 && index % 2 ? 1 : uniform(9, 40);  // a decode beside the prefill now and then
    spec.q_lens.push_back(q_len);
    // Two cases in three have chunks after hundreds of keys: several steps of kTileStep keys.
    spec.context_lens.push_back(q_len + (index % 3 != 2 ? uniform(130, 400) : uniform(0, 60)));
  }
  Case c = random_case(spec, 77 + index);
  // There the keys from 128 on are 6 times larger (scores of about 20): the running max of a row that
  // sees both moves by more than the lazy bound (kLazyRescale) at the second step, so its output is
  // rescaled; and f16 x f16 scores that large need their cross products summed apart from hi x hi (in
  // one sum, a case was 2.3e-5 off).
  if (index % 3 != 2)
    for (int32_t s = 0; s < c.num_seqs; ++s)
      for (int64_t key = 128; key < c.context_lens[s]; ++key) {
        const int64_t page = c.block_tables[s * c.pages_per_seq + key / c.page_size];
        for (int64_t h = 0; h < c.num_kv_heads; ++h)
          for (int64_t d = 0; d < c.head_dim; ++d) c.k(page, key % c.page_size, h, d) *= 6.0f;
      }
  c.query_dtype = sixteen[index % 2];
  c.kv_dtype = sixteen[index / 2 % 2];
  c.out_dtype = index % 7 == 3 ? RPA_DTYPE_BF16 : RPA_DTYPE_F32;
  if (index % 3 == 1) c.sliding_window = uniform(5, 50);
  if (index % 4 == 2) c.logits_soft_cap = uniform(3, 20);
  if (index % 5 == 4) {
    c.sink_heads = c.num_q_heads;
    c.sinks_per_head = 1;
    for (int64_t h = 0; h < c.num_q_heads; ++h) c.sinks.push_back(static_cast<float>(uniform(-3, 3)));
  }
  c.round_to_dtypes();
  return c;
}

std::string describe(const Case& c, int index) {
  return "case " + std::to_string(index) + ": D " + std::to_string(c.head_dim) + ", QH/KVH " +
         std::to_string(c.num_q_heads) + "/" + std::to_string(c.num_kv_heads) + ", q/kv/out dtypes " +
         rpa::dtype_name(c.query_dtype) + "/" + rpa::dtype_name(c.kv_dtype) + "/" + rpa::dtype_name(c.out_dtype) +
         ", window " + std::to_string(c.sliding_window) + ", cap " + std::to_string(c.logits_soft_cap);
}

constexpr int kCases = 24;

}  // namespace

// The product in AMX's pair layout against a double product of the same bf16 values, with a subnormal
// input (counts as 0), operands of two parts (padded rows, so ld exceeds the width), and accumulation
// onto a C that holds values already.
BOOST_AUTO_TEST_CASE(product_is_the_bf16_matrix_product) {
  const rpa::simd::TileProduct product = product_under_test();
  constexpr size_t m = 64, n = 32, depth = 96, lda = depth + 32, ldb = 2 * n + 32;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (size_t parts : {1, 2}) {
    std::vector<uint16_t> a(parts * m * lda), b(parts * depth / 2 * ldb);
    std::vector<double> A(m * depth), B(depth * n);  // sums of the parts
    for (size_t part = 0; part < parts; ++part) {
      for (size_t i = 0; i < m; ++i)
        for (size_t k = 0; k < depth; ++k) {
          const uint16_t bits = rpa::float_to_bf16(normal(rng));
          a[part * m * lda + i * lda + k] = bits;
          A[i * depth + k] += rpa::bf16_to_float(bits);
        }
      for (size_t k = 0; k < depth; ++k)
        for (size_t j = 0; j < n; ++j) {
          const uint16_t bits = rpa::float_to_bf16(normal(rng));
          b[part * depth / 2 * ldb + k / 2 * ldb + 2 * j + k % 2] = bits;
          B[k * n + j] += rpa::bf16_to_float(bits);
        }
    }
    A[5] -= rpa::bf16_to_float(a[5]);
    a[5] = 0x0001;  // a subnormal: treated as 0
    std::vector<float> c(m * n);
    for (float& x : c) x = normal(rng);
    const std::vector<float> before = c;
    const rpa::simd::TileOperand a_operand{a.data(), lda, parts, m * lda}, b_operand{b.data(), ldb, parts, depth / 2 * ldb};
    product(a_operand, b_operand, c.data(), n, m, n, depth, true);
    double worst = 0;
    for (size_t i = 0; i < m; ++i)
      for (size_t j = 0; j < n; ++j) {
        double want = before[i * n + j];
        for (size_t k = 0; k < depth; ++k) want += A[i * depth + k] * B[k * n + j];
        worst = std::max(worst, std::abs(c[i * n + j] - want));
      }
    BOOST_CHECK_MESSAGE(worst < 1e-4 * parts, parts << " parts: tile product off by " << worst);
    product(a_operand, b_operand, c.data(), n, m, n, depth, false);  // without accumulation: C ignored
    std::vector<float> again = c;
    std::fill(c.begin(), c.end(), std::nanf(""));
    product(a_operand, b_operand, c.data(), n, m, n, depth, false);
    BOOST_CHECK(c == again);
  }
}

BOOST_AUTO_TEST_CASE(tile_path_matches_reference) {
  product_under_test();
  const std::string mode = std::getenv("RPA_SIMD_TILES");
  int differs_from_fma = 0;
  for (int i = 0; i < kCases; ++i) {
    const Case c = tile_case(i);
    const Result want = run_case(c, RPA_BACKEND_REFERENCE), got = run_case(c, RPA_BACKEND_SIMD);
    BOOST_REQUIRE_MESSAGE(got.status == RPA_STATUS_OK, got.message);
    const double relative = c.out_dtype == RPA_DTYPE_BF16 ? std::ldexp(1.0, -7) : 0.0;
    size_t bad = 0;
    double worst = 0;
    for (size_t e = 0; e < want.out.size(); ++e) {
      const double diff = std::isnan(got.out[e]) ? INFINITY : std::abs(double(got.out[e]) - want.out[e]);
      bad += diff > 2e-5 + relative * std::abs(want.out[e]);
      worst = std::max(worst, diff);
    }
    BOOST_CHECK_MESSAGE(bad == 0, describe(c, i) << ": " << bad << " outputs off, worst " << worst);
    BOOST_TEST_MESSAGE(describe(c, i) << ": largest difference " << worst);
    BOOST_CHECK_MESSAGE(max_abs_diff(got.lse, want.lse) <= 2e-5, describe(c, i) << ": lse off by " << max_abs_diff(got.lse, want.lse));
    // The FMA kernels round differently: some difference shows the tile path ran.
    setenv("RPA_SIMD_TILES", "off", 1);
    const Result fma = run_case(c, RPA_BACKEND_SIMD);
    setenv("RPA_SIMD_TILES", mode.c_str(), 1);
    differs_from_fma += fma.out != got.out;
  }
  BOOST_CHECK_MESSAGE(differs_from_fma > kCases / 2, "only " << differs_from_fma << " cases left the FMA path's bits");
}

BOOST_AUTO_TEST_CASE(bitwise_identical_for_any_thread_count) {
  product_under_test();
  for (int i : {0, 5}) {
    Prepared prepared = prepare(tile_case(i));
    const std::vector<uint8_t> first = simd_output_bytes(prepared, 1);
    for (int threads : {2, 5}) BOOST_CHECK_MESSAGE(simd_output_bytes(prepared, threads) == first, "case " << i << ": " << threads << " threads differ");
  }
}

// An infinite value in a key some rows see and others do not: the rows that do not see it stay exact
// (the tile takes P.V on the FMA kernel, which skips masked keys, instead of multiplying Inf by 0).
BOOST_AUTO_TEST_CASE(inf_in_a_visible_value_stays_in_the_rows_that_see_it) {
  product_under_test();
  RandomSpec spec;
  spec.q_lens = {40};
  spec.context_lens = {40};
  spec.num_q_heads = 4, spec.num_kv_heads = 1, spec.head_dim = 64, spec.page_size = 16;
  Case c = random_case(spec, 9);
  c.query_dtype = c.kv_dtype = RPA_DTYPE_BF16;
  constexpr int64_t kKey = 20;  // seen by the queries at positions 20..39
  const int64_t page = c.block_tables[kKey / c.page_size];
  for (int64_t d = 0; d < c.head_dim; ++d) c.v(page, kKey % c.page_size, 0, d) = INFINITY;
  c.round_to_dtypes();
  const Result want = run_case(c, RPA_BACKEND_REFERENCE), got = run_case(c, RPA_BACKEND_SIMD);
  BOOST_REQUIRE_MESSAGE(got.status == RPA_STATUS_OK, got.message);
  const size_t row = static_cast<size_t>(c.num_q_heads * c.head_dim);
  double worst = 0;
  for (size_t e = 0; e < kKey * row; ++e)
    worst = std::max(worst, std::isfinite(got.out[e]) ? std::abs(double(got.out[e]) - want.out[e]) : INFINITY);
  BOOST_CHECK_MESSAGE(worst <= 2e-5, "rows before the infinite value: off by " << worst);
  for (size_t e = kKey * row; e < got.out.size(); ++e)
    if (std::isfinite(got.out[e])) BOOST_ERROR("a row that sees the infinite value has a finite output");
}
