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
// Prefill items of 16-bit queries and KV take the tile path instead when the backend has a tile product
// (AMX, simd/tiles.h): AttendItemTiles below.
//
// This file holds the item drivers and the exported entry points; the micro-kernels they call live in
// per-target modules, each tested against scalar twins (tests/simd/test_kernels.cc): convert-inl.h
// (dtype conversions, bf16 rounding), rows-inl.h (K/V row access), score-inl.h (Q.K^T), pv-inl.h (P.V),
// softmax-inl.h (the online-softmax steps), pack-inl.h (the tile path's bf16 parts and pair layouts).
// Compiled once per Highway target through foreach_target; only AttendItem, MergeSplits and
// TargetBits are exported and reached through HWY_DYNAMIC_DISPATCH (attention.h).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "core/dtype.h"
#include "simd/attention.h"
#include "simd/tiles.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd/attention.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include "simd/convert-inl.h"
#include "simd/pack-inl.h"
#include "simd/pv-inl.h"
#include "simd/rows-inl.h"
#include "simd/score-inl.h"
#include "simd/softmax-inl.h"

HWY_BEFORE_NAMESPACE();
namespace rpa::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The widest head_dim whose K and V are read in place (Bf16Rows, CodeRows).
constexpr size_t kMaxInPlaceDim = 256;

const void* Element(const void* base, rpa_dtype dtype, int64_t index) {
  return static_cast<const char*>(base) + index * dtype_size(dtype);
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
  // Visible keys of each row, [first, end), and its kv head; rows of either path's items.
  int64_t first_key[std::max(kMaxRows, kTileRows)], end_key[std::max(kMaxRows, kTileRows)];
  int64_t kv_head[std::max(kMaxRows, kTileRows)];
};


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
    if (a[r] < b[r]) SoftmaxRow(st.s + (r0 + r) * kTile, j0, j1, a[r], b[r], st.p.logits_soft_cap, st.max[r0 + r],
                 st.sum[r0 + r], st.o + (r0 + r) * st.dp, st.dp);

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
  for (size_t r = 0; r < 4; ++r)
    FoldRow(st.max[r0 + r], st.sum[r0 + r], st.o + (r0 + r) * st.dp, st.dp, new_max[r], lanes[r * kKeys]);
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
// Fills st's per-row kv heads and visible key ranges; returns the keys [begin, end) some row sees.
std::pair<int64_t, int64_t> RowRanges(ItemState& st, const WorkItem& item) {
  const rpa_problem& p = st.p;
  int64_t begin = item.key_end, end = item.key_begin;
  for (size_t r = 0; r < st.rows; ++r) {
    const RowPlace place = PlaceOf(p, item.seq, item.row_begin + static_cast<int64_t>(r));
    st.kv_head[r] = place.kv_head;
    const int64_t window_start = p.sliding_window > 0 ? place.pos - p.sliding_window + 1 : 0;
    st.first_key[r] = std::max(item.key_begin, window_start);
    st.end_key[r] = std::min(item.key_end, place.pos + 1);
    if (st.first_key[r] < st.end_key[r]) {
      begin = std::min(begin, st.first_key[r]);
      end = std::max(end, st.end_key[r]);
    }
  }
  return {begin, end};
}

// Row r's query in f32 at q[0, padded) (zeros past dim).
HWY_INLINE void LoadQuery(const rpa_problem& p, const WorkItem& item, size_t r, size_t dim, size_t padded,
                          float* HWY_RESTRICT q) {
  const RowPlace place = PlaceOf(p, item.seq, item.row_begin + static_cast<int64_t>(r));
  LoadRow(Element(p.queries, p.query_dtype, place.token * p.query_token_stride + place.head * p.query_head_stride),
          p.query_dtype, dim, padded, q);
}

// Writes row r of a finished item: its output (FinalizeRow) or, for one split of a longer range, its
// running state into the partial buffer.
HWY_INLINE void FinishRow(const ItemState& st, const WorkItem& item, size_t r, const float* HWY_RESTRICT o,
                          float* HWY_RESTRICT partial) {
  const rpa_problem& p = st.p;
  const size_t dim = static_cast<size_t>(p.head_dim);
  if (item.partial < 0) {
    FinalizeRow(p, PlaceOf(p, item.seq, item.row_begin + static_cast<int64_t>(r)), st.max[r], st.sum[r], o, dim);
  } else {
    float* state = partial + item.partial + static_cast<int64_t>(r) * partial_row_floats(p.head_dim);
    state[0] = st.max[r];
    state[1] = st.sum[r];
    std::memcpy(state + 2, o, dim * sizeof(float));
  }
}

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
  const auto [begin, end] = RowRanges(st, item);
  for (size_t r = 0; r < rows; ++r) {
    float* q = st.q + r * dp;
    LoadQuery(p, item, r, dim, dp, q);
    float* o = st.o + r * dp;
    const VF q_scale = fold_scales ? hn::Mul(scale, hn::Set(df, p.k_scale[st.kv_head[r] * p.k_scale_stride])) : scale;
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
    FinishRow(st, item, r, o, partial);
  }
}

// The tile path: an item of rows of one kv head with 16-bit queries and KV (plan.h: item.pack), whose
// products run as bf16 tile products (simd/tiles.h: AMX, or its scalar twin in tests) on the parts of
// pack-inl.h: a bf16 input is one part, an f16 one two (exact), P two (hi + lo), so the products see the
// inputs exactly and P within 2^-17. S = Q.K^T and O += P.V in steps of kTileStep keys: Q (A, its parts
// packed once per item), K^T and V (B, packed once per call for the sequence and kv head by PackKv and
// read in place by every item), the online softmax row by row (SoftmaxTileRow) writing P's parts (A),
// the output accumulated in f32 in scratch and rescaled there. A step whose V holds Inf or NaN (the pack's
// flag) takes P.V in f32 instead, key by key over each row's visible keys only.

// Packs keys [job.key_begin, job.key_end) of a (sequence, kv head) for the tile path (plan.h: Pack): K^T
// and V in their parts, kTileStep keys at a time through f32 rows in scratch. Keys no row of the
// sequence sees are 0 (NaN there never enters a product); the flag of each step records whether its V
// holds Inf or NaN (the exponent field all ones).
void PackKv(const rpa_problem& p, const PackJob& job, const TileWork& tiles, float* HWY_RESTRICT scratch) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const Pack& pack = tiles.packs[job.pack];
  const PackLayout layout = pack_layout(p, pack.keys);
  const size_t width = static_cast<size_t>(layout.width), dim = static_cast<size_t>(p.head_dim);
  const size_t kv_parts = static_cast<size_t>(layout.kv_parts), step = static_cast<size_t>(kTileStep);
  const int64_t q_len = p.query_start_loc[pack.seq + 1] - p.query_start_loc[pack.seq];
  const int64_t context = p.context_lens[pack.seq], first_pos = context - q_len;
  const int64_t first_key = p.sliding_window > 0 ? std::max<int64_t>(0, first_pos - p.sliding_window + 1) : 0;
  const int32_t* table = p.block_tables + pack.seq * p.block_table_stride;
  uint32_t* HWY_RESTRICT k_pairs = reinterpret_cast<uint32_t*>(tiles.buffer + pack.offset);
  uint32_t* HWY_RESTRICT v_pairs = k_pairs + kv_parts * layout.part_elements / 2;
  float* HWY_RESTRICT k = scratch;
  float* HWY_RESTRICT v = scratch + step * width;
  const auto exponent = hn::Set(du, 0x7f800000u);
  for (int64_t t0 = job.key_begin; t0 < job.key_end; t0 += kTileStep) {
    auto top_exponent = hn::Zero(du);
    for (size_t j = 0; j < step; ++j) {
      const int64_t key = t0 + static_cast<int64_t>(j);
      if (key < first_key || key >= context) {
        std::fill(k + j * width, k + (j + 1) * width, 0.0f);
        std::fill(v + j * width, v + (j + 1) * width, 0.0f);
        continue;
      }
      const int64_t page = table[key / p.page_size], slot = key % p.page_size;
      LoadKvRow(Element(p.k.data, p.kv_dtype, pack.kv_head * p.k.head_stride + page * p.k.page_stride + slot * p.k.slot_stride),
                p.kv_dtype, dim, width, 1.0f, k + j * width);
      LoadKvRow(Element(p.v.data, p.kv_dtype, pack.kv_head * p.v.head_stride + page * p.v.page_stride + slot * p.v.slot_stride),
                p.kv_dtype, dim, width, 1.0f, v + j * width);
      for (size_t d = 0; d < width; d += kLanes)
        top_exponent = hn::Max(top_exponent, hn::And(hn::BitCast(du, hn::Load(df, v + j * width + d)), exponent));
    }
    const size_t column = static_cast<size_t>(t0 - pack.key_begin);
    for (size_t part = 0; part < kv_parts; ++part) {
      PackRowsAsColumns(k, width, step, width, part, k_pairs + part * layout.part_elements / 2 + column,
                        static_cast<size_t>(pack.keys));
      PackKeyPairs(v, width, step, width, part, v_pairs + part * layout.part_elements / 2 + column / 2 * width, width);
    }
    tiles.flags[pack.flags + static_cast<int64_t>(column / step)] = hn::GetLane(hn::MaxOfLanes(du, top_exponent)) == 0x7f800000u;
  }
}

void AttendItemTiles(const rpa_problem& p, const WorkItem& item, float* HWY_RESTRICT scratch,
                     float* HWY_RESTRICT partial, const TileWork& tiles) {
  const DF df;
  const Pack& pack = tiles.packs[item.pack];
  const PackLayout layout = pack_layout(p, pack.keys);
  const size_t dim = static_cast<size_t>(p.head_dim), width = static_cast<size_t>(layout.width);
  const size_t rows = static_cast<size_t>(item.row_end - item.row_begin), m = RoundUp(rows, kTileBlock);
  const size_t q_parts = p.query_dtype == RPA_DTYPE_F16 ? 2 : 1, kv_parts = static_cast<size_t>(layout.kv_parts);
  const size_t step = static_cast<size_t>(kTileStep), tile_rows = static_cast<size_t>(kTileRows);
  // Scratch (scratch_floats): Q's parts [q_parts][m][width] bf16, O [m][width], one step's V in f32
  // [kTileStep][width] (for the f32 P.V), S [m][kTileStep], P's parts [2][m][kTileStep] bf16, the running
  // max and sum, each row's visible keys within the step.
  uint16_t* HWY_RESTRICT q = reinterpret_cast<uint16_t*>(scratch);
  float* HWY_RESTRICT o = scratch + tile_rows * width;
  float* HWY_RESTRICT v = o + tile_rows * width;
  ItemState st{p, width, rows, nullptr, o, nullptr, v, v + step * width, nullptr, nullptr, {}, {}, {}};
  uint16_t* HWY_RESTRICT weights = reinterpret_cast<uint16_t*>(st.s + tile_rows * step);
  st.max = st.s + 2 * tile_rows * step;
  st.sum = st.max + tile_rows;
  int32_t* HWY_RESTRICT first = reinterpret_cast<int32_t*>(st.sum + tile_rows);
  int32_t* HWY_RESTRICT last = first + tile_rows;

  const auto [begin, end] = RowRanges(st, item);
  // The item's query rows and output rows are each touched once, mostly from DRAM: fetched all at once
  // first, the misses overlap (the output's lines fetched for writing stay in L2 until the rows end).
  for (size_t r = 0; r < rows; ++r) {
    const RowPlace place = PlaceOf(p, item.seq, item.row_begin + static_cast<int64_t>(r));
    Prefetch(Element(p.queries, p.query_dtype, place.token * p.query_token_stride + place.head * p.query_head_stride),
             dim * static_cast<size_t>(dtype_size(p.query_dtype)));
    if (item.partial < 0) {
      const char* out = static_cast<const char*>(
          Element(p.out, p.out_dtype, place.token * p.out_token_stride + place.head * p.out_head_stride));
      for (size_t offset = 0; offset < dim * static_cast<size_t>(dtype_size(p.out_dtype)); offset += 64)
        __builtin_prefetch(out + offset, 1, 2);
    }
  }
  // Q in f32, staged in O's place (rows past `rows` are 0, so their scores are 0 and unused), then its parts.
  std::fill(o + rows * width, o + m * width, 0.0f);
  for (size_t r = 0; r < rows; ++r) LoadQuery(p, item, r, dim, width, o + r * width);
  for (size_t part = 0; part < q_parts; ++part) PackRows(o, width, m, width, part, q + part * m * width, width);
  std::fill(o, o + m * width, 0.0f);
  std::fill(st.max, st.max + m, kNegInf);
  std::fill(st.sum, st.sum + m, 0.0f);
  for (size_t part = 0; part < 2; ++part)  // rows past `rows` keep weights 0; the others are written per step
    std::fill(weights + part * m * step + rows * step, weights + (part + 1) * m * step, uint16_t{0});

  const uint16_t* k_pairs = tiles.buffer + pack.offset;
  const uint16_t* v_pairs = k_pairs + kv_parts * static_cast<size_t>(layout.part_elements);
  for (int64_t t0 = begin / kTileStep * kTileStep; t0 < end; t0 += kTileStep) {
    const size_t column = static_cast<size_t>(t0 - pack.key_begin);
    bool seen = false;
    for (size_t r = 0; r < rows; ++r) {
      first[r] = static_cast<int32_t>(std::clamp<int64_t>(st.first_key[r] - t0, 0, kTileStep));
      last[r] = static_cast<int32_t>(std::clamp<int64_t>(st.end_key[r] - t0, 0, kTileStep));
      seen = seen || first[r] < last[r];
    }
    if (!seen) continue;  // causal or window bound: no row sees this step
    const bool finite_v = !tiles.flags[pack.flags + static_cast<int64_t>(column) / kTileStep];
    // Blocks of kTileBlock rows, each through S, its softmax and P.V before the next: a block's scores,
    // weights and output stay in L1 while the step's K and V serve the item's blocks from L2. A block's
    // products cover only the blocks of kTileBlock keys some row of it sees (the diagonal step's others
    // are masked for all its rows). The next block's S is issued before this block's softmax, so the
    // tile unit has products to run while the vector units compute the weights.
    constexpr size_t kBlocks = static_cast<size_t>(kTileRows) / kTileBlock;
    size_t active[kBlocks], key_begin[kBlocks], key_end[kBlocks], blocks = 0;
    for (size_t r0 = 0; r0 < rows; r0 += kTileBlock) {
      int32_t block_first = static_cast<int32_t>(kTileStep), block_last = 0;
      for (size_t r = r0; r < std::min(rows, r0 + kTileBlock); ++r)
        if (first[r] < last[r]) {
          block_first = std::min(block_first, first[r]);
          block_last = std::max(block_last, last[r]);
        }
      if (block_first >= block_last) continue;  // no row of the block sees this step
      active[blocks] = r0;
      key_begin[blocks] = static_cast<size_t>(block_first) / kTileBlock * kTileBlock;
      key_end[blocks++] = RoundUp(static_cast<size_t>(block_last), kTileBlock);
    }
    // S of block b. With an f16 operand (two parts), hi x hi is summed alone and the cross products (each
    // under 2^-8 of it) apart, in the f32 V buffer (free until the step's products are done), then added:
    // in one sum every part product rounds at the magnitude of the score, and for f16 x f16 at D 256 and
    // scores of about 20 that lost 2e-5 (test_simd_tiles' cases with larger keys).
    const auto scores = [&](size_t b) {
      const size_t r0 = active[b], j0 = key_begin[b], keys = key_end[b] - j0;
      const TileOperand q_hi{q + r0 * width, width}, k_hi{k_pairs + 2 * (column + j0), 2 * static_cast<size_t>(pack.keys)};
      float* HWY_RESTRICT s = st.s + r0 * step + j0;
      tiles.product(q_hi, k_hi, s, step, kTileBlock, keys, width, false);
      if (q_parts == 1 && kv_parts == 1) return;
      float* HWY_RESTRICT cross = v;  // [kTileBlock][step]
      if (kv_parts == 2)
        tiles.product(q_hi, TileOperand{k_hi.data + layout.part_elements, k_hi.ld}, cross, step, kTileBlock, keys, width, false);
      if (q_parts == 2)
        tiles.product(TileOperand{q_hi.data + m * width, width},
                      TileOperand{k_hi.data, k_hi.ld, kv_parts, static_cast<size_t>(layout.part_elements)}, cross, step,
                      kTileBlock, keys, width, kv_parts == 2);
      for (size_t i = 0; i < kTileBlock; ++i)
        for (size_t j = 0; j < keys; j += kLanes)
          hn::Store(hn::Add(hn::Load(df, s + i * step + j), hn::Load(df, cross + i * step + j)), df, s + i * step + j);
    };
    if (blocks > 0) scores(0);
    for (size_t b = 0; b < blocks; ++b) {
      if (b + 1 < blocks) scores(b + 1);
      const size_t r0 = active[b], j0 = key_begin[b];
      for (size_t r = r0; r < std::min(rows, r0 + kTileBlock); ++r) {
        uint32_t* hi = reinterpret_cast<uint32_t*>(weights + r * step);
        uint32_t* lo = hi + m * step / 2;
        if (first[r] >= last[r]) {  // no key of this step: no weight
          std::fill(hi, hi + step / 2, 0u);
          std::fill(lo, lo + step / 2, 0u);
          continue;
        }
        const float alpha = SoftmaxTileRow(st.s + r * step, step, static_cast<size_t>(first[r]), static_cast<size_t>(last[r]),
                                           static_cast<float>(p.softmax_scale), p.logits_soft_cap, st.max[r], st.sum[r],
                                           hi, lo, !finite_v);
        if (alpha != 1.0f) {
          const VF factor = hn::Set(df, alpha);
          for (size_t d = 0; d < width; d += kLanes)
            hn::Store(hn::Mul(hn::Load(df, o + r * width + d), factor), df, o + r * width + d);
        }
      }
      if (finite_v)
        tiles.product(TileOperand{weights + r0 * step + j0, step, 2, m * step},
                      TileOperand{v_pairs + (column + j0) * width, 2 * width, kv_parts, static_cast<size_t>(layout.part_elements)},
                      o + r0 * width, width, kTileBlock, width, key_end[b] - j0, true);
    }
    if (!finite_v) {
      const int32_t lo = *std::min_element(first, first + rows), hi = *std::max_element(last, last + rows);
      for (int32_t j = lo; j < hi; ++j)
        UnpackKeyPairs(reinterpret_cast<const uint32_t*>(v_pairs) + column / 2 * width, width, kv_parts,
                       static_cast<size_t>(layout.part_elements) / 2, static_cast<size_t>(j), width, v + j * width);
      for (size_t r = 0; r < rows; ++r)
        for (int32_t j = first[r]; j < last[r]; ++j) {
          const VF weight = hn::Set(df, st.s[r * step + j]);
          for (size_t d = 0; d < width; d += kLanes)
            hn::Store(hn::MulAdd(weight, hn::Load(df, v + j * width + d), hn::Load(df, o + r * width + d)), df,
                      o + r * width + d);
        }
    }
  }
  for (size_t r = 0; r < rows; ++r) {
    st.max[r] = static_cast<float>(st.max[r] / kLog2E);  // SoftmaxTileRow's max is in log2 units
    FinishRow(st, item, r, o + r * width, partial);
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

void AttendItem(const rpa_problem& p, const WorkItem& item, float* scratch, float* partial, const TileWork& tiles) {
  if (item.pack >= 0) return AttendItemTiles(p, item, scratch, partial, tiles);
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

void PackKvJob(const rpa_problem& p, const PackJob& job, const TileWork& tiles, float* scratch) {
  PackKv(p, job, tiles, scratch);
}

int64_t TargetBits() { return HWY_TARGET; }

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace rpa::simd {

HWY_EXPORT(AttendItem);
HWY_EXPORT(PackKvJob);
HWY_EXPORT(MergeSplits);
HWY_EXPORT(TargetBits);

void attend_item(const rpa_problem& problem, const WorkItem& item, float* scratch, float* partial, const TileWork& tiles) {
  HWY_DYNAMIC_DISPATCH(AttendItem)(problem, item, scratch, partial, tiles);
}

void pack_kv(const rpa_problem& problem, const PackJob& job, const TileWork& tiles, float* scratch) {
  HWY_DYNAMIC_DISPATCH(PackKvJob)(problem, job, tiles, scratch);
}

void merge_splits(const rpa_problem& problem, const MergeGroup& group, const float* partial, float* scratch) {
  HWY_DYNAMIC_DISPATCH(MergeSplits)(problem, group, partial, scratch);
}

bool cpu_supported() { return (hwy::SupportedTargets() & HWY_TARGETS) != 0; }

const char* active_target() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetBits)()); }

}  // namespace rpa::simd
#endif  // HWY_ONCE
