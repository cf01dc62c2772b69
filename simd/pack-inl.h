// The operands of the tile path (simd/tiles.h) from f32 rows: each value as a sum of bf16 parts, hi =
// bf16(x) and lo = bf16(x - hi), so that 16-bit inputs enter the bf16 products exactly (an f16 value has
// 11 significant bits: hi takes 8, lo the rest; a bf16 value is its hi part) and the softmax weights P
// with a relative error of at most 2^-17. SplitRow writes row-major A operands (queries, P); PackKeys
// and PackValues write the pair layout of B operands (K for Q.K^T, V for P.V).
// Per-target code (Highway's -inl.h pattern): include it after <hwy/foreach_target.h> in a file compiled
// once per target; the toggled guard lets each target's pass include it again.
#if defined(RPA_SIMD_PACK_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef RPA_SIMD_PACK_INL_H_
#undef RPA_SIMD_PACK_INL_H_
#else
#define RPA_SIMD_PACK_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include <hwy/highway.h>

#include "simd/convert-inl.h"

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using VU = hn::Vec<hn::RebindToUnsigned<DF>>;

// The bf16 bits of part `part` (0: hi, 1: lo) of each lane of x.
HWY_INLINE VU PartBits(VF x, size_t part) {
  const VU hi = Bf16Bits(x);
  return part == 0 ? hi : Bf16Bits(hn::Sub(x, Bf16Value(hi)));
}

// hi[i] (and lo[i] when lo is not null) of x[0, n), n a multiple of kLanes; returns the sum of the parts
// in f32, which is what the products will see of x.
HWY_INLINE float SplitRow(const float* HWY_RESTRICT x, size_t n, uint16_t* HWY_RESTRICT hi, uint16_t* HWY_RESTRICT lo) {
  const DF df;
  VF total = hn::Zero(df);
  for (size_t i = 0; i < n; i += kLanes) {
    const VF value = hn::Load(df, x + i);
    const VU h = Bf16Bits(value);
    StoreBf16(h, hi + i);
    VF seen = Bf16Value(h);
    if (lo != nullptr) {
      const VU l = Bf16Bits(hn::Sub(value, seen));
      StoreBf16(l, lo + i);
      seen = hn::Add(seen, Bf16Value(l));
    }
    total = hn::Add(total, seen);
  }
  return hn::GetLane(hn::SumOfLanes(df, total));
}

// Part `part` of the keys k[j][0, depth) (f32, row stride ldk), j < keys, as the B operand of S = Q.K^T:
// B[d][j] = K[j][d] at out[(d / 2) * 2 * keys + 2 * j + d % 2]; depth a multiple of 2 * kLanes.
HWY_INLINE void PackKeys(const float* HWY_RESTRICT k, size_t ldk, size_t keys, size_t depth, size_t part,
                         uint16_t* HWY_RESTRICT out) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const auto stride = hn::Mul(hn::Iota(hn::RebindToSigned<DF>(), 0), hn::Set(hn::RebindToSigned<DF>(), static_cast<int32_t>(keys)));
  uint32_t* HWY_RESTRICT pairs = reinterpret_cast<uint32_t*>(out);
  for (size_t j = 0; j < keys; ++j)
    for (size_t d = 0; d < depth; d += 2 * kLanes) {
      const VF first = hn::Load(df, k + j * ldk + d), second = hn::Load(df, k + j * ldk + d + kLanes);
      const VU even = PartBits(hn::ConcatEven(df, second, first), part);
      const VU odd = PartBits(hn::ConcatOdd(df, second, first), part);
      // Pair d / 2 + i of key j is the 32-bit word (d / 2 + i) * keys + j.
      hn::ScatterIndex(hn::Or(even, hn::ShiftLeft<16>(odd)), du, pairs + d / 2 * keys + j, stride);
    }
}

// Part `part` of the values v[j][0, width) (f32, row stride ldv), j < keys (even), as the B operand of
// O += P.V: B[j][n] = V[j][n] at out[(j / 2) * 2 * width + 2 * n + j % 2]; width a multiple of kLanes.
HWY_INLINE void PackValues(const float* HWY_RESTRICT v, size_t ldv, size_t keys, size_t width, size_t part,
                           uint16_t* HWY_RESTRICT out) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  uint32_t* HWY_RESTRICT pairs = reinterpret_cast<uint32_t*>(out);
  for (size_t j = 0; j < keys; j += 2)
    for (size_t n = 0; n < width; n += kLanes) {
      const VU first = PartBits(hn::Load(df, v + j * ldv + n), part);
      const VU second = PartBits(hn::Load(df, v + (j + 1) * ldv + n), part);
      hn::StoreU(hn::Or(first, hn::ShiftLeft<16>(second)), du, pairs + j / 2 * width + n);
    }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#endif  // RPA_SIMD_PACK_INL_H_
