// The simd micro-kernels (simd/*-inl.h) against scalar twins, on every Highway target compiled here and
// supported by this CPU: conversions against core/dtype.h bit for bit, the score, P.V and online-softmax
// steps against plain double loops. Sizes around vector multiples, misaligned sources and destinations,
// and NaN in every element a kernel must not read or must mask.
#define BOOST_TEST_MODULE simd_kernels
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <hwy/aligned_allocator.h>
#include <hwy/targets.h>

#include "core/dtype.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/simd/test_kernels.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "simd/convert-inl.h"
#include "simd/pack-inl.h"
#include "simd/pv-inl.h"
#include "simd/rows-inl.h"
#include "simd/score-inl.h"
#include "simd/softmax-inl.h"

#ifndef RPA_TEST_KERNELS_ONCE
#define RPA_TEST_KERNELS_ONCE
namespace rpa::simd::testing {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Equal bits, or both NaN (vector and scalar conversions may quiet a NaN differently).
inline bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits_from_float(a) == bits_from_float(b); }

// Values of every kind a row may hold: normal, subnormal, zero of both signs, ties of the 16-bit
// roundings (to an even and to an odd neighbour), infinities, NaN.
inline std::vector<float> awkward_values(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const float specials[] = {0.0f, -0.0f, 1e-40f, -3e-39f, 1.0f + 1.0f / 256, -(1.0f + 3.0f / 256), 65520.0f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), kNaN,
                            6e-8f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048};
  std::vector<float> values(n);
  for (float& x : values) x = rng() % 4 == 0 ? specials[rng() % std::size(specials)] : normal(rng);
  return values;
}

// Dimensions around multiples of `lanes`.
inline std::vector<size_t> dims_around(size_t lanes) {
  return {1, lanes - 1, lanes, lanes + 1, 2 * lanes - 1, 2 * lanes, 3 * lanes + 2, 4 * lanes, 8 * lanes + 5};
}

}  // namespace rpa::simd::testing
#endif

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace {

using testing::kNaN;
using testing::same;

// LoadRow and LoadKvRow against load_float / load_kv: every element of `dim` from a source misaligned by
// 0 or 1 elements and followed by NaN, zeros up to the padded width.
void TestLoads(const std::string& target) {
  const std::vector<float> values = testing::awkward_values(1024, 1);
  for (rpa_dtype dtype : {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16, RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2,
                          RPA_DTYPE_INT8})
    for (size_t dim : testing::dims_around(kLanes))
      for (size_t offset : {0, 1}) {
        const size_t size = static_cast<size_t>(dtype_size(dtype));
        std::vector<uint8_t> bytes((offset + dim + 2 * kLanes) * size);
        for (size_t i = 0; i < dim + 2 * kLanes; ++i) {
          const int64_t at = static_cast<int64_t>(offset + i);
          if (is_quantised_dtype(dtype)) bytes[offset + i] = static_cast<uint8_t>(i < dim ? 37 * i + 11 : 0x7f);
          else store_float(bytes.data(), dtype, at, i < dim ? values[i % values.size()] : kNaN);
        }
        const void* src = bytes.data() + offset * size;
        const size_t padded = RoundUp(dim, kLanes);
        auto dst = hwy::AllocateAligned<float>(padded);
        std::fill(dst.get(), dst.get() + padded, kNaN);
        const float scale = is_quantised_dtype(dtype) ? 0.375f : 1.0f;
        LoadKvRow(src, dtype, dim, padded, scale, dst.get());
        size_t bad = 0;
        for (size_t i = 0; i < padded; ++i) {
          const float want = i < dim ? load_kv(src, dtype, static_cast<int64_t>(i), scale) : 0.0f;
          if (!same(dst[i], want)) ++bad;
        }
        BOOST_CHECK_MESSAGE(bad == 0, target << " LoadKvRow dtype " << dtype << " dim " << dim << " offset " << offset
                                             << ": " << bad << " elements differ");
      }
}

// DecodeCodes against code_to_float for all 256 codes of each 8-bit format.
void TestAllCodes(const std::string& target) {
  uint8_t codes[256 + kLanes];
  for (size_t i = 0; i < 256 + kLanes; ++i) codes[i] = static_cast<uint8_t>(i);
  HWY_ALIGN float lanes[kLanes];
  size_t bad = 0;
  for (size_t c = 0; c < 256; c += kLanes) {
    hn::Store(DecodeCodes<RPA_DTYPE_FP8_E4M3>(codes + c), DF(), lanes);
    for (size_t i = 0; i < kLanes; ++i) bad += !same(lanes[i], code_to_float(RPA_DTYPE_FP8_E4M3, codes[c + i]));
    hn::Store(DecodeCodes<RPA_DTYPE_FP8_E5M2>(codes + c), DF(), lanes);
    for (size_t i = 0; i < kLanes; ++i) bad += !same(lanes[i], code_to_float(RPA_DTYPE_FP8_E5M2, codes[c + i]));
    hn::Store(DecodeCodes<RPA_DTYPE_INT8>(codes + c), DF(), lanes);
    for (size_t i = 0; i < kLanes; ++i) bad += !same(lanes[i], code_to_float(RPA_DTYPE_INT8, codes[c + i]));
  }
  BOOST_CHECK_MESSAGE(bad == 0, target << " DecodeCodes: " << bad << " codes differ");
}

// StoreRow against store_float of src * factor, bit for bit (round to nearest even, NaN quiet), into a
// misaligned destination whose bytes past `dim` must stay untouched.
void TestStores(const std::string& target) {
  const std::vector<float> values = testing::awkward_values(1024, 2);
  for (rpa_dtype dtype : {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16})
    for (size_t dim : testing::dims_around(kLanes))
      for (size_t offset : {0, 1})
        for (float factor : {1.0f, 0.7f}) {
          const size_t size = static_cast<size_t>(dtype_size(dtype));
          auto src = hwy::AllocateAligned<float>(RoundUp(dim, kLanes));
          for (size_t i = 0; i < dim; ++i) src[i] = values[(i * 7 + offset) % values.size()];
          std::vector<uint8_t> got((offset + dim + kLanes) * size, 0xA5), want = got;
          StoreRow(src.get(), factor, dim, got.data() + offset * size, dtype);
          for (size_t i = 0; i < dim; ++i) store_float(want.data() + offset * size, dtype, static_cast<int64_t>(i), src[i] * factor);
          size_t bad = 0;
          for (size_t i = 0; i < offset + dim + kLanes; ++i) {
            const float a = load_float(got.data(), dtype, static_cast<int64_t>(i)), b = load_float(want.data(), dtype, static_cast<int64_t>(i));
            const bool nan_both = i >= offset && i < offset + dim && std::isnan(a) && std::isnan(b);
            if (!nan_both && std::memcmp(got.data() + i * size, want.data() + i * size, size) != 0) ++bad;
          }
          BOOST_CHECK_MESSAGE(bad == 0, target << " StoreRow dtype " << dtype << " dim " << dim << " offset " << offset
                                               << " factor " << factor << ": " << bad << " elements differ");
        }
}

// Bf16Rows delivers each 2 * kLanes block as its even then its odd elements; ToPairOrder puts a
// converted row in that order and FromPairOrder takes it back.
void TestPairOrder(const std::string& target) {
  const size_t dim = 4 * kLanes;
  std::vector<uint16_t> row(dim);
  auto natural = hwy::AllocateAligned<float>(dim), paired = hwy::AllocateAligned<float>(dim),
       back = hwy::AllocateAligned<float>(dim);
  for (size_t i = 0; i < dim; ++i) {
    row[i] = float_to_bf16(static_cast<float>(i) - 7.5f);
    natural[i] = paired[i] = bf16_to_float(row[i]);
  }
  ToPairOrder(paired.get(), dim);
  Bf16Rows rows;
  rows.row[0] = row.data();
  size_t bad = 0;
  for (size_t d = 0; d < dim; d += 2 * kLanes) {
    VF parts[2];
    rows.Load(0, d, parts);
    HWY_ALIGN float lanes[2 * kLanes];
    hn::Store(parts[0], DF(), lanes);
    hn::Store(parts[1], DF(), lanes + kLanes);
    for (size_t i = 0; i < 2 * kLanes; ++i) bad += lanes[i] != paired[d + i];
  }
  FromPairOrder(paired.get(), dim, back.get());
  for (size_t i = 0; i < dim; ++i) bad += back[i] != natural[i];
  BOOST_CHECK_MESSAGE(bad == 0, target << " pair order: " << bad << " elements differ");
}

double ScalarDot(const float* a, const float* b, size_t n) {
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += static_cast<double>(a[i]) * b[i];
  return total;
}

// ScoreBlock of 1 and 4 rows against double dot products, head dims around vector multiples (the
// padding of queries and keys is zero, as the kernels keep it).
void TestScores(const std::string& target) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (size_t dim : testing::dims_around(kLanes)) {
    const size_t dp = RoundUp(dim, kLanes);
    auto q = hwy::AllocateAligned<float>(4 * dp), k = hwy::AllocateAligned<float>(kTile * dp);
    for (size_t i = 0; i < 4 * dp; ++i) q[i] = i % dp < dim ? normal(rng) : 0.0f;
    for (size_t i = 0; i < kTile * dp; ++i) k[i] = i % dp < dim ? normal(rng) : 0.0f;
    const TileRows rows{k.get(), dp};
    std::vector<float> s(4 * kTile, kNaN), s1(kTile, kNaN);
    for (size_t j = 0; j < kTile; j += kLanes / 4) ScoreBlock<4>(q.get(), rows, j, dp, s.data() + j);
    for (size_t j = 0; j < kTile; j += kLanes) ScoreBlock<1>(q.get() + dp, rows, j, dp, s1.data() + j);
    double worst = 0;
    for (size_t r = 0; r < 4; ++r)
      for (size_t j = 0; j < kTile; ++j) {
        const double want = ScalarDot(q.get() + r * dp, k.get() + j * dp, dim);
        worst = std::max(worst, std::abs(s[r * kTile + j] - want) / std::sqrt(double(dim)));
        if (r == 1) worst = std::max(worst, std::abs(s1[j] - want) / std::sqrt(double(dim)));
      }
    BOOST_CHECK_MESSAGE(worst < 1e-5, target << " ScoreBlock dim " << dim << ": error " << worst);
  }
}

// AccumulateRows over keys [j0, j1) against a double loop; V rows outside the range and every
// probability outside it are NaN, which must not reach the output.
template <size_t kRows, class Layout>
void TestAccumulate(const std::string& target, const char* name) {
  std::mt19937 rng(4);
  std::normal_distribution<float> normal;
  for (size_t dim : testing::dims_around(kLanes)) {
    const size_t dp = RoundUp(dim, kLanes);
    for (auto [j0, j1] : {std::pair<size_t, size_t>{0, kTile}, {3, kTile - 5}, {kTile - 1, kTile}}) {
      auto v = hwy::AllocateAligned<float>(kTile * dp), o = hwy::AllocateAligned<float>(kRows * dp);
      std::vector<float> p(4 * kTile, kNaN);
      for (size_t j = 0; j < kTile; ++j)
        for (size_t d = 0; d < dp; ++d) v[j * dp + d] = j < j0 || j >= j1 ? kNaN : d < dim ? normal(rng) : 0.0f;
      for (size_t r = 0; r < kRows; ++r)
        for (size_t j = j0; j < j1; ++j) p[Layout::Index(r, j)] = std::abs(normal(rng));
      for (size_t i = 0; i < kRows * dp; ++i) o[i] = normal(rng);
      std::vector<double> want(o.get(), o.get() + kRows * dp);
      for (size_t r = 0; r < kRows; ++r)
        for (size_t j = j0; j < j1; ++j)
          for (size_t d = 0; d < dp; ++d) want[r * dp + d] += double(p[Layout::Index(r, j)]) * v[j * dp + d];
      AccumulateRows<kRows, Layout>(p.data(), TileRows{v.get(), dp}, dp, j0, j1, o.get());
      double worst = 0;
      for (size_t i = 0; i < kRows * dp; ++i) worst = std::max(worst, std::isnan(o[i]) ? INFINITY : std::abs(o[i] - want[i]));
      BOOST_CHECK_MESSAGE(worst < 2e-5, target << " AccumulateRows<" << kRows << ", " << name << "> dim " << dim
                                               << " keys [" << j0 << ", " << j1 << "): error " << worst);
    }
  }
}

// Two tiles through SoftmaxRow against a double online softmax: soft cap, masked keys holding NaN, and
// the output rescaled when the second tile raises the max.
void TestSoftmax(const std::string& target) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  const size_t dp = 2 * kLanes;
  for (double cap : {0.0, 5.0}) {
      float max = kNegInf, sum = 0.0f;
      auto o = hwy::AllocateAligned<float>(dp);
      std::fill(o.get(), o.get() + dp, 0.0f);
      double want_max = -INFINITY, want_sum = 0, want_o = 0;  // every output element is sum p_j * 1
      const size_t ranges[2][2] = {{5, kTile - 3}, {0, kTile}};
      for (int tile = 0; tile < 2; ++tile) {
        const size_t a = ranges[tile][0], b = ranges[tile][1];
        auto s = hwy::AllocateAligned<float>(kTile);
        for (size_t j = 0; j < kTile; ++j) s[j] = j < a || j >= b ? kNaN : normal(rng) + 8.0f * tile;
        std::vector<double> score(kTile);
        double tile_max = -INFINITY;
        for (size_t j = a; j < b; ++j) {
          score[j] = s[j];
          if (cap > 0) score[j] = cap * std::tanh(score[j] / cap);
          tile_max = std::max(tile_max, score[j]);
        }
        const double new_max = std::max(want_max, tile_max);
        want_sum *= std::exp(want_max - new_max);
        want_o *= std::exp(want_max - new_max);
        for (size_t j = a; j < b; ++j) {
          want_sum += std::exp(score[j] - new_max);
          want_o += std::exp(score[j] - new_max);
        }
        want_max = new_max;
        SoftmaxRow(s.get(), 0, kTile, a, b, cap, max, sum, o.get(), dp);
        // The probabilities left in s feed P.V: exactly 0 where masked.
        for (size_t d = 0; d < dp; ++d)
          for (size_t j = 0; j < kTile; ++j) o[d] += s[j];
        for (size_t j = 0; j < kTile; ++j)
          if ((j < a || j >= b) && s[j] != 0.0f) BOOST_ERROR(target << " SoftmaxRow: masked key " << j << " is " << s[j]);
      }
      BOOST_CHECK_MESSAGE(std::abs(max - want_max) < 1e-5 && std::abs(sum / want_sum - 1) < 1e-5,
                          target << " SoftmaxRow cap " << cap << ": max " << max << " vs " << want_max
                                 << ", sum " << sum << " vs " << want_sum);
      for (size_t d = 0; d < dp; ++d)
        BOOST_CHECK_MESSAGE(std::abs(o[d] / want_o - 1) < 1e-5, target << " SoftmaxRow output " << o[d] << " vs " << want_o);
    }
}

// The bf16 parts against float_to_bf16: part 0 is bf16(x), part 1 bf16(x - part 0); for an f16 value
// the two parts sum to it exactly.
uint16_t PartOf(float x, size_t part) {
  const uint16_t hi = float_to_bf16(x);
  return part == 0 ? hi : float_to_bf16(x - bf16_to_float(hi));
}

// PackRows, PackRowsAsColumns and PackKeyPairs against their layouts, element by element, and
// UnpackKeyPairs back.
void TestPacking(const std::string& target) {
  std::mt19937 rng(6);
  std::normal_distribution<float> normal;
  constexpr size_t rows = 4 * kPairSpan, width = 4 * kLanes, ld = rows + 8, ld_natural = width + 8;
  auto x = hwy::AllocateAligned<float>(rows * width);
  for (size_t i = 0; i < rows * width; ++i) x[i] = f16_to_float(float_to_f16(normal(rng)));
  size_t bad = 0, inexact = 0;
  for (size_t part = 0; part < 2; ++part) {
    std::vector<uint16_t> natural(rows * ld_natural);
    std::vector<uint32_t> columns(width / 2 * ld), pairs(rows / 2 * (width + 8));
    PackRows(x.get(), width, rows, width, part, natural.data(), ld_natural);
    PackRowsAsColumns(x.get(), width, rows, width, part, columns.data(), ld);
    PackKeyPairs(x.get(), width, rows, width, part, pairs.data(), width + 8);
    for (size_t i = 0; i < rows; ++i)
      for (size_t d = 0; d < width; ++d) {
        const uint16_t want = PartOf(x[i * width + d], part);
        bad += natural[i * ld_natural + d] != want;
        bad += static_cast<uint16_t>(columns[d / 2 * ld + i] >> (16 * (d % 2))) != want;
        bad += static_cast<uint16_t>(pairs[PairRow(i) * (width + 8) + d] >> (16 * PairHalf(i))) != want;
        if (part == 1) inexact += bf16_to_float(PartOf(x[i * width + d], 0)) + bf16_to_float(want) != x[i * width + d];
      }
  }
  BOOST_CHECK_MESSAGE(bad == 0, target << " packing: " << bad << " elements differ");
  // Both parts of every row back from PackKeyPairs: the f16 values exactly.
  std::vector<uint32_t> both(2 * rows / 2 * width);
  for (size_t part = 0; part < 2; ++part) PackKeyPairs(x.get(), width, rows, width, part, both.data() + part * rows / 2 * width, width);
  auto row = hwy::AllocateAligned<float>(width);
  for (size_t i = 0; i < rows; ++i) {
    UnpackKeyPairs(both.data(), width, 2, rows / 2 * width, i, width, row.get());
    for (size_t d = 0; d < width; ++d) bad += row[d] != x[i * width + d];
  }
  BOOST_CHECK_MESSAGE(bad == 0, target << " UnpackKeyPairs: " << bad << " elements differ");
  BOOST_CHECK_MESSAGE(inexact == 0, target << " packing: " << inexact << " f16 values not equal to hi + lo");
}

// Pow2 against std::exp2: within 2^-21 relative from 2^-126 to 2^127 (integers, halves and points
// between), exactly 0 below 2^-127, and no more than 2^-126 in between.
void TestPow2(const std::string& target) {
  const DF df;
  auto x = hwy::AllocateAligned<float>(kLanes), y = hwy::AllocateAligned<float>(kLanes);
  size_t bad = 0, checked = 0;
  for (double start = -140.0; start < 127.0; start += 0.0625 * kLanes) {
    for (size_t i = 0; i < kLanes; ++i) x[i] = static_cast<float>(std::min(127.0, start + 0.0625 * i + 0.003 * (i % 3)));
    hn::Store(Pow2(hn::Load(df, x.get())), df, y.get());
    for (size_t i = 0; i < kLanes; ++i, ++checked) {
      const double want = std::exp2(static_cast<double>(x[i]));
      if (x[i] >= -126.0f) bad += !(std::abs(y[i] - want) <= std::ldexp(want, -21));
      else if (x[i] <= -127.0f) bad += y[i] != 0.0f || std::signbit(y[i]);
      else bad += !(y[i] >= 0.0f && y[i] <= 0x1p-126f);
    }
  }
  BOOST_CHECK_MESSAGE(checked > 4000 && bad == 0, target << " Pow2: " << bad << " of " << checked << " values off");
}

// SoftmaxTileRow against a double online softmax in powers of 2: rows with a first key (max -inf
// before), rows whose max must move (more than kLazyRescale above the old one) or may stay, visible
// ranges inside and across vectors and blocks, scale and cap, NaN in masked scores; the parts, where
// PairRow and PairHalf put them, sum to each weight 2^(x - max) within 2^-16 and are 0 where masked. A
// row with a visible NaN score takes the exact path: that key's weight 0 or NaN, the others as usual.
void TestSoftmaxTileRow(const std::string& target) {
  constexpr double kLog2 = 1.4426950408889634;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  constexpr size_t keys = 4 * kPairSpan;
  auto s = hwy::AllocateAligned<float>(keys);
  std::vector<uint32_t> hi(keys / 2), lo(keys / 2);
  size_t bad = 0, moved = 0, stayed = 0;
  const auto part = [&](const std::vector<uint32_t>& words, size_t j) {
    return bf16_to_float(static_cast<uint16_t>(words[PairRow(j)] >> (16 * PairHalf(j))));
  };
  for (int trial = 0; trial < 60; ++trial)
    for (double cap : {0.0, 4.0})
      for (bool keep : {false, true}) {
        const size_t a = rng() % keys, b = a + 1 + rng() % (keys - a);
        float max = trial % 3 == 0 ? kNegInf : trial % 3 == 1 ? -20.0f + normal(rng) : normal(rng);
        float sum = max == kNegInf ? 0.0f : 1.5f;
        for (size_t j = 0; j < keys; ++j) s[j] = j < a || j >= b ? kNaN : normal(rng);
        const size_t nan_key = trial % 10 == 9 ? a + rng() % (b - a) : keys;
        if (nan_key < keys) s[nan_key] = kNaN;
        const std::vector<float> scores(s.get(), s.get() + keys);
        const float old_max = max, old_sum = sum;
        const float alpha = SoftmaxTileRow(s.get(), keys, a, b, 0.5f, cap, max, sum, hi.data(), lo.data(), keep);
        double step_max = -INFINITY;
        std::vector<double> x(keys, -INFINITY);
        for (size_t j = a; j < b; ++j) {
          if (j == nan_key) continue;
          double score = 0.5 * scores[j];
          if (cap > 0) score = cap * std::tanh(score / cap);
          x[j] = kLog2 * score;
          step_max = std::max(step_max, x[j]);
        }
        if (nan_key < keys) {  // the exact path (Exp): the NaN key's weight 0 or NaN, the others as usual
          const float nan_weight = part(hi, nan_key) + part(lo, nan_key);
          bad += !(std::isnan(nan_weight) || nan_weight == 0.0f);
          for (size_t j = 0; j < keys; ++j)
            if (j != nan_key) {
              const double want = std::isinf(x[j]) ? 0.0 : std::exp2(x[j] - max);
              bad += std::abs(double(part(hi, j)) + part(lo, j) - want) > std::ldexp(want, -16) + 1e-30;
            }
          continue;
        }
        // The max moves to the step's max when that is more than kLazyRescale above it, else may stay.
        const bool must_move = old_max == kNegInf || step_max > old_max + kLazyRescale + 1e-4;
        const bool at_step_max = std::abs(max - step_max) <= 1e-6 * std::abs(step_max);
        bad += must_move ? !at_step_max : !(max == old_max || at_step_max);
        bad += max < step_max - kLazyRescale - 1e-4;
        moved += max != old_max;
        stayed += max == old_max;
        const double factor = old_max == max ? 1.0 : std::exp2(double(old_max) - max);
        double total = old_sum * factor;
        for (size_t j = 0; j < keys; ++j) {
          const double want = std::isinf(x[j]) ? 0.0 : std::exp2(x[j] - max);
          total += want;
          const double got = double(part(hi, j)) + part(lo, j);
          bad += std::abs(got - want) > std::ldexp(want, -16) + 1e-30;
          if (keep && j >= a && j < b) bad += !(std::abs(s[j] - want) <= 1e-6 * want + 1e-30);
        }
        bad += std::abs(alpha - factor) > 1e-6 * factor;
        bad += std::abs(sum - total) > 1e-5 * total;
      }
  BOOST_CHECK_MESSAGE(bad == 0, target << " SoftmaxTileRow: " << bad << " values off");
  BOOST_CHECK_MESSAGE(moved > 20 && stayed > 20, target << " SoftmaxTileRow: the max moved " << moved << " times, stayed " << stayed);
}

}  // namespace

void TestAllKernels() {
  const std::string target = hwy::TargetName(HWY_TARGET);
  BOOST_TEST_MESSAGE("target " << target);
  TestLoads(target);
  TestAllCodes(target);
  TestStores(target);
  TestPairOrder(target);
  TestScores(target);
  TestAccumulate<1, RowMajor>(target, "RowMajor");
  TestAccumulate<4, RowMajor>(target, "RowMajor");
  TestAccumulate<4, Grouped>(target, "Grouped");
  TestSoftmax(target);
  TestPacking(target);
  TestPow2(target);
  TestSoftmaxTileRow(target);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace rpa::simd {
HWY_EXPORT(TestAllKernels);
}  // namespace rpa::simd

BOOST_AUTO_TEST_CASE(kernels_match_their_scalar_twins_on_every_target) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  BOOST_REQUIRE(!targets.empty());
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    HWY_DYNAMIC_DISPATCH(rpa::simd::TestAllKernels)();
  }
  hwy::SetSupportedTargetsForTest(0);
}
#endif  // HWY_ONCE
