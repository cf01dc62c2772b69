// Scalar conversions between float (or double) and the 16-bit and 8-bit storage types, shared by the
// reference, the simd kernels' scalar tails, the GPU plugin, the tests and the tools. Rounding to 16
// bits is round-to-nearest-even; NaN stays NaN. The 8-bit codes (quantised KV) follow the 16-bit ones.
#pragma once

// hipRTC and NVRTC (the GPU plugin's kernels compiled at run time) have no C++ library: they see the
// device code only.
#if defined(__CUDACC_RTC__) || defined(__HIPCC_RTC__)
#define RPA_DTYPE_DEVICE_ONLY 1
#else
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#endif

#include "rpa/rpa.h"

// The 8-bit conversions are also device code of the GPU plugin (hipcc / nvcc).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define RPA_HOST_DEVICE __host__ __device__
#else
#define RPA_HOST_DEVICE
#endif

namespace rpa {

RPA_HOST_DEVICE inline float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

RPA_HOST_DEVICE inline uint32_t bits_from_float(float f) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

#if !defined(RPA_DTYPE_DEVICE_ONLY)
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

#endif  // !RPA_DTYPE_DEVICE_ONLY

// ---- 8-bit codes of quantised KV: a code c with scale s stands for decode(c) * s ----
//
// FP8_E4M3 is OCP e4m3fn (bias 7, no infinities, S.1111.111 is NaN, largest finite 448); FP8_E5M2 is the
// upper byte of an IEEE binary16 (bias 15, infinities and NaN); INT8 is two's complement, symmetric:
// encoding gives -127..127 only, and a stored -128 decodes as -128.

RPA_HOST_DEVICE inline float e4m3_to_float(uint8_t code) {
  const uint32_t sign = uint32_t{code & 0x80u} << 24, magnitude = code & 0x7fu;
  if (magnitude == 0x7f) return float_from_bits(sign | 0x7fc00000u);
  // Normal codes move their exponent from bias 7 to bias 127; subnormals are m * 2^-9, exact in float.
  const float value = magnitude >= 8 ? float_from_bits((magnitude << 20) + (120u << 23))
                                     : static_cast<float>(magnitude) * 0.001953125f;
  return float_from_bits(sign | bits_from_float(value));
}

RPA_HOST_DEVICE inline float e5m2_to_float(uint8_t code) {
  const uint32_t sign = uint32_t{code & 0x80u} << 24, magnitude = code & 0x7fu;
  float value;
  if (magnitude >= 0x7c) value = float_from_bits(0x7f800000u | ((magnitude & 3u) << 21));  // inf, NaN
  else if (magnitude >= 4) value = float_from_bits((magnitude << 21) + (112u << 23));
  else value = static_cast<float>(magnitude) * 0.0000152587890625f;  // m * 2^-16
  return float_from_bits(sign | bits_from_float(value));
}

RPA_HOST_DEVICE inline float int8_to_float(uint8_t code) { return static_cast<float>(static_cast<int8_t>(code)); }

// Rounds x to the nearest value of a binary format with `mantissa_bits` and exponent `bias` (whose
// subnormals share the smallest normal exponent), to nearest even, and returns its 7-bit magnitude code
// (exponent then mantissa); a result past the largest exponent comes back as such, for the caller to
// saturate or make infinite. x is finite and not negative.
RPA_HOST_DEVICE inline uint32_t round_to_minifloat(float x, int mantissa_bits, int bias) {
  const uint32_t a = bits_from_float(x);
  const int exponent = static_cast<int>(a >> 23) - 127 + bias;  // the target's biased exponent
  if (exponent >= 1) {  // normal: round the float's mantissa to mantissa_bits bits (a carry bumps the exponent)
    const int shift = 23 - mantissa_bits;
    const uint32_t rounded = a + ((1u << (shift - 1)) - 1) + ((a >> shift) & 1u);
    return (rounded >> shift) - (static_cast<uint32_t>(127 - bias) << mantissa_bits);
  }
  // Subnormal or zero: count units of 2^(1 - bias - mantissa_bits); 2^mantissa_bits units is the
  // smallest normal, whose code is the same number.
  const int shift = 151 - bias - mantissa_bits - static_cast<int>(a >> 23);  // >= 24 - mantissa_bits
  if ((a >> 23) == 0 || shift > 24) return 0;  // below half a unit (float subnormals included)
  const uint32_t mantissa = (a & 0x7fffffu) | 0x800000u;
  const uint32_t halfway = 1u << (shift - 1), rest = mantissa & ((1u << shift) - 1);
  uint32_t result = mantissa >> shift;
  if (rest > halfway || (rest == halfway && (result & 1u))) ++result;
  return result;
}

// Nearest e4m3 code, ties to even; beyond +-448 (infinities included) saturates to +-448; NaN -> NaN.
RPA_HOST_DEVICE inline uint8_t float_to_e4m3(float x) {
  const uint32_t u = bits_from_float(x), sign = (u >> 24) & 0x80u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7fu);
  if (a >= 0x43e00000u) return static_cast<uint8_t>(sign | 0x7eu);  // >= 448
  return static_cast<uint8_t>(sign | round_to_minifloat(float_from_bits(a), 3, 7));
}

// Nearest e5m2 code, ties to even; overflow (from 61440, half-way past 57344) gives +-inf, as IEEE
// rounding does; NaN -> NaN.
RPA_HOST_DEVICE inline uint8_t float_to_e5m2(float x) {
  const uint32_t u = bits_from_float(x), sign = (u >> 24) & 0x80u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7eu);
  if (a >= 0x47800000u) return static_cast<uint8_t>(sign | 0x7cu);  // >= 65536 (and inf): infinite
  const uint32_t magnitude = round_to_minifloat(float_from_bits(a), 2, 15);
  return static_cast<uint8_t>(sign | (magnitude >= 0x7cu ? 0x7cu : magnitude));
}

// Nearest integer, ties to even, saturated to [-127, 127]; NaN -> 0 (int8 has no NaN).
RPA_HOST_DEVICE inline uint8_t float_to_int8(float x) {
  if (!(x == x)) return 0;
  if (x >= 127.0f) return 127;
  if (x <= -127.0f) return static_cast<uint8_t>(-127);
  // |x| < 127: floor and the fraction are exact.
  const float lower = floorf(x);
  int result = static_cast<int>(lower);
  const float fraction = x - lower;
  if (fraction > 0.5f || (fraction == 0.5f && (result & 1))) ++result;
  return static_cast<uint8_t>(static_cast<int8_t>(result));
}

RPA_HOST_DEVICE inline bool is_quantised_dtype(rpa_dtype dtype) {
  return dtype == RPA_DTYPE_FP8_E4M3 || dtype == RPA_DTYPE_FP8_E5M2 || dtype == RPA_DTYPE_INT8;
}

// The value of an 8-bit code of a quantised dtype, before its scale.
RPA_HOST_DEVICE inline float code_to_float(rpa_dtype dtype, uint8_t code) {
  return dtype == RPA_DTYPE_FP8_E4M3 ? e4m3_to_float(code)
         : dtype == RPA_DTYPE_FP8_E5M2 ? e5m2_to_float(code)
                                       : int8_to_float(code);
}

// The code of x / scale in a quantised dtype (the division in f32, then one rounding as above).
RPA_HOST_DEVICE inline uint8_t float_to_code(rpa_dtype dtype, float x, float scale) {
  const float scaled = x / scale;
  return dtype == RPA_DTYPE_FP8_E4M3 ? float_to_e4m3(scaled)
         : dtype == RPA_DTYPE_FP8_E5M2 ? float_to_e5m2(scaled)
                                       : float_to_int8(scaled);
}

#if !defined(RPA_DTYPE_DEVICE_ONLY)
// Short name of a dtype as messages and reports print it; an int so that unchecked enum values print too.
inline const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case RPA_DTYPE_F32: return "f32";
    case RPA_DTYPE_F16: return "f16";
    case RPA_DTYPE_BF16: return "bf16";
    case RPA_DTYPE_FP8_E4M3: return "fp8_e4m3";
    case RPA_DTYPE_FP8_E5M2: return "fp8_e5m2";
    case RPA_DTYPE_INT8: return "int8";
    case RPA_DTYPE_I32: return "int32";
  }
  return "unknown";
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

// Element `index` of a KV cache stored as dtype: a quantised code times `scale` (one f32 rounding, the
// contract's dequantised value), else the float itself.
inline float load_kv(const void* data, rpa_dtype dtype, int64_t index, float scale) {
  if (is_quantised_dtype(dtype)) return code_to_float(dtype, static_cast<const uint8_t*>(data)[index]) * scale;
  return load_float(data, dtype, index);
}

// Stores `value` into element `index` of a KV cache: quantised with `scale`, else rounded to the float dtype.
inline void store_kv(void* data, rpa_dtype dtype, int64_t index, float value, float scale) {
  if (is_quantised_dtype(dtype)) static_cast<uint8_t*>(data)[index] = float_to_code(dtype, value, scale);
  else store_float(data, dtype, index, value);
}

#endif  // !RPA_DTYPE_DEVICE_ONLY

}  // namespace rpa
