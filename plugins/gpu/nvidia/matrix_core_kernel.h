// The matrix-core path of the tiled kernel, for 16-bit queries and KV of one type, or bf16 queries and an
// 8-bit cache, on NVIDIA GPUs:
// S = Q K^T and O += P V on the tensor cores with f32 accumulators, by one of two product policies:
// WarpgroupMma (wgmma, Hopper's sm_90a code) or WarpMma (mma.sync, sm_80 on). On AMD (and for f32 inputs
// or head dims over 128) attention_kernel's FMA products run instead.
//
// A block holds kMatrixRows tile rows (16 per warp) of one kv head; K/V tiles of kKeys keys stream
// through shared memory as stored (16-bit, in the policy's layout), two stages deep with cp.async. The
// softmax runs in log2 units (exp2, scores times log2 e: relative error about 1e-6 in each weight). Q, K
// and V are exact in the 16-bit type and the products accumulate in f32; P, an f32 probability, is split
// into hi + lo 16-bit parts (two products), so it carries 16 significant bits (relative error <= 2^-18
// with bf16, less with f16), and the row's denominator sums those same hi + lo: a weight's error then
// cancels between numerator and denominator, leaving only its share of the spread of V.
//
// An 8-bit cache's codes are widened exactly into the bf16 tiles (code_widen.h: e4m3 as 2^-8 of its
// value); its K scale (and e4m3's 256) multiplies the f32 scores, its V scale the output, so the tiles
// hold exact values and the bounds above stay.
//
// Masked keys have probability exactly 0, which a product multiplies by V: a tile whose V holds an Inf or
// NaN therefore takes P V on the FMA path, which skips masked keys (select, never multiply by 0).
#pragma once

#include "plugins/gpu/attention_kernels.h"
#include "plugins/gpu/nvidia/code_widen.h"
#include "plugins/gpu/nvidia/warp_mma.h"
#include "plugins/gpu/nvidia/warpgroup_mma.h"

#if defined(RPA_GPU_CUDA)

#include <cuda_bf16.h>

namespace rpa_gpu {

constexpr int kMatrixKeys = 32;  // keys per K/V tile: small enough for 4 blocks per SM

// The product policy MmaOf (WarpMma or WarpgroupMma) for Kv's type (an 8-bit cache: bf16 tiles) and D_MAX.
template <typename Kv>
constexpr bool kBf16Tiles = Kv::kQuantised || Kv::kDtype == RPA_DTYPE_BF16;
template <typename Kv, int D_MAX, template <bool, int, int> class MmaOf>
using MatrixMma = MmaOf<kBf16Tiles<Kv>, D_MAX, kMatrixKeys>;

// Shared memory of matrix_core_kernel in Mma's layout: Q [kMatrixRows][D_MAX], then two stages of K and
// V [kMatrixKeys][D_MAX] each, all 16-bit.
template <int D_MAX, typename Mma>
struct MatrixGeometry {
  static constexpr int kKeys = kMatrixKeys;
  static constexpr int kQueryElements = Mma::Layout::elements(kMatrixRows);
  static constexpr int kStageElements = 2 * Mma::Layout::elements(kKeys);
  static constexpr size_t kAlignment = 1024;  // of the tiles: wgmma's swizzle atoms
  static constexpr size_t kSharedBytes = 2 * (size_t(kQueryElements) + 2 * size_t(kStageElements)) + kAlignment;
};

// The gather of paged K/V rows into shared tiles, which matrix_core_kernel and the warp-specialised kernel
// share: kThreadCount threads copy the kKeys keys of a tile; this one the 16-byte chunk at dim copy_dim of
// keys copy_key + i * kCopyKeys (consecutive threads, consecutive chunks of a row: whole sectors, and no
// bank conflicts in either layout); 8-bit codes: 16 dims a chunk. The block-table entries of a tile's keys
// are read a tile ahead of the copies that use them.
template <typename Kv, int D_MAX, int kKeys, int kThreadCount>
struct KvGather {
  static constexpr int kChunkDims = 16 / Kv::kBytes, kRowChunks = D_MAX / kChunkDims;
  static constexpr int kCopyKeys = kThreadCount / kRowChunks, kCopies = kKeys / kCopyKeys;
  static_assert(kThreadCount % kRowChunks == 0 && kKeys % kCopyKeys == 0, "copies divide among the threads");
  int copy_key, copy_dim;
  bool copy_dim_valid;
  const char *k_head, *v_head;
  const int32_t* pages;
  int32_t entries[kCopies];  // of this thread's keys of the next tile

  // thread is unsigned so that its divisions are shifts (signed ones made ptxas spill 32 bytes more in
  // matrix_core_kernel).
  __device__ __forceinline__ KvGather(const Params& p, const Tile& tile, unsigned thread) {
    const int kv_head = tile.head_begin / p.group;
    copy_key = thread / kRowChunks, copy_dim = thread % kRowChunks * kChunkDims;
    copy_dim_valid = copy_dim < p.head_dim;
    k_head = static_cast<const char*>(p.k.data) + (kv_head * p.k.head_stride + copy_dim) * Kv::kBytes;
    v_head = static_cast<const char*>(p.v.data) + (kv_head * p.v.head_stride + copy_dim) * Kv::kBytes;
    pages = p.block_tables + int64_t(tile.seq) * p.block_table_stride;
  }
  // Reads the entries of the tile of keys [key0, key0 + kKeys).
  __device__ __forceinline__ void fetch_entries(const Params& p, const Tile& tile, int key0) {
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      const int j = key0 + copy_key + i * kCopyKeys;
      entries[i] = j < tile.key_end ? pages[page_index(p, j)] : 0;
    }
  }
  // Calls each(i, key, valid, k_chunk, v_chunk) for this thread's copies of the tile at key0 (its entries
  // fetched): tile key `key`, whether it exists (below key_end and head_dim) and its chunks' addresses.
  template <typename Each>
  __device__ __forceinline__ void for_each(const Params& p, const Tile& tile, int key0, Each each) const {
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      const int key = copy_key + i * kCopyKeys, j = key0 + key;
      const bool valid = j < tile.key_end && copy_dim_valid;
      // Unsigned 32 x 64-bit products: page and slot are non-negative (a key past key_end reads nothing
      // and takes page 0).
      const uint64_t page = uint32_t(entries[i]), slot = uint32_t(j - page_index(p, j) * p.page_size);
      const uint64_t k_at = (page * uint64_t(p.k.page_stride) + slot * uint64_t(p.k.slot_stride)) * Kv::kBytes;
      const uint64_t v_at = (page * uint64_t(p.v.page_stride) + slot * uint64_t(p.v.slot_stride)) * Kv::kBytes;
      each(i, key, valid, k_head + k_at, v_head + v_at);
    }
  }
  // 16-bit caches: the cp.async copies of the tile at key0 into k_rows and v_rows (in Layout; zeros past
  // key_end and head_dim).
  template <typename Layout>
  __device__ __forceinline__ void copy(const Params& p, const Tile& tile, int key0, uint16_t* k_rows, uint16_t* v_rows) const {
    for_each(p, tile, key0, [&](int, int key, bool valid, const char* k_chunk, const char* v_chunk) {
      copy_async16(k_rows + Layout::at(key, copy_dim, kKeys), k_chunk, valid);
      copy_async16(v_rows + Layout::at(key, copy_dim, kKeys), v_chunk, valid);
    });
  }
};

// The offset in queries of tile row `row` (query row row / heads of q head head_begin + row % heads), or
// -1 past the tile's rows.
__device__ __forceinline__ int64_t query_row_offset(const Params& p, const Tile& tile, int row) {
  return row < tile.heads * tile.rows ? int64_t(tile.row_begin + row / tile.heads) * p.query_token_stride +
                                            int64_t(tile.head_begin + row % tile.heads) * p.query_head_stride
                                      : int64_t(-1);
}

// Loads a tile's query rows [0, kRows) into q_rows (in Layout; Q is stored as the KV type) by kThreadCount
// threads (this one `thread`), from the rows' offsets (query_row_offset, computed once a row into shared
// memory): zeros past the tile's rows and head_dim. 16-byte cp.async copies where the rows allow them (the
// caller commits and waits), else element loads, all of a thread's in flight at once, and stores.
template <typename Layout, int D_MAX, int kRows, int kThreadCount>
__device__ __forceinline__ void load_queries(const Params& p, const int64_t* row_offsets, uint16_t* q_rows,
                                             unsigned thread) {
  const auto* queries = static_cast<const uint16_t*>(p.queries);
  if (p.vector_queries) {
    constexpr int kChunks = D_MAX / 8;
    static_assert(kRows * kChunks % kThreadCount == 0, "copies divide among the threads");
#pragma unroll
    for (int i = 0; i < kRows * kChunks / kThreadCount; ++i) {
      const int chunk = thread + i * kThreadCount, row = chunk / kChunks, d = chunk % kChunks * 8;
      const int64_t at = row_offsets[row];
      copy_async16(q_rows + Layout::at(row, d, kRows), queries + (at >= 0 ? at + d : 0), at >= 0 && d < p.head_dim);
    }
  } else {
    constexpr int kBatch = 16;  // loads in flight per thread
    static_assert(kRows * D_MAX % (kBatch * kThreadCount) == 0, "loads divide among the threads");
    for (int first = thread; first < kRows * D_MAX; first += kBatch * kThreadCount) {
      uint16_t bits[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int e = first + i * kThreadCount, d = e % D_MAX;
        const int64_t at = row_offsets[e / D_MAX];
        bits[i] = at >= 0 && d < p.head_dim ? queries[at + d] : uint16_t(0);
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int e = first + i * kThreadCount;
        q_rows[Layout::at(e / D_MAX, e % D_MAX, kRows)] = bits[i];
      }
    }
  }
}

template <bool kBf16>
__device__ inline float from_bits16(uint16_t bits) {
  return kBf16 ? bf16_bits_to_float(bits) : f16_bits_to_float(bits);
}
template <bool kBf16>
__device__ inline bool bits16_nonfinite(uint32_t two) {  // either half an Inf or NaN
  const uint32_t exponent = kBf16 ? 0x7f807f80u : 0x7c007c00u;
  const uint32_t e = two & exponent;
  return (e & 0xffffu) == (exponent & 0xffffu) || (e >> 16) == (exponent >> 16);
}

// 2^x in one instruction (MUFU.EX2, 2 ulp); results below 2^-126 flush to 0, which no softmax weight
// relative to its row's max notices. exp2(-inf) = +0.
__device__ inline float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Rounds (x0, x1) to nearest even 16-bit values packed as an A-fragment register (x0 in the low half),
// one conversion instruction; returns them as floats in r0, r1.
template <bool kBf16>
__device__ inline uint32_t round_pair(float x0, float x1, float& r0, float& r1) {
  if constexpr (kBf16) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(x0, x1);
    const uint32_t bits = *reinterpret_cast<const uint32_t*>(&pair);
    r0 = __uint_as_float(bits << 16), r1 = __uint_as_float(bits & 0xffff0000u);
    return bits;
  } else {
    const __half2 pair = __floats2half2_rn(x0, x1);
    const float2 back = __half22float2(pair);
    r0 = back.x, r1 = back.y;
    return *reinterpret_cast<const uint32_t*>(&pair);
  }
}

// x ~= hi + lo, both 16-bit, for the pair (x0, x1); returns hi + lo (exact in f32) as floats in y0, y1.
template <bool kBf16>
__device__ inline void split_pair(float x0, float x1, uint32_t& hi, uint32_t& lo, float& y0, float& y1) {
  float h0, h1, l0, l1;
  hi = round_pair<kBf16>(x0, x1, h0, h1);
  lo = round_pair<kBf16>(x0 - h0, x1 - h1, l0, l1);
  y0 = h0 + l0, y1 = h1 + l1;
}

// The pieces of one K/V tile's softmax that matrix_core_kernel and the warp-specialised kernel share, on
// a lane's fragment of scores s[kKeys / 8][4] (row h = i / 2 of s[n][i], key key0 + 8n + pair + i % 2).

struct SoftmaxScale {
  float scale_log2, cap_log2, scale_over_cap;  // scores in log2 units: times scale_log2, or capped
};
__device__ inline SoftmaxScale softmax_scale_of(const Params& p, float dot_scale) {
  constexpr float kLog2e = 1.4426950408889634f;
  return {p.softmax_scale * dot_scale * kLog2e, p.soft_cap * kLog2e,
          p.soft_cap > 0.0f ? p.softmax_scale * dot_scale / p.soft_cap : 0.0f};
}

// Scales and caps s in log2 units (exp2 is one instruction), masks the keys a row does not see unless the
// tile is `full` (select: a masked NaN never propagates), moves the rows' reference maxima where needed and
// turns s into weights. Returns whether some row of the warp moved: the caller then multiplies its earlier
// outputs by `rescale` (row_sum is rescaled here). A quad's four lanes share each row.
template <int kKeyTiles, typename Visible>
__device__ __forceinline__ bool softmax_weights(const Params& p, const SoftmaxScale& k, float (&s)[kKeyTiles][4],
                                                bool full, int key0, int pair, Visible visible, float (&row_max)[2],
                                                float (&row_sum)[2], float (&rescale)[2]) {
  if (p.soft_cap > 0.0f)
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[n][i] = k.cap_log2 * tanhf(s[n][i] * k.scale_over_cap);
  else
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[n][i] *= k.scale_log2;
  if (!full)
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (!visible(i / 2, key0 + n * 8 + pair + i % 2)) s[n][i] = -INFINITY;
  // A row's reference max moves only when a tile's max exceeds it by more than kMaxSlack (log2 units),
  // so most tiles skip the rescale of out; weights stay below 2^kMaxSlack, where f32 sums and the hi + lo
  // split keep the same relative error.
  constexpr float kMaxSlack = 8.0f;
  float tile_max[2] = {-INFINITY, -INFINITY};
  rescale[0] = rescale[1] = 1.0f;
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) tile_max[i / 2] = fmaxf(tile_max[i / 2], s[n][i]);
  bool moved = false;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    tile_max[h] = fmaxf(tile_max[h], __shfl_xor(tile_max[h], 1));
    tile_max[h] = fmaxf(tile_max[h], __shfl_xor(tile_max[h], 2));
    if (tile_max[h] > row_max[h] + kMaxSlack) {  // also a row's first visible key (row_max -inf)
      rescale[h] = exp2_ftz(row_max[h] - tile_max[h]);
      row_max[h] = tile_max[h], row_sum[h] *= rescale[h];
      moved = true;
    }
  }
  // Masked scores are -inf, whose weight is +0 (a row seeing nothing yet subtracts 0, not -inf).
  const float subtract[2] = {row_max[0] == -INFINITY ? 0.0f : row_max[0], row_max[1] == -INFINITY ? 0.0f : row_max[1]};
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[n][i] = exp2_ftz(s[n][i] - subtract[i / 2]);
  return __any_sync(0xffffffffu, moved);
}

template <int kDimTiles>
__device__ __forceinline__ void rescale_rows(float (&out)[kDimTiles][4], const float (&rescale)[2]) {
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[n][i] *= rescale[i / 2];
}

// The weights as the A fragments (16 keys each) of P's hi and lo parts; row_sum adds the same hi + lo.
template <bool kBf16, int kKeyTiles>
__device__ __forceinline__ void split_weights(float (&s)[kKeyTiles][4], uint32_t (&hi)[kKeyTiles / 2][4],
                                              uint32_t (&lo)[kKeyTiles / 2][4], float (&row_sum)[2]) {
#pragma unroll
  for (int k = 0; k < kKeyTiles / 2; ++k)
#pragma unroll
    for (int r = 0; r < 4; ++r) {  // register r: 8-key tile 2k + r / 2, row h = r % 2
      const float* two = &s[2 * k + r / 2][r % 2 * 2];
      float y0, y1;
      split_pair<kBf16>(two[0], two[1], hi[k][r], lo[k][r], y0, y1);
      row_sum[r % 2] += y0 + y1;
    }
}

// Whether every row of the tile sees keys [key0, key0 + keys): such a K/V tile needs no mask, and an Inf
// or NaN in it is visible, so only other tiles check their V for the FMA path.
__device__ __forceinline__ bool tile_fully_visible(const Params& p, const Tile& tile, int key0, int keys) {
  return key0 + keys <= tile.key_end && key0 + keys - 1 <= tile.first_pos &&
         (p.window == 0 || key0 > tile.first_pos + tile.rows - 1 - p.window);
}

// Whether V [kKeys][D_MAX] (in Layout) holds an Inf or NaN, read by kThreadCount threads (this one `thread`).
template <bool kBf16, typename Layout, int D_MAX, int kKeys, int kThreadCount>
__device__ __forceinline__ bool values_nonfinite(const uint16_t* v_rows, int thread) {
  constexpr int kChunks = D_MAX / 8;
  bool nonfinite = false;
#pragma unroll
  for (int i = 0; i < kKeys * kChunks / kThreadCount; ++i) {
    const int chunk = thread + i * kThreadCount;
    const uint4 v4 = *reinterpret_cast<const uint4*>(v_rows + Layout::at(chunk / kChunks, chunk % kChunks * 8, kKeys));
    nonfinite |= bits16_nonfinite<kBf16>(v4.x) | bits16_nonfinite<kBf16>(v4.y) | bits16_nonfinite<kBf16>(v4.z) |
                 bits16_nonfinite<kBf16>(v4.w);
  }
  return nonfinite;
}

// out += P V on the FMA path, for a tile whose V holds an Inf or NaN: keys a row does not see are
// skipped, never multiplied by 0 (row_sum adds the f32 weights).
template <bool kBf16, typename Layout, int kKeys, int kDimTiles, typename Visible>
__device__ __forceinline__ void fma_values(float (&s)[kKeys / 8][4], float (&out)[kDimTiles][4], float (&row_sum)[2],
                                           int key0, int lane, Visible visible, const uint16_t* v_rows) {
  const int pair = 2 * (lane % 4);
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) row_sum[i / 2] += s[n][i];
#pragma unroll
  for (int key = 0; key < kKeys; ++key) {  // the quad lane holding key's column passes P along
    const int from = (lane & ~3) | key % 8 / 2;
    const bool seen[2] = {visible(0, key0 + key), visible(1, key0 + key)};
    const float prob[2] = {__shfl_sync(0xffffffffu, s[key / 8][key % 2], from),
                           __shfl_sync(0xffffffffu, s[key / 8][2 + key % 2], from)};
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      const uint32_t two = *reinterpret_cast<const uint32_t*>(v_rows + Layout::at(key, n * 8 + pair, kKeys));
      const float v[2] = {from_bits16<kBf16>(uint16_t(two)), from_bits16<kBf16>(uint16_t(two >> 16))};
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (seen[i / 2]) out[n][i] = fmaf(prob[i / 2], v[i % 2], out[n][i]);
    }
  }
}

// A lane's two rows of a warp's 16 in the fragments of S and O (PTX ISA, mma.m16n8k16 and wgmma.m64nNk16
// alike: tile rows first + l/4 and first + l/4 + 8 for lane l) and its column pair in each 8-wide tile;
// called with (h, j), whether its row h sees key j. (Copies of the fields, not references: with the lambda
// it replaces, which captured the tile and parameters by reference, matrix_core_kernel's sm_90a code spilled
// 36 bytes of loads; with copies, 20.)
struct LaneRows {
  int rows[2], pos[2], pair, tile_rows, key_end, window;
  __device__ __forceinline__ LaneRows(const Params& p, const Tile& tile, int first, int lane)
      : pair(2 * (lane % 4)), tile_rows(tile.heads * tile.rows), key_end(tile.key_end), window(p.window) {
#pragma unroll
    for (int h = 0; h < 2; ++h) rows[h] = first + lane / 4 + 8 * h, pos[h] = tile.first_pos + rows[h] / tile.heads;
  }
  __device__ __forceinline__ bool operator()(int h, int j) const {
    return rows[h] < tile_rows && j < key_end && j <= pos[h] && (window == 0 || j > pos[h] - window);
  }
};

// Writes this lane's two tile rows rows[h] (those below the tile's): the output (times out_scale: an
// 8-bit cache's V scale) and lse, or a split's unnormalised state for the merge. row_max is in log2 units.
template <int kDimTiles>
__device__ __forceinline__ void store_matrix_rows(const Params& p, const Tile& tile, const int (&rows)[2], int lane,
                                                  float (&out)[kDimTiles][4], float (&row_max)[2],
                                                  float (&row_sum)[2], float out_scale) {
  constexpr float kLog2e = 1.4426950408889634f;
  const int tile_rows = tile.heads * tile.rows, pair = 2 * (lane % 4);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row_sum[h] += __shfl_xor(row_sum[h], 1);
    row_sum[h] += __shfl_xor(row_sum[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = rows[h];
    if (row >= tile_rows) continue;
    const int head = tile.head_begin + row % tile.heads;
    row_max[h] /= kLog2e;  // back to natural log units
    float scale = out_scale;
    if (tile.partial >= 0) {
      if (lane % 4 == 0) {
        p.partial_stats[(int64_t(tile.partial) + row) * 2] = row_max[h];
        p.partial_stats[(int64_t(tile.partial) + row) * 2 + 1] = row_sum[h];
      }
    } else {
      float lse, row_scale;
      finish_row(p, head, row_max[h], row_sum[h], row_scale, lse);
      scale *= row_scale;
      if (lane % 4 == 0) store_lse(p, tile.row_begin + row / tile.heads, head, lse);
    }
    // The output's type is chosen once for the row; a lane's two adjacent dims go out as one store when
    // the row allows it (pairs: both dims exist and the pair is aligned).
    const auto write = [&](auto* to, int64_t base, bool aligned, auto pack, auto convert) {
      using Pair = decltype(pack(0.0f, 0.0f));
#pragma unroll
      for (int n = 0; n < kDimTiles; ++n) {
        const int d = n * 8 + pair;
        const float x0 = out[n][2 * h] * scale, x1 = out[n][2 * h + 1] * scale;
        if (aligned && d + 1 < p.head_dim) *reinterpret_cast<Pair*>(to + base + d) = pack(x0, x1);
        else {
          if (d < p.head_dim) to[base + d] = convert(x0);
          if (d + 1 < p.head_dim) to[base + d + 1] = convert(x1);
        }
      }
    };
    const auto same = [](float x) { return x; };
    const auto two_floats = [](float x0, float x1) { return make_float2(x0, x1); };
    if (tile.partial >= 0) {
      write(p.partial_acc, (int64_t(tile.partial) + row) * p.head_dim, p.head_dim % 2 == 0, two_floats, same);
      continue;
    }
    const int64_t base = int64_t(tile.row_begin + row / tile.heads) * p.out_token_stride +
                         int64_t(head) * p.out_head_stride;
    if (p.out_dtype == RPA_DTYPE_BF16)
      write(static_cast<__nv_bfloat16*>(p.out), base, p.out_pairs, __floats2bfloat162_rn, __float2bfloat16_rn);
    else if (p.out_dtype == RPA_DTYPE_F16)
      write(static_cast<__half*>(p.out), base, p.out_pairs, __floats2half2_rn, __float2half_rn);
    else write(static_cast<float*>(p.out), base, p.out_pairs, two_floats, same);
  }
}

// Fragment coordinates: LaneRows (warp w's rows start at 16w); the A fragment of 16 keys is the S layout
// of two adjacent 8-key tiles.
template <typename Kv, int D_MAX, template <bool, int, int> class MmaOf>
__device__ __forceinline__ void matrix_core_kernel(Params p) {
  using Mma = MatrixMma<Kv, D_MAX, MmaOf>;
#if defined(RPA_GPU_WGMMA_CODE)
  // Hopper's sm_90a code never runs mma.sync (device.cpp), so it carries none: less to compile.
  if constexpr (!Mma::kWarpgroup) {
    __trap();
    return;
  }
#endif
  using Layout = typename Mma::Layout;
  using G = MatrixGeometry<D_MAX, Mma>;
  constexpr bool kBf16 = kBf16Tiles<Kv>;
  constexpr int kKeyTiles = G::kKeys / 8, kDimTiles = D_MAX / 8;
  extern __shared__ float4 shared_raw[];
  uint16_t* q_rows = reinterpret_cast<uint16_t*>(shared_raw) + (-shared_address(shared_raw) % G::kAlignment) / 2;
  uint16_t* stages = q_rows + G::kQueryElements;  // two stages of K then V

  Tile tile;
  if (!fetch_tile<true>(p, tile)) return;
  const int kv_head = tile.head_begin / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  using Gather = KvGather<Kv, D_MAX, G::kKeys, kMatrixThreads>;
  Gather gather(p, tile, threadIdx.x);
  uint4 k_codes[Kv::kQuantised ? Gather::kCopies : 1], v_codes[Kv::kQuantised ? Gather::kCopies : 1];  // a tile ahead

  // Issues the copies of keys [key0, key0 + kKeys) into a stage, then fetches the entries of the tile
  // after. 8-bit codes are loaded into registers instead (an empty copy group keeps the wait counts), and
  // store_codes widens them into the stage once it is free.
  const auto load_stage = [&](int key0, uint16_t* stage) {
    if constexpr (Kv::kQuantised)
      gather.for_each(p, tile, key0, [&](int i, int, bool valid, const char* k_chunk, const char* v_chunk) {
        k_codes[i] = valid ? *reinterpret_cast<const uint4*>(k_chunk) : make_uint4(0, 0, 0, 0);
        v_codes[i] = valid ? *reinterpret_cast<const uint4*>(v_chunk) : make_uint4(0, 0, 0, 0);
      });
    else gather.template copy<Layout>(p, tile, key0, stage, stage + G::kStageElements / 2);
    copy_async_commit();
    gather.fetch_entries(p, tile, key0 + G::kKeys);
  };
  const auto store_codes = [&](uint16_t* stage) {
    if constexpr (Kv::kQuantised) {
#pragma unroll
      for (int i = 0; i < Gather::kCopies; ++i) {
        const int key = gather.copy_key + i * Gather::kCopyKeys;
#pragma unroll
        for (int part = 0; part < 2; ++part) {
          uint32_t words[8];
          widen_chunk<Kv::kDtype, kBf16>(part == 0 ? k_codes[i] : v_codes[i], words);
          uint16_t* rows = stage + part * (G::kStageElements / 2);
          *reinterpret_cast<uint4*>(rows + Layout::at(key, gather.copy_dim, G::kKeys)) = make_uint4(words[0], words[1], words[2], words[3]);
          *reinterpret_cast<uint4*>(rows + Layout::at(key, gather.copy_dim + 8, G::kKeys)) = make_uint4(words[4], words[5], words[6], words[7]);
        }
      }
    }
  };
  gather.fetch_entries(p, tile, tile.key_begin);
  load_stage(tile.key_begin, stages);
  store_codes(stages);

  // Each query row's offset is computed once (in the second stage, free until the first tile); vector
  // copies complete with the first K/V tile's.
  int64_t* row_offsets = reinterpret_cast<int64_t*>(stages + G::kStageElements);
  if (threadIdx.x < kMatrixRows) row_offsets[threadIdx.x] = query_row_offset(p, tile, threadIdx.x);
  __syncthreads();
  load_queries<Layout, D_MAX, kMatrixRows, kMatrixThreads>(p, row_offsets, q_rows, threadIdx.x);
  copy_async_commit();  // the Q group (empty without vector copies), between the first two K/V groups
  __syncthreads();  // row_offsets are read before the first tile refills the second stage

  const LaneRows visible(p, tile, warp * 16, lane);
  // An 8-bit cache: the dot of the tiles' values times k_scale (and e4m3's 256) is the score's.
  const SoftmaxScale scaling = softmax_scale_of(p, Kv::kQuantised ? scale_of(p.k_scales, kv_head) * Kv::kUnscale : 1.0f);
  float out[kDimTiles][4], row_sum[2] = {0.0f, 0.0f};
  float row_max[2] = {-INFINITY, -INFINITY};  // in log2 units, like the scores
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) out[n][0] = out[n][1] = out[n][2] = out[n][3] = 0.0f;

  int stage_index = 0;
  for (int key0 = tile.key_begin; key0 < tile.key_end; key0 += G::kKeys, stage_index ^= 1) {
    const uint16_t* k_rows = stages + stage_index * G::kStageElements;
    const uint16_t* v_rows = k_rows + G::kStageElements / 2;
    const bool next = key0 + G::kKeys < tile.key_end;
    if (next) load_stage(key0 + G::kKeys, stages + (stage_index ^ 1) * G::kStageElements);
    else copy_async_commit();  // an empty group keeps the wait count uniform
    copy_async_wait<1>();
    Mma::publish_shared();  // this thread's copies (and, the first time, its Q stores)
    const bool full = tile_fully_visible(p, tile, key0, G::kKeys);
    const bool nonfinite = __syncthreads_or(
        !full && values_nonfinite<kBf16, Layout, D_MAX, G::kKeys, kMatrixThreads>(v_rows, threadIdx.x));

    float s[kKeyTiles][4];
    Mma::scores(s, q_rows, k_rows);

    float rescale[2];
    if (softmax_weights(p, scaling, s, full, key0, visible.pair, visible, row_max, row_sum, rescale)) rescale_rows(out, rescale);
    if (!nonfinite) {
      uint32_t hi[G::kKeys / 16][4], lo[G::kKeys / 16][4];  // A fragments of P, 16 keys each
      split_weights<kBf16>(s, hi, lo, row_sum);
      Mma::accumulate(out, hi, lo, v_rows);
    } else {
      fma_values<kBf16, Layout, G::kKeys>(s, out, row_sum, key0, lane, visible, v_rows);
    }
    if (next) store_codes(stages + (stage_index ^ 1) * G::kStageElements);  // read last in the previous tile
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  // An 8-bit cache's V scale (and e4m3's 256) multiplies the output, or the split's partial state.
  store_matrix_rows(p, tile, visible.rows, lane, out, row_max, row_sum,
                    Kv::kQuantised ? scale_of(p.v_scales, kv_head) * Kv::kUnscale : 1.0f);
}

}  // namespace rpa_gpu

#endif  // RPA_GPU_CUDA
