// The matrix-core path of the tiled kernel, for 16-bit queries and KV of one type on NVIDIA GPUs (sm_80 on):
// S = Q K^T and O += P V as mma.sync m16n8k16 with f32 accumulators. On AMD (and for f32 inputs or head
// dims over 128) attention_kernel's FMA products run instead.
//
// A block holds kMatrixRows tile rows (16 per warp) of one kv head; K/V tiles of kKeys keys stream
// through shared memory as stored (16-bit), two stages deep with cp.async. The softmax runs in log2 units
// (exp2f, scores times log2 e: relative error about 1e-6 in each weight). Q, K and V are exact in the
// 16-bit type and the products accumulate in f32; P, an f32 probability, is split into hi + lo 16-bit
// parts (two mma), so it carries 16 significant bits (relative error <= 2^-17 with bf16, less with f16).
//
// Masked keys have probability exactly 0, which an mma multiplies by V: a tile whose V holds an Inf or
// NaN therefore takes P V on the FMA path, which skips masked keys (select, never multiply by 0).
#pragma once

#include "plugins/hip/attention_kernels.h"

#if defined(RPA_GPU_CUDA)

#include <cuda_bf16.h>

namespace rpa_gpu {

template <int D_MAX>
struct MatrixGeometry {
  static constexpr int kKeys = 32;              // keys per K/V tile: small enough for 4 blocks per SM
  static constexpr int kStride = D_MAX + 8;     // 16-bit elements per shared row: ldmatrix rows avoid bank conflicts
  static constexpr int kChunks = D_MAX / 8;     // 16-byte chunks per row
  static constexpr int kWarps = kThreads / 32;  // NVIDIA only: warps of 32
  static constexpr int kStageElements = 2 * kKeys * kStride;  // K then V
  static constexpr size_t kQueryBytes = 2 * size_t(kMatrixRows) * kStride;
  static constexpr size_t kSharedBytes = kQueryBytes + 2 * 2 * size_t(kStageElements);
  static_assert(kWarps * 16 == kMatrixRows, "16 tile rows per warp");
  static_assert(kKeys * kChunks % kThreads == 0 && kMatrixRows * D_MAX % (16 * kThreads) == 0,
                "copies divide among the threads");
};

// Four 8x8 16-bit matrices; lanes 8m..8m+7 give the row addresses of matrix m.
__device__ inline void load_matrices(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}
__device__ inline void load_matrices_transposed(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}

// d += a b for a 16x16 A (row major) and a 16x8 B (column major) fragment.
template <bool kBf16>
__device__ inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBf16)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

// x ~= hi + lo, both 16-bit, for the pair (x0, x1).
template <bool kBf16>
__device__ inline void split_pair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  float h0, h1, unused0, unused1;
  hi = round_pair<kBf16>(x0, x1, h0, h1);
  lo = round_pair<kBf16>(x0 - h0, x1 - h1, unused0, unused1);
}

// Fragment coordinates (PTX ISA, mma.m16n8k16): lane l holds C/D rows l/4 and l/4 + 8, columns 2(l%4) and
// 2(l%4) + 1 of each 16x8 tile; the A fragment of 16 keys is the C layout of two adjacent 8-key tiles.
template <typename Kv, int D_MAX>
__global__ void __launch_bounds__(kThreads, 4) matrix_core_kernel(Params p) {  // 4 blocks: 128 registers, a few bytes spilled, beat 3 blocks unspilled
  using G = MatrixGeometry<D_MAX>;
  constexpr bool kBf16 = Kv::kDtype == RPA_DTYPE_BF16;
  constexpr int kKeyTiles = G::kKeys / 8, kDimTiles = D_MAX / 8;
  extern __shared__ float4 shared_raw[];
  // Q [kMatrixRows][kStride] (16-bit), two stages of [kKeys][kStride] K then V (16-bit).
  uint16_t* q_rows = reinterpret_cast<uint16_t*>(shared_raw);
  uint16_t* stages = reinterpret_cast<uint16_t*>(reinterpret_cast<char*>(shared_raw) + G::kQueryBytes);

  const Tile tile = p.tiles[blockIdx.x];
  const int tile_rows = tile.heads * tile.rows;
  const int kv_head = tile.head_begin / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t* pages = p.block_tables + int64_t(tile.seq) * p.block_table_stride;
  // This thread copies the 16-byte chunk at dim copy_dim of keys copy_key + i * kCopyKeys of each tile.
  constexpr int kCopyKeys = kThreads / G::kChunks;
  const int copy_key = threadIdx.x / G::kChunks, copy_dim = threadIdx.x % G::kChunks * 8;
  const bool copy_dim_valid = copy_dim < p.head_dim;
  const auto* k_head = static_cast<const uint16_t*>(p.k.data) + (kv_head * p.k.head_stride + copy_dim);
  const auto* v_head = static_cast<const uint16_t*>(p.v.data) + (kv_head * p.v.head_stride + copy_dim);

  // Issues the copies of keys [key0, key0 + kKeys) into a stage (zeros past key_end and head_dim).
  const auto load_stage = [&](int key0, uint16_t* stage) {
#pragma unroll
    for (int i = 0; i < G::kKeys / kCopyKeys; ++i) {
      const int key = copy_key + i * kCopyKeys, j = key0 + key;
      const bool valid = j < tile.key_end && copy_dim_valid;
      int64_t k_at = 0, v_at = 0;
      if (valid) {
        const auto [page, slot] = page_of(p, pages, j);
        k_at = page * p.k.page_stride + slot * p.k.slot_stride;
        v_at = page * p.v.page_stride + slot * p.v.slot_stride;
      }
      copy_async16(stage + key * G::kStride + copy_dim, k_head + k_at, valid);
      copy_async16(stage + (G::kKeys + key) * G::kStride + copy_dim, v_head + v_at, valid);
    }
    copy_async_commit();
  };
  load_stage(tile.key_begin, stages);

  // Tile row r is query row r / heads of q head head_begin + r % heads; Q is stored as the KV type. Each
  // row's offset is computed once (in the second stage, free until the first tile), then the loads of a
  // thread are all in flight at once.
  int64_t* row_offsets = reinterpret_cast<int64_t*>(stages + G::kStageElements);
  if (threadIdx.x < kMatrixRows) {
    const int row = threadIdx.x;
    row_offsets[row] = row < tile_rows ? int64_t(tile.row_begin + row / tile.heads) * p.query_token_stride +
                                             int64_t(tile.head_begin + row % tile.heads) * p.query_head_stride
                                       : -1;
  }
  __syncthreads();
  constexpr int kBatch = 16;  // loads in flight per thread
  for (int first = threadIdx.x; first < kMatrixRows * D_MAX; first += kBatch * kThreads) {
    uint16_t bits[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int e = first + i * kThreads, row = e / D_MAX, d = e % D_MAX;
      const int64_t at = row_offsets[row];
      bits[i] = at >= 0 && d < p.head_dim ? static_cast<const uint16_t*>(p.queries)[at + d] : uint16_t(0);
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int e = first + i * kThreads;
      q_rows[e / D_MAX * G::kStride + e % D_MAX] = bits[i];
    }
  }
  __syncthreads();  // row_offsets are read before the first tile refills the second stage
  // This lane's ldmatrix row of the warp's Q fragments (re-read for each tile: registers are scarce).
  const uint16_t* q_fragment_row = q_rows + (warp * 16 + lane / 8 % 2 * 8 + lane % 8) * G::kStride + lane / 16 * 8;

  // This lane's two rows (warp-relative lane/4 and lane/4 + 8) and its column pair in each 8-wide tile.
  const int rows[2] = {warp * 16 + lane / 4, warp * 16 + lane / 4 + 8};
  const int pair = 2 * (lane % 4);
  int pos[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) pos[h] = tile.first_pos + rows[h] / tile.heads;
  const auto visible = [&](int h, int j) {  // key j by this lane's row h
    return rows[h] < tile_rows && j < tile.key_end && j <= pos[h] && (p.window == 0 || j > pos[h] - p.window);
  };
  constexpr float kLog2e = 1.4426950408889634f;
  float out[kDimTiles][4], row_sum[2] = {0.0f, 0.0f};
  float row_max[2] = {-INFINITY, -INFINITY};  // in log2 units, like the scores
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) out[n][0] = out[n][1] = out[n][2] = out[n][3] = 0.0f;

  int stage_index = 0;
  for (int key0 = tile.key_begin; key0 < tile.key_end; key0 += G::kKeys, stage_index ^= 1) {
    const uint16_t* k_rows = stages + stage_index * G::kStageElements;
    const uint16_t* v_rows = k_rows + G::kKeys * G::kStride;
    if (key0 + G::kKeys < tile.key_end) load_stage(key0 + G::kKeys, stages + (stage_index ^ 1) * G::kStageElements);
    else copy_async_commit();  // an empty group keeps the wait count uniform
    copy_async_wait<1>();
    // A tile every row sees in full needs no mask, and an Inf or NaN in it is visible: only other tiles
    // check their V for the FMA path.
    const bool full = key0 + G::kKeys <= tile.key_end && key0 + G::kKeys - 1 <= tile.first_pos &&
                      (p.window == 0 || key0 > tile.first_pos + tile.rows - 1 - p.window);
    bool nonfinite = false;
    if (!full) {
#pragma unroll
      for (int i = 0; i < G::kKeys * G::kChunks / kThreads; ++i) {
        const int chunk = threadIdx.x + i * kThreads;
        const uint4 v4 = *reinterpret_cast<const uint4*>(v_rows + chunk / G::kChunks * G::kStride + chunk % G::kChunks * 8);
        nonfinite |= bits16_nonfinite<kBf16>(v4.x) | bits16_nonfinite<kBf16>(v4.y) |
                     bits16_nonfinite<kBf16>(v4.z) | bits16_nonfinite<kBf16>(v4.w);
      }
    }
    nonfinite = __syncthreads_or(nonfinite);

    // Independent accumulators back to back: each mma's result is not needed by the next.
    float s[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D_MAX / 32; ++kk) {
      uint32_t q[2][4], b[kKeyTiles][4];  // b: keys n*8.., dims kk*32 + 8m: B fragments of two 16-dim steps
      load_matrices(q[0], q_fragment_row + kk * 32);
      load_matrices(q[1], q_fragment_row + kk * 32 + 16);
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n)
        load_matrices(b[n], k_rows + (n * 8 + lane % 8) * G::kStride + kk * 32 + lane / 8 * 8);
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) mma16816<kBf16>(s[n], q[0], b[n][0], b[n][1]);
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) mma16816<kBf16>(s[n], q[1], b[n][2], b[n][3]);
    }

    // Scale and cap, in log2 units (exp2 is one instruction); mask where some row may not see a key
    // (select: a masked NaN never propagates). Then the online softmax; a quad's four lanes share each row.
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float x = p.softmax_scale * s[n][i];
        if (p.soft_cap > 0.0f) x = p.soft_cap * tanhf(x / p.soft_cap);
        s[n][i] = x * kLog2e;
      }
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
    float tile_max[2] = {-INFINITY, -INFINITY}, rescale[2] = {1.0f, 1.0f};
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
        rescale[h] = exp2f(row_max[h] - tile_max[h]);
        row_max[h] = tile_max[h], row_sum[h] *= rescale[h];
        moved = true;
      }
    }
    if (__any_sync(0xffffffffu, moved))
#pragma unroll
      for (int n = 0; n < kDimTiles; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) out[n][i] *= rescale[i / 2];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[n][i] = s[n][i] == -INFINITY ? 0.0f : exp2f(s[n][i] - row_max[i / 2]);
        row_sum[i / 2] += s[n][i];
      }

    if (!nonfinite) {
#pragma unroll
      for (int k = 0; k < G::kKeys / 16; ++k) {
        uint32_t hi[4], lo[4];
        split_pair<kBf16>(s[2 * k][0], s[2 * k][1], hi[0], lo[0]);
        split_pair<kBf16>(s[2 * k][2], s[2 * k][3], hi[1], lo[1]);
        split_pair<kBf16>(s[2 * k + 1][0], s[2 * k + 1][1], hi[2], lo[2]);
        split_pair<kBf16>(s[2 * k + 1][2], s[2 * k + 1][3], hi[3], lo[3]);
        uint32_t b[kDimTiles / 2][4];  // keys k*16 + 8(m%2).., dims 16n + 8(m/2): dim tiles 2n and 2n + 1
#pragma unroll
        for (int n = 0; n < kDimTiles / 2; ++n)
          load_matrices_transposed(b[n], v_rows + (k * 16 + lane / 8 % 2 * 8 + lane % 8) * G::kStride + n * 16 + lane / 16 * 8);
#pragma unroll
        for (int n = 0; n < kDimTiles / 2; ++n)
          mma16816<kBf16>(out[2 * n], hi, b[n][0], b[n][1]), mma16816<kBf16>(out[2 * n + 1], hi, b[n][2], b[n][3]);
#pragma unroll
        for (int n = 0; n < kDimTiles / 2; ++n)
          mma16816<kBf16>(out[2 * n], lo, b[n][0], b[n][1]), mma16816<kBf16>(out[2 * n + 1], lo, b[n][2], b[n][3]);
      }
    } else {  // FMA path: keys a row does not see are skipped, never multiplied by 0
#pragma unroll
      for (int key = 0; key < G::kKeys; ++key) {  // the quad lane holding key's column passes P along
        const int from = (lane & ~3) | key % 8 / 2;
        const bool seen[2] = {visible(0, key0 + key), visible(1, key0 + key)};
        const float prob[2] = {__shfl_sync(0xffffffffu, s[key / 8][key % 2], from),
                               __shfl_sync(0xffffffffu, s[key / 8][2 + key % 2], from)};
#pragma unroll
        for (int n = 0; n < kDimTiles; ++n) {
          const uint32_t two = *reinterpret_cast<const uint32_t*>(v_rows + key * G::kStride + n * 8 + pair);
          const float v[2] = {from_bits16<kBf16>(uint16_t(two)), from_bits16<kBf16>(uint16_t(two >> 16))};
#pragma unroll
          for (int i = 0; i < 4; ++i)
            if (seen[i / 2]) out[n][i] = fmaf(prob[i / 2], v[i % 2], out[n][i]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

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
    float scale = 1.0f;
    if (tile.partial >= 0) {  // one split of a long key range: keep the unnormalised state for the merge
      if (lane % 4 == 0) {
        p.partial_stats[(int64_t(tile.partial) + row) * 2] = row_max[h];
        p.partial_stats[(int64_t(tile.partial) + row) * 2 + 1] = row_sum[h];
      }
    } else {
      float lse;
      finish_row(p, head, row_max[h], row_sum[h], scale, lse);
      if (lane % 4 == 0) store_lse(p, tile.row_begin + row / tile.heads, head, lse);
    }
    const int64_t base = int64_t(tile.row_begin + row / tile.heads) * p.out_token_stride +
                         int64_t(head) * p.out_head_stride;
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int d = n * 8 + pair + i;
        if (d >= p.head_dim) continue;
        if (tile.partial >= 0) p.partial_acc[(int64_t(tile.partial) + row) * p.head_dim + d] = out[n][2 * h + i];
        else store_element(p.out, p.out_dtype, base + d, out[n][2 * h + i] * scale);
      }
  }
}

}  // namespace rpa_gpu

#endif  // RPA_GPU_CUDA
