// The online-softmax steps: SoftmaxRow turns a row's scores of a tile into exp(score - max) over the
// row's visible keys and folds them into the row's running max and sum (FoldRow), rescaling its
// unnormalised output when the max grows; AcrossRowLanes reduces the rows of a Grouped vector;
// SoftmaxColumns is the same step for many rows at once on transposed scores (the tile path), one row per
// lane, with no horizontal reduction.
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

// The online-softmax step of the tile path, on transposed scores: st[j * m + i] is row i's score of key j
// (j < keys, even; i < m, m a multiple of kLanes), unscaled. For each row: scale, soft cap (`cap`, 0:
// none), the mask (keys outside [first[i], end[i]) count as -inf), then exp(score - new max) as the two
// bf16 parts of pack-inl.h, written as the B operand of O^T += V^T.P^T: the 32-bit pair of keys (2k,
// 2k + 1) of row i at hi_pairs[k * m + i] (lo_pairs likewise). The running max and sum (max[i], sum[i])
// fold the tile in, the sum adding exactly the parts the product will apply, and alpha[i] is the factor
// row i's output must be rescaled by first. With `keep` the weights also stay in st as f32 (the FMA
// fallback of a tile whose V is not finite), and the sum adds those instead.
HWY_INLINE void SoftmaxColumns(float* HWY_RESTRICT st, size_t keys, size_t m, const int32_t* HWY_RESTRICT first,
                               const int32_t* HWY_RESTRICT end, float scale, double cap, float* HWY_RESTRICT max,
                               float* HWY_RESTRICT sum, float* HWY_RESTRICT alpha, uint32_t* HWY_RESTRICT hi_pairs,
                               uint32_t* HWY_RESTRICT lo_pairs, bool keep) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const VF vscale = hn::Set(df, scale), neg_inf = hn::Set(df, kNegInf), one = hn::Set(df, 1.0f);
  const VF vcap = hn::Set(df, static_cast<float>(cap)), inverse = hn::Set(df, static_cast<float>(cap > 0 ? 1.0 / cap : 0.0));
  for (size_t i = 0; i < m; i += kLanes) {
    const auto a = hn::Load(di, first + i), b = hn::Load(di, end + i);
    VF top = neg_inf;
    for (size_t j = 0; j < keys; ++j) {
      VF score = hn::Mul(hn::Load(df, st + j * m + i), vscale);
      if (cap > 0) score = hn::Mul(vcap, hn::Tanh(df, hn::Mul(score, inverse)));
      const auto key = hn::Set(di, static_cast<int32_t>(j));
      const auto visible = hn::RebindMask(df, hn::And(hn::Not(hn::Lt(key, a)), hn::Lt(key, b)));
      score = hn::IfThenElse(visible, score, neg_inf);  // select: a masked NaN score is dropped
      hn::Store(score, df, st + j * m + i);
      top = hn::Max(top, score);
    }
    const VF old_max = hn::Load(df, max + i), new_max = hn::Max(old_max, top);
    // Unchanged max: 1 (also for rows still without a key); a first key: exp(-inf) = 0 on a zero output.
    hn::Store(hn::IfThenElse(hn::Eq(old_max, new_max), one, hn::Exp(df, hn::Sub(old_max, new_max))), df, alpha + i);
    const VF shift = hn::IfThenElse(hn::Eq(new_max, neg_inf), hn::Zero(df), new_max);  // no -inf - -inf
    VF total = hn::Zero(df);
    for (size_t j = 0; j < keys; j += 2) {
      const VF e0 = hn::Exp(df, hn::Sub(hn::Load(df, st + j * m + i), shift));  // masked: exp(-inf) = 0
      const VF e1 = hn::Exp(df, hn::Sub(hn::Load(df, st + (j + 1) * m + i), shift));
      const auto h0 = Bf16Bits(e0), h1 = Bf16Bits(e1);
      const auto l0 = Bf16Bits(hn::Sub(e0, Bf16Value(h0))), l1 = Bf16Bits(hn::Sub(e1, Bf16Value(h1)));
      hn::StoreU(hn::Or(h0, hn::ShiftLeft<16>(h1)), hn::RebindToUnsigned<DF>(), hi_pairs + j / 2 * m + i);
      hn::StoreU(hn::Or(l0, hn::ShiftLeft<16>(l1)), hn::RebindToUnsigned<DF>(), lo_pairs + j / 2 * m + i);
      if (keep) {
        hn::Store(e0, df, st + j * m + i);
        hn::Store(e1, df, st + (j + 1) * m + i);
        total = hn::Add(total, hn::Add(e0, e1));
      } else {
        total = hn::Add(total, hn::Add(hn::Add(Bf16Value(h0), Bf16Value(l0)), hn::Add(Bf16Value(h1), Bf16Value(l1))));
      }
    }
    hn::Store(hn::Add(hn::Mul(hn::Load(df, sum + i), hn::Load(df, alpha + i)), total), df, sum + i);
    hn::Store(new_max, df, max + i);
  }
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
