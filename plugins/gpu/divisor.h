// A run-time divisor of GPU index arithmetic with its multiply-and-shift form (Granlund and Montgomery,
// "Division by invariant integers using multiplication", 1994, the round-up method): kernels divide keys
// by the page size and every device-metadata slot divides its index by the grid's sizes; a division by a
// value the compiler cannot see costs about 25 instructions, this one 3. Plain C++ for host and device:
// the planner makes the grid on the host, and tests/plugins/test_gpu_planner.cpp resolves it on the CPU.
#pragma once

#include <stdint.h>

#include "core/dtype.h"  // RPA_HOST_DEVICE

namespace rpa_gpu {

// A value d >= 1 (an int32 wherever it is read as one) and its quotients n / d for 0 <= n < 2^31:
// shift = ceil(log2 d), multiplier = floor(2^32 (2^shift - d) / d) + 1, n / d = (umulhi(n, multiplier) + n) >> shift.
// The sum stays below 2^32 because umulhi(n, multiplier) < n < 2^31.
struct Divisor {
  int32_t value;
  uint32_t multiplier;
  int32_t shift;

  Divisor() = default;
  RPA_HOST_DEVICE explicit Divisor(int32_t d) : value(d), multiplier(0), shift(0) {
    if (d < 1) return;  // no quotients: d never divides (a size of an empty part)
    while ((int64_t(1) << shift) < d) ++shift;
    multiplier = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  RPA_HOST_DEVICE operator int32_t() const { return value; }  // NOLINT: read as the value it divides by

  RPA_HOST_DEVICE int32_t divide(int32_t n) const {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
    const uint32_t high = __umulhi(uint32_t(n), multiplier);  // a 64-bit product took registers kernels lack
#else
    const uint32_t high = static_cast<uint32_t>((uint64_t(uint32_t(n)) * multiplier) >> 32);
#endif
    return static_cast<int32_t>((high + uint32_t(n)) >> shift);
  }
  struct QuotientRemainder {
    int32_t quotient, remainder;
  };
  RPA_HOST_DEVICE QuotientRemainder divide_with_remainder(int32_t n) const {
    const int32_t quotient = divide(n);
    return {quotient, n - quotient * value};
  }
  // ceil(n / d) for 0 <= n < 2^31 (0 for n < 0).
  RPA_HOST_DEVICE int32_t divide_up(int32_t n) const { return n > 0 ? divide(n - 1) + 1 : 0; }
};

}  // namespace rpa_gpu
