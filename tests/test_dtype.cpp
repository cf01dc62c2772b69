// core/dtype.h's conversions of a double straight into bf16 / f16: one round-to-nearest-even, checked
// on cases where rounding to f32 first (then to 16 bits) gives another answer. Expected bit patterns are
// worked out by hand in the comments.
#define BOOST_TEST_MODULE dtype
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>

#include "core/dtype.h"

using namespace rpa;

namespace {
double p2(int e) { return std::ldexp(1.0, e); }
}  // namespace

BOOST_AUTO_TEST_CASE(bf16_rounds_a_double_once) {
  // 1 + 2^-8 + 2^-24: f32 rounds it (a tie at 2^-24) to 1 + 2^-8, a bf16 tie that goes to even 1.0;
  // once, it lies above the bf16 midpoint 1 + 2^-8 and rounds up to 1 + 2^-7 = 0x3F81.
  BOOST_TEST(double_to_bf16(1 + p2(-8) + p2(-24)) == 0x3F81);
  BOOST_TEST(float_to_bf16(static_cast<float>(1 + p2(-8) + p2(-24))) == 0x3F80);  // the double rounding
  BOOST_TEST(double_to_bf16(1 + p2(-8)) == 0x3F80);                 // an exact tie: to even (1.0)
  BOOST_TEST(double_to_bf16(1 + 3 * p2(-8)) == 0x3F82);             // a tie to even upwards (1 + 2^-6)
  BOOST_TEST(double_to_bf16(-(1 + p2(-8) + p2(-40))) == 0xBF81);    // sign kept
  BOOST_TEST(double_to_bf16(1.0 / 3) == float_to_bf16(1.0f / 3));   // away from ties both agree: 0x3EAB
  BOOST_TEST(double_to_bf16(1.0 / 3) == 0x3EAB);
  // Largest finite bf16 is (2 - 2^-7) 2^127 = 0x7F7F; the midpoint to 2^128 rounds to even: infinity.
  BOOST_TEST(double_to_bf16((2 - p2(-7)) * p2(127)) == 0x7F7F);
  BOOST_TEST(double_to_bf16((2 - p2(-8)) * p2(127) - p2(100)) == 0x7F7F);
  BOOST_TEST(double_to_bf16((2 - p2(-8)) * p2(127)) == 0x7F80);
  BOOST_TEST(double_to_bf16(1e300) == 0x7F80);
  BOOST_TEST(double_to_bf16(-1e300) == 0xFF80);
  // Subnormals: the smallest is 2^-133 (0x0001); half of it is a tie to 0, a little more rounds up.
  BOOST_TEST(double_to_bf16(p2(-133)) == 0x0001);
  BOOST_TEST(double_to_bf16(p2(-134)) == 0x0000);
  BOOST_TEST(double_to_bf16(p2(-134) + p2(-170)) == 0x0001);
  BOOST_TEST(double_to_bf16(1e-300) == 0x0000);
  BOOST_TEST(double_to_bf16(-0.0) == 0x8000);
  BOOST_TEST(std::isnan(bf16_to_float(double_to_bf16(std::nan("")))));
  BOOST_TEST(double_to_bf16(std::numeric_limits<double>::infinity()) == 0x7F80);
}

BOOST_AUTO_TEST_CASE(f16_rounds_a_double_once) {
  // 1 + 2^-11 + 2^-30: f32 drops 2^-30, leaving the f16 tie 1 + 2^-11 (to even: 1.0 = 0x3C00); once, it
  // rounds up to 1 + 2^-10 = 0x3C01.
  BOOST_TEST(double_to_f16(1 + p2(-11) + p2(-30)) == 0x3C01);
  BOOST_TEST(float_to_f16(static_cast<float>(1 + p2(-11) + p2(-30))) == 0x3C00);
  BOOST_TEST(double_to_f16(1 + p2(-11)) == 0x3C00);
  BOOST_TEST(double_to_f16(1 + 3 * p2(-11)) == 0x3C02);
  // Largest finite f16 is 65504 = 0x7BFF; 65520 is the midpoint to 2^16 and rounds to infinity, a hair
  // below it to 65504 (f32 would round 65520 - 2^-20 up to 65520 first, then to infinity).
  BOOST_TEST(double_to_f16(65504) == 0x7BFF);
  BOOST_TEST(double_to_f16(65520 - p2(-20)) == 0x7BFF);
  BOOST_TEST(float_to_f16(static_cast<float>(65520 - p2(-20))) == 0x7C00);
  BOOST_TEST(double_to_f16(65520) == 0x7C00);
  BOOST_TEST(double_to_f16(-65520) == 0xFC00);
  // Subnormals: the smallest is 2^-24 (0x0001); 2^-25 is a tie to 0; 2^-25 + 2^-60 rounds up (f32 drops
  // the 2^-60 and rounds the tie to 0).
  BOOST_TEST(double_to_f16(p2(-24)) == 0x0001);
  BOOST_TEST(double_to_f16(p2(-25)) == 0x0000);
  BOOST_TEST(double_to_f16(p2(-25) + p2(-60)) == 0x0001);
  BOOST_TEST(float_to_f16(static_cast<float>(p2(-25) + p2(-60))) == 0x0000);
  BOOST_TEST(double_to_f16(3 * p2(-25)) == 0x0002);  // 1.5 quanta: a tie to even, 2 quanta
  // The largest subnormal 1023 * 2^-24 and the step to the smallest normal 2^-14 (0x0400).
  BOOST_TEST(double_to_f16(1023 * p2(-24)) == 0x03FF);
  BOOST_TEST(double_to_f16(1023.5 * p2(-24)) == 0x0400);
  BOOST_TEST(double_to_f16(1023.5 * p2(-24) - p2(-60)) == 0x03FF);
  BOOST_TEST(std::isnan(f16_to_float(double_to_f16(std::nan("")))));
  BOOST_TEST(double_to_f16(-std::numeric_limits<double>::infinity()) == 0xFC00);
}
