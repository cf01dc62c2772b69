// The online-softmax steps: SoftmaxRow turns a row's scores of a tile into exp(score - max) over the
// row's visible keys and folds them into the row's running max and sum (FoldRow), rescaling its
// unnormalised output when the max grows; AcrossRowLanes reduces the rows of a Grouped vector;
// SoftmaxTileRow is the same step for the tile path, writing the weights as the bf16 parts its product
// reads.
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

#include "simd/pack-inl.h"
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

// Applies the soft cap `cap` (0: none) to a row's scores s[j0, j1) (j0 and j1 whole vectors), masks the
// keys outside [a, b), replaces the scores by exp(score - new max) and folds the tile into the row's
// running max and sum and output o[0, dp). Masked scores are overwritten, so NaN there never reaches the
// sums.
HWY_INLINE void SoftmaxRow(float* HWY_RESTRICT s, size_t j0, size_t j1, size_t a, size_t b, double cap, float& max,
                           float& sum, float* HWY_RESTRICT o, size_t dp) {
  const DF df;
  if (cap > 0) {
    const VF vcap = hn::Set(df, static_cast<float>(cap)), inverse = hn::Set(df, static_cast<float>(1.0 / cap));
    for (size_t j = j0; j < j1; j += kLanes)
      hn::Store(hn::Mul(vcap, hn::Tanh(df, hn::Mul(hn::Load(df, s + j), inverse))), df, s + j);
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
    total = hn::Add(total, e);
  }
  FoldRow(max, sum, o, dp, new_max, hn::GetLane(hn::SumOfLanes(df, total)));
}

// The online-softmax step of the tile path for one row: s[0, keys) are its unscaled scores of a step
// (keys a multiple of 2 * kPairSpan), of which [a, b) are visible (a < b). Scale, soft cap (`cap`, 0:
// none), the mask (other keys count as -inf), then exp(score - new max) as the two bf16 parts of
// pack-inl.h, written as the row of P's parts that O += P.V reads: the 32-bit words hi[PairRow(j)] and
// lo[PairRow(j)] hold key j's parts in their PairHalf(j) half (masked keys 0). The running max and sum fold
// the step in, the sum adding exactly the parts the product will apply; returns the factor the row's
// output must be rescaled by first. With `keep` the weights of [a, b) also stay in s as f32 (the f32 P.V
// of a step whose V is not finite), and the sum adds those instead.
HWY_INLINE float SoftmaxTileRow(float* HWY_RESTRICT s, size_t keys, size_t a, size_t b, float scale, double cap,
                                float& max, float& sum, uint32_t* HWY_RESTRICT hi, uint32_t* HWY_RESTRICT lo,
                                bool keep) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const hn::RebindToUnsigned<DF> du;
  const VF vscale = hn::Set(df, scale), neg_inf = hn::Set(df, kNegInf);
  const VF vcap = hn::Set(df, static_cast<float>(cap)), inverse = hn::Set(df, static_cast<float>(cap > 0 ? 1.0 / cap : 0.0));
  const auto first = hn::Set(di, static_cast<int32_t>(a)), end = hn::Set(di, static_cast<int32_t>(b));
  // Only the blocks of 2 * kPairSpan keys holding visible keys are computed; the others' weights are 0.
  constexpr size_t kBlock = 2 * kPairSpan;
  const size_t j0 = a / kBlock * kBlock, j1 = RoundUp(b, kBlock);
  for (size_t j = 0; j < keys; j += 2 * kLanes)
    if (j < j0 || j >= j1) {  // kLanes words: 2 * kLanes keys
      hn::StoreU(hn::Zero(du), du, hi + j / 2);
      hn::StoreU(hn::Zero(du), du, lo + j / 2);
    }
  VF top = neg_inf;
  for (size_t j = j0; j < j1; j += kLanes) {
    VF score = hn::Mul(hn::Load(df, s + j), vscale);
    if (cap > 0) score = hn::Mul(vcap, hn::Tanh(df, hn::Mul(score, inverse)));
    if (j < a || j + kLanes > b) {
      const auto key = hn::Add(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(j)));
      const auto visible = hn::RebindMask(df, hn::And(hn::Not(hn::Lt(key, first)), hn::Lt(key, end)));
      score = hn::IfThenElse(visible, score, neg_inf);  // select: a masked NaN score is dropped
    }
    hn::Store(score, df, s + j);
    top = hn::Max(top, score);
  }
  const float old_max = max, new_max = std::max(old_max, hn::GetLane(hn::MaxOfLanes(df, top)));
  // Unchanged max: 1 (also for a row still without a key); a first key: exp(-inf) = 0 on a zero output.
  const float alpha = old_max == new_max ? 1.0f : hn::GetLane(hn::Exp(df, hn::Set(df, old_max - new_max)));
  const VF shift = hn::Set(df, new_max == kNegInf ? 0.0f : new_max);  // no -inf - -inf
  VF total = hn::Zero(df);
  for (size_t j = j0; j < j1; j += kBlock)
    for (size_t t = j; t < j + kPairSpan; t += kLanes) {
      const VF e0 = hn::Exp(df, hn::Sub(hn::Load(df, s + t), shift));  // masked: exp(-inf) = 0
      const VF e1 = hn::Exp(df, hn::Sub(hn::Load(df, s + t + kPairSpan), shift));
      const auto h0 = Bf16Bits(e0), h1 = Bf16Bits(e1);
      const auto l0 = Bf16Bits(hn::Sub(e0, Bf16Value(h0))), l1 = Bf16Bits(hn::Sub(e1, Bf16Value(h1)));
      hn::StoreU(hn::Or(h0, hn::ShiftLeft<16>(h1)), du, hi + PairRow(t));
      hn::StoreU(hn::Or(l0, hn::ShiftLeft<16>(l1)), du, lo + PairRow(t));
      if (keep) {
        hn::Store(e0, df, s + t);
        hn::Store(e1, df, s + t + kPairSpan);
        total = hn::Add(total, hn::Add(e0, e1));
      } else {
        total = hn::Add(total, hn::Add(hn::Add(Bf16Value(h0), Bf16Value(l0)), hn::Add(Bf16Value(h1), Bf16Value(l1))));
      }
    }
  sum = sum * alpha + hn::GetLane(hn::SumOfLanes(df, total));
  max = new_max;
  return alpha;
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
