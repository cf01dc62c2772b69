// The operands of the tile path (simd/tiles.h) from f32 rows: each value as a sum of bf16 parts, hi =
// bf16(x) and lo = bf16(x - hi), so that 16-bit inputs enter the bf16 products exactly (an f16 value has
// 11 significant bits: hi takes 8, lo the rest; a bf16 value is its hi part) and the softmax weights P
// (SoftmaxColumns) with a relative error of at most 2^-17. The tile path computes S^T = K.Q^T and
// O^T += V^T.P^T: PackRows writes K as it is (A), PackRowsAsColumns Q^T (B), PackPairsAsColumns V^T (A).
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

// Row-major A operand: out[i * ld_out + d] = part `part` of x[i][d] (f32, row stride ldx), i < rows,
// d < width (a multiple of kLanes).
HWY_INLINE void PackRows(const float* HWY_RESTRICT x, size_t ldx, size_t rows, size_t width, size_t part,
                         uint16_t* HWY_RESTRICT out, size_t ld_out) {
  const DF df;
  for (size_t i = 0; i < rows; ++i)
    for (size_t d = 0; d < width; d += kLanes) StoreBf16(PartBits(hn::Load(df, x + i * ldx + d), part), out + i * ld_out + d);
}

// B operand of a product with x^T (x f32, rows x depth, row stride ldx; rows a multiple of kLanes, depth
// even): B[d][i] = x[i][d] in the pair layout, i.e. the 32-bit word pairs[(d / 2) * ld_out + i] holds parts
// `part` of x[i][d] (low half) and x[i][d + 1] (high half) for even d. Gathers kLanes rows' elements from
// x (in cache) and writes whole vectors: a scatter to words ld_out apart would touch a line per lane.
HWY_INLINE void PackRowsAsColumns(const float* HWY_RESTRICT x, size_t ldx, size_t rows, size_t depth, size_t part,
                                  uint32_t* HWY_RESTRICT pairs, size_t ld_out) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const auto offsets = hn::Mul(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(ldx)));
  for (size_t i = 0; i < rows; i += kLanes)
    for (size_t d = 0; d < depth; d += 2) {
      const VU even = PartBits(hn::GatherIndex(df, x + i * ldx + d, offsets), part);
      const VU odd = PartBits(hn::GatherIndex(df, x + i * ldx + d + 1, offsets), part);
      hn::StoreU(hn::Or(even, hn::ShiftLeft<16>(odd)), hn::RebindToUnsigned<DF>(), pairs + d / 2 * ld_out + i);
    }
}

// The tile path pairs keys j and j + kPairSpan of each block of 2 * kPairSpan keys along the products'
// depth (P's rows, V's pair rows), not adjacent keys: a vector of weights and the vector kPairSpan keys
// on then fill whole words of P's parts (SoftmaxTileRow) without a lane shuffle. Any pairing gives the
// same products as long as P and V agree. PairRow and PairHalf: where key j lies.
constexpr size_t kPairSpan = 16;
constexpr size_t PairRow(size_t j) { return j / (2 * kPairSpan) * kPairSpan + j % kPairSpan; }
constexpr size_t PairHalf(size_t j) { return j % (2 * kPairSpan) / kPairSpan; }

// B operand of a product P.x over the keys (x f32, keys x width, row stride ldx; keys a multiple of
// 2 * kPairSpan, width a multiple of kLanes): the 32-bit word pairs[PairRow(j) * ld_out + n] holds part
// `part` of x[j][n] in its PairHalf(j) half.
HWY_INLINE void PackKeyPairs(const float* HWY_RESTRICT x, size_t ldx, size_t keys, size_t width, size_t part,
                             uint32_t* HWY_RESTRICT pairs, size_t ld_out) {
  const DF df;
  for (size_t j = 0; j < keys; j += 2 * kPairSpan)
    for (size_t k = j; k < j + kPairSpan; ++k)
      for (size_t n = 0; n < width; n += kLanes) {
        const VU first = PartBits(hn::Load(df, x + k * ldx + n), part);
        const VU second = PartBits(hn::Load(df, x + (k + kPairSpan) * ldx + n), part);
        hn::StoreU(hn::Or(first, hn::ShiftLeft<16>(second)), hn::RebindToUnsigned<DF>(), pairs + PairRow(k) * ld_out + n);
      }
}

// Row j of x (f32, width a multiple of kLanes) back from PackKeyPairs's `parts` parts (part p at
// pairs + p * part_stride words): the sum of its parts.
HWY_INLINE void UnpackKeyPairs(const uint32_t* HWY_RESTRICT pairs, size_t ld, size_t parts, size_t part_stride, size_t j,
                               size_t width, float* HWY_RESTRICT row) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  for (size_t n = 0; n < width; n += kLanes) {
    VF value = hn::Zero(df);
    for (size_t part = 0; part < parts; ++part) {
      const VU words = hn::LoadU(du, pairs + part * part_stride + PairRow(j) * ld + n);
      value = hn::Add(value, hn::BitCast(df, PairHalf(j) ? hn::And(words, hn::Set(du, 0xffff0000u)) : hn::ShiftLeft<16>(words)));
    }
    hn::Store(value, df, row + n);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#endif  // RPA_SIMD_PACK_INL_H_
