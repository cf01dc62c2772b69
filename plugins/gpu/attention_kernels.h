// Device code of the plugin: the decode kernel, the tiled attention kernel (FMA products), the split
// merge, and the zero fill of rows no sequence covers (matrix_core_kernel.h holds the mma variant of the
// tiled kernel). All arithmetic is f32 (no TF32, no fast-math intrinsics); storage types are converted on
// load and store.
//
// One block computes one Tile: a few q heads of one kv head times a few consecutive query rows of one
// sequence (M = heads * rows "tile rows"), over a range of that sequence's keys. Each K/V page is read
// once per block for all its tile rows: a decode tile (one query, up to kDecodeMaxRows q heads) streams
// each page once per kv head for all of its q heads, and a prefill tile reuses each K/V tile across all
// of its rows. A long key range is split across blocks (flash-decoding): each split writes (max, sum,
// unnormalised accumulator) and merge_kernel combines them by log-sum-exp.
//
// Matrix-core seam: tile_scores() (S = Q K^T) and tile_accumulate() (O += P V) are attention_kernel's two
// products; matrix_core_kernel computes them with mma from 16-bit tiles and keeps the same masking,
// online softmax, sinks and output.
#pragma once

#include <stdint.h>

#include "plugins/gpu/gpu_vendor.h"  // first: core/dtype.h's device code uses the runtime's intrinsics
#include "core/dtype.h"
#include "plugins/plugin_abi.h"
#include "plugins/gpu/device_grid.h"
#include "plugins/gpu/tile.h"
#include "rpa/rpa.h"

namespace rpa_gpu {

constexpr int kThreads = 128;  // per block: 4 warps of 32 or 2 wavefronts of 64
constexpr int kMatrixThreads = kMatrixRows / 16 * 32;  // its block (NVIDIA only: warps of 32)

struct KvView {
  const void* data;
  int64_t page_stride, slot_stride, head_stride;
};

// Device metadata: what prepare_metadata_kernel and the decode slots check, and where the checks go.
struct MetadataCheck {
  const int32_t* context_lens;
  const int32_t* query_start_loc;
  const int32_t* block_tables;
  int64_t block_table_stride;
  int32_t* seq_ok;       // [num_seqs]
  int32_t* first_error;  // the lowest broken sequence since the record was cleared (INT32_MAX: none)
  int32_t* blocks_done;  // blocks of this run done checking (0 between runs)
  int64_t num_tokens, num_pages, table_keys;  // table_keys = W * page_size
  int32_t num_seqs, max_query_len, max_context_len;
  int32_t check_blocks;  // prepare_metadata_kernel's blocks that check sequences (the others only zero rows)
};

struct Params {
  const void* queries;
  int64_t query_token_stride, query_head_stride;
  rpa_dtype query_dtype;
  KvView k, v;
  void* out;
  int64_t out_token_stride, out_head_stride;
  rpa_dtype out_dtype;
  float* lse;  // may be null
  int64_t lse_token_stride, lse_head_stride;
  const void* sinks;  // may be null
  rpa_dtype sink_dtype;
  int32_t sink_heads, sinks_per_head;
  int64_t sink_head_stride, sink_stride;
  float softmax_scale, soft_cap;  // soft_cap 0: none
  int32_t window;                 // 0: none
  int32_t num_q_heads, num_kv_heads, group, head_dim;
  Divisor page_size;
  const int32_t* block_tables;  // [num_seqs, block_table_stride]: the plan's device copy, or device metadata
  int64_t block_table_stride;
  const Tile* tiles;     // this launch's tiles; null: device metadata, the slots of grid_kind in grid
  DeviceGrid grid;
  GridKind grid_kind;
  MetadataCheck check;   // device metadata only
  // Splits of a long key range: each split tile writes its tile rows from row `partial` on.
  float* partial_acc;    // [partial row][head_dim]
  float* partial_stats;  // [partial row][2]: running max, running sum
  int32_t vector_kv;     // KV rows and strides allow 16-byte loads
  int32_t vector_queries;  // so do the query rows
  int32_t out_pairs;       // two adjacent output elements from an even index are one aligned store
  // A quantised cache: the K and V scale of each kv head (kernel parameters: a run uploads nothing).
  float k_scales[kMaxScaleHeads];
  float v_scales[kMaxScaleHeads];
};

// rpa_write_kv: new keys and values [N, KVH, D] into their slots of the cache. The problem's own slots
// and scales are host memory: the kernel reads their device copies instead.
struct WriteParams {
  rpa_write_problem problem;
  const int32_t* slots;   // [N]: -1 skips (the core made every other slot unique)
  const float* k_scales;  // [KVH]
  const float* v_scales;
};

// Tile geometry for head dims up to D_MAX (64, 128 or 256). Shared memory stays under 64 KiB, the LDS
// limit of AMD GPUs, and rows are padded by 4 floats so float4 accesses of consecutive rows avoid bank
// conflicts.
template <int D_MAX>
struct Geometry {
  static constexpr int kKeys = D_MAX <= 128 ? 64 : 32;     // keys per K/V tile
  static constexpr int kRows = D_MAX <= 128 ? 32 : 16;     // tile rows (q head x query) per block
  static constexpr int kStride = D_MAX + 4;                // floats per shared row
  static constexpr int kScoreKeys = 2;                                 // keys each thread scores...
  static constexpr int kScoreGroups = kThreads * kScoreKeys / kKeys;  // ...for 1 of these row groups:
  static constexpr int kScoreRows = kRows / kScoreGroups;             // 2 x kScoreRows dots share loads
  static constexpr int kChunks = D_MAX / 4;                // float4 columns
  static constexpr int kValueGroups = kThreads / kChunks;  // threads sharing one column in tile_accumulate
  static constexpr int kValueRows = kRows / kValueGroups;  // rows each of them accumulates
  static constexpr size_t kSharedBytes =
      sizeof(float) * (size_t(kRows) * kStride + size_t(kKeys) * kStride + size_t(kRows) * kKeys + 3 * kRows) +
      sizeof(int64_t) * 2 * kKeys;
  static_assert(kSharedBytes <= 65536, "shared memory must fit AMD's 64 KiB LDS");
  static_assert(kRows <= kKeys, "the key offsets hold the query rows' offsets first");
  static_assert(kThreads * kScoreKeys % kKeys == 0 && kThreads % kChunks == 0 && kRows % kScoreGroups == 0 &&
                    kRows % kValueGroups == 0 && kKeys % 4 == 0,
                "thread mappings must tile exactly");
};

// The most blocks of prepare_metadata_kernel that check sequences (more sequences: a block checks
// several), and the block table entries (sequences times W) each of them takes.
constexpr int kPrepareBlocks = 65535;
constexpr int kPreparePagesPerBlock = 8192;

// The rest is device code; the AMD plugin's host code (RPA_GPU_AMD_HOST) needs only the layout above.
#if !defined(RPA_GPU_AMD_HOST)

// Device metadata: the rules of a sequence (rows [row_begin, row_end), `context` keys) that need no page:
// host validation's, plus the plan's bounds.
__device__ inline bool sequence_fits(const MetadataCheck& c, int64_t row_begin, int64_t row_end, int64_t context) {
  const int64_t q_len = row_end - row_begin;
  return row_begin >= 0 && q_len >= 0 && row_end <= c.num_tokens && q_len <= c.max_query_len && context >= q_len &&
         context <= c.table_keys && context <= c.max_context_len;
}

// Device metadata: whether the block table of `seq` (within its W columns: sequence_fits) names a page of
// the cache for every key of [first_key, end_key). Called by every thread of the block; all get the answer.
// Keys are below 2^31 (sequence_fits).
__device__ inline bool pages_fit(const Params& p, int32_t seq, int32_t first_key, int32_t end_key) {
  const MetadataCheck& c = p.check;
  const int32_t* table = c.block_tables + seq * c.block_table_stride;
  const int32_t first_page = p.page_size.divide(first_key);
  const int32_t end_page = end_key > first_key ? p.page_size.divide(end_key - 1) + 1 : first_page;
  int fits = 1;
  for (int32_t page = first_page + threadIdx.x; page < end_page; page += blockDim.x)
    if (table[page] < 0 || table[page] >= c.num_pages) fits = 0;
  return __syncthreads_and(fits);
}

// Device metadata: the first key a sequence's rows can see (host validation checks the pages from its on).
__device__ inline int32_t first_visible_key(const Params& p, const SequenceRows& rows) {
  return first_key(p.grid, rows.context - (rows.row_end - rows.row_begin));
}

// Device metadata: whether sequence `seq` follows the rules host validation applies (and the plan's
// bounds), over every key it can see. Called by every thread of the block; all get the answer.
__device__ inline bool sequence_ok(const Params& p, int32_t seq) {
  const SequenceRows rows = sequence_rows(p.grid, seq);
  if (!sequence_fits(p.check, rows.row_begin, rows.row_end, rows.context)) return false;
  return rows.row_end == rows.row_begin || pages_fit(p, seq, first_visible_key(p, rows), rows.context);
}

// Programmatic dependent launch (KernelSet::launch_early; NVIDIA sm_90+, else nothing to do): the
// dependent kernel waits here until the kernel before it on the stream has finished and its writes are
// visible (at once when it was launched plainly); the kernel before lets it launch from this point on.
__device__ inline void wait_for_previous_grid() {
#if defined(RPA_GPU_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ inline void allow_dependent_grid() {
#if defined(RPA_GPU_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Device metadata: zeroes the rows no sequence covers, as thread `worker` of `workers` (below).
template <typename Index>
__device__ __forceinline__ void zero_uncovered_rows(const Params& p, Index worker, Index workers);

// A slot of a direct grid (DeviceGrid::direct): its tile, resolved from its sequence's metadata, when
// the sequence follows the rules over every key it can see; a broken one's slots record it and write
// nothing. The first slot of each sequence checks it even without a tile (no query rows, or rows that
// break a rule), as prepare_metadata_kernel's check would. The launch's blocks after the slots zero the
// uncovered rows: at its end, where they take no place a tile waits for, so that no kernel runs before,
// beside or after the tiles. They index the output's elements in 32 bits (T * QH * D < 2^31 in a direct
// grid, make_device_grid): with 64-bit indices matrix_core_kernel spilled 84 bytes instead of 20.
__device__ inline bool direct_slot_tile(const Params& p, Tile& tile) {
  const int64_t slots = grid_blocks(p.grid, kGridAttention);
  if (blockIdx.x >= slots) {
    zero_uncovered_rows(p, uint32_t(blockIdx.x - slots) * blockDim.x + threadIdx.x, uint32_t(gridDim.x - slots) * blockDim.x);
    return false;
  }
  const GridSlot slot = grid_slot(p.grid, kGridAttention, blockIdx.x);
  const bool has_tile = slot_tile(p.grid, kGridAttention, slot, tile, false);
  // Row chunk index < num_seqs is its sequence's last, which the sequence has even without query rows.
  const bool sequence_first = slot.index < p.grid.num_seqs && slot.kv_head == 0 && slot.head_chunk == 0 && slot.split == 0;
  if (!has_tile && !sequence_first) return false;
  const int32_t seq = has_tile ? tile.seq : slot.index;
  const bool ok = sequence_ok(p, seq);
  if (!ok && threadIdx.x == 0) atomicMin(p.check.first_error, seq);
  return has_tile && ok;
}

// This block's tile; false (for the whole block) when its device-metadata slot has no work this run.
// Decode slots run beside prepare_metadata_kernel (launch.cpp), which leaves their sequences to them: they
// check and record their own sequence, by the same rules, over the keys they read, and their merges check
// it over every key (they follow the decode slots on the side stream). The other slots run after it, or
// in a direct grid, which has no decode slots, check their own (direct_slot_tile), as their merges do.
// kAttentionOnly: the caller is an attention kernel, whose slots are always kGridAttention; otherwise it
// is a decode or merge kernel, whose slots never are. Resolving only the caller's kinds keeps the other
// kinds' code out of it (matrix_core_kernel, at its 128-register bound, spilled 40 bytes with them, 16
// without), and the direct slots' shared memory out of the decode kernels (at the 48 KiB static limit).
template <bool kAttentionOnly = false>
__device__ inline bool fetch_tile(const Params& p, Tile& tile) {
  if (p.tiles) {
    tile = p.tiles[blockIdx.x];
    return true;
  }
  // Merges follow the slots that record a break.
  if (!kAttentionOnly && (p.grid_kind == kGridMergeDecode || (p.grid.direct && p.grid_kind == kGridMergeAttention)))
    return grid_tile(p.grid, p.grid_kind, blockIdx.x, tile, false) && sequence_ok(p, tile.seq);
  if (kAttentionOnly && p.grid.direct) {
    // The resolved tile reaches the threads through shared memory, so the resolution's registers end at
    // the barrier and the rest of the kernel is allocated as on the planned path. Left in registers,
    // matrix_core_kernel (bf16, D 128) spilled 88 bytes instead of 20, and W2 ran 13% slower, planned too.
    __shared__ Tile resolved;
    __shared__ int32_t resolved_has_work;
    const bool has_work = direct_slot_tile(p, tile);
    if (threadIdx.x == 0) resolved = tile, resolved_has_work = has_work;
    __syncthreads();
    tile = resolved;
    return resolved_has_work;
  }
  if (kAttentionOnly || p.grid_kind != kGridDecode) {
    wait_for_previous_grid();  // the attention slots' row chunks come from prepare_metadata_kernel
    return grid_tile(p.grid, kAttentionOnly ? kGridAttention : p.grid_kind, blockIdx.x, tile);
  }
  if (!grid_tile(p.grid, kGridDecode, blockIdx.x, tile, false)) return false;
  const int32_t seq = tile.seq;
  const bool ok = sequence_fits(p.check, p.check.query_start_loc[seq], p.check.query_start_loc[seq + 1],
                                p.check.context_lens[seq]) &&
                  pages_fit(p, seq, tile.key_begin, tile.key_end);
  // The check of prepare_metadata_kernel leaves one-token sequences to their slots (check_sequences).
  if (!ok && threadIdx.x == 0) atomicMin(p.check.first_error, seq);
  return ok;
}

// 16 bytes from global to shared memory, zero-filled when !valid. NVIDIA: cp.async, without registers,
// completed by copy_async_wait<n> (all but the n most recent commit groups). AMD (HIP 5.2 has no
// asynchronous copy): a plain load and store, complete at once.
#if defined(RPA_GPU_CUDA)
__device__ inline uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}
__device__ inline void copy_async16(void* shared, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)), "l"(global),
               "r"(valid ? 16 : 0)
               : "memory");
}
// 8 bytes (an 8-bit decode lane's codes of one key; cp.async takes 8 only through L1).
__device__ inline void copy_async8(void* shared, const void* global, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(shared_address(shared)), "l"(global),
               "r"(valid ? 8 : 0)
               : "memory");
}
__device__ inline void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ inline void copy_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory"); }
#else
__device__ inline void copy_async16(void* shared, const void* global, bool valid) {
  *static_cast<uint4*>(shared) = valid ? *static_cast<const uint4*>(global) : make_uint4(0, 0, 0, 0);
}
__device__ inline void copy_async8(void* shared, const void* global, bool valid) {
  *static_cast<uint2*>(shared) = valid ? *static_cast<const uint2*>(global) : make_uint2(0, 0);
}
__device__ inline void copy_async_commit() {}
template <int kPending>
__device__ inline void copy_async_wait() {}
#endif

// ---- element conversions (bit-exact with core/dtype.h) ----

__device__ inline float bf16_bits_to_float(uint16_t bits) { return __uint_as_float(uint32_t(bits) << 16); }

__device__ inline uint16_t float_to_bf16_bits(float value) {
  uint32_t u = __float_as_uint(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

__device__ inline float f16_bits_to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

__device__ inline float load_element(const void* data, rpa_dtype dtype, int64_t index) {
  switch (dtype) {
    case RPA_DTYPE_F16: return f16_bits_to_float(static_cast<const uint16_t*>(data)[index]);
    case RPA_DTYPE_BF16: return bf16_bits_to_float(static_cast<const uint16_t*>(data)[index]);
    default: return static_cast<const float*>(data)[index];
  }
}

__device__ inline void store_element(void* data, rpa_dtype dtype, int64_t index, float value) {
  switch (dtype) {
    case RPA_DTYPE_F16: static_cast<uint16_t*>(data)[index] = __half_as_ushort(__float2half_rn(value)); break;
    case RPA_DTYPE_BF16: static_cast<uint16_t*>(data)[index] = float_to_bf16_bits(value); break;
    default: static_cast<float*>(data)[index] = value; break;
  }
}

// KV storage types: Kv::convert turns 16 bytes (kVector elements) into floats (a quantised type's codes
// before their scale, divided by kUnscale). A decode lane takes kLaneElements elements of a key, kWords 16-byte
// words (8-bit: half a word, Kv8::convert_lane).
struct KvF32 {
  static constexpr rpa_dtype kDtype = RPA_DTYPE_F32;
  static constexpr bool kQuantised = false;
  static constexpr int kVector = 4;
  static constexpr int kBytes = 4;
  static constexpr int kLaneElements = 8;
  static constexpr int kWords = 2;
  static constexpr float kUnscale = 1.0f;
  __device__ static void convert(const uint4& raw, float* out) {
    out[0] = __uint_as_float(raw.x), out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z), out[3] = __uint_as_float(raw.w);
  }
};

template <bool kBf16>
struct Kv16 {
  static constexpr rpa_dtype kDtype = kBf16 ? RPA_DTYPE_BF16 : RPA_DTYPE_F16;
  static constexpr bool kQuantised = false;
  static constexpr int kVector = 8;
  static constexpr int kBytes = 2;
  static constexpr int kLaneElements = 8;
  static constexpr int kWords = 1;
  static constexpr float kUnscale = 1.0f;
  __device__ static float one(uint32_t bits) {
    return kBf16 ? bf16_bits_to_float(uint16_t(bits)) : f16_bits_to_float(uint16_t(bits));
  }
  __device__ static void convert(const uint4& raw, float* out) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) out[2 * i] = one(words[i] & 0xffffu), out[2 * i + 1] = one(words[i] >> 16);
  }
};
using KvBf16 = Kv16<true>;
using KvF16 = Kv16<false>;

// 8-bit codes of a quantised cache, 16 to a word, widened through binary16 (Hopper's conversion
// instructions are slow; f16 -> f32 is a full-rate add): a byte permute puts two codes into the halves of
// a word, a binary16 holds every value of each format exactly, and the widening to f32 is exact. e5m2 is
// the upper byte of a binary16 as it is (infinities and NaN included); int8 + 128 lands in the mantissa of
// 1024 (0x64 high byte), and 1152 comes off in f32. e4m3's bits shifted into a binary16's read 2^-8 of
// their value (exponent bias 7 where binary16 has 15, subnormals included): kUnscale = 256 goes into the
// K scores and the V output instead, and a 16-byte word holding a NaN code (S.1111.111) takes
// core/dtype.h's decoder.
template <rpa_dtype kType>
struct Kv8 {
  static constexpr rpa_dtype kDtype = kType;
  static constexpr bool kQuantised = true;
  static constexpr int kVector = 16;
  static constexpr int kBytes = 1;
  static constexpr int kLaneElements = 8;
  static constexpr int kWords = 1;
  static constexpr float kUnscale = kType == RPA_DTYPE_FP8_E4M3 ? 256.0f : 1.0f;  // decoded = value / kUnscale
  // Codes 2i and 2i + 1 (i = 0, 1) of `word`, in the halves of a word as binary16 bits.
  __device__ static uint32_t halves(uint32_t word, int i) {
    if constexpr (kType == RPA_DTYPE_INT8)
      return __byte_perm(word ^ 0x80808080u, 0x64646464u, i == 0 ? 0x4140 : 0x4342);  // 0x64, code + 128
    const uint32_t high = __byte_perm(word, 0u, i == 0 ? 0x1404 : 0x3424);  // code in each half's high byte
    if constexpr (kType == RPA_DTYPE_FP8_E5M2) return high;
    return (high & 0x80008000u) | ((high >> 1) & 0x3f803f80u);  // sign stays, magnitude one bit down
  }
  __device__ static void convert_word(uint32_t word, float* out) {
    constexpr float kOffset = kType == RPA_DTYPE_INT8 ? 1152.0f : 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t h = halves(word, i);
      out[2 * i] = f16_bits_to_float(uint16_t(h)) - kOffset;
      out[2 * i + 1] = f16_bits_to_float(uint16_t(h >> 16)) - kOffset;
    }
  }
  // A byte of `word` that is an e4m3 NaN code (magnitude 0x7f) carries into its bit 7.
  __device__ static uint32_t nan_carries(uint32_t word) { return (word & 0x7f7f7f7fu) + 0x01010101u; }
  template <int N>
  __device__ static void convert_words(const uint32_t (&words)[N], float* out) {
    if constexpr (kType == RPA_DTYPE_FP8_E4M3) {
      uint32_t carries = 0;
#pragma unroll
      for (int w = 0; w < N; ++w) carries |= nan_carries(words[w]);
      if (carries & 0x80808080u) {
#pragma unroll
        for (int e = 0; e < 4 * N; ++e) out[e] = rpa::e4m3_to_float(uint8_t(words[e / 4] >> (8 * (e % 4)))) / kUnscale;
        return;
      }
    }
#pragma unroll
    for (int w = 0; w < N; ++w) convert_word(words[w], out + 4 * w);
  }
  __device__ static void convert(const uint4& raw, float* out) { convert_words<4>({raw.x, raw.y, raw.z, raw.w}, out); }
  __device__ static void convert_lane(const uint2& raw, float* out) { convert_words<2>({raw.x, raw.y}, out); }
};
using KvE4m3 = Kv8<RPA_DTYPE_FP8_E4M3>;
using KvE5m2 = Kv8<RPA_DTYPE_FP8_E5M2>;
using KvInt8 = Kv8<RPA_DTYPE_INT8>;

// Page and slot of key j: division by page_size as a multiply and shift (Granlund-Montgomery; j < 2^31).
struct PageSlot {
  int64_t page, slot;
};
__device__ inline int32_t page_index(const Params& p, int j) { return p.page_size.divide(j); }
__device__ inline PageSlot page_of(const Params& p, const int32_t* pages, int j) {
  const int32_t index = page_index(p, j);
  return {pages[index], j - int64_t(index) * p.page_size};
}

// scales[head] through constant indices: a run-time index into a kernel parameter's array would copy the
// whole Params into local memory (measured: 1.3 KiB a thread, every p.field a local load).
__device__ inline float scale_of(const float (&scales)[kMaxScaleHeads], int head) {
  float value = 1.0f;
#pragma unroll
  for (int h = 0; h < kMaxScaleHeads; ++h) value = h == head ? scales[h] : value;
  return value;
}

__device__ inline bool is_finite(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

// Orders a warp's shared-memory accesses before its later ones: NVIDIA's lanes may diverge between
// shuffles (independent thread scheduling); AMD wavefronts run in lockstep.
__device__ inline void warp_barrier() {
#if defined(RPA_GPU_CUDA)
  __syncwarp();
#endif
}

__device__ inline float warp_max(float x) {
  for (int lane_mask = warpSize / 2; lane_mask > 0; lane_mask /= 2) x = fmaxf(x, __shfl_xor(x, lane_mask));
  return x;
}

__device__ inline float warp_sum(float x) {
  for (int lane_mask = warpSize / 2; lane_mask > 0; lane_mask /= 2) x += __shfl_xor(x, lane_mask);
  return x;
}

// The raw sink logits of q head `head` enter only the denominator: combine them with a row's running
// (max, sum) into the final max and denominator.
__device__ inline void add_sinks(const Params& p, int head, float& max_logit, float& sum) {
  if (!p.sinks) return;
  int64_t row = 0;  // one row shared by all heads
  if (p.sink_heads == p.num_q_heads) row = head;
  else if (p.sink_heads == p.num_kv_heads) row = head / p.group;
  float new_max = max_logit;
  for (int n = 0; n < p.sinks_per_head; ++n)
    new_max = fmaxf(new_max, load_element(p.sinks, p.sink_dtype, row * p.sink_head_stride + n * p.sink_stride));
  if (new_max == -INFINITY) return;  // no visible key and every sink -inf
  sum = max_logit == -INFINITY ? 0.0f : sum * expf(max_logit - new_max);
  for (int n = 0; n < p.sinks_per_head; ++n) {
    const float sink = load_element(p.sinks, p.sink_dtype, row * p.sink_head_stride + n * p.sink_stride);
    if (sink != -INFINITY) sum += expf(sink - new_max);
  }
  max_logit = new_max;
}

// Final output scale of a row whose running (max, sum) covers `row_max`, and its lse.
__device__ inline void finish_row(const Params& p, int head, float row_max, float row_sum, float& scale, float& lse) {
  float max_logit = row_max, sum = row_sum;
  add_sinks(p, head, max_logit, sum);
  if (max_logit == -INFINITY) {  // nothing visible, no sink: the row is 0, lse -inf
    scale = 0.0f, lse = -INFINITY;
    return;
  }
  scale = row_max == -INFINITY ? 0.0f : expf(row_max - max_logit) / sum;
  lse = max_logit + logf(sum);
}

__device__ inline void store_lse(const Params& p, int64_t row, int head, float value) {
  if (p.lse) p.lse[row * p.lse_token_stride + head * p.lse_head_stride] = value;
}

// Loads keys [key0, key0 + count) of the tile's sequence into shared rows (as f32; a quantised cache's
// codes times `scale`), zeroing rows past `count`. Returns whether this thread saw a non-finite value (an
// Inf or NaN in a visible slot).
template <typename Kv, int D_MAX>
__device__ bool load_kv_tile(const Params& p, const KvView& view, const int64_t* key_offsets, int count,
                             float scale, float* rows) {
  using G = Geometry<D_MAX>;
  const auto* base = static_cast<const char*>(view.data);
  bool nonfinite = false;
  if (p.vector_kv) {
    constexpr int kUnroll = 8;  // a bf16 128-wide tile is 8 loads per thread: all in flight at once
    const int chunks_per_key = p.head_dim / Kv::kVector;
    const int total = G::kKeys * chunks_per_key;
    for (int first = threadIdx.x; first < total; first += kThreads * kUnroll) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {  // all loads in flight before the first use
        const int chunk = first + u * kThreads, key = chunk / chunks_per_key;
        raw[u] = make_uint4(0, 0, 0, 0);
        if (chunk < total && key < count) {
          const int64_t element = key_offsets[key] + int64_t(chunk % chunks_per_key) * Kv::kVector;
          raw[u] = *reinterpret_cast<const uint4*>(base + element * Kv::kBytes);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int chunk = first + u * kThreads, key = chunk / chunks_per_key;
        if (chunk < total) {
          float values[Kv::kVector];
          Kv::convert(raw[u], values);
          if constexpr (Kv::kQuantised) {
#pragma unroll
            for (int e = 0; e < Kv::kVector; ++e) values[e] = values[e] * Kv::kUnscale * scale;
          }
          float4* row = reinterpret_cast<float4*>(rows + key * G::kStride + (chunk % chunks_per_key) * Kv::kVector);
#pragma unroll
          for (int e = 0; e < Kv::kVector; ++e) nonfinite |= !is_finite(values[e]);
#pragma unroll
          for (int e = 0; e < Kv::kVector / 4; ++e)  // 16-byte stores: scalar ones would conflict on banks
            row[e] = make_float4(values[4 * e], values[4 * e + 1], values[4 * e + 2], values[4 * e + 3]);
        }
      }
    }
  } else {
    const int width = (p.head_dim + 3) / 4 * 4;  // products run over float4 columns: pad with zeros
    for (int e = threadIdx.x; e < G::kKeys * width; e += kThreads) {
      const int key = e / width, d = e % width;
      float value = 0.0f;
      if (key < count && d < p.head_dim) {
        if constexpr (Kv::kQuantised)
          value = rpa::code_to_float(Kv::kDtype, static_cast<const uint8_t*>(view.data)[key_offsets[key] + d]) * scale;
        else value = load_element(view.data, Kv::kDtype, key_offsets[key] + d);
        nonfinite |= !is_finite(value);
      }
      rows[key * G::kStride + d] = value;
    }
  }
  return nonfinite;
}

// S = Q K^T for this thread's keys and rows, scaled, capped and masked, into scores[row][key].
template <int D_MAX>
__device__ void tile_scores(const Params& p, const Tile& tile, const float* q_rows, const float* k_rows, int key0,
                            int count, float* scores) {
  using G = Geometry<D_MAX>;
  constexpr int kKeyLanes = G::kKeys / G::kScoreKeys;
  const int lane = threadIdx.x % kKeyLanes, group = threadIdx.x / kKeyLanes;
  const int tile_rows = tile.heads * tile.rows;
  float dot[G::kScoreRows][G::kScoreKeys];
#pragma unroll
  for (int r = 0; r < G::kScoreRows; ++r)
#pragma unroll
    for (int k = 0; k < G::kScoreKeys; ++k) dot[r][k] = 0.0f;
  for (int d = 0; d < p.head_dim; d += 4) {
    float4 k4[G::kScoreKeys];
#pragma unroll
    for (int k = 0; k < G::kScoreKeys; ++k)
      k4[k] = *reinterpret_cast<const float4*>(k_rows + (lane + k * kKeyLanes) * G::kStride + d);
#pragma unroll
    for (int r = 0; r < G::kScoreRows; ++r) {
      const int row = group + r * G::kScoreGroups;
      if (row >= tile_rows) continue;
      const float4 q4 = *reinterpret_cast<const float4*>(q_rows + row * G::kStride + d);
#pragma unroll
      for (int k = 0; k < G::kScoreKeys; ++k) {
        dot[r][k] = fmaf(q4.x, k4[k].x, dot[r][k]);
        dot[r][k] = fmaf(q4.y, k4[k].y, dot[r][k]);
        dot[r][k] = fmaf(q4.z, k4[k].z, dot[r][k]);
        dot[r][k] = fmaf(q4.w, k4[k].w, dot[r][k]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < G::kScoreRows; ++r) {
    const int row = group + r * G::kScoreGroups;
    const int pos = tile.first_pos + row / tile.heads;
#pragma unroll
    for (int k = 0; k < G::kScoreKeys; ++k) {
      const int key = lane + k * kKeyLanes, j = key0 + key;
      const bool visible = key < count && row < tile_rows && j <= pos && (p.window == 0 || j > pos - p.window);
      float score = p.softmax_scale * dot[r][k];
      if (p.soft_cap > 0.0f) score = p.soft_cap * tanhf(score / p.soft_cap);
      scores[row * G::kKeys + key] = visible ? score : -INFINITY;  // select: a masked NaN never propagates
    }
  }
}

// Online softmax over one tile of scores: one warp per row turns scores into probabilities and records
// the factor the row's accumulator must be rescaled by.
template <int D_MAX>
__device__ void tile_softmax(int tile_rows, float* scores, float* row_max, float* row_sum, float* row_rescale) {
  using G = Geometry<D_MAX>;
  const int lane = threadIdx.x % warpSize, warps = kThreads / warpSize;
  for (int row = threadIdx.x / warpSize; row < tile_rows; row += warps) {
    float* s = scores + row * G::kKeys;
    float tile_max = -INFINITY;
    for (int key = lane; key < G::kKeys; key += warpSize) tile_max = fmaxf(tile_max, s[key]);
    tile_max = warp_max(tile_max);
    const float old_max = row_max[row], new_max = fmaxf(old_max, tile_max);
    float sum = 0.0f;
    for (int key = lane; key < G::kKeys; key += warpSize) {
      const float prob = s[key] == -INFINITY ? 0.0f : expf(s[key] - new_max);
      s[key] = prob;
      sum += prob;
    }
    sum = warp_sum(sum);
    warp_barrier();  // every lane has read row_max before lane 0 rewrites it
    if (lane == 0) {
      const float rescale = old_max == -INFINITY ? 0.0f : expf(old_max - new_max);
      row_rescale[row] = rescale;
      row_sum[row] = row_sum[row] * rescale + sum;
      row_max[row] = new_max;
    }
  }
}

// O = O * rescale + P V for this thread's float4 column and rows. With a non-finite value in the tile
// (visible to some row but maybe not to all), masked products are skipped rather than multiplied by 0.
template <int D_MAX>
__device__ void tile_accumulate(int tile_rows, const float* probs, const float* v_rows, const float* row_rescale,
                                int count, bool nonfinite, float4 (&acc)[Geometry<D_MAX>::kValueRows]) {
  using G = Geometry<D_MAX>;
  const int column = (threadIdx.x % G::kChunks) * 4, group = threadIdx.x / G::kChunks;
#pragma unroll
  for (int r = 0; r < G::kValueRows; ++r) {
    if (group + r * G::kValueGroups >= tile_rows) continue;  // decode tiles use few of the rows
    const float rescale = row_rescale[group + r * G::kValueGroups];
    acc[r].x *= rescale, acc[r].y *= rescale, acc[r].z *= rescale, acc[r].w *= rescale;
  }
  // Four keys at a time: probabilities past `count` are 0 and their V rows were zeroed by load_kv_tile.
  for (int key = 0; key < count; key += 4) {
    float4 v4[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) v4[k] = *reinterpret_cast<const float4*>(v_rows + (key + k) * G::kStride + column);
#pragma unroll
    for (int r = 0; r < G::kValueRows; ++r) {
      const int row = group + r * G::kValueGroups;
      if (row >= tile_rows) continue;
      const float4 p4 = *reinterpret_cast<const float4*>(probs + row * G::kKeys + key);
      const float prob[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (nonfinite && prob[k] == 0.0f) continue;
        acc[r].x = fmaf(prob[k], v4[k].x, acc[r].x);
        acc[r].y = fmaf(prob[k], v4[k].y, acc[r].y);
        acc[r].z = fmaf(prob[k], v4[k].z, acc[r].z);
        acc[r].w = fmaf(prob[k], v4[k].w, acc[r].w);
      }
    }
  }
}

template <typename Kv, int D_MAX>
__device__ __forceinline__ void attention_kernel(Params p) {
  using G = Geometry<D_MAX>;
  extern __shared__ float4 shared_raw[];
  float* q_rows = reinterpret_cast<float*>(shared_raw);  // [kRows][kStride]
  float* kv_rows = q_rows + G::kRows * G::kStride;        // [kKeys][kStride], K then V
  float* scores = kv_rows + G::kKeys * G::kStride;        // [kRows][kKeys]
  float* row_max = scores + G::kRows * G::kKeys;
  float* row_sum = row_max + G::kRows;
  float* row_rescale = row_sum + G::kRows;
  int64_t* k_offsets = reinterpret_cast<int64_t*>(row_rescale + G::kRows);
  int64_t* v_offsets = k_offsets + G::kKeys;

  Tile tile;
  if (!fetch_tile<true>(p, tile)) return;
  const int tile_rows = tile.heads * tile.rows;
  const int kv_head = tile.head_begin / p.group;

  // Tile row r is query row r / heads of q head head_begin + r % heads. Each row's offset is computed once
  // (in k_offsets, free until the first K tile); then a thread's loads are in flight together.
  if (threadIdx.x < G::kRows)
    k_offsets[threadIdx.x] = threadIdx.x < tile_rows
                                 ? int64_t(tile.row_begin + threadIdx.x / tile.heads) * p.query_token_stride +
                                       int64_t(tile.head_begin + threadIdx.x % tile.heads) * p.query_head_stride
                                 : -1;
  __syncthreads();
  const int width = (p.head_dim + 3) / 4 * 4;
  constexpr int kBatch = 8;
  for (int first = threadIdx.x; first < G::kRows * width; first += kBatch * kThreads) {
    float values[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int e = first + i * kThreads, row = e / width, d = e % width;
      values[i] = 0.0f;
      if (e < G::kRows * width && d < p.head_dim && k_offsets[row] >= 0)
        values[i] = load_element(p.queries, p.query_dtype, k_offsets[row] + d);
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int e = first + i * kThreads;
      if (e < G::kRows * width) q_rows[e / width * G::kStride + e % width] = values[i];
    }
  }
  if (threadIdx.x < G::kRows) row_max[threadIdx.x] = -INFINITY, row_sum[threadIdx.x] = 0.0f;
  __syncthreads();  // k_offsets is rewritten for the first K tile

  float4 acc[G::kValueRows];
#pragma unroll
  for (int r = 0; r < G::kValueRows; ++r) acc[r] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

  const int32_t* pages = p.block_tables + int64_t(tile.seq) * p.block_table_stride;
  const float k_scale = Kv::kQuantised ? scale_of(p.k_scales, kv_head) : 1.0f;
  const float v_scale = Kv::kQuantised ? scale_of(p.v_scales, kv_head) : 1.0f;
  for (int key0 = tile.key_begin; key0 < tile.key_end; key0 += G::kKeys) {
    const int count = min(G::kKeys, tile.key_end - key0);
    if (threadIdx.x < count) {
      const int j = key0 + threadIdx.x;
      const auto [page, slot] = page_of(p, pages, j);
      k_offsets[threadIdx.x] = page * p.k.page_stride + slot * p.k.slot_stride + kv_head * p.k.head_stride;
      v_offsets[threadIdx.x] = page * p.v.page_stride + slot * p.v.slot_stride + kv_head * p.v.head_stride;
    }
    __syncthreads();
    load_kv_tile<Kv, D_MAX>(p, p.k, k_offsets, count, k_scale, kv_rows);
    __syncthreads();
    tile_scores<D_MAX>(p, tile, q_rows, kv_rows, key0, count, scores);
    __syncthreads();
    const bool nonfinite_here = load_kv_tile<Kv, D_MAX>(p, p.v, v_offsets, count, v_scale, kv_rows);
    tile_softmax<D_MAX>(tile_rows, scores, row_max, row_sum, row_rescale);
    const bool nonfinite = __syncthreads_or(nonfinite_here);
    tile_accumulate<D_MAX>(tile_rows, scores, kv_rows, row_rescale, count, nonfinite, acc);
    __syncthreads();
  }

  const int column = (threadIdx.x % G::kChunks) * 4, group = threadIdx.x / G::kChunks;
  if (tile.partial >= 0) {  // one split of a long key range: keep the unnormalised state for the merge
    const int64_t first = tile.partial;
    if (threadIdx.x < tile_rows) {
      p.partial_stats[(first + threadIdx.x) * 2] = row_max[threadIdx.x];
      p.partial_stats[(first + threadIdx.x) * 2 + 1] = row_sum[threadIdx.x];
    }
#pragma unroll
    for (int r = 0; r < G::kValueRows; ++r) {
      const int row = group + r * G::kValueGroups;
      if (row >= tile_rows) continue;
      float* out = p.partial_acc + (first + row) * p.head_dim;
      const float values[4] = {acc[r].x, acc[r].y, acc[r].z, acc[r].w};
      for (int e = 0; e < 4 && column + e < p.head_dim; ++e) out[column + e] = values[e];
    }
    return;
  }

  if (threadIdx.x < tile_rows) {  // row_rescale now holds each row's output scale
    const int row = threadIdx.x, head = tile.head_begin + row % tile.heads;
    float scale, lse;
    finish_row(p, head, row_max[row], row_sum[row], scale, lse);
    row_rescale[row] = scale;
    store_lse(p, tile.row_begin + row / tile.heads, head, lse);
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < G::kValueRows; ++r) {
    const int row = group + r * G::kValueGroups;
    if (row >= tile_rows) continue;
    const float scale = row_rescale[row];
    const int64_t base = int64_t(tile.row_begin + row / tile.heads) * p.out_token_stride +
                         int64_t(tile.head_begin + row % tile.heads) * p.out_head_stride;
    const float values[4] = {acc[r].x, acc[r].y, acc[r].z, acc[r].w};
    for (int e = 0; e < 4 && column + e < p.head_dim; ++e)
      store_element(p.out, p.out_dtype, base + column + e, values[e] * scale);
  }
}

// ---- decode: the q heads of one kv head for one query token, K/V streamed through shared memory ----
//
// A tile holds up to ROWS q heads of one kv head for a single query, so every key of its range is
// visible to every row: no masking beyond the range's end. A group of kLanes lanes scores one key at a
// time, each lane holding 8 of its elements (one or two 16-byte words; 8-bit codes: 16 with 4 rows, else 8
// in half a word, K's and V's of one key sharing a ring word) and the same elements of every row's query
// in registers. A reduce-scatter of the partial dots leaves each lane the full scores of a
// few (key, row) pairs of the step, whose scaling and exponentials it evaluates once for the group;
// shuffles gather the results. Each group runs its own online softmax over its keys and the groups are
// combined once at the end through shared memory.
//
// Decode is bound by memory latency: K/V words are copied kStages - 1 steps ahead into a ring in shared
// memory (cp.async on NVIDIA), so many bytes are in flight per multiprocessor without holding registers.
// Each thread reads back only the words it copied itself, so the key loop needs no barrier.
// Used when K/V rows allow 16-byte loads and head_dim is a multiple of 8 (decode_eligible).
template <typename Kv, int D_MAX, int ROWS>
struct DecodeGeometry {
  // Elements per lane and key: 8 (16 or 32 bytes); 8-bit codes with 4 rows a whole 16-byte word (fewer
  // lanes a key share each key's page lookup, reductions and softmax: measured faster on an H100 than 8
  // codes a lane with twice the resident blocks), with 8 rows 8 (registers).
  static constexpr int kElements = Kv::kQuantised && ROWS <= 4 ? 16 : Kv::kLaneElements;
  // 8 codes a lane: a key's 8 K bytes and 8 V bytes share one 16-byte ring word (two 8-byte copies).
  static constexpr bool kPacked = kElements * Kv::kBytes == 8;
  static constexpr int kLanes = D_MAX / kElements;   // lanes per key: 4 to 32, within one warp
  static constexpr int kGroups = kThreads / kLanes;  // keys a block scores at once
  // Keys per group and step: fewer at 8 rows (registers) and with f32 KV (two words per key).
  static constexpr int kUnroll = (ROWS <= 4 ? 4 : 2) / Kv::kWords;
  static constexpr int kStep = kGroups * kUnroll;
  static constexpr int kWordsPerStep = (kPacked ? 1 : 2) * kUnroll * Kv::kWords;  // 16-byte words a thread copies per step
  static constexpr int kRingWords = 24;                           // per thread: 48 KiB per block
  static constexpr int kStages = kRingWords / kWordsPerStep;
  // Resident blocks (AMD: waves per SIMD) to hide latency, as registers allow.
  static constexpr int kMinBlocks = ROWS <= 4 && kElements == 8 ? 4 : 2;
  static constexpr int kPairs = kUnroll * ROWS;                      // (key, row) pairs of a group's step
  // A lane owns kOwnPairs of them after the reduce-scatter of the dots (with fewer pairs than lanes,
  // kLanes / kPairs lanes share one): own_pair(lane, i) is its i-th, owner(pair) a lane holding it.
  static constexpr int kOwnPairs = kPairs >= kLanes ? kPairs / kLanes : 1;
  __device__ static int own_pair(int lane, int i) { return lane * kPairs / kLanes + i; }
  __device__ static int owner(int pair) { return pair * kLanes / kPairs; }
  static_assert(kStages >= 2, "the ring holds at least two steps");
  static_assert((kPairs & (kPairs - 1)) == 0 && (ROWS & (ROWS - 1)) == 0,
                "the reduce-scatter halves the pairs, select_by_index takes a power of two");
};

// values[index] without local memory: a tree of N - 1 selects on the bits of a run-time index.
template <int N>
__device__ inline float select_by_index(const float (&values)[N], int index) {
  float level[N];
#pragma unroll
  for (int i = 0; i < N; ++i) level[i] = values[i];
#pragma unroll
  for (int half = N / 2, bit = 0; half >= 1; half /= 2, ++bit) {
    const bool high = (index >> bit) & 1;
#pragma unroll
    for (int i = 0; i < half; ++i) level[i] = high ? level[2 * i + 1] : level[2 * i];
  }
  return level[0];
}

// The groups' states at the end of decode_kernel, combined through the ring's shared memory.
template <int D_MAX, int ROWS, int GROUPS>
struct DecodeCombine {
  float4 acc[GROUPS][ROWS][D_MAX / 4];
  float max[GROUPS][ROWS], sum[GROUPS][ROWS], factor[GROUPS][ROWS];
  float row_scale[ROWS];
};

// The end of a decode tile whose groups left their (max, sum, unnormalised accumulator) in `combine`
// (max in natural-log units; a group that saw no key: -inf, 0, 0): their log-sum-exp combination, times
// out_factor (a quantised cache's V scale), into out and lse, or into a split's partial state.
template <int D_MAX, int ROWS, int GROUPS>
__device__ __forceinline__ void decode_finish(const Params& p, const Tile& tile, DecodeCombine<D_MAX, ROWS, GROUPS>& combine,
                                              float out_factor) {
  const int tile_rows = tile.heads;
  const bool partial = tile.partial >= 0;
  if (threadIdx.x < tile_rows) {
    const int r = threadIdx.x, head = tile.head_begin + r;
    float max_logit = -INFINITY, sum = 0.0f;
    for (int g = 0; g < GROUPS; ++g) max_logit = fmaxf(max_logit, combine.max[g][r]);
    for (int g = 0; g < GROUPS; ++g) {
      const float factor = combine.max[g][r] == -INFINITY ? 0.0f : expf(combine.max[g][r] - max_logit);
      combine.factor[g][r] = factor;
      sum += combine.sum[g][r] * factor;
    }
    if (partial) {  // one split of a long key range: keep the unnormalised state for the merge
      p.partial_stats[(int64_t(tile.partial) + r) * 2] = max_logit;
      p.partial_stats[(int64_t(tile.partial) + r) * 2 + 1] = sum;
      combine.row_scale[r] = 1.0f;
    } else {
      float scale, lse;
      finish_row(p, head, max_logit, sum, scale, lse);
      combine.row_scale[r] = scale;
      store_lse(p, tile.row_begin, head, lse);
    }
  }
  __syncthreads();
  const float* acc_of = reinterpret_cast<const float*>(combine.acc);
  for (int e = threadIdx.x; e < tile_rows * p.head_dim; e += kThreads) {
    const int r = e / p.head_dim, d = e % p.head_dim;
    float value = 0.0f;
    for (int g = 0; g < GROUPS; ++g)  // a group that saw no key has factor 0 and accumulator 0
      value = fmaf(acc_of[(g * ROWS + r) * D_MAX + d], combine.factor[g][r], value);
    value *= out_factor;
    if (partial) {
      p.partial_acc[(int64_t(tile.partial) + r) * p.head_dim + d] = value;
    } else {
      const int64_t base = int64_t(tile.row_begin) * p.out_token_stride + int64_t(tile.head_begin + r) * p.out_head_stride;
      store_element(p.out, p.out_dtype, base + d, value * combine.row_scale[r]);
    }
  }
}

template <typename Kv, int D_MAX, int ROWS>
__device__ __forceinline__ void decode_kernel(Params p) {
  using G = DecodeGeometry<Kv, D_MAX, ROWS>;
  // ring[stage * kWordsPerStep + word][thread]: a warp's words are consecutive, free of bank conflicts.
  __shared__ uint4 ring[G::kStages * G::kWordsPerStep][kThreads];
  using Combine = DecodeCombine<D_MAX, ROWS, G::kGroups>;
  static_assert(sizeof(Combine) <= sizeof(ring), "the combination reuses the ring");

  Tile tile;
  if (!fetch_tile(p, tile)) return;
  const int tile_rows = tile.heads;  // one query row
  const int kv_head = tile.head_begin / p.group;
  const int lane = threadIdx.x % G::kLanes, group = threadIdx.x / G::kLanes;
  const int d0 = lane * G::kElements;
  const bool lane_active = d0 < p.head_dim;  // head_dim is a multiple of kElements

  const int32_t* pages = p.block_tables + int64_t(tile.seq) * p.block_table_stride;
  const char* k_head = static_cast<const char*>(p.k.data) + (kv_head * p.k.head_stride + d0) * Kv::kBytes;
  const char* v_head = static_cast<const char*>(p.v.data) + (kv_head * p.v.head_stride + d0) * Kv::kBytes;
  const int steps = (tile.key_end - tile.key_begin + G::kStep - 1) / G::kStep;
  // Copies this thread's words of step `step` into its ring stage and commits them as one group (an empty
  // group past the last step keeps the wait count uniform). A key past the end is zero-filled: finite,
  // and its weight is 0.
  const auto copy_step = [&](int step) {
    if (step < steps) {
      uint4* stage = ring[(step % G::kStages) * G::kWordsPerStep] + threadIdx.x;
#pragma unroll
      for (int u = 0; u < G::kUnroll; ++u) {
        const int j = tile.key_begin + step * G::kStep + u * G::kGroups + group;
        const bool valid = j < tile.key_end && lane_active;
        const uint4* k = reinterpret_cast<const uint4*>(k_head);
        const uint4* v = reinterpret_cast<const uint4*>(v_head);
        if (valid) {
          const auto [page, slot] = page_of(p, pages, j);
          k = reinterpret_cast<const uint4*>(k_head + (page * p.k.page_stride + slot * p.k.slot_stride) * Kv::kBytes);
          v = reinterpret_cast<const uint4*>(v_head + (page * p.v.page_stride + slot * p.v.slot_stride) * Kv::kBytes);
        }
        if constexpr (G::kPacked) {
          copy_async8(stage + u * kThreads, k, valid);
          copy_async8(reinterpret_cast<uint2*>(stage + u * kThreads) + 1, v, valid);
        } else {
#pragma unroll
          for (int w = 0; w < Kv::kWords; ++w) {
            copy_async16(stage + (2 * u * Kv::kWords + w) * kThreads, k + w, valid);
            copy_async16(stage + ((2 * u + 1) * Kv::kWords + w) * kThreads, v + w, valid);
          }
        }
      }
    }
    copy_async_commit();
  };
#pragma unroll
  for (int step = 0; step < G::kStages - 1; ++step) copy_step(step);

  float q[ROWS][G::kElements], acc[ROWS][G::kElements], row_max[ROWS], row_sum[ROWS];
  // A quantised cache's scales: K's folds into the queries, V's into the output.
  const float k_scale = Kv::kQuantised ? scale_of(p.k_scales, kv_head) : 1.0f;
  const float v_scale = Kv::kQuantised ? scale_of(p.v_scales, kv_head) : 1.0f;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int64_t base =
        int64_t(tile.row_begin) * p.query_token_stride + int64_t(tile.head_begin + r) * p.query_head_stride + d0;
#pragma unroll
    for (int e = 0; e < G::kElements; ++e) {
      q[r][e] = r < tile_rows && lane_active ? load_element(p.queries, p.query_dtype, base + e) * k_scale : 0.0f;
      acc[r][e] = 0.0f;
    }
    row_max[r] = -INFINITY, row_sum[r] = 0.0f;
  }

  for (int step = 0; step < steps; ++step) {
    copy_async_wait<G::kStages - 2>();  // this step's words have landed
    copy_step(step + G::kStages - 1);   // into the stage the previous step freed
    const uint4* stage = ring[(step % G::kStages) * G::kWordsPerStep] + threadIdx.x;
    const int key0 = tile.key_begin + step * G::kStep;
    float part[G::kPairs];  // this lane's partial dots, pair u * ROWS + r
#pragma unroll
    for (int u = 0; u < G::kUnroll; ++u) {
      float k[G::kElements];
#pragma unroll
      for (int w = 0; w < Kv::kWords; ++w) {
        if constexpr (G::kPacked) Kv::convert_lane(reinterpret_cast<const uint2*>(stage + u * kThreads)[0], k);
        else Kv::convert(stage[(2 * u * Kv::kWords + w) * kThreads], k + w * Kv::kVector);
      }
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < G::kElements; ++e) dot = fmaf(q[r][e], k[e], dot);
        part[u * ROWS + r] = dot;
      }
    }
    // Reduce-scatter over the group's lanes: each round a lane keeps the half of its pairs its lane bit
    // selects and adds its partner's partial dots of them; with fewer pairs than lanes the last rounds
    // sum one pair. Then part[i] is the full dot of this lane's own pair i (G::own_pair).
    int held = G::kPairs;
#pragma unroll
    for (int lane_mask = G::kLanes / 2; lane_mask > 0; lane_mask /= 2) {
      if (held > 1) {
        held /= 2;
        const bool high = lane & lane_mask;
#pragma unroll
        for (int i = 0; i < G::kPairs / 2; ++i) {
          if (i >= held) break;
          const float send = high ? part[i] : part[i + held];
          part[i] = (high ? part[i + held] : part[i]) + __shfl_xor(send, lane_mask);
        }
      } else {
        part[0] += __shfl_xor(part[0], lane_mask);
      }
    }
    // Each lane scales, caps and masks its own pairs (a key past the range's end scores -inf: select),
    // and shuffles gather every pair's score to every lane of the group.
    float own_score[G::kOwnPairs];
#pragma unroll
    for (int i = 0; i < G::kOwnPairs; ++i) {
      float s = p.softmax_scale * (part[i] * Kv::kUnscale);
      if (p.soft_cap > 0.0f) s = p.soft_cap * tanhf(s / p.soft_cap);
      own_score[i] = key0 + G::own_pair(lane, i) / ROWS * G::kGroups + group < tile.key_end ? s : -INFINITY;
    }
    float score[G::kUnroll][ROWS];
#pragma unroll
    for (int u = 0; u < G::kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int pair = u * ROWS + r;
        score[u][r] = __shfl(own_score[pair % G::kOwnPairs], G::owner(pair), G::kLanes);
      }

    // Online softmax over the step's keys.
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      float step_max = -INFINITY;
#pragma unroll
      for (int u = 0; u < G::kUnroll; ++u) step_max = fmaxf(step_max, score[u][r]);
      const float new_max = fmaxf(row_max[r], step_max);
      if (row_max[r] != new_max) {  // rarely, once the first keys are in
        const float rescale = expf(row_max[r] - new_max);
        row_max[r] = new_max, row_sum[r] *= rescale;
#pragma unroll
        for (int e = 0; e < G::kElements; ++e) acc[r][e] *= rescale;
      }
    }
    // Each lane evaluates the exponentials of its own pairs once, and shuffles hand every lane all of them.
    float own_prob[G::kOwnPairs];
#pragma unroll
    for (int i = 0; i < G::kOwnPairs; ++i)
      own_prob[i] = own_score[i] == -INFINITY
                        ? 0.0f
                        : expf(own_score[i] - select_by_index(row_max, G::own_pair(lane, i) % ROWS));
#pragma unroll
    for (int u = 0; u < G::kUnroll; ++u) {
      float v[G::kElements];
#pragma unroll
      for (int w = 0; w < Kv::kWords; ++w) {
        if constexpr (G::kPacked) Kv::convert_lane(reinterpret_cast<const uint2*>(stage + u * kThreads)[1], v);
        else Kv::convert(stage[((2 * u + 1) * Kv::kWords + w) * kThreads], v + w * Kv::kVector);
      }
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int pair = u * ROWS + r;
        const float prob = __shfl(own_prob[pair % G::kOwnPairs], G::owner(pair), G::kLanes);
        row_sum[r] += prob;
#pragma unroll
        for (int e = 0; e < G::kElements; ++e) acc[r][e] = fmaf(prob, v[e], acc[r][e]);
      }
    }
  }

  // Combine the groups' (max, sum, accumulator) by log-sum-exp, in the ring once every copy has landed.
  copy_async_wait<0>();
  __syncthreads();
  Combine& combine = *reinterpret_cast<Combine*>(ring);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    if (lane == 0) combine.max[group][r] = row_max[r], combine.sum[group][r] = row_sum[r];
#pragma unroll
    for (int e = 0; e < G::kElements / 4; ++e)
      combine.acc[group][r][G::kElements / 4 * lane + e] =
          make_float4(acc[r][4 * e], acc[r][4 * e + 1], acc[r][4 * e + 2], acc[r][4 * e + 3]);
  }
  __syncthreads();
  decode_finish<D_MAX, ROWS, G::kGroups>(p, tile, combine, Kv::kQuantised ? Kv::kUnscale * v_scale : 1.0f);
}

// Combines the `splits` partial states of one merge tile (whose slots start at tile.partial) by
// log-sum-exp, adds the sinks, and writes out and lse.
__device__ __forceinline__ void merge_kernel(Params p) {
  __shared__ float global_max[kMaxTileRows], scale[kMaxTileRows];
  Tile tile;
  if (!fetch_tile(p, tile)) return;
  const int tile_rows = tile.heads * tile.rows;
  const auto stats = [&](int split, int row, int which) {
    return p.partial_stats[(int64_t(tile.partial) + int64_t(split) * tile_rows + row) * 2 + which];
  };
  if (threadIdx.x < tile_rows) {
    const int row = threadIdx.x, head = tile.head_begin + row % tile.heads;
    float max_logit = -INFINITY;
    for (int s = 0; s < tile.splits; ++s) max_logit = fmaxf(max_logit, stats(s, row, 0));
    float sum = 0.0f;
    for (int s = 0; s < tile.splits; ++s)
      if (stats(s, row, 0) != -INFINITY) sum += stats(s, row, 1) * expf(stats(s, row, 0) - max_logit);
    float row_scale, lse;
    finish_row(p, head, max_logit, sum, row_scale, lse);
    global_max[row] = max_logit;
    scale[row] = row_scale;
    store_lse(p, tile.row_begin + row / tile.heads, head, lse);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < tile_rows * p.head_dim; e += kThreads) {
    const int row = e / p.head_dim, d = e % p.head_dim;
    float value = 0.0f;
    for (int s = 0; s < tile.splits; ++s) {
      const float split_max = stats(s, row, 0);
      if (split_max == -INFINITY) continue;  // this split saw no key of the row: its accumulator is 0
      value += p.partial_acc[(int64_t(tile.partial) + int64_t(s) * tile_rows + row) * p.head_dim + d] *
               expf(split_max - global_max[row]);
    }
    const int64_t base = int64_t(tile.row_begin + row / tile.heads) * p.out_token_stride +
                         int64_t(tile.head_begin + row % tile.heads) * p.out_head_stride;
    store_element(p.out, p.out_dtype, base + d, value * scale[row]);
  }
}


// The sum of `value` over the block's threads before this one (threadIdx order); `total` receives the sum
// over all. Called by every thread of the block. Shuffles within a warp, then one exchange of the warps'
// sums: prepare_metadata_kernel's scans sit on the path of every prefill block.
template <typename T>
__device__ __forceinline__ T block_exclusive_sum(T value, T& total) {
  __shared__ T warp_sums[kThreads / 32];  // warps of 32 or more lanes
  const int lane = int(threadIdx.x) % warpSize, warp = int(threadIdx.x) / warpSize, warps = kThreads / warpSize;
  T inclusive = value;
  for (int delta = 1; delta < warpSize; delta *= 2) {
    const T before = __shfl_up(inclusive, delta);
    if (lane >= delta) inclusive += before;
  }
  if (lane == warpSize - 1) warp_sums[warp] = inclusive;
  __syncthreads();
  T before_warp = 0;
  total = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) before_warp += warp_sums[w];
    total += warp_sums[w];
  }
  __syncthreads();  // the next call writes warp_sums again
  return before_warp + inclusive - value;
}

// Device metadata: up to kThreads consecutive sequences, one per thread, as a block of
// prepare_metadata_kernel walks them. Each thread counts its sequence's work items (pages to check, row
// chunks to list), and the block spreads the items of all of them over its threads (item_owner), so a
// batch of short sequences and one long sequence both keep every thread busy.
struct SequenceBatch {
  SequenceRows rows[kThreads];
  int64_t first_item[kThreads];  // per sequence: its first page (checking) or 0 (listing)
  int64_t offset[kThreads];      // per sequence: the batch's items before its own
  int64_t items;
  int32_t broken[kThreads];      // checking: a page outside the cache
  int32_t ok[kThreads];          // checked: seq_ok
};

// Thread t's sequence takes `count` items from `first_item` on; every thread of the block calls it, and
// then sees the whole batch.
__device__ inline void count_items(SequenceBatch& batch, const SequenceRows& rows, int64_t first_item, int64_t count) {
  int64_t items = 0;
  const int64_t offset = block_exclusive_sum(count, items);
  batch.rows[threadIdx.x] = rows;
  batch.first_item[threadIdx.x] = first_item;
  batch.offset[threadIdx.x] = offset;
  if (threadIdx.x == 0) batch.items = items;
  __syncthreads();
}

// The batch's sequence (thread) whose items hold item i < batch.items: the last t with offset[t] <= i
// (a sequence without items has the offset of the next).
__device__ inline int item_owner(const SequenceBatch& batch, int64_t i) {
  int low = 0, high = kThreads - 1;
  while (low < high) {
    const int middle = (low + high + 1) / 2;
    if (batch.offset[middle] <= i) low = middle;
    else high = middle - 1;
  }
  return low;
}

// Device metadata: sequences [begin, end) against the rules host validation applies (and the plan's
// bounds), by one block; one-token sequences of the decode slots aside (they check their own: fetch_tile).
// A sequence that breaks one is marked in seq_ok, so no tile reads or writes for it, and recorded. The
// batch keeps the last kThreads sequences' rows and seq_ok.
__device__ __forceinline__ void check_sequences(const Params& p, SequenceBatch& batch, int32_t begin, int32_t end) {
  const MetadataCheck& c = p.check;
  for (int32_t first = begin; first < end; first += kThreads) {
    const int32_t seq = first + threadIdx.x;
    const SequenceRows rows = seq < end ? sequence_rows(p.grid, seq) : SequenceRows{0, 0, 0};
    const bool mine = seq < end && !takes_decode(p.grid, rows);
    const bool fits = !mine || sequence_fits(c, rows.row_begin, rows.row_end, rows.context);
    int64_t first_page = 0, pages = 0;
    if (mine && fits && rows.row_end > rows.row_begin) {  // the pages of the keys it can see
      first_page = p.page_size.divide(first_visible_key(p, rows));
      pages = p.page_size.divide(rows.context - 1) - first_page + 1;
    }
    batch.broken[threadIdx.x] = 0;  // read after count_items' barrier
    count_items(batch, rows, first_page, pages);
    for (int64_t i = threadIdx.x; i < batch.items; i += kThreads) {
      const int owner = item_owner(batch, i);
      const int32_t page = c.block_tables[(first + owner) * c.block_table_stride + batch.first_item[owner] +
                                          (i - batch.offset[owner])];
      if (page < 0 || page >= c.num_pages) atomicOr(&batch.broken[owner], 1);
    }
    __syncthreads();
    const bool ok = seq < end && fits && !batch.broken[threadIdx.x];
    batch.ok[threadIdx.x] = ok;
    if (seq < end) {
      c.seq_ok[seq] = ok;
      if (!ok) atomicMin(c.first_error, seq);
    }
    __syncthreads();  // the next batch rewrites the block's view
  }
}

// Calls f(chunk) for every row chunk of the non-decode kind of every sequence that follows the rules, by
// one block. seq_ok is read through volatile: other blocks of this launch may have written it. `held`:
// the batch already counts the row chunks of all sequences (list_row_chunks), so nothing is read again.
template <typename F>
__device__ __forceinline__ void for_each_row_chunk(const DeviceGrid& g, const volatile int32_t* seq_ok,
                                                   SequenceBatch& batch, bool held, F&& f) {
  for (int32_t first = 0; first < g.num_seqs; first += kThreads) {
    if (!held) {
      const int32_t seq = first + threadIdx.x;
      const SequenceRows rows = seq < g.num_seqs ? sequence_rows(g, seq) : SequenceRows{0, 0, 0};
      count_items(batch, rows, 0, seq < g.num_seqs ? attention_chunks(g, rows, seq_ok[seq]) : 0);
    }
    for (int64_t i = threadIdx.x; i < batch.items; i += kThreads) {
      const int owner = item_owner(batch, i);
      f(row_chunk(g, first + owner, batch.rows[owner], int32_t(i - batch.offset[owner])));
    }
    __syncthreads();
  }
}

// Device metadata, by one block once every seq_ok is written: lists the non-decode row chunks of the
// sequences that follow the rules (DeviceGrid::row_chunks), so those tiles' slots are as many as the
// batch's tokens need, each slot reads its chunk with one load, and the chunks with the most keys start
// first, as make_tile_plan orders its tiles (a causal prefill's last chunks see the most keys; starting
// them last leaves them running alone at the end). A counting sort by key bucket: each chunk takes the
// next place of its bucket, buckets of more keys first. `checked`: this block checked every sequence and
// they fit one batch, which then holds them (check_sequences).
__device__ __forceinline__ void list_row_chunks(const DeviceGrid& g, const volatile int32_t* seq_ok,
                                                SequenceBatch& batch, bool checked, RowChunk* list) {
  __shared__ int32_t place[kKeyBuckets];  // chunks per bucket, then the next place of each bucket
  for (int b = threadIdx.x; b < kKeyBuckets; b += kThreads) place[b] = 0;
  const bool held = checked && g.num_seqs <= kThreads;
  if (held) {
    const SequenceRows rows = batch.rows[threadIdx.x];
    count_items(batch, rows, 0, attention_chunks(g, rows, batch.ok[threadIdx.x]));
  }
  __syncthreads();
  for_each_row_chunk(g, seq_ok, batch, held, [&](const RowChunk& chunk) { atomicAdd(&place[key_bucket(g, chunk)], 1); });
  // Thread t takes buckets kKeyBuckets - 1 - (t * kPer + i): the first places go to the most keys.
  constexpr int kPer = kKeyBuckets / kThreads;
  static_assert(kKeyBuckets % kThreads == 0, "the threads take the buckets evenly");
  int32_t counts[kPer], mine = 0, all = 0;
  for (int i = 0; i < kPer; ++i) counts[i] = place[kKeyBuckets - 1 - (threadIdx.x * kPer + i)], mine += counts[i];
  int32_t next = block_exclusive_sum(mine, all);
  for (int i = 0; i < kPer; ++i) place[kKeyBuckets - 1 - (threadIdx.x * kPer + i)] = next, next += counts[i];
  __syncthreads();
  for_each_row_chunk(g, seq_ok, batch, held, [&](const RowChunk& chunk) {
    const int32_t at = atomicAdd(&place[key_bucket(g, chunk)], 1);
    // Beyond the bound only when broken metadata (sequences whose rows overlap) passes the rules.
    if (at < g.attention.chunks) list[at] = chunk;
  });
  for (int32_t at = all + threadIdx.x; at < g.attention.chunks; at += kThreads) list[at] = RowChunk{-1, 0, 0, 0};
}

// Out 0 and lse -inf for `rows` rows, the i-th at row_of(i): rows no processed sequence covers. Thread
// `worker` of `workers` takes every workers-th element. Index holds rows * QH * D plus workers (uint32_t
// where the caller bounds them so).
template <typename Index, typename RowOf>
__device__ __forceinline__ void zero_rows(const Params& p, Index rows, RowOf row_of, Index worker, Index workers) {
  const Index per_row = Index(p.num_q_heads) * Index(p.head_dim), head_dim = Index(p.head_dim);
  for (Index e = worker; e < rows * per_row; e += workers) {
    const Index i = e / per_row, in_row = e - i * per_row, head = in_row / head_dim, d = in_row - head * head_dim;
    const int64_t row = row_of(i);
    store_element(p.out, p.out_dtype, row * p.out_token_stride + int64_t(head) * p.out_head_stride + d, 0.0f);
    if (d == 0) store_lse(p, row, int(head), -INFINITY);
  }
}

// Device metadata: gives the rows outside [query_start_loc[0], query_start_loc[num_seqs]) (clamped to
// [0, T]) out 0 and lse -inf.
template <typename Index>
__device__ __forceinline__ void zero_uncovered_rows(const Params& p, Index worker, Index workers) {
  const MetadataCheck& c = p.check;
  const auto clamp_row = [&](int64_t row) { return row < 0 ? 0 : row > c.num_tokens ? c.num_tokens : row; };
  const int64_t head_rows = clamp_row(c.query_start_loc[0]), end = clamp_row(c.query_start_loc[c.num_seqs]);
  const int64_t tail_begin = end > head_rows ? end : head_rows;  // end < begin: every row is uncovered
  zero_rows(p, Index(head_rows + c.num_tokens - tail_begin),
            [&](Index i) { return int64_t(i) < head_rows ? int64_t(i) : tail_begin + int64_t(i) - head_rows; }, worker,
            workers);
}

// Device metadata, the one launch before the non-decode tiles, on their stream. Its first check_blocks
// blocks check the sequences (check_sequences, a range each) and the last of them to finish lists the row
// chunks (list_row_chunks); every block zeroes its share of the uncovered rows (the lister after its
// list). The list is on the path of every prefill block: one checking block where the pages are few
// (launch.cpp) needs no handshake and reads nothing twice. A direct grid has none (direct_slot_tile).
__device__ __forceinline__ void prepare_metadata_kernel(Params p) {
  // The attention blocks may be placed now: they wait for this whole kernel (wait_for_previous_grid).
  allow_dependent_grid();
  __shared__ SequenceBatch batch;
  const MetadataCheck& c = p.check;
  if (int32_t(blockIdx.x) < c.check_blocks) {
    const int64_t per_block = (c.num_seqs + int64_t(c.check_blocks) - 1) / c.check_blocks;
    const int64_t begin = blockIdx.x * per_block < c.num_seqs ? blockIdx.x * per_block : c.num_seqs;
    check_sequences(p, batch, int32_t(begin), int32_t(begin + per_block < c.num_seqs ? begin + per_block : c.num_seqs));
    bool lists = p.grid.attention.chunks > 0;  // a row chunk to list
    if (lists && c.check_blocks > 1) {
      // The last block to count itself sees every block's seq_ok: each fenced its writes before counting.
      __shared__ int last;
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) last = atomicAdd(c.blocks_done, 1) == c.check_blocks - 1;
      __syncthreads();
      lists = last;
      if (lists) {
        __threadfence();
        if (threadIdx.x == 0) *c.blocks_done = 0;  // the next run counts from 0 (its launch follows this one)
      }
    }
    if (lists) list_row_chunks(p.grid, c.seq_ok, batch, c.check_blocks == 1, const_cast<RowChunk*>(p.grid.row_chunks));
  }
  zero_uncovered_rows<int64_t>(p, blockIdx.x * int64_t(kThreads) + threadIdx.x, int64_t(gridDim.x) * kThreads);
}

// rpa_merge_states on device memory: one warp per (token, head) row, grid-stride. Every lane reads the
// row's two lse values before lane 0 writes the merged one, so lse may alias lse_a or lse_b.
__device__ __forceinline__ void merge_states_kernel(rpa_merge_problem p) {
  const int lane = threadIdx.x % warpSize, warps = blockDim.x / warpSize;
  const int64_t rows = p.num_tokens * p.num_heads;
  for (int64_t row = int64_t(blockIdx.x) * warps + threadIdx.x / warpSize; row < rows; row += int64_t(gridDim.x) * warps) {
    const int64_t t = row / p.num_heads, h = row % p.num_heads;
    const float lse_a = p.lse_a[t * p.lse_a_token_stride + h * p.lse_a_head_stride];
    const float lse_b = p.lse_b[t * p.lse_b_token_stride + h * p.lse_b_head_stride];
    const float max = lse_a < lse_b ? lse_b : lse_a;  // as std::max: NaN in lse_a stays
    const float weight_a = lse_a == -INFINITY ? 0.0f : expf(lse_a - max);
    const float weight_b = lse_b == -INFINITY ? 0.0f : expf(lse_b - max);
    const float sum = weight_a + weight_b;  // NaN when an lse is NaN or +inf
    const int64_t a = t * p.out_a_token_stride + h * p.out_a_head_stride;
    const int64_t b = t * p.out_b_token_stride + h * p.out_b_head_stride;
    const int64_t o = t * p.out_token_stride + h * p.out_head_stride;
    for (int64_t d = lane; d < p.head_dim; d += warpSize) {
      float value = 0.0f;
      if (weight_a > 0) value += weight_a * load_element(p.out_a, p.out_a_dtype, a + d);
      if (weight_b > 0) value += weight_b * load_element(p.out_b, p.out_b_dtype, b + d);
      store_element(p.out, p.out_dtype, o + d, max == -INFINITY ? 0.0f : value / sum);
    }
    warp_barrier();
    if (lane == 0 && p.lse)
      p.lse[t * p.lse_token_stride + h * p.lse_head_stride] = max == -INFINITY ? -INFINITY : max + logf(sum);
  }
}

__device__ __forceinline__ void zero_rows_kernel(Params p, int64_t row_begin, int64_t row_end) {
  zero_rows<int64_t>(p, row_end - row_begin, [&](int64_t i) { return row_begin + i; },
                     blockIdx.x * int64_t(kThreads) + threadIdx.x, int64_t(gridDim.x) * kThreads);
}

// One element of K and one of V per thread and step, converted as core/dtype.h's store_kv does.
__device__ __forceinline__ void write_kv_kernel(WriteParams params) {
  const rpa_write_problem& w = params.problem;
  const int64_t per_token = w.num_kv_heads * w.head_dim;
  const int64_t total = w.num_tokens * per_token;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < total; e += int64_t(gridDim.x) * kThreads) {
    const int64_t token = e / per_token;
    const int32_t slot = params.slots[token];
    if (slot < 0) continue;
    const int head = int(e % per_token / w.head_dim), d = int(e % w.head_dim);
    const int64_t page = slot / w.page_size, offset = slot % w.page_size;
    const float key = load_element(w.keys, w.key_dtype, token * w.key_token_stride + head * w.key_head_stride + d);
    const float value =
        load_element(w.values, w.value_dtype, token * w.value_token_stride + head * w.value_head_stride + d);
    const int64_t k_index = page * w.k.page_stride + offset * w.k.slot_stride + head * w.k.head_stride + d;
    const int64_t v_index = page * w.v.page_stride + offset * w.v.slot_stride + head * w.v.head_stride + d;
    if (rpa::is_quantised_dtype(w.kv_dtype)) {
      static_cast<uint8_t*>(w.k.data)[k_index] = rpa::float_to_code(w.kv_dtype, key, params.k_scales[head]);
      static_cast<uint8_t*>(w.v.data)[v_index] = rpa::float_to_code(w.kv_dtype, value, params.v_scales[head]);
    } else {
      store_element(w.k.data, w.kv_dtype, k_index, key);
      store_element(w.v.data, w.kv_dtype, v_index, value);
    }
  }
}

#endif  // !RPA_GPU_AMD_HOST

}  // namespace rpa_gpu
