// Scalar conversions between float (or double) and the 16-bit storage types, shared by the reference,
// the tests and the tools. Rounding to 16 bits is round-to-nearest-even; NaN stays NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "rpa/rpa.h"

namespace rpa {

inline float float_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float bf16_to_float(uint16_t bits) { return float_from_bits(uint32_t{bits} << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t u;
  if (exponent == 0x1f) {
    u = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent == 0) {
    if (mantissa == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exponent = 113;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      u = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else {
    u = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  return float_from_bits(u);
}

inline uint16_t float_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to infinity (>= 65520)
  if (abs < 0x38800000u) {                        // below the smallest normal half: subnormal or 0
    const uint32_t shift = 126 - (abs >> 23);     // 14..
    if (shift > 24) return sign;
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t halfway = 1u << (shift - 1);
    uint32_t result = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    if (rest > halfway || (rest == halfway && (result & 1u))) ++result;
    return sign | static_cast<uint16_t>(result);
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

// Rounds |x| (finite, >= 0) once, to nearest even, onto the grid of a binary format with `mantissa_bits`
// stored fraction bits and normal exponents [min_exponent, max_exponent]; returns infinity past its
// largest finite value. Every result is a float (the 16-bit formats are subsets of f32), so it then
// converts to 16 bits exactly. Going through float first would round twice.
inline double round_to_format(double x, int mantissa_bits, int min_exponent, int max_exponent) {
  if (x == 0) return 0;
  const int exponent = std::max(std::ilogb(x), min_exponent);  // subnormals share the smallest quantum
  const double scaled = std::ldexp(x, mantissa_bits - exponent);  // exact: a power-of-two scaling
  double whole = std::floor(scaled);
  const double fraction = scaled - whole;  // exact
  if (fraction > 0.5 || (fraction == 0.5 && std::fmod(whole, 2.0) != 0)) whole += 1;
  const double rounded = std::ldexp(whole, exponent - mantissa_bits);
  return rounded >= std::ldexp(1.0, max_exponent + 1) ? INFINITY : rounded;
}

inline uint16_t double_to_bf16(double d) {
  if (std::isnan(d) || std::isinf(d)) return float_to_bf16(static_cast<float>(d));
  const double magnitude = round_to_format(std::fabs(d), 7, -126, 127);
  return float_to_bf16(static_cast<float>(std::signbit(d) ? -magnitude : magnitude));
}

inline uint16_t double_to_f16(double d) {
  if (std::isnan(d) || std::isinf(d)) return float_to_f16(static_cast<float>(d));
  const double magnitude = round_to_format(std::fabs(d), 10, -14, 15);
  return float_to_f16(static_cast<float>(std::signbit(d) ? -magnitude : magnitude));
}

// Size in bytes of one element, or 0 for a dtype rpa does not store.
inline int dtype_size(rpa_dtype dtype) {
  switch (dtype) {
    case RPA_DTYPE_F32:
    case RPA_DTYPE_I32: return 4;
    case RPA_DTYPE_F16:
    case RPA_DTYPE_BF16: return 2;
    case RPA_DTYPE_FP8_E4M3:
    case RPA_DTYPE_FP8_E5M2:
    case RPA_DTYPE_INT8: return 1;
  }
  return 0;
}

// Reads element `index` of a float tensor stored as dtype (F32, F16 or BF16).
inline float load_float(const void* data, rpa_dtype dtype, int64_t index) {
  switch (dtype) {
    case RPA_DTYPE_F16: return f16_to_float(static_cast<const uint16_t*>(data)[index]);
    case RPA_DTYPE_BF16: return bf16_to_float(static_cast<const uint16_t*>(data)[index]);
    default: return static_cast<const float*>(data)[index];
  }
}

// Writes element `index` of a float tensor stored as dtype (F32, F16 or BF16).
inline void store_float(void* data, rpa_dtype dtype, int64_t index, float value) {
  switch (dtype) {
    case RPA_DTYPE_F16: static_cast<uint16_t*>(data)[index] = float_to_f16(value); break;
    case RPA_DTYPE_BF16: static_cast<uint16_t*>(data)[index] = float_to_bf16(value); break;
    default: static_cast<float*>(data)[index] = value; break;
  }
}

// store_float for a double, rounded once into the dtype.
inline void store_double(void* data, rpa_dtype dtype, int64_t index, double value) {
  switch (dtype) {
    case RPA_DTYPE_F16: static_cast<uint16_t*>(data)[index] = double_to_f16(value); break;
    case RPA_DTYPE_BF16: static_cast<uint16_t*>(data)[index] = double_to_bf16(value); break;
    default: static_cast<float*>(data)[index] = static_cast<float>(value); break;
  }
}

}  // namespace rpa
