// The online-softmax steps: SoftmaxRow turns a row's scores of a tile into exp(score - max) over the
// row's visible keys and folds them into the row's running max and sum (FoldRow), rescaling its
// unnormalised output when the max grows; AcrossRowLanes reduces the rows of a Grouped vector;
// SoftmaxTileRow is the same step for the tile path, in powers of 2 (Pow2), writing the weights as the bf16
// parts its product reads.
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

// 2^x for finite x <= 127: x = n + f (n the nearest integer, |f| <= 1/2), a degree-5 polynomial for 2^f
// (relative error below 2^-21, tested against std::exp2) times 2^n built in the exponent field; x below
// -126.5 gives exactly 0 (clamped to 2^-127, whose exponent field is 0). About half the instructions of
// Exp (no range reduction in two parts, no special cases): the tile path's softmax calls it for every score.
HWY_INLINE VF Pow2(VF x) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  x = hn::Max(x, hn::Set(df, -127.0f));
  const auto n = hn::NearestInt(x);
  const VF f = hn::Sub(x, hn::ConvertTo(df, n));
  VF p = hn::MulAdd(hn::Set(df, 1.327656792e-03f), f, hn::Set(df, 9.675542824e-03f));
  p = hn::MulAdd(p, f, hn::Set(df, 5.550713092e-02f));
  p = hn::MulAdd(p, f, hn::Set(df, 2.402212024e-01f));
  p = hn::MulAdd(p, f, hn::Set(df, 6.931469440e-01f));
  p = hn::MulAdd(p, f, hn::Set(df, 1.0f));
  return hn::Mul(p, hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(n, hn::Set(di, 127)))));
}

// The bf16 part of x (the upper half of the f32 bits; the lower half 0): rounded half away from zero,
// two instructions, where x is finite and below 2^127 (kFinite); else Bf16Bits's rounding to nearest
// even, NaN quieted.
template <bool kFinite>
HWY_INLINE VU Bf16Part(VF x) {
  const hn::RebindToUnsigned<DF> du;
  if constexpr (kFinite) return hn::And(hn::Add(hn::BitCast(du, x), hn::Set(du, 0x8000u)), hn::Set(du, 0xffff0000u));
  return hn::ShiftLeft<16>(Bf16Bits(x));
}

// Log2 of e: the tile path's softmax works in powers of 2 (Pow2).
inline constexpr double kLog2E = 1.4426950408889634;
// The tile path's running max only moves when a step's max exceeds it by more than this (log2 units),
// so most steps skip the output's rescaling (FlashAttention-4's lazy rescaling): the weights stay below
// 2^kLazyRescale and the sum and output use the same max, so the result is unchanged.
inline constexpr float kLazyRescale = 8.0f;

// The weights of the tile path's softmax over the blocks [j0, j1) of a row: s holds x = log2 e times the
// scaled (capped) scores, -inf where masked; writes 2^(x - shift) as P's bf16 parts (SoftmaxTileRow) and
// returns the sum of what the product will apply (the parts; with `keep`, the f32 weights, left in s).
// kFinite: every visible score is finite (Pow2 and the short rounding apply); else Exp and Bf16Bits, so
// NaN and infinities come out as the reference has them.
template <bool kFinite>
HWY_INLINE float TileWeights(float* HWY_RESTRICT s, size_t j0, size_t j1, float shift, uint32_t* HWY_RESTRICT hi,
                             uint32_t* HWY_RESTRICT lo, bool keep) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const VF vshift = hn::Set(df, shift), ln2 = hn::Set(df, static_cast<float>(1.0 / kLog2E));
  const auto weight = [&](VF x) {
    if constexpr (kFinite) return Pow2(hn::Sub(x, vshift));
    return hn::Exp(df, hn::Mul(hn::Sub(x, vshift), ln2));  // masked: exp(-inf) = 0
  };
  VF total = hn::Zero(df);
  for (size_t j = j0; j < j1; j += 2 * kPairSpan)
    for (size_t t = j; t < j + kPairSpan; t += kLanes) {
      const VF e0 = weight(hn::Load(df, s + t)), e1 = weight(hn::Load(df, s + t + kPairSpan));
      const VU h0 = Bf16Part<kFinite>(e0), h1 = Bf16Part<kFinite>(e1);
      const VU l0 = Bf16Part<kFinite>(hn::Sub(e0, hn::BitCast(df, h0))), l1 = Bf16Part<kFinite>(hn::Sub(e1, hn::BitCast(df, h1)));
      hn::StoreU(hn::Or(h1, hn::ShiftRight<16>(h0)), du, hi + PairRow(t));
      hn::StoreU(hn::Or(l1, hn::ShiftRight<16>(l0)), du, lo + PairRow(t));
      if (keep) {
        hn::Store(e0, df, s + t);
        hn::Store(e1, df, s + t + kPairSpan);
        total = hn::Add(total, hn::Add(e0, e1));
      } else {
        total = hn::Add(total, hn::Add(hn::Add(hn::BitCast(df, h0), hn::BitCast(df, l0)),
                                       hn::Add(hn::BitCast(df, h1), hn::BitCast(df, l1))));
      }
    }
  return hn::GetLane(hn::SumOfLanes(df, total));
}

// The online-softmax step of the tile path for one row: s[0, keys) are its unscaled scores of a step
// (keys a multiple of 2 * kPairSpan), of which [a, b) are visible (a < b). Scale, soft cap (`cap`, 0:
// none), the mask (other keys count as -inf), then the weights 2^(x - max), x = log2 e times the scaled
// score and `max` the row's running max in those units (the natural max is max / log2 e), as the two bf16
// parts of pack-inl.h, written as the row of P's parts that O += P.V reads: the 32-bit words
// hi[PairRow(j)] and lo[PairRow(j)] hold key j's parts in their PairHalf(j) half (masked keys 0). The
// max moves lazily (kLazyRescale) while the row's visible scores are finite, else to the step's max at
// once; the sum folds the step in, adding exactly the parts the product will apply; returns the factor
// the row's output must be rescaled by first (1 when the max stayed). With `keep` the weights of [a, b)
// also stay in s as f32 (the f32 P.V of a step whose V is not finite), and the sum adds those instead.
HWY_INLINE float SoftmaxTileRow(float* HWY_RESTRICT s, size_t keys, size_t a, size_t b, float scale, double cap,
                                float& max, float& sum, uint32_t* HWY_RESTRICT hi, uint32_t* HWY_RESTRICT lo,
                                bool keep) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const hn::RebindToUnsigned<DF> du;
  const VF neg_inf = hn::Set(df, kNegInf);
  // log2 e folded into the scale, or into the cap's factor.
  const VF vscale = hn::Set(df, static_cast<float>(cap > 0 ? scale : scale * kLog2E));
  const VF vcap = hn::Set(df, static_cast<float>(cap * kLog2E)), inverse = hn::Set(df, static_cast<float>(cap > 0 ? 1.0 / cap : 0.0));
  const auto first = hn::Set(di, static_cast<int32_t>(a)), end = hn::Set(di, static_cast<int32_t>(b));
  // Only the blocks of 2 * kPairSpan keys holding visible keys are computed; the others' weights are 0.
  constexpr size_t kBlock = 2 * kPairSpan;
  const size_t j0 = a / kBlock * kBlock, j1 = RoundUp(b, kBlock);
  for (size_t j = 0; j < keys; j += 2 * kLanes)
    if (j < j0 || j >= j1) {  // kLanes words: 2 * kLanes keys
      hn::StoreU(hn::Zero(du), du, hi + j / 2);
      hn::StoreU(hn::Zero(du), du, lo + j / 2);
    }
  VF top = neg_inf, check = hn::Zero(df);  // check: the sum of the visible x, finite if they all are
  for (size_t j = j0; j < j1; j += kLanes) {
    VF x = hn::Mul(hn::Load(df, s + j), vscale);
    if (cap > 0) x = hn::Mul(vcap, hn::Tanh(df, hn::Mul(x, inverse)));
    if (j < a || j + kLanes > b) {
      const auto key = hn::Add(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(j)));
      const auto visible = hn::RebindMask(df, hn::And(hn::Not(hn::Lt(key, first)), hn::Lt(key, end)));
      check = hn::Add(check, hn::IfThenElseZero(visible, x));
      x = hn::IfThenElse(visible, x, neg_inf);  // select: a masked NaN score is dropped
    } else {
      check = hn::Add(check, x);
    }
    hn::Store(x, df, s + j);
    top = hn::Max(top, x);
  }
  const float old_max = max, step_max = hn::GetLane(hn::MaxOfLanes(df, top));
  const bool finite = std::isfinite(hn::GetLane(hn::SumOfLanes(df, check)));
  float new_max = old_max;
  if (!finite) new_max = std::max(old_max, step_max);
  else if (old_max == kNegInf || step_max > old_max + kLazyRescale) new_max = step_max;
  // Unchanged max: 1 (also for a row still without a key); a first key: 2^-inf = 0 on a zero output.
  const float alpha = old_max == new_max ? 1.0f : std::exp2(old_max - new_max);
  const float shift = new_max == kNegInf ? 0.0f : new_max;  // no -inf - -inf
  const float step_sum = finite ? TileWeights<true>(s, j0, j1, shift, hi, lo, keep)
                                : TileWeights<false>(s, j0, j1, shift, hi, lo, keep);
  sum = sum * alpha + step_sum;
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
