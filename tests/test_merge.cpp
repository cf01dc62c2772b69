// rpa_merge_states through the C ABI on the CPU backends: hand-computed merges, the -inf rules, one
// rounding into 16-bit outputs, in-place merges, and a named error for each argument rule.
#define BOOST_TEST_MODULE merge
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tests/support/case.h"

using rpa::testing::OwnedContext;

namespace {

const float kInf = std::numeric_limits<float>::infinity();

rpa_tensor tensor(void* data, rpa_dtype dtype, std::vector<int64_t> shape) {
  rpa_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.ndim = static_cast<int32_t>(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    t.shape[i] = shape[i];
    t.strides[i] = stride;
    stride *= shape[i];
  }
  return t;
}

// Two f32 states of T rows, H heads, D dims and their merge into f32 out and lse.
struct Merge {
  Merge(int64_t tokens, int64_t heads, int64_t dims)
      : a(tokens * heads * dims), b(a.size()), out(a.size(), -7.0f), lse_a(tokens * heads), lse_b(lse_a.size()),
        lse(lse_a.size(), -7.0f), shape{tokens, heads, dims}, lse_shape{tokens, heads} {
    rpa_merge_args_init(&args);
    args.out_a = tensor(a.data(), RPA_DTYPE_F32, shape);
    args.lse_a = tensor(lse_a.data(), RPA_DTYPE_F32, lse_shape);
    args.out_b = tensor(b.data(), RPA_DTYPE_F32, shape);
    args.lse_b = tensor(lse_b.data(), RPA_DTYPE_F32, lse_shape);
    args.out = tensor(out.data(), RPA_DTYPE_F32, shape);
    args.lse = tensor(lse.data(), RPA_DTYPE_F32, lse_shape);
  }
  std::vector<float> a, b, out, lse_a, lse_b, lse;
  std::vector<int64_t> shape, lse_shape;
  rpa_merge_args args;
};

std::vector<rpa_backend> cpu_backends() {
  std::vector<rpa_backend> backends{RPA_BACKEND_REFERENCE};
  if (rpa_backend_available(RPA_BACKEND_SIMD)) backends.push_back(RPA_BACKEND_SIMD);
  return backends;
}

}  // namespace

// Weights e^0 : e^ln3 = 1 : 3, so out = (a + 3b) / 4 and lse = ln 4.
BOOST_AUTO_TEST_CASE(hand_computed_merge) {
  for (rpa_backend backend : cpu_backends()) {
    Merge m(1, 1, 2);
    m.a = {1.0f, 3.0f};
    m.b = {5.0f, 7.0f};
    m.lse_a = {0.0f};
    m.lse_b = {std::log(3.0f)};
    BOOST_TEST_REQUIRE(rpa_merge_states(OwnedContext(backend).context, &m.args) == RPA_STATUS_OK, rpa_last_error());
    BOOST_TEST(m.out[0] == 4.0f, boost::test_tools::tolerance(1e-6f));
    BOOST_TEST(m.out[1] == 6.0f, boost::test_tools::tolerance(1e-6f));
    BOOST_TEST(m.lse[0] == std::log(4.0f), boost::test_tools::tolerance(1e-6f));
  }
}

// A state with lse -inf has no key: its output is never read (NaN here), and two give 0 and -inf.
BOOST_AUTO_TEST_CASE(minus_infinity_rules) {
  for (rpa_backend backend : cpu_backends()) {
    Merge m(3, 1, 2);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    m.a = {nan, nan, 2.0f, 4.0f, nan, nan};
    m.lse_a = {-kInf, 1.5f, -kInf};
    m.b = {8.0f, 9.0f, nan, nan, nan, nan};
    m.lse_b = {0.25f, -kInf, -kInf};
    BOOST_TEST_REQUIRE(rpa_merge_states(OwnedContext(backend).context, &m.args) == RPA_STATUS_OK, rpa_last_error());
    const std::vector<float> expected_out{8.0f, 9.0f, 2.0f, 4.0f, 0.0f, 0.0f};
    BOOST_TEST(m.out == expected_out, boost::test_tools::per_element());
    BOOST_TEST(m.lse[0] == 0.25f);
    BOOST_TEST(m.lse[1] == 1.5f);
    BOOST_TEST(m.lse[2] == -kInf);
  }
}

// (1 + 2^-8) and (1 + 2^-8 + 2^-23) with equal weights average to 1 + 2^-8 + 2^-24, just above the bf16
// midpoint between 1 and 1 + 2^-7: rounded once it is 1 + 2^-7 (0x3F81). Through f32 first it would tie
// at 1 + 2^-8 and then round to even, 1.0 (0x3F80).
BOOST_AUTO_TEST_CASE(sixteen_bit_outputs_are_rounded_once) {
  for (rpa_backend backend : cpu_backends()) {
    Merge m(1, 1, 1);
    m.a = {1.0f + std::ldexp(1.0f, -8)};
    m.b = {1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -23)};
    m.lse_a = {0.0f};
    m.lse_b = {0.0f};
    uint16_t out_bf16 = 0;
    m.args.out = tensor(&out_bf16, RPA_DTYPE_BF16, m.shape);
    BOOST_TEST_REQUIRE(rpa_merge_states(OwnedContext(backend).context, &m.args) == RPA_STATUS_OK, rpa_last_error());
    BOOST_TEST(out_bf16 == 0x3F81, "backend " << rpa_backend_string(backend) << " gave 0x" << std::hex << out_bf16);
  }
}

// out may be out_a itself and lse may be lse_b: rows merge in place.
BOOST_AUTO_TEST_CASE(in_place_merge) {
  for (rpa_backend backend : cpu_backends()) {
    Merge m(2, 2, 3);
    for (size_t i = 0; i < m.a.size(); ++i) m.a[i] = static_cast<float>(i), m.b[i] = static_cast<float>(2 * i + 1);
    m.lse_a = {0.0f, 1.0f, -1.0f, 2.0f};
    m.lse_b = {0.0f, 1.0f, -1.0f, 2.0f};  // equal weights: the mean
    std::vector<float> expected(m.a.size());
    for (size_t i = 0; i < m.a.size(); ++i) expected[i] = (m.a[i] + m.b[i]) / 2;
    m.args.out = m.args.out_a;
    m.args.lse = m.args.lse_b;
    BOOST_TEST_REQUIRE(rpa_merge_states(OwnedContext(backend).context, &m.args) == RPA_STATUS_OK, rpa_last_error());
    BOOST_TEST(m.a == expected, boost::test_tools::per_element());
    const std::vector<float> expected_lse{std::log(2.0f), 1.0f + std::log(2.0f), -1.0f + std::log(2.0f),
                                          2.0f + std::log(2.0f)};
    for (size_t i = 0; i < expected_lse.size(); ++i)
      BOOST_TEST(m.lse_b[i] == expected_lse[i], boost::test_tools::tolerance(1e-6f));
  }
}

// Each rule: the status, a message naming the argument, and nothing written.
BOOST_AUTO_TEST_CASE(argument_rules) {
  struct Rule {
    const char* what;
    void (*breaks)(Merge&);
    const char* fragment;
  };
  const Rule rules[] = {
      {"out_a absent", [](Merge& m) { m.args.out_a = rpa_tensor{}; }, "argument 'out_a'"},
      {"lse_a absent", [](Merge& m) { m.args.lse_a = rpa_tensor{}; }, "argument 'lse_a'"},
      {"out_b absent", [](Merge& m) { m.args.out_b = rpa_tensor{}; }, "argument 'out_b'"},
      {"out absent", [](Merge& m) { m.args.out = rpa_tensor{}; }, "argument 'out'"},
      {"out_b with another D", [](Merge& m) { m.args.out_b.shape[2] = 3; }, "argument 'out_b'"},
      {"out with another T", [](Merge& m) { m.args.out.shape[0] = 1; }, "argument 'out'"},
      {"lse_b with another H", [](Merge& m) { m.args.lse_b.shape[1] = 3; }, "argument 'lse_b'"},
      {"lse_a not f32", [](Merge& m) { m.args.lse_a.dtype = RPA_DTYPE_BF16; }, "argument 'lse_a': dtype is bf16"},
      {"lse int32", [](Merge& m) { m.args.lse.dtype = RPA_DTYPE_I32; }, "argument 'lse': dtype is int32, expected f32"},
      {"out_a int32", [](Merge& m) { m.args.out_a.dtype = RPA_DTYPE_I32; }, "argument 'out_a'"},
      {"out reaching rows twice", [](Merge& m) { m.args.out.strides[0] = 0; },
       "argument 'out': strides[0] = 0 makes the view reach some elements more than once"},
      {"lse reaching rows twice", [](Merge& m) { m.args.lse.strides[0] = 0; },
       "argument 'lse': strides[0] = 0 makes the view reach some elements more than once"},
      // In place means the same view: out_b's bytes read as bf16 elements are another view of them.
      {"out over out_b as bf16", [](Merge& m) { m.args.out = tensor(m.b.data(), RPA_DTYPE_BF16, m.shape); },
       "argument 'out': its bytes overlap those of 'out_b'"},
      {"lse inside out_a", [](Merge& m) { m.args.lse = tensor(m.a.data() + 1, RPA_DTYPE_F32, m.lse_shape); },
       "argument 'lse': its bytes overlap those of 'out_a'"},
      {"lse one head into lse_a", [](Merge& m) { m.args.lse = tensor(m.lse_a.data() + 1, RPA_DTYPE_F32, m.lse_shape); },
       "argument 'lse': its bytes overlap those of 'lse_a'"},
      {"lse inside out", [](Merge& m) { m.args.lse = tensor(m.out.data() + 1, RPA_DTYPE_F32, m.lse_shape); },
       "argument 'out': its bytes overlap those of 'lse'"},
      {"out_a 2-D", [](Merge& m) { m.args.out_a.ndim = 2; }, "argument 'out_a'"},
      {"bad memory kind",
       [](Merge& m) {
         const int32_t bad = 7;
         std::memcpy(&m.args.memory, &bad, sizeof bad);
       },
       "argument 'memory': 7"},
      {"device memory on a CPU context", [](Merge& m) { m.args.memory = RPA_MEMORY_DEVICE; },
       "argument 'memory': device memory needs the gpu backend"},
  };
  for (const Rule& rule : rules) {
    Merge m(2, 2, 4);
    rule.breaks(m);
    BOOST_TEST(rpa_merge_states(OwnedContext(RPA_BACKEND_REFERENCE).context, &m.args) == RPA_STATUS_INVALID_ARGUMENT,
               rule.what);
    const std::string message = rpa_last_error();
    BOOST_TEST(message.find(rule.fragment) != std::string::npos, rule.what << ": '" << message << "'");
    BOOST_TEST(m.out == std::vector<float>(m.out.size(), -7.0f), boost::test_tools::per_element());
    BOOST_TEST(m.lse == std::vector<float>(m.lse.size(), -7.0f), boost::test_tools::per_element());
    BOOST_TEST(m.a == std::vector<float>(m.a.size(), 0.0f), boost::test_tools::per_element());
    BOOST_TEST(m.b == std::vector<float>(m.b.size(), 0.0f), boost::test_tools::per_element());
    BOOST_TEST(m.lse_a == std::vector<float>(m.lse_a.size(), 0.0f), boost::test_tools::per_element());
  }
  Merge m(1, 1, 1);
  BOOST_TEST(rpa_merge_states(nullptr, &m.args) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(std::string(rpa_last_error()).find("argument 'context'") != std::string::npos);
  BOOST_TEST(rpa_merge_states(OwnedContext(RPA_BACKEND_REFERENCE).context, nullptr) == RPA_STATUS_INVALID_ARGUMENT);
  BOOST_TEST(std::string(rpa_last_error()).find("argument 'args'") != std::string::npos);
}
