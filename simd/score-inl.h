// Q.K^T micro-kernels: ScoreVector (kLanes dot products at once, summed by a transposing tree) and
// ScoreBlock (the same, stored row-major).
// Per-target code (Highway's -inl.h pattern): include it after <hwy/foreach_target.h> in a file compiled
// once per target; the toggled guard lets each target's pass include it again.
#if defined(RPA_SIMD_SCORE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef RPA_SIMD_SCORE_INL_H_
#undef RPA_SIMD_SCORE_INL_H_
#else
#define RPA_SIMD_SCORE_INL_H_
#endif

#include <cstddef>
#include <cstring>

#include <hwy/highway.h>

#include "simd/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Returns the vector whose lane i holds the total of acc[i], for kLanes accumulators. Two steps of
// in-block interleaves (cheap shuffles) leave each 128-bit block of quad[g] holding its partial sums of
// acc[4g .. 4g + 3]; the blocks are then added across, ending in lane order. A template, so that only
// the branch for this target's block count is compiled.
template <size_t kCount>
HWY_INLINE VF SumEach(const VF* acc) {
  static_assert(kCount == kLanes, "one accumulator per lane");
  const DF df;
  const hn::Repartition<double, DF> dd;
  constexpr size_t kGroups = kCount / 4;
  VF quad[kGroups];
  HWY_UNROLL(4)
  for (size_t g = 0; g < kGroups; ++g) {
    const VF* a = acc + 4 * g;
    // Per block, lanes 0 and 2 hold partial sums of a[0], lanes 1 and 3 of a[1] (likewise cd).
    const VF ab = hn::Add(hn::InterleaveLower(df, a[0], a[1]), hn::InterleaveUpper(df, a[0], a[1]));
    const VF cd = hn::Add(hn::InterleaveLower(df, a[2], a[3]), hn::InterleaveUpper(df, a[2], a[3]));
    const auto ab64 = hn::BitCast(dd, ab), cd64 = hn::BitCast(dd, cd);
    quad[g] = hn::Add(hn::BitCast(df, hn::InterleaveLower(dd, ab64, cd64)), hn::BitCast(df, hn::InterleaveUpper(dd, ab64, cd64)));
  }
  if constexpr (kGroups == 1) {
    return quad[0];
  } else if constexpr (kGroups == 2) {
    return hn::Add(hn::ConcatLowerLower(df, quad[1], quad[0]), hn::ConcatUpperUpper(df, quad[1], quad[0]));
  } else {
    static_assert(kGroups == 4, "x86 vectors hold at most 4 blocks");
    // Blocks [q0 q0 q2 q2] and [q1 q1 q3 q3] summed, then the even blocks of one and the odd of the other.
    VF even = hn::Add(hn::ConcatLowerLower(df, quad[2], quad[0]), hn::ConcatUpperUpper(df, quad[2], quad[0]));
    VF odd = hn::Add(hn::ConcatLowerLower(df, quad[3], quad[1]), hn::ConcatUpperUpper(df, quad[3], quad[1]));
    even = hn::Add(even, hn::SwapAdjacentBlocks(even));
    odd = hn::Add(odd, hn::SwapAdjacentBlocks(odd));
    return hn::OddEvenBlocks(odd, even);
  }
}

// Scores of kRows query rows (stride dp) against the kLanes / kRows keys from j0 on, lane r * kLanes / kRows
// + j holding row r's score of key j0 + j. Each K vector feeds every row; SumEach folds the kLanes
// accumulators into one vector.
template <size_t kRows, class Rows>
HWY_INLINE VF ScoreVector(const float* HWY_RESTRICT q, const Rows& k, size_t j0, size_t dp) {
  const DF df;
  constexpr size_t kKeys = kLanes / kRows, kParts = Rows::kParts;
  VF acc[kLanes];
  HWY_UNROLL(16)
  for (size_t i = 0; i < kLanes; ++i) acc[i] = hn::Zero(df);
  for (size_t d = 0; d < dp; d += kParts * kLanes) {
    VF key[kKeys][kParts];
    HWY_UNROLL(16)
    for (size_t j = 0; j < kKeys; ++j) k.Load(j0 + j, d, key[j]);
    if (d == 0) {
      HWY_UNROLL(16)
      for (size_t j = 0; j < kKeys; ++j) k.PrefetchAhead(j0 + j);
    }
    HWY_UNROLL(4)
    for (size_t r = 0; r < kRows; ++r) {
      HWY_UNROLL(2)
      for (size_t part = 0; part < kParts; ++part) {
        const VF query = hn::Load(df, q + r * dp + d + part * kLanes);
        HWY_UNROLL(16)
        for (size_t j = 0; j < kKeys; ++j) acc[r * kKeys + j] = hn::MulAdd(query, key[j][part], acc[r * kKeys + j]);
      }
    }
  }
  return SumEach<kLanes>(acc);
}

// ScoreVector written to s[r * kTile + j].
template <size_t kRows>
HWY_INLINE void ScoreBlock(const float* HWY_RESTRICT q, const TileRows& k, size_t j0, size_t dp, float* HWY_RESTRICT s) {
  const DF df;
  constexpr size_t kKeys = kLanes / kRows;
  const VF total = ScoreVector<kRows>(q, k, j0, dp);
  if constexpr (kRows == 1) {
    hn::StoreU(total, df, s);
  } else {
    HWY_ALIGN float lanes[kLanes];
    hn::Store(total, df, lanes);
    for (size_t r = 0; r < kRows; ++r) std::memcpy(s + r * kTile, lanes + r * kKeys, kKeys * sizeof(float));
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#endif  // RPA_SIMD_SCORE_INL_H_
