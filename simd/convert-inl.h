// Conversions between the stored dtypes and f32 rows: LoadRow (f32, f16, bf16), DecodeCodes and
// LoadCodeRow (8-bit codes), LoadKvRow (either), StoreRow (f32 to any dtype, rounding to nearest even).
// Each agrees exactly with core/dtype.h's scalar conversions (tests/simd/test_kernels.cc).
// Per-target code (Highway's -inl.h pattern): include it after <hwy/foreach_target.h> in a file compiled
// once per target; the toggled guard lets each target's pass include it again.
#if defined(RPA_SIMD_CONVERT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef RPA_SIMD_CONVERT_INL_H_
#undef RPA_SIMD_CONVERT_INL_H_
#else
#define RPA_SIMD_CONVERT_INL_H_
#endif

#include <cstddef>
#include <cstdint>
#include <limits>

#include <hwy/highway.h>

#include "core/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
constexpr size_t kLanes = hn::MaxLanes(DF());

// Highway 1.0.3 emulates f16 conversions on targets without F16C by truncating and without Inf/NaN;
// those targets use the exact scalar conversions of core/dtype.h instead.
constexpr bool kNativeF16 = !(HWY_TARGET == HWY_SSE4 || HWY_TARGET == HWY_SSSE3 || HWY_TARGET == HWY_EMU128 ||
                              HWY_TARGET == HWY_SCALAR);

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

constexpr size_t RoundUp(size_t x, size_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// Converts `dim` elements stored as `dtype` to f32 at dst (aligned) and zero-fills up to `padded`.
HWY_INLINE void LoadRow(const void* src, rpa_dtype dtype, size_t dim, size_t padded, float* HWY_RESTRICT dst) {
  const DF df;
  size_t i = 0;
  if (dtype == RPA_DTYPE_F32) {
    const float* from = static_cast<const float*>(src);
    for (; i + kLanes <= dim; i += kLanes) hn::Store(hn::LoadU(df, from + i), df, dst + i);
  } else if (dtype == RPA_DTYPE_BF16) {
    const hn::Rebind<hwy::bfloat16_t, DF> dbf;
    const hwy::bfloat16_t* from = static_cast<const hwy::bfloat16_t*>(src);
    for (; i + kLanes <= dim; i += kLanes) hn::Store(hn::PromoteTo(df, hn::LoadU(dbf, from + i)), df, dst + i);
  } else if (kNativeF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    const hwy::float16_t* from = static_cast<const hwy::float16_t*>(src);
    for (; i + kLanes <= dim; i += kLanes) hn::Store(hn::PromoteTo(df, hn::LoadU(dh, from + i)), df, dst + i);
  }
  for (; i < dim; ++i) dst[i] = load_float(src, dtype, static_cast<int64_t>(i));
  for (; i < padded; ++i) dst[i] = 0.0f;
}

// kLanes 8-bit codes of a quantised dtype from src on, widened to f32 (before the scale) exactly as
// core/dtype.h's code_to_float does, without touching subnormal floats.
template <rpa_dtype kDtype>
HWY_INLINE VF DecodeCodes(const uint8_t* HWY_RESTRICT src) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const hn::RebindToUnsigned<DF> du;
  if constexpr (kDtype == RPA_DTYPE_INT8) {
    const hn::Rebind<int8_t, DF> d8;
    return hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, reinterpret_cast<const int8_t*>(src))));
  } else {
    const hn::Rebind<uint8_t, DF> d8;
    const auto code = hn::PromoteTo(du, hn::LoadU(d8, src));
    const auto magnitude = hn::And(code, hn::Set(du, 0x7fu));
    const auto signed_magnitude = hn::BitCast(di, magnitude);
    const VF sign = hn::BitCast(df, hn::ShiftLeft<24>(hn::And(code, hn::Set(du, 0x80u))));
    constexpr bool kE4m3 = kDtype == RPA_DTYPE_FP8_E4M3;
    constexpr int kMantissa = kE4m3 ? 3 : 2;
    // Normal codes: the exponent moves from bias 7 (15) to 127. Subnormal codes: m * 2^-9 (2^-16).
    const VF normal = hn::BitCast(df, hn::Add(hn::ShiftLeft<23 - kMantissa>(magnitude),
                                              hn::Set(du, (kE4m3 ? 120u : 112u) << 23)));
    const VF subnormal = hn::Mul(hn::ConvertTo(df, signed_magnitude), hn::Set(df, kE4m3 ? 0.001953125f : 0.0000152587890625f));
    VF value = hn::IfThenElse(hn::RebindMask(df, hn::Lt(signed_magnitude, hn::Set(di, 1 << kMantissa))), subnormal, normal);
    if constexpr (kE4m3) {  // S.1111.111 is NaN; there are no infinities
      value = hn::IfThenElse(hn::RebindMask(df, hn::Eq(magnitude, hn::Set(du, 0x7fu))), hn::NaN(df), value);
    } else {  // exponent 31: infinity (mantissa 0) or NaN
      const VF special = hn::BitCast(df, hn::Or(hn::Set(du, 0x7f800000u), hn::ShiftLeft<21>(hn::And(magnitude, hn::Set(du, 3u)))));
      value = hn::IfThenElse(hn::RebindMask(df, hn::Gt(signed_magnitude, hn::Set(di, 0x7b))), special, value);
    }
    return hn::Or(value, sign);
  }
}

template <rpa_dtype kDtype>
HWY_INLINE void LoadCodeRow(const uint8_t* HWY_RESTRICT src, size_t dim, size_t padded, float scale, float* HWY_RESTRICT dst) {
  const DF df;
  const VF vscale = hn::Set(df, scale);
  size_t i = 0;
  for (; i + kLanes <= dim; i += kLanes) hn::Store(hn::Mul(DecodeCodes<kDtype>(src + i), vscale), df, dst + i);
  for (; i < dim; ++i) dst[i] = load_kv(src, kDtype, static_cast<int64_t>(i), scale);
  for (; i < padded; ++i) dst[i] = 0.0f;
}

// A K or V row of the cache in f32: LoadRow, or for a quantised cache its codes times `scale`.
HWY_INLINE void LoadKvRow(const void* src, rpa_dtype dtype, size_t dim, size_t padded, float scale, float* HWY_RESTRICT dst) {
  const auto* codes = static_cast<const uint8_t*>(src);
  switch (dtype) {
    case RPA_DTYPE_FP8_E4M3: return LoadCodeRow<RPA_DTYPE_FP8_E4M3>(codes, dim, padded, scale, dst);
    case RPA_DTYPE_FP8_E5M2: return LoadCodeRow<RPA_DTYPE_FP8_E5M2>(codes, dim, padded, scale, dst);
    case RPA_DTYPE_INT8: return LoadCodeRow<RPA_DTYPE_INT8>(codes, dim, padded, scale, dst);
    default: return LoadRow(src, dtype, dim, padded, dst);
  }
}

// Each lane of `value` rounded to bf16 (nearest even, NaN kept quiet, as core/dtype.h's float_to_bf16),
// its bits in the lower half of a u32 lane: Highway 1.0.3's DemoteTo(bf16) truncates.
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> Bf16Bits(VF value) {
  const hn::RebindToUnsigned<DF> du;
  const auto bits = hn::BitCast(du, value);
  const auto upper = hn::ShiftRight<16>(bits);
  const auto rounded = hn::ShiftRight<16>(hn::Add(bits, hn::Add(hn::Set(du, 0x7fffu), hn::And(upper, hn::Set(du, 1u)))));
  const auto quiet_nan = hn::Or(upper, hn::Set(du, 0x40u));
  return hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(value)), quiet_nan, rounded);
}

// The f32 value of Bf16Bits lanes.
HWY_INLINE VF Bf16Value(hn::Vec<hn::RebindToUnsigned<DF>> bits) { return hn::BitCast(DF(), hn::ShiftLeft<16>(bits)); }

// Stores kLanes Bf16Bits lanes as bf16 at `to` (any alignment).
HWY_INLINE void StoreBf16(hn::Vec<hn::RebindToUnsigned<DF>> bits, uint16_t* to) {
  const hn::Rebind<uint16_t, DF> du16;
  hn::StoreU(hn::DemoteTo(du16, hn::BitCast(hn::RebindToSigned<DF>(), bits)), du16, to);
}

// Writes src[0..dim) * factor to dst stored as `dtype`, rounding to nearest even like core/dtype.h.
HWY_INLINE void StoreRow(const float* HWY_RESTRICT src, float factor, size_t dim, void* dst, rpa_dtype dtype) {
  const DF df;
  const VF scale = hn::Set(df, factor);
  size_t i = 0;
  if (dtype == RPA_DTYPE_F32) {
    float* to = static_cast<float*>(dst);
    for (; i + kLanes <= dim; i += kLanes) hn::StoreU(hn::Mul(hn::Load(df, src + i), scale), df, to + i);
  } else if (dtype == RPA_DTYPE_BF16) {
    uint16_t* to = static_cast<uint16_t*>(dst);
    for (; i + kLanes <= dim; i += kLanes) StoreBf16(Bf16Bits(hn::Mul(hn::Load(df, src + i), scale)), to + i);
  } else if (kNativeF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    hwy::float16_t* to = static_cast<hwy::float16_t*>(dst);
    for (; i + kLanes <= dim; i += kLanes) hn::StoreU(hn::DemoteTo(dh, hn::Mul(hn::Load(df, src + i), scale)), dh, to + i);
  }
  for (; i < dim; ++i) store_float(dst, dtype, static_cast<int64_t>(i), src[i] * factor);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#endif  // RPA_SIMD_CONVERT_INL_H_
