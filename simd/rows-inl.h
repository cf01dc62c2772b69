// The K and V rows a tile's products read: TileRows (converted to f32 in scratch), Bf16Rows and
// CodeRows (read in place from the cache, widened in registers), and the pair order Bf16Rows delivers.
// Per-target code (Highway's -inl.h pattern): include it after <hwy/foreach_target.h> in a file compiled
// once per target; the toggled guard lets each target's pass include it again.
#if defined(RPA_SIMD_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef RPA_SIMD_ROWS_INL_H_
#undef RPA_SIMD_ROWS_INL_H_
#else
#define RPA_SIMD_ROWS_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include <hwy/highway.h>

#include "simd/convert-inl.h"
#include "simd/plan.h"

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr size_t kTile = static_cast<size_t>(kTileKeys);
static_assert(kTile % kLanes == 0 && kLanes % 4 == 0, "tiles hold whole vectors; blocks of 4 rows fill one");

// Fetches a K or V row towards the core ahead of use. On decode, prefetcht1 measured ~15% faster than
// hwy::Prefetch (prefetcht0) and a little faster than prefetcht2.
HWY_INLINE void Prefetch(const void* row, size_t bytes) {
  const char* start = static_cast<const char*>(row);
  for (size_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(start + offset, 0, 2);
}

// K or V rows of the current tile, converted to f32 (stride dp). Load(j, d, parts) gives the kParts
// vectors of key j from dimension d on, in the order the queries and outputs are stored in.
struct TileRows {
  static constexpr size_t kParts = 1;
  const float* HWY_RESTRICT base;
  size_t stride;
  HWY_INLINE void Load(size_t j, size_t d, VF* parts) const { parts[0] = hn::Load(DF(), base + j * stride + d); }
  HWY_INLINE void PrefetchAhead(size_t) const {}  // done while converting
};

// K or V rows read in place from a bf16 cache: no converted tile is written and read back. A vector of
// 2 * kLanes bf16 read as u32 lanes widens with one shift (even elements) and one mask (odd elements), so
// dimensions [d, d + 2 * kLanes) arrive as the even ones then the odd ones: queries and outputs are kept
// in that order while the item runs (ToPairOrder, FromPairOrder).
struct Bf16Rows {
  static constexpr size_t kParts = 2;
  using Element = uint16_t;
  const Element* row[kTile];  // padding keys point at zeros
  // The same key's row in the next tile (null past the range) and the bytes of a row: fetched from DRAM
  // a few lines per key while this tile computes, which keeps misses in flight all along instead of in
  // bursts that stall on the miss buffers.
  const char* ahead[kTile];
  size_t row_bytes;
  HWY_INLINE void PrefetchAhead(size_t j) const {
    if (ahead[j] != nullptr) Prefetch(ahead[j], row_bytes);
  }
  HWY_INLINE void Load(size_t j, size_t d, VF* parts) const {
    const DF df;
    const hn::RebindToUnsigned<DF> du;
    const auto bits = hn::LoadU(du, reinterpret_cast<const uint32_t*>(row[j] + d));
    parts[0] = hn::BitCast(df, hn::ShiftLeft<16>(bits));
    parts[1] = hn::BitCast(df, hn::And(bits, hn::Set(du, 0xFFFF0000u)));
  }
};

// K or V rows read in place from a quantised cache, kLanes codes widened per load, in natural order and
// without their scale (folded into the queries and the output).
template <rpa_dtype kDtype>
struct CodeRows {
  static constexpr size_t kParts = 1;
  using Element = uint8_t;
  const Element* row[kTile];  // padding keys point at zeros (code 0 is 0.0 in every format)
  const char* ahead[kTile];   // as in Bf16Rows
  size_t row_bytes;
  HWY_INLINE void PrefetchAhead(size_t j) const {
    if (ahead[j] != nullptr) Prefetch(ahead[j], row_bytes);
  }
  HWY_INLINE void Load(size_t j, size_t d, VF* parts) const { parts[0] = DecodeCodes<kDtype>(row[j] + d); }
};

// Moves each 2 * kLanes block of row[0, dim) to the order Bf16Rows delivers (even elements, then odd).
HWY_INLINE void ToPairOrder(float* HWY_RESTRICT row, size_t dim) {
  const DF df;
  for (size_t d = 0; d < dim; d += 2 * kLanes) {
    const VF lo = hn::Load(df, row + d), hi = hn::Load(df, row + d + kLanes);
    hn::Store(hn::ConcatEven(df, hi, lo), df, row + d);
    hn::Store(hn::ConcatOdd(df, hi, lo), df, row + d + kLanes);
  }
}

// The inverse of ToPairOrder, from row to natural (once per row: plain scalar moves).
HWY_INLINE void FromPairOrder(const float* HWY_RESTRICT row, size_t dim, float* HWY_RESTRICT natural) {
  for (size_t d = 0; d < dim; d += 2 * kLanes)
    for (size_t i = 0; i < kLanes; ++i) {
      natural[d + 2 * i] = row[d + i];
      natural[d + 2 * i + 1] = row[d + kLanes + i];
    }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#endif  // RPA_SIMD_ROWS_INL_H_
