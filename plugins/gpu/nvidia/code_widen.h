// 8-bit codes of a quantised cache widened to 16-bit tile values on NVIDIA, exactly: binary16 holds every
// value of each format (Kv8::halves: e5m2 is a binary16's upper byte, e4m3's bits moved into a binary16
// read 2^-8 of their value, int8 + 128 lands in the mantissa of 1024 and 1152 comes off in binary16), and
// bf16 every value of the binary16 a code widens to. Used by code_decode_kernel (binary16) and the
// matrix-core prefill (the queries' 16-bit type).
#pragma once

#include "plugins/gpu/attention_kernels.h"

#if defined(RPA_GPU_CUDA)

#include <cuda_bf16.h>

namespace rpa_gpu {

// Two codes as binary16 bits (Kv8::halves' formats, int8 with its 1152 taken off): from the low bytes of
// `low` (int8) or the high bytes of `high` (fp8) of each half, the other bytes zero.
__device__ inline uint32_t widen_int8(uint32_t codes_low) {
  const uint32_t h = (codes_low & 0x00ff00ffu) ^ 0x64806480u;  // 1024 + code + 128
  const __half2 value = __hsub2(*reinterpret_cast<const __half2*>(&h), __floats2half2_rn(1152.0f, 1152.0f));
  return *reinterpret_cast<const uint32_t*>(&value);
}
template <rpa_dtype kType>
__device__ inline uint32_t widen_high(uint32_t codes_high) {
  if constexpr (kType == RPA_DTYPE_FP8_E5M2) return codes_high & 0xff00ff00u;
  return (codes_high & 0x80008000u) | ((codes_high >> 1) & 0x3f803f80u);
}
// Codes 2i, 2i + 1 of `word`.
template <rpa_dtype kType>
__device__ inline uint32_t widen_word(uint32_t word, int i) {
  if constexpr (kType == RPA_DTYPE_INT8) return widen_int8(__byte_perm(word, 0u, i == 0 ? 0x4140 : 0x4342));
  const uint32_t high = __byte_perm(word, 0u, i == 0 ? 0x1404 : 0x3424);  // the low bytes zero
  return kType == RPA_DTYPE_FP8_E5M2 ? high : widen_high<kType>(high);
}
// sm_89 on: e4m3 codes by the hardware conversion, to their values (not 2^-8 of them), NaN codes to NaN.
// Measured on an H100 in code_decode_kernel: W1 0.110 ms against 0.117 with the byte permutes and the NaN
// check they need.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define RPA_GPU_E4M3_CVT 1
__device__ inline uint32_t cvt_e4m3_pair(uint32_t two) {  // the codes in the low 16 bits of `two`
  uint32_t out;
  asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.rn.f16x2.e4m3x2 %0, l; }" : "=r"(out) : "r"(two));
  return out;
}
#else
#define RPA_GPU_E4M3_CVT 0
__device__ inline uint32_t cvt_e4m3_pair(uint32_t two) { return two; }  // never called below sm_89
#endif
// Byte j of x (low half) and byte j of y (high half).
template <rpa_dtype kType>
__device__ inline uint32_t widen_across(uint32_t x, uint32_t y, int j) {
  if constexpr (kType == RPA_DTYPE_INT8) return widen_int8(__byte_perm(x, y, j | (4 + j) << 8));
  return widen_high<kType>(__byte_perm(x, y, j << 4 | (4 + j) << 12));
}
// Bit 7 of a byte set where `word` holds a non-finite code (e4m3: magnitude 0x7f; e5m2: exponent 11111).
template <rpa_dtype kType>
__device__ inline uint32_t nonfinite_bytes(uint32_t word) {
  if constexpr (kType == RPA_DTYPE_FP8_E4M3) return (word & 0x7f7f7f7fu) + 0x01010101u;
  if constexpr (kType == RPA_DTYPE_FP8_E5M2) return (word & 0x7c7c7c7cu) + 0x04040404u;
  return 0;
}

// 16 codes (one 16-byte chunk) as 16-bit values of the tile type (bf16 or binary16), in order, 8 words.
// An e4m3 NaN code (whose binary16 bits would read 1.875) takes core/dtype.h's decoder.
template <rpa_dtype kType, bool kBf16>
__device__ inline void widen_chunk(const uint4& codes, uint32_t (&out)[8]) {
  const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
  if (kType == RPA_DTYPE_FP8_E4M3 &&
      ((nonfinite_bytes<kType>(words[0]) | nonfinite_bytes<kType>(words[1]) | nonfinite_bytes<kType>(words[2]) |
        nonfinite_bytes<kType>(words[3])) & 0x80808080u)) {
#pragma unroll
    for (int e = 0; e < 16; e += 2) {
      const float x0 = rpa::e4m3_to_float(uint8_t(words[e / 4] >> (8 * (e % 4)))) / 256.0f;
      const float x1 = rpa::e4m3_to_float(uint8_t(words[e / 4] >> (8 * (e % 4 + 1)))) / 256.0f;
      if constexpr (kBf16) {
        const __nv_bfloat162 pair = __floats2bfloat162_rn(x0, x1);
        out[e / 2] = *reinterpret_cast<const uint32_t*>(&pair);
      } else {
        const __half2 pair = __floats2half2_rn(x0, x1);
        out[e / 2] = *reinterpret_cast<const uint32_t*>(&pair);
      }
    }
    return;
  }
#pragma unroll
  for (int w = 0; w < 4; ++w)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      uint32_t h = widen_word<kType>(words[w], i);
      if constexpr (kBf16) {
        const __nv_bfloat162 pair = __float22bfloat162_rn(__half22float2(*reinterpret_cast<const __half2*>(&h)));
        h = *reinterpret_cast<const uint32_t*>(&pair);
      }
      out[2 * w + i] = h;
    }
}

}  // namespace rpa_gpu

#endif  // RPA_GPU_CUDA
