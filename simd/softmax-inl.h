// The online-softmax steps of a row: SoftmaxRow turns a tile's scores into exp(score - max) over the
// row's visible keys and folds them into the row's running max and sum (FoldRow), rescaling its
// unnormalised output when the max grows; AcrossRowLanes reduces the rows of a Grouped vector.
// Per-target code (Highway's -inl.h pattern): include it after <hwy/foreach_target.h> in a file compiled
// once per target; the toggled guard lets each target's pass include it again.
#if defined(RPA_SIMD_SOFTMAX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef RPA_SIMD_SOFTMAX_INL_H_
#undef RPA_SIMD_SOFTMAX_INL_H_
#else
#define RPA_SIMD_SOFTMAX_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include "simd/pv-inl.h"

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Folds a tile whose exp(score - new_max) sum to tile_sum into a row's running max and sum, rescaling
// its output o[0, dp) when the max grew.
HWY_INLINE void FoldRow(float& max, float& sum, float* HWY_RESTRICT o, size_t dp, float new_max, float tile_sum) {
  const DF df;
  float running = sum;
  if (max != kNegInf && max != new_max) {  // before the first visible key the output is still 0
    const float alpha = std::exp(max - new_max);
    running *= alpha;
    const VF valpha = hn::Set(df, alpha);
    for (size_t d = 0; d < dp; d += kLanes) hn::Store(hn::Mul(hn::Load(df, o + d), valpha), df, o + d);
  }
  sum = running + tile_sum;
  max = new_max;
}

// Scales a row's scores s[j0, j1) (j0 and j1 whole vectors) by `scale` and applies the soft cap `cap`
// (0: none), masks the keys outside [a, b), replaces the scores by exp(score - new max) and folds the
// tile into the row's running max and sum and output o[0, dp). Masked scores are overwritten, so
// NaN there never reaches the sums. With `hi` and `lo`, each weight is also written as its two bf16
// parts (pack-inl.h) for the tile path's P.V, and the sum adds those parts: the denominator is then the
// sum of the very weights the product applies.
HWY_INLINE void SoftmaxRow(float* HWY_RESTRICT s, size_t j0, size_t j1, size_t a, size_t b, float scale, double cap,
                           float& max, float& sum, float* HWY_RESTRICT o, size_t dp, uint16_t* HWY_RESTRICT hi = nullptr,
                           uint16_t* HWY_RESTRICT lo = nullptr) {
  const DF df;
  if (cap > 0 || scale != 1.0f) {  // the FMA kernels pre-scale their queries: nothing to do there
    const VF vscale = hn::Set(df, scale);
    const VF vcap = hn::Set(df, static_cast<float>(cap)), inverse = hn::Set(df, static_cast<float>(cap > 0 ? 1.0 / cap : 0.0));
    for (size_t j = j0; j < j1; j += kLanes) {
      VF score = hn::Mul(hn::Load(df, s + j), vscale);
      if (cap > 0) score = hn::Mul(vcap, hn::Tanh(df, hn::Mul(score, inverse)));
      hn::Store(score, df, s + j);
    }
  }
  for (size_t j = j0; j < a; ++j) s[j] = kNegInf;
  for (size_t j = b; j < j1; ++j) s[j] = kNegInf;
  VF top = hn::Set(df, kNegInf);
  for (size_t j = j0; j < j1; j += kLanes) top = hn::Max(top, hn::Load(df, s + j));
  const float new_max = std::max(max, hn::GetLane(hn::MaxOfLanes(df, top)));
  const VF shift = hn::Set(df, new_max);
  VF total = hn::Zero(df);
  for (size_t j = j0; j < j1; j += kLanes) {
    const VF e = hn::Exp(df, hn::Sub(hn::Load(df, s + j), shift));  // masked: exp(-inf) = 0
    hn::Store(e, df, s + j);
    if (hi != nullptr) {
      const auto h = Bf16Bits(e);
      const auto l = Bf16Bits(hn::Sub(e, Bf16Value(h)));
      StoreBf16(h, hi + j);
      StoreBf16(l, lo + j);
      total = hn::Add(total, hn::Add(Bf16Value(h), Bf16Value(l)));
    } else {
      total = hn::Add(total, e);
    }
  }
  FoldRow(max, sum, o, dp, new_max, hn::GetLane(hn::SumOfLanes(df, total)));
}

// Folds each group of kKeys adjacent lanes (one row of a Grouped vector) into all its lanes with `op`.
template <class Op>
HWY_INLINE VF AcrossRowLanes(VF v, const Op& op) {
  if constexpr (Grouped::kKeys >= 2) v = op(v, hn::Shuffle2301(v));
  if constexpr (Grouped::kKeys >= 4) v = op(v, hn::Shuffle1032(v));
  static_assert(Grouped::kKeys <= 4, "a row's keys fill at most one 128-bit block");
  return v;
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#endif  // RPA_SIMD_SOFTMAX_INL_H_
