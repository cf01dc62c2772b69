// The per-target kernels of the simd backend: flash attention with an online softmax in f32.
//
// A work item (plan.h) is up to kMaxRows rows of one sequence, runs of rows sharing a kv head (the q heads
// of its group times a block of query tokens; a decode item holds several kv heads), and a key range.
// The keys are walked in tiles of kTileKeys; for each run, the tile's K and V rows of its kv head are
// converted to f32 once and shared by all the run's rows, in blocks of 4 rows (single rows for the rest):
//   - Q.K^T: ScoreVector computes kLanes dot products at once (4 rows x kLanes/4 keys), each K vector
//     loaded once for all rows, and sums them with a transposing tree (no horizontal sum per key);
//   - the soft cap and the mask are applied (by select), then the running max, sum and output rescale:
//     for 4 rows that see the same keys (the q heads of one token: SharedBlock) on the score vectors
//     as they are, else row by row (TileBlock);
//   - P.V: AccumulateBlock keeps a 4-row x kPvVecs-vector block of the output in registers and streams
//     the tile's V rows through it.
// Decode items of a bf16 or quantised (fp8, int8) cache (InPlaceFits) skip the converted tile: Bf16Rows
// and CodeRows widen K and V in registers straight from the cache, and prefetch the next tile a few lines
// per key as it goes. A quantised cache's scales are folded into the queries (K) and the output (V) there;
// the converted tile (prefill) multiplies each element by its scale as it converts.
// Keys a row cannot see are never multiplied into its output (the P.V kernels only run over visible
// ranges), so NaN or Inf there cannot leak, and tiles no row of a run can see are neither loaded nor
// computed (causal and window bounds).
//
// Compiled once per Highway target through foreach_target; only AttendItem, MergeSplits and
// TargetBits are exported and reached through HWY_DYNAMIC_DISPATCH (attention.h).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/dtype.h"
#include "simd/attention.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd/attention.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/cache_control.h>
#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
constexpr size_t kLanes = hn::MaxLanes(DF());
constexpr size_t kTile = static_cast<size_t>(kTileKeys);
static_assert(kTile % kLanes == 0 && kLanes % 4 == 0, "tiles hold whole vectors; blocks of 4 rows fill one");

// Output vectors per P.V block: 4 rows x 4 vectors needs the 32 registers of AVX-512; 16 registers
// (AVX2, SSE4) hold 4 rows x 2 vectors.
constexpr size_t kPvVecs = HWY_TARGET <= HWY_AVX3 ? 4 : 2;

// Highway 1.0.3 emulates f16 conversions on targets without F16C by truncating and without Inf/NaN;
// those targets use the exact scalar conversions of core/dtype.h instead.
constexpr bool kNativeF16 = !(HWY_TARGET == HWY_SSE4 || HWY_TARGET == HWY_SSSE3 || HWY_TARGET == HWY_EMU128 ||
                              HWY_TARGET == HWY_SCALAR);

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The widest head_dim whose K and V are read in place (Bf16Rows, CodeRows).
constexpr size_t kMaxInPlaceDim = 256;

constexpr size_t RoundUp(size_t x, size_t multiple) { return (x + multiple - 1) / multiple * multiple; }

const void* Element(const void* base, rpa_dtype dtype, int64_t index) {
  return static_cast<const char*>(base) + index * dtype_size(dtype);
}

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

// Writes src[0..dim) * factor to dst stored as `dtype`, rounding to nearest even like core/dtype.h.
HWY_INLINE void StoreRow(const float* HWY_RESTRICT src, float factor, size_t dim, void* dst, rpa_dtype dtype) {
  const DF df;
  const VF scale = hn::Set(df, factor);
  size_t i = 0;
  if (dtype == RPA_DTYPE_F32) {
    float* to = static_cast<float*>(dst);
    for (; i + kLanes <= dim; i += kLanes) hn::StoreU(hn::Mul(hn::Load(df, src + i), scale), df, to + i);
  } else if (dtype == RPA_DTYPE_BF16) {
    // Highway 1.0.3's DemoteTo(bf16) truncates: round to nearest even by hand.
    const hn::RebindToUnsigned<DF> du;
    const hn::RebindToSigned<DF> di;
    const hn::Rebind<uint16_t, DF> du16;
    uint16_t* to = static_cast<uint16_t*>(dst);
    for (; i + kLanes <= dim; i += kLanes) {
      const VF value = hn::Mul(hn::Load(df, src + i), scale);
      const auto bits = hn::BitCast(du, value);
      const auto upper = hn::ShiftRight<16>(bits);
      const auto rounded = hn::ShiftRight<16>(hn::Add(bits, hn::Add(hn::Set(du, 0x7fffu), hn::And(upper, hn::Set(du, 1u)))));
      const auto quiet_nan = hn::Or(upper, hn::Set(du, 0x40u));
      const auto result = hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(value)), quiet_nan, rounded);
      hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di, result)), du16, to + i);
    }
  } else if (kNativeF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    hwy::float16_t* to = static_cast<hwy::float16_t*>(dst);
    for (; i + kLanes <= dim; i += kLanes) hn::StoreU(hn::DemoteTo(dh, hn::Mul(hn::Load(df, src + i), scale)), dh, to + i);
  }
  for (; i < dim; ++i) store_float(dst, dtype, static_cast<int64_t>(i), src[i] * factor);
}

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

// Where row `row` of a sequence (plan.h: kv head first, then token, then q head of the group) lives.
struct RowPlace {
  int64_t token;    // global query row
  int64_t head;     // q head
  int64_t kv_head;
  int64_t pos;      // position of the query in its sequence
};

RowPlace PlaceOf(const rpa_problem& p, int32_t seq, int64_t row) {
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  const int64_t first = p.query_start_loc[seq];
  const int64_t q_len = p.query_start_loc[seq + 1] - first;
  const int64_t kv_head = row / (q_len * group), token = row % (q_len * group) / group;
  return {first + token, kv_head * group + row % group, kv_head, p.context_lens[seq] - q_len + token};
}

// Normalises one row by its softmax denominator (visible keys and the head's sinks) and writes it with
// its lse. `max` and `sum` are the running max and sum of exp(score - max) over the visible keys.
HWY_INLINE void FinalizeRow(const rpa_problem& p, const RowPlace& place, float max, float sum,
                            const float* HWY_RESTRICT o, size_t dim) {
  int64_t sink_row = 0;
  if (p.sink_heads == p.num_q_heads) sink_row = place.head;
  else if (p.sink_heads == p.num_kv_heads) sink_row = place.kv_head;
  float top = max;
  if (p.sinks)
    for (int64_t n = 0; n < p.sinks_per_head; ++n)
      top = std::max(top, load_float(p.sinks, p.sink_dtype, sink_row * p.sink_head_stride + n * p.sink_stride));
  void* out = static_cast<char*>(p.out) + (place.token * p.out_token_stride + place.head * p.out_head_stride) *
                                              dtype_size(p.out_dtype);
  float* lse = p.lse ? p.lse + place.token * p.lse_token_stride + place.head * p.lse_head_stride : nullptr;
  if (top == kNegInf) {  // no visible key and no finite sink: a zero row
    std::memset(out, 0, dim * dtype_size(p.out_dtype));
    if (lse) *lse = kNegInf;
    return;
  }
  const float kept = max == kNegInf ? 0.0f : std::exp(max - top);
  float denominator = sum * kept;
  if (p.sinks)
    for (int64_t n = 0; n < p.sinks_per_head; ++n)
      denominator += std::exp(load_float(p.sinks, p.sink_dtype, sink_row * p.sink_head_stride + n * p.sink_stride) - top);
  StoreRow(o, kept / denominator, dim, out, p.out_dtype);
  if (lse) *lse = top + std::log(denominator);
}

// Walks a sequence's keys page by page: one division at the start, none per key.
struct KeyCursor {
  KeyCursor(const rpa_problem& p, int64_t first) : key(first), page_index(first / p.page_size),
                                                   slot(first % p.page_size), page_size(p.page_size) {}
  void next() {
    ++key;
    if (++slot == page_size) {
      slot = 0;
      ++page_index;
    }
  }
  int64_t key, page_index, slot, page_size;
};

// The state of one item while its tiles stream by.
struct ItemState {
  const rpa_problem& p;
  size_t dp;
  size_t rows;
  float* HWY_RESTRICT q;   // [kMaxRows][dp], pre-scaled by softmax_scale
  float* HWY_RESTRICT o;   // [kMaxRows][dp] unnormalised output
  float* HWY_RESTRICT k;   // [kTile][dp] current tile
  float* HWY_RESTRICT v;   // [kTile][dp]
  float* HWY_RESTRICT s;   // [kMaxRows][kTile] scores, then probabilities
  float* HWY_RESTRICT max; // [kMaxRows] running max
  float* HWY_RESTRICT sum; // [kMaxRows] running sum
  int64_t first_key[kMaxRows], end_key[kMaxRows];  // visible keys of each row: [first, end)
  int64_t kv_head[kMaxRows];
};

// Folds a tile whose exp(score - new_max) sum to tile_sum into the row's running max and sum, rescaling
// its output when the max grew.
HWY_INLINE void FoldRow(ItemState& st, size_t row, float new_max, float tile_sum) {
  const DF df;
  const float old_max = st.max[row];
  float running = st.sum[row];
  if (old_max != kNegInf && old_max != new_max) {  // before the first visible key the output is still 0
    const float alpha = std::exp(old_max - new_max);
    running *= alpha;
    const VF valpha = hn::Set(df, alpha);
    float* HWY_RESTRICT o = st.o + row * st.dp;
    for (size_t d = 0; d < st.dp; d += kLanes) hn::Store(hn::Mul(hn::Load(df, o + d), valpha), df, o + d);
  }
  st.sum[row] = running + tile_sum;
  st.max[row] = new_max;
}

// Applies the soft cap and the row's mask to its scores in [j0, j1), then folds the tile into the row's
// running max and sum and rescales its output. Keys in [j0, j1) outside [a, b) are masked.
HWY_INLINE void SoftmaxRow(ItemState& st, size_t row, size_t j0, size_t j1, size_t a, size_t b) {
  const DF df;
  float* HWY_RESTRICT s = st.s + row * kTile;
  const double cap = st.p.logits_soft_cap;
  if (cap > 0) {
    const VF vcap = hn::Set(df, static_cast<float>(cap)), inverse = hn::Set(df, static_cast<float>(1.0 / cap));
    for (size_t j = j0; j < j1; j += kLanes)
      hn::Store(hn::Mul(vcap, hn::Tanh(df, hn::Mul(hn::Load(df, s + j), inverse))), df, s + j);
  }
  for (size_t j = j0; j < a; ++j) s[j] = kNegInf;
  for (size_t j = b; j < j1; ++j) s[j] = kNegInf;
  VF top = hn::Set(df, kNegInf);
  for (size_t j = j0; j < j1; j += kLanes) top = hn::Max(top, hn::Load(df, s + j));
  const float old_max = st.max[row];
  const float new_max = std::max(old_max, hn::GetLane(hn::MaxOfLanes(df, top)));
  const VF shift = hn::Set(df, new_max);
  VF total = hn::Zero(df);
  for (size_t j = j0; j < j1; j += kLanes) {
    const VF e = hn::Exp(df, hn::Sub(hn::Load(df, s + j), shift));  // masked: exp(-inf) = 0
    hn::Store(e, df, s + j);
    total = hn::Add(total, e);
  }
  FoldRow(st, row, new_max, hn::GetLane(hn::SumOfLanes(df, total)));
}

// One tile [t0, t0 + nk) for rows [r0, r0 + kRows).
template <size_t kRows>
HWY_INLINE void TileBlock(ItemState& st, const TileRows& k, const TileRows& v, size_t r0, int64_t t0, size_t nk) {
  size_t a[kRows], b[kRows];  // visible keys of each row within the tile
  size_t lo = kTile, hi = 0;
  bool all_see = true;
  for (size_t r = 0; r < kRows; ++r) {
    a[r] = static_cast<size_t>(std::clamp<int64_t>(st.first_key[r0 + r] - t0, 0, static_cast<int64_t>(nk)));
    b[r] = static_cast<size_t>(std::clamp<int64_t>(st.end_key[r0 + r] - t0, 0, static_cast<int64_t>(nk)));
    if (a[r] < b[r]) {
      lo = std::min(lo, a[r]);
      hi = std::max(hi, b[r]);
    } else {
      all_see = false;
    }
  }
  if (lo >= hi) return;  // causal or window bound: no row of the block sees this tile
  const size_t j0 = lo / kLanes * kLanes, j1 = RoundUp(hi, kLanes);
  constexpr size_t kKeys = kLanes / kRows;
  for (size_t j = j0; j < j1; j += kKeys) ScoreBlock<kRows>(st.q + r0 * st.dp, k, j, st.dp, st.s + r0 * kTile + j);
  for (size_t r = 0; r < kRows; ++r)
    if (a[r] < b[r]) SoftmaxRow(st, r0 + r, j0, j1, a[r], b[r]);

  // P.V over the keys every row of the block sees, then each row's own edges one row at a time.
  size_t common_a = 0, common_b = nk;
  for (size_t r = 0; r < kRows; ++r) {
    common_a = std::max(common_a, a[r]);
    common_b = std::min(common_b, b[r]);
  }
  if (!all_see || common_a >= common_b) common_a = common_b = 0;
  if (common_a < common_b) AccumulateRows<kRows>(st.s + r0 * kTile, v, st.dp, common_a, common_b, st.o + r0 * st.dp);
  for (size_t r = 0; r < kRows; ++r) {
    if (a[r] >= b[r]) continue;
    const float* p = st.s + (r0 + r) * kTile;
    float* o = st.o + (r0 + r) * st.dp;
    if (common_a < common_b) {
      if (a[r] < common_a) AccumulateRows<1>(p, v, st.dp, a[r], common_a, o);
      if (common_b < b[r]) AccumulateRows<1>(p, v, st.dp, common_b, b[r], o);
    } else {
      AccumulateRows<1>(p, v, st.dp, a[r], b[r], o);
    }
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

// Whether rows [r0, r0 + 4) see the same keys.
HWY_INLINE bool SameKeys(const ItemState& st, size_t r0) {
  for (size_t r = r0 + 1; r < r0 + 4; ++r)
    if (st.first_key[r] != st.first_key[r0] || st.end_key[r] != st.end_key[r0]) return false;
  return true;
}

// One tile [t0, t0 + nk) for rows [r0, r0 + 4) that see the same keys (the q heads of one token): the
// scores stay in ScoreVector's grouped order, so the 4 rows' softmax runs on whole vectors, with no
// per-row horizontal max and sum.
template <class Rows>
HWY_INLINE void SharedBlock(ItemState& st, const Rows& k, const Rows& v, size_t r0, int64_t t0, size_t nk) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  constexpr size_t kKeys = Grouped::kKeys;
  const size_t a = static_cast<size_t>(std::clamp<int64_t>(st.first_key[r0] - t0, 0, static_cast<int64_t>(nk)));
  const size_t b = static_cast<size_t>(std::clamp<int64_t>(st.end_key[r0] - t0, 0, static_cast<int64_t>(nk)));
  if (a >= b) return;
  float* HWY_RESTRICT p = st.s + r0 * kTile;  // the 4 rows' kTile floats, in Grouped order
  const size_t g0 = a / kKeys, g1 = (b + kKeys - 1) / kKeys;
  const double cap = st.p.logits_soft_cap;
  const VF vcap = hn::Set(df, static_cast<float>(cap)), inverse = hn::Set(df, static_cast<float>(cap > 0 ? 1.0 / cap : 0.0));
  const auto lane_key = hn::And(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(kKeys - 1)));
  const auto first = hn::Set(di, static_cast<int32_t>(a)), last = hn::Set(di, static_cast<int32_t>(b - 1));
  VF top = hn::Set(df, kNegInf);
  for (size_t g = g0; g < g1; ++g) {
    VF score = ScoreVector<4>(st.q + r0 * st.dp, k, g * kKeys, st.dp);
    if (cap > 0) score = hn::Mul(vcap, hn::Tanh(df, hn::Mul(score, inverse)));
    const auto key = hn::Add(lane_key, hn::Set(di, static_cast<int32_t>(g * kKeys)));
    const auto visible = hn::RebindMask(df, hn::And(hn::Not(hn::Lt(key, first)), hn::Not(hn::Gt(key, last))));
    score = hn::IfThenElse(visible, score, hn::Set(df, kNegInf));  // select: a masked NaN score is dropped
    hn::Store(score, df, p + g * kLanes);
    top = hn::Max(top, score);
  }
  top = AcrossRowLanes(top, [](VF x, VF y) { return hn::Max(x, y); });
  HWY_ALIGN float lanes[kLanes];
  hn::Store(top, df, lanes);
  float new_max[4];
  for (size_t r = 0; r < 4; ++r) {
    new_max[r] = std::max(st.max[r0 + r], lanes[r * kKeys]);
    for (size_t i = 0; i < kKeys; ++i) lanes[r * kKeys + i] = new_max[r];
  }
  const VF shift = hn::Load(df, lanes);
  VF total = hn::Zero(df);
  for (size_t g = g0; g < g1; ++g) {
    const VF e = hn::Exp(df, hn::Sub(hn::Load(df, p + g * kLanes), shift));  // masked: exp(-inf) = 0
    hn::Store(e, df, p + g * kLanes);
    total = hn::Add(total, e);
  }
  hn::Store(AcrossRowLanes(total, [](VF x, VF y) { return hn::Add(x, y); }), df, lanes);
  for (size_t r = 0; r < 4; ++r) FoldRow(st, r0 + r, new_max[r], lanes[r * kKeys]);
  AccumulateRows<4, Grouped>(p, v, st.dp, a, b, st.o + r0 * st.dp);
}

// Calls row(j, k_row, v_row, k_ahead, v_ahead) for keys [t0, t0 + nk) of kv head `kv_head`, with the rows
// of the same key of the next tile (null from `end` on), which kPrefetch prefetches here: decode streams K
// and V from DRAM in rows of a few cache lines spread over pages, a pattern the hardware prefetchers do
// not follow.
template <bool kPrefetch, class RowFn>
HWY_INLINE void WalkTile(const ItemState& st, const int32_t* table, int64_t kv_head, int64_t t0, size_t nk,
                         int64_t end, size_t row_bytes, const RowFn& row) {
  const rpa_problem& p = st.p;
  const char* k_head = static_cast<const char*>(Element(p.k.data, p.kv_dtype, kv_head * p.k.head_stride));
  const char* v_head = static_cast<const char*>(Element(p.v.data, p.kv_dtype, kv_head * p.v.head_stride));
  const int64_t size = dtype_size(p.kv_dtype);
  KeyCursor key(p, t0), ahead(p, t0 + kTileKeys);
  for (size_t j = 0; j < nk; ++j, key.next()) {
    const char* k_ahead = nullptr;
    const char* v_ahead = nullptr;
    if (ahead.key < end) {
      const int64_t page = table[ahead.page_index];
      k_ahead = k_head + (page * p.k.page_stride + ahead.slot * p.k.slot_stride) * size;
      v_ahead = v_head + (page * p.v.page_stride + ahead.slot * p.v.slot_stride) * size;
      if constexpr (kPrefetch) {
        Prefetch(k_ahead, row_bytes);
        Prefetch(v_ahead, row_bytes);
      }
      ahead.next();
    }
    const int64_t page = table[key.page_index];
    row(j, k_head + (page * p.k.page_stride + key.slot * p.k.slot_stride) * size,
        v_head + (page * p.v.page_stride + key.slot * p.v.slot_stride) * size, k_ahead, v_ahead);
  }
}

// Rows [run, run_end) (one kv head) against the tile [t0, t0 + nk), its K and V converted into the tile.
HWY_INLINE void TileRunConverted(ItemState& st, const int32_t* table, int64_t kv_head, size_t run, size_t run_end,
                                 int64_t t0, size_t nk, int64_t end, size_t dim, size_t row_bytes) {
  const DF df;
  const rpa_problem& p = st.p;
  const float k_scale = p.k_scale[kv_head * p.k_scale_stride], v_scale = p.v_scale[kv_head * p.v_scale_stride];
  WalkTile<true>(st, table, kv_head, t0, nk, end, row_bytes,
                 [&](size_t j, const char* k_row, const char* v_row, const char*, const char*) {
                   LoadKvRow(k_row, p.kv_dtype, dim, st.dp, k_scale, st.k + j * st.dp);
                   LoadKvRow(v_row, p.kv_dtype, dim, st.dp, v_scale, st.v + j * st.dp);
                 });
  // Scores of the padding keys up to a whole vector are computed (then masked): keep them finite.
  for (size_t j = nk; j < RoundUp(nk, kLanes); ++j)
    for (size_t d = 0; d < st.dp; d += kLanes) hn::Store(hn::Zero(df), df, st.k + j * st.dp + d);
  const TileRows k{st.k, st.dp}, v{st.v, st.dp};
  size_t r0 = run;
  for (; r0 + 4 <= run_end; r0 += 4) {
    if (SameKeys(st, r0)) {  // the q heads of one token
      SharedBlock(st, k, v, r0, t0, nk);
    } else {
      TileBlock<4>(st, k, v, r0, t0, nk);
    }
  }
  for (; r0 < run_end; ++r0) TileBlock<1>(st, k, v, r0, t0, nk);
}

// Zeros standing in for the padding keys of a tile read in place (their scores are masked).
alignas(64) constexpr uint16_t kZeroRow[kMaxInPlaceDim] = {};

// Rows [run, run_end) (one kv head, a multiple of 4 rows) against the tile [t0, t0 + nk), K and V read in
// place from the cache (Rows: Bf16Rows or CodeRows).
template <class Rows>
HWY_INLINE void TileRunInPlace(ItemState& st, const int32_t* table, int64_t kv_head, size_t run, size_t run_end,
                               int64_t t0, size_t nk, int64_t end, size_t row_bytes) {
  using Element = typename Rows::Element;
  Rows k, v;
  k.row_bytes = v.row_bytes = row_bytes;
  WalkTile<false>(st, table, kv_head, t0, nk, end, row_bytes,
                  [&](size_t j, const char* k_row, const char* v_row, const char* k_ahead, const char* v_ahead) {
                    k.row[j] = reinterpret_cast<const Element*>(k_row);
                    v.row[j] = reinterpret_cast<const Element*>(v_row);
                    k.ahead[j] = k_ahead;
                    v.ahead[j] = v_ahead;
                  });
  for (size_t j = nk; j < RoundUp(nk, kLanes); ++j) {
    k.row[j] = v.row[j] = reinterpret_cast<const Element*>(kZeroRow);
    k.ahead[j] = v.ahead[j] = nullptr;
  }
  for (size_t r0 = run; r0 < run_end; r0 += 4) SharedBlock(st, k, v, r0, t0, nk);
}

// kDim: the head dimension when known at compile time (the fast paths), else 0. Rows: TileRows (the
// converted tile), or Bf16Rows / CodeRows when the item reads K and V in place (InPlaceFits); a separate
// instantiation each, so that no path shapes another's code.
template <size_t kDim, class Rows>
void AttendItemFor(const rpa_problem& p, const WorkItem& item, float* HWY_RESTRICT scratch,
                   float* HWY_RESTRICT partial) {
  constexpr bool kInPlace = !std::is_same_v<Rows, TileRows>;
  // In place, a quantised cache's scales are folded into each row's query and output.
  const bool fold_scales = kInPlace && is_quantised_dtype(p.kv_dtype);
  const DF df;
  const size_t dim = kDim ? kDim : static_cast<size_t>(p.head_dim);
  const size_t dp = RoundUp(dim, kLanes);
  const size_t rows = static_cast<size_t>(item.row_end - item.row_begin);
  ItemState st{p, dp, rows, scratch, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, {}, {}, {}};
  st.o = st.q + kMaxRows * dp;
  st.k = st.o + kMaxRows * dp;
  st.v = st.k + kTile * dp;
  st.s = st.v + kTile * dp;
  st.max = st.s + kMaxRows * kTile;
  st.sum = st.max + kMaxRows;

  const VF scale = hn::Set(df, static_cast<float>(p.softmax_scale));
  int64_t begin = item.key_end, end = item.key_begin;
  for (size_t r = 0; r < rows; ++r) {
    const RowPlace place = PlaceOf(p, item.seq, item.row_begin + static_cast<int64_t>(r));
    st.kv_head[r] = place.kv_head;
    const int64_t window_start = p.sliding_window > 0 ? place.pos - p.sliding_window + 1 : 0;
    st.first_key[r] = std::max(item.key_begin, window_start);
    st.end_key[r] = std::min(item.key_end, place.pos + 1);
    if (st.first_key[r] < st.end_key[r]) {
      begin = std::min(begin, st.first_key[r]);
      end = std::max(end, st.end_key[r]);
    }
    float* q = st.q + r * dp;
    LoadRow(Element(p.queries, p.query_dtype, place.token * p.query_token_stride + place.head * p.query_head_stride),
            p.query_dtype, dim, dp, q);
    float* o = st.o + r * dp;
    const VF q_scale = fold_scales ? hn::Mul(scale, hn::Set(df, p.k_scale[place.kv_head * p.k_scale_stride])) : scale;
    for (size_t d = 0; d < dp; d += kLanes) {
      hn::Store(hn::Mul(hn::Load(df, q + d), q_scale), df, q + d);
      hn::Store(hn::Zero(df), df, o + d);
    }
    if constexpr (Rows::kParts == 2) ToPairOrder(q, dim);
    st.max[r] = kNegInf;
    st.sum[r] = 0.0f;
  }

  const int32_t* table = p.block_tables + item.seq * p.block_table_stride;
  const size_t row_bytes = dim * static_cast<size_t>(dtype_size(p.kv_dtype));
  for (int64_t t0 = begin; t0 < end; t0 += kTileKeys) {
    const size_t nk = static_cast<size_t>(std::min<int64_t>(kTileKeys, end - t0));
    // The item's rows in runs of one kv head; each run converts that head's tile once. The heads of a
    // decode item take turns on the same tile of slots.
    for (size_t run = 0; run < rows;) {
      size_t run_end = run + 1;
      while (run_end < rows && st.kv_head[run_end] == st.kv_head[run]) ++run_end;
      int64_t lo = end, hi = begin;
      for (size_t r = run; r < run_end; ++r) {
        lo = std::min(lo, std::max(st.first_key[r], t0));
        hi = std::max(hi, std::min(st.end_key[r], t0 + static_cast<int64_t>(nk)));
      }
      if (lo < hi) {  // some row of the run sees the tile
        if constexpr (kInPlace) {
          TileRunInPlace<Rows>(st, table, st.kv_head[run], run, run_end, t0, nk, end, row_bytes);
        } else {
          TileRunConverted(st, table, st.kv_head[run], run, run_end, t0, nk, end, dim, row_bytes);
        }
      }
      run = run_end;
    }
  }

  for (size_t r = 0; r < rows; ++r) {
    float* o = st.o + r * dp;
    if (fold_scales) {
      const VF v_scale = hn::Set(df, p.v_scale[st.kv_head[r] * p.v_scale_stride]);
      for (size_t d = 0; d < dp; d += kLanes) hn::Store(hn::Mul(hn::Load(df, o + d), v_scale), df, o + d);
    }
    if constexpr (Rows::kParts == 2) {  // back to the natural order, in the (now unused) K tile
      FromPairOrder(o, dim, st.k);
      o = st.k;
    }
    if (item.partial < 0) {
      FinalizeRow(p, PlaceOf(p, item.seq, item.row_begin + static_cast<int64_t>(r)), st.max[r], st.sum[r], o, dim);
    } else {
      float* state = partial + item.partial + static_cast<int64_t>(r) * partial_row_floats(p.head_dim);
      state[0] = st.max[r];
      state[1] = st.sum[r];
      std::memcpy(state + 2, o, dim * sizeof(float));
    }
  }
}

// Decode rows (one query token, so every row of a kv head sees the same keys) of a bf16 or quantised cache
// read K and V in place, in blocks of 4 rows of one kv head: only when every kv head's run is whole blocks.
bool InPlaceFits(const rpa_problem& p, const WorkItem& item) {
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  const size_t dim = static_cast<size_t>(p.head_dim);
  const size_t vector_elements = p.kv_dtype == RPA_DTYPE_BF16 ? 2 * kLanes : kLanes;  // per Rows::Load
  return (p.kv_dtype == RPA_DTYPE_BF16 || is_quantised_dtype(p.kv_dtype)) &&
         p.query_start_loc[item.seq + 1] - p.query_start_loc[item.seq] == 1 && group % 4 == 0 &&
         item.row_begin % group == 0 && item.row_end % group == 0 && dim % vector_elements == 0 &&
         dim <= kMaxInPlaceDim;
}

// A quantised cache read in place: head_dim 128 compiled for, others at run time.
template <rpa_dtype kDtype>
void AttendCodes(const rpa_problem& p, const WorkItem& item, float* scratch, float* partial) {
  if (p.head_dim == 128) return AttendItemFor<128, CodeRows<kDtype>>(p, item, scratch, partial);
  AttendItemFor<0, CodeRows<kDtype>>(p, item, scratch, partial);
}

void AttendItem(const rpa_problem& p, const WorkItem& item, float* scratch, float* partial) {
  if (InPlaceFits(p, item)) {
    switch (p.kv_dtype) {
      case RPA_DTYPE_FP8_E4M3: return AttendCodes<RPA_DTYPE_FP8_E4M3>(p, item, scratch, partial);
      case RPA_DTYPE_FP8_E5M2: return AttendCodes<RPA_DTYPE_FP8_E5M2>(p, item, scratch, partial);
      case RPA_DTYPE_INT8: return AttendCodes<RPA_DTYPE_INT8>(p, item, scratch, partial);
      default: break;
    }
    switch (p.head_dim) {
      case 64: return AttendItemFor<64, Bf16Rows>(p, item, scratch, partial);
      case 128: return AttendItemFor<128, Bf16Rows>(p, item, scratch, partial);
      case 256: return AttendItemFor<256, Bf16Rows>(p, item, scratch, partial);
      default: return AttendItemFor<0, Bf16Rows>(p, item, scratch, partial);
    }
  }
  switch (p.head_dim) {
    case 64: return AttendItemFor<64, TileRows>(p, item, scratch, partial);
    case 80: return AttendItemFor<80, TileRows>(p, item, scratch, partial);
    case 96: return AttendItemFor<96, TileRows>(p, item, scratch, partial);
    case 128: return AttendItemFor<128, TileRows>(p, item, scratch, partial);
    case 256: return AttendItemFor<256, TileRows>(p, item, scratch, partial);
    default: return AttendItemFor<0, TileRows>(p, item, scratch, partial);
  }
}

// Combines the splits' states of each row by log-sum-exp, in split order, and writes the row.
void MergeSplits(const rpa_problem& p, const MergeGroup& group, const float* partial, float* scratch) {
  const DF df;
  const size_t dim = static_cast<size_t>(p.head_dim);
  const int64_t row_floats = partial_row_floats(p.head_dim);
  float* HWY_RESTRICT acc = scratch;
  for (int64_t r = 0; r < group.row_end - group.row_begin; ++r) {
    float top = kNegInf;
    for (int32_t split = 0; split < group.num_splits; ++split)
      top = std::max(top, partial[group.partial + split * group.partial_stride + r * row_floats]);
    std::fill(acc, acc + RoundUp(dim, kLanes), 0.0f);
    float sum = 0.0f;
    for (int32_t split = 0; top != kNegInf && split < group.num_splits; ++split) {
      const float* state = partial + group.partial + split * group.partial_stride + r * row_floats;
      if (state[0] == kNegInf) continue;  // this split saw none of the row's keys
      const float weight = std::exp(state[0] - top);
      sum += state[1] * weight;
      const VF vweight = hn::Set(df, weight);
      size_t d = 0;
      for (; d + kLanes <= dim; d += kLanes)
        hn::Store(hn::MulAdd(vweight, hn::LoadU(df, state + 2 + d), hn::Load(df, acc + d)), df, acc + d);
      for (; d < dim; ++d) acc[d] += weight * state[2 + d];
    }
    FinalizeRow(p, PlaceOf(p, group.seq, group.row_begin + r), top, sum, acc, dim);
  }
}

int64_t TargetBits() { return HWY_TARGET; }

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace rpa::simd {

HWY_EXPORT(AttendItem);
HWY_EXPORT(MergeSplits);
HWY_EXPORT(TargetBits);

void attend_item(const rpa_problem& problem, const WorkItem& item, float* scratch, float* partial) {
  HWY_DYNAMIC_DISPATCH(AttendItem)(problem, item, scratch, partial);
}

void merge_splits(const rpa_problem& problem, const MergeGroup& group, const float* partial, float* scratch) {
  HWY_DYNAMIC_DISPATCH(MergeSplits)(problem, group, partial, scratch);
}

bool cpu_supported() { return (hwy::SupportedTargets() & HWY_TARGETS) != 0; }

const char* active_target() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetBits)()); }

}  // namespace rpa::simd
#endif  // HWY_ONCE
