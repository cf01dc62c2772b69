// P.V micro-kernels: AccumulateBlock keeps a block of output rows in registers while V rows stream
// through; AccumulateRows covers a padded row width.
// Per-target code (Highway's -inl.h pattern): include it after <hwy/foreach_target.h> in a file compiled
// once per target; the toggled guard lets each target's pass include it again.
#if defined(RPA_SIMD_PV_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef RPA_SIMD_PV_INL_H_
#undef RPA_SIMD_PV_INL_H_
#else
#define RPA_SIMD_PV_INL_H_
#endif

#include <cstddef>

#include <hwy/highway.h>

#include "simd/rows-inl.h"

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Output vectors per P.V block: 4 rows x 4 vectors needs the 32 registers of AVX-512; 16 registers
// (AVX2, SSE4) hold 4 rows x 2 vectors.
constexpr size_t kPvVecs = HWY_TARGET <= HWY_AVX3 ? 4 : 2;

// Where row r's probability of key j of a tile is: a row's keys in a run (ScoreBlock), or grouped as
// ScoreVector<4> leaves them, kLanes / 4 keys of each of the 4 rows per vector (SharedBlock).
struct RowMajor {
  static constexpr size_t Index(size_t r, size_t j) { return r * kTile + j; }
};
struct Grouped {
  static constexpr size_t kKeys = kLanes / 4;
  static constexpr size_t Index(size_t r, size_t j) { return j / kKeys * kLanes + r * kKeys + j % kKeys; }
};

// o[r][0, kVecs * kLanes) += sum over j in [j0, j1) of p[Layout::Index(r, j)] * v[j][same range], for kRows
// rows (o and v with stride dp). The output block stays in registers while V streams through.
template <size_t kRows, size_t kVecs, class Layout, class Rows>
HWY_INLINE void AccumulateBlock(const float* HWY_RESTRICT p, const Rows& v, size_t d0, size_t dp, size_t j0,
                                size_t j1, float* HWY_RESTRICT o) {
  const DF df;
  VF acc[kRows * kVecs];
  HWY_UNROLL(4)
  for (size_t r = 0; r < kRows; ++r) {
    HWY_UNROLL(4)
    for (size_t i = 0; i < kVecs; ++i) acc[r * kVecs + i] = hn::Load(df, o + r * dp + i * kLanes);
  }
  for (size_t j = j0; j < j1; ++j) {
    if (d0 == 0) v.PrefetchAhead(j);
    VF value[kVecs];
    HWY_UNROLL(4)
    for (size_t i = 0; i < kVecs; i += Rows::kParts) v.Load(j, d0 + i * kLanes, value + i);
    HWY_UNROLL(4)
    for (size_t r = 0; r < kRows; ++r) {
      const VF weight = hn::Set(df, p[Layout::Index(r, j)]);
      HWY_UNROLL(4)
      for (size_t i = 0; i < kVecs; ++i) acc[r * kVecs + i] = hn::MulAdd(weight, value[i], acc[r * kVecs + i]);
    }
  }
  HWY_UNROLL(4)
  for (size_t r = 0; r < kRows; ++r) {
    HWY_UNROLL(4)
    for (size_t i = 0; i < kVecs; ++i) hn::Store(acc[r * kVecs + i], df, o + r * dp + i * kLanes);
  }
}

// The whole padded row width of AccumulateBlock.
template <size_t kRows, class Layout = RowMajor, class Rows>
HWY_INLINE void AccumulateRows(const float* HWY_RESTRICT p, const Rows& v, size_t dp, size_t j0, size_t j1,
                               float* HWY_RESTRICT o) {
  constexpr size_t kStep = Rows::kParts * kLanes;
  size_t d = 0;
  for (; d + kPvVecs * kLanes <= dp; d += kPvVecs * kLanes)
    AccumulateBlock<kRows, kPvVecs, Layout>(p, v, d, dp, j0, j1, o + d);
  for (; d < dp; d += kStep) AccumulateBlock<kRows, Rows::kParts, Layout>(p, v, d, dp, j0, j1, o + d);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#endif  // RPA_SIMD_PV_INL_H_
