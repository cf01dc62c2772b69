// Decode with an 8-bit cache (fp8 e4m3, fp8 e5m2, int8) on NVIDIA's tensor cores, head dims up to 128:
// decode_kernel's FMA products spend as many instructions on an 8-bit key as on a 16-bit one (page
// lookup, dots, reductions, softmax per key and lane), so with half the bytes they bound the kernel by
// instruction issue; here mma.sync m16n8k16 takes the products and the reductions.
//
// Every code widens exactly to binary16 (code_widen.h; e4m3 by the hardware conversion from sm_89 on), so
// nothing is rounded in K or V. A block holds up
// to 8 q heads of one kv head (one query); each of its 4 warps takes every 4th step of 16 keys:
// - S = Q K^T, M = 16 rows: the queries (times k_scale, a power of two 2^e per head that puts their
//   largest magnitude in [2^14, 2^15), and e4m3's 256) as binary16 hi parts in rows 0-7 and lo parts in
//   rows 8-15 (hi + lo carries 22 significant bits), N = 8 keys, K = 16 dims; a score is row h plus
//   row h + 8, times 2^-e. The dims a lane holds are permuted (its key's D/4 consecutive bytes) so its
//   K words are its B fragment as they are.
// - O^T = V^T P^T, M = 16 dims, N = 8 heads, K = 16 keys: P^T's B fragment is S's accumulator layout
//   (hi + lo parts of P as two products, the row's denominator summing the same parts as the
//   matrix-core prefill), V^T's A fragment comes from byte permutes of the lane's 4 keys x D/8 bytes.
// K/V steps stream through a per-warp shared-memory ring (cp.async, kStages deep), 16-byte copies of
// whole rows (one page lookup per copy), read back after a __syncwarp. (Issuing a step's copies before
// the wait for the step before it, kStages steps in flight while a warp waits, measured 1-2 us slower on
// W1 on an H100.)
// Non-finite codes: the products' hi/lo parts would make NaN of them where the reference has +-Inf (a
// part 0 times Inf), so a step holding one computes its scores and P V with FMAs from the exact values
// instead. e4m3 widened by byte permutes (sm_80) reads its NaN codes as 1.875, so each step checks its
// words. e5m2's Inf/NaN codes widen to binary16 Inf/NaN, and whatever the products make of them either
// leaves a non-finite value in the warp's row sums or accumulators (non-finite stays so through products,
// sums and rescales, and finite codes keep every value finite) or gives only scores of -Inf, which the
// reference gives too (every infinite term -Inf, none NaN). So an e5m2 tile runs unchecked and, when a
// warp's state ends non-finite (a non-finite code in view: rare), the block runs it again checking each
// step. e4m3 NaN codes from the hardware conversion are NaN in the products, as in the reference.
#pragma once

#include "plugins/gpu/attention_kernels.h"
#include "plugins/gpu/nvidia/code_widen.h"
#include "plugins/gpu/nvidia/matrix_core_kernel.h"
#include "plugins/gpu/nvidia/warp_mma.h"

#if defined(RPA_GPU_CUDA)

namespace rpa_gpu {

template <int D_MAX>
struct CodeDecodeGeometry {
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kKeys = 16;  // keys per warp and step
  // Ring rows in bytes, padded so a quarter warp's 16-byte reads (K: lanes of keys r and r + 1; V: keys
  // 2c and 2c + 2) fall in distinct banks.
  static constexpr int kKRow = D_MAX == 64 ? 64 : D_MAX + 16;
  static constexpr int kVRow = D_MAX + 16;
  static constexpr int kStageBytes = kKeys * (kKRow + kVRow);
  static constexpr int kStages = 36864 / (kWarps * kStageBytes);  // 36 KiB of ring: D 128 two, D 64 four
  static constexpr int kKWords = D_MAX / 16;  // K: 4-byte words of its key a lane holds (one per 16 dims)
  static constexpr int kVWords = D_MAX / 32;  // V: words of each of its 4 keys a lane holds
  static constexpr int kChunks = D_MAX / 16;  // 16-byte copies per row
  static constexpr int kCopies = kKeys * kChunks / 32;  // per lane and step, of K and of V each
  static_assert(kStages >= 2 && D_MAX <= 128, "the ring holds two steps; Q and O fit the registers up to D 128");
};
constexpr int kCodeDecodeBlocks = 4;  // resident blocks: W1's 512 tiles in one wave on 132 multiprocessors

template <typename Kv>
struct CodeChecks {
  static constexpr bool kCvt = Kv::kDtype == RPA_DTYPE_FP8_E4M3 && RPA_GPU_E4M3_CVT;
  static constexpr bool kCheck = Kv::kDtype != RPA_DTYPE_INT8 && !kCvt;  // codes the products cannot take
  static constexpr bool kDeferred = Kv::kDtype == RPA_DTYPE_FP8_E5M2;    // checked only after a non-finite state
};
template <int D_MAX, bool kFmaSteps>
struct CodeDecodeShared {
  using G = CodeDecodeGeometry<D_MAX>;
  unsigned char ring[G::kWarps][G::kStages][G::kStageBytes];
  float q_scaled[kFmaSteps ? 8 : 1][D_MAX];  // queries times k_scale, for steps on the FMA path
};

// One tile, each step's codes checked (kChecked) or not. Unchecked with kDeferred codes: returns false,
// having written nothing, when a warp's state ends non-finite.
template <typename Kv, int D_MAX, int ROWS, bool kChecked>
__device__ __forceinline__ bool code_decode_tile(const Params& p, CodeDecodeShared<D_MAX, CodeChecks<Kv>::kCheck>& shared) {
  using G = CodeDecodeGeometry<D_MAX>;
  constexpr rpa_dtype kType = Kv::kDtype;
  constexpr bool kCvt = CodeChecks<Kv>::kCvt;
  constexpr float kUnscale = kCvt ? 1.0f : Kv::kUnscale;  // widened value = code's value / kUnscale
  auto& ring = shared.ring;
  auto& q_scaled = shared.q_scaled;
  using Combine = DecodeCombine<D_MAX, ROWS, G::kWarps>;
  static_assert(sizeof(Combine) <= sizeof(ring), "the combination reuses the ring");
  static_assert(ROWS <= 8, "a block's heads are the 8 columns of the products");

  Tile tile;
  if (!fetch_tile(p, tile)) return true;
  const int tile_rows = tile.heads;
  const int kv_head = tile.head_begin / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 4, c = lane % 4;
  const int32_t* pages = p.block_tables + int64_t(tile.seq) * p.block_table_stride;

  // This warp's steps: every kWarps-th of 16 keys from its own.
  const int all_steps = (tile.key_end - tile.key_begin + G::kKeys - 1) / G::kKeys;
  const int steps = warp < all_steps ? (all_steps - warp + G::kWarps - 1) / G::kWarps : 0;
  const auto first_key = [&](int step) { return tile.key_begin + (step * G::kWarps + warp) * G::kKeys; };
  // Copy e of a lane: row chunk e * 32 + lane of K and of V, key (e * 32 + lane) / kChunks of the step.
  const int copy_chunk = lane % G::kChunks;
  const bool chunk_valid = copy_chunk * 16 < p.head_dim;
  const char* k_head = static_cast<const char*>(p.k.data) + kv_head * p.k.head_stride + copy_chunk * 16;
  const char* v_head = static_cast<const char*>(p.v.data) + kv_head * p.v.head_stride + copy_chunk * 16;
  int32_t entries[G::kCopies];  // block-table entries of the next step to copy, read a step ahead
  const auto fetch_entries = [&](int step) {
#pragma unroll
    for (int e = 0; e < G::kCopies; ++e) {
      const int j = first_key(step) + (e * 32 + lane) / G::kChunks;
      entries[e] = step < steps && j < tile.key_end ? pages[page_index(p, j)] : 0;
    }
  };
  // Issues the copies of `step` (zeros past key_end and head_dim) and commits them as one group (empty
  // past the last step: the wait count stays uniform), then reads the entries of the step after.
  const auto copy_step = [&](int step) {
    if (step < steps) {
      unsigned char* stage = ring[warp][step % G::kStages];
#pragma unroll
      for (int e = 0; e < G::kCopies; ++e) {
        const int key = (e * 32 + lane) / G::kChunks, j = first_key(step) + key;
        const bool valid = j < tile.key_end && chunk_valid;
        const uint64_t page = uint32_t(entries[e]), slot = uint32_t(j - page_index(p, j) * p.page_size);
        copy_async16(stage + key * G::kKRow + copy_chunk * 16,
                     k_head + (valid ? page * uint64_t(p.k.page_stride) + slot * uint64_t(p.k.slot_stride) : 0), valid);
        copy_async16(stage + G::kKeys * G::kKRow + key * G::kVRow + copy_chunk * 16,
                     v_head + (valid ? page * uint64_t(p.v.page_stride) + slot * uint64_t(p.v.slot_stride) : 0), valid);
      }
    }
    copy_async_commit();
    fetch_entries(step + 1);
  };
  fetch_entries(0);
#pragma unroll
  for (int step = 0; step < G::kStages - 1; ++step) copy_step(step);

  // Queries: lane (r, c) holds head r's dims [c D/4, (c + 1) D/4) (zero past tile_rows and head_dim).
  const float k_scale = scale_of(p.k_scales, kv_head), v_scale = scale_of(p.v_scales, kv_head);
  constexpr int kDims = D_MAX / 4;
  float q[kDims];
  float largest = 0.0f;
  {
    const int64_t base = int64_t(tile.row_begin) * p.query_token_stride + int64_t(tile.head_begin + r) * p.query_head_stride;
#pragma unroll
    for (int e = 0; e < kDims; ++e) {
      const int d = c * kDims + e;
      q[e] = r < tile_rows && d < p.head_dim ? load_element(p.queries, p.query_dtype, base + d) * k_scale : 0.0f;
      if (kChecked && warp == 0) q_scaled[r][d] = q[e];
      largest = fmaxf(largest, fabsf(q[e]));
    }
  }
  largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, 1));
  largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, 2));
  int exponent = 0;  // 2^exponent puts the head's largest |q| * kUnscale in [2^14, 2^15)
  if (largest > 0.0f && largest <= 3.0e38f) {
    frexpf(largest * kUnscale, &exponent);
    exponent = min(max(15 - exponent, -100), 100);
  }
  uint32_t qa[G::kKWords][4];  // A fragments: hi (rows 0-7) and lo (rows 8-15) of dims 4k..4k+3 of the lane's
#pragma unroll
  for (int k = 0; k < G::kKWords; ++k) {
    float x[4], y0, y1;
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = ldexpf(q[4 * k + i] * kUnscale, exponent);
    split_pair<false>(x[0], x[1], qa[k][0], qa[k][1], y0, y1);
    split_pair<false>(x[2], x[3], qa[k][2], qa[k][3], y0, y1);
  }
  constexpr float kLog2e = 1.4426950408889634f;
  const float unscale_q = ldexpf(1.0f, -exponent);
  const float scale_log2 = p.softmax_scale * kLog2e, cap_log2 = p.soft_cap * kLog2e;
  const float scale_over_cap = p.soft_cap > 0.0f ? p.softmax_scale / p.soft_cap : 0.0f;
  if constexpr (kChecked) __syncthreads();  // q_scaled

  float o[D_MAX / 16][4];  // O^T: dims (D/8) r + 2m (+1 in 2, 3) of heads 2c, 2c + 1
#pragma unroll
  for (int m = 0; m < D_MAX / 16; ++m) o[m][0] = o[m][1] = o[m][2] = o[m][3] = 0.0f;
  float row_max = -INFINITY, row_sum = 0.0f;  // head r's, in log2 units; the sum over this lane's keys

  for (int step = 0; step < steps; ++step) {
    copy_async_wait<G::kStages - 2>();
    __syncwarp();  // every lane's copies of this step have landed, and the previous stage is read
    copy_step(step + G::kStages - 1);
    const unsigned char* stage = ring[warp][step % G::kStages];
    const unsigned char* v_rows = stage + G::kKeys * G::kKRow;
    const int key0 = first_key(step);

    uint32_t kw[2][G::kKWords];  // K of keys r and 8 + r: dims [c D/4, (c + 1) D/4)
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int w = 0; w < G::kKWords; w += 4) {
        const uint4 x = *reinterpret_cast<const uint4*>(stage + (8 * t + r) * G::kKRow + c * kDims + 4 * w);
        kw[t][w] = x.x, kw[t][w + 1] = x.y, kw[t][w + 2] = x.z, kw[t][w + 3] = x.w;
      }
    uint32_t vw[4][G::kVWords];  // V of keys 2c, 2c + 1, 8 + 2c, 9 + 2c: dims [r D/8, (r + 1) D/8)
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const unsigned char* row = v_rows + (2 * c + k % 2 + 8 * (k / 2)) * G::kVRow + r * (D_MAX / 8);
      if constexpr (G::kVWords == 4) {
        const uint4 x = *reinterpret_cast<const uint4*>(row);
        vw[k][0] = x.x, vw[k][1] = x.y, vw[k][2] = x.z, vw[k][3] = x.w;
      } else {
        const uint2 x = *reinterpret_cast<const uint2*>(row);
        vw[k][0] = x.x, vw[k][1] = x.y;
      }
    }
    bool fma_path = false;
    if constexpr (kChecked) {
      uint32_t bits = 0;
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int w = 0; w < G::kKWords; ++w) bits |= nonfinite_bytes<kType>(kw[t][w]);
#pragma unroll
      for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int w = 0; w < G::kVWords; ++w) bits |= nonfinite_bytes<kType>(vw[k][w]);
      fma_path = __any_sync(0xffffffffu, (bits & 0x80808080u) != 0);
    }

    // Scores of head r for keys 8t + 2c + i, as dots of the stored values (the scales aside).
    float s[2][2];
    if (!fma_path) {
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int k = 0; k < G::kKWords; ++k)
          if constexpr (kCvt) mma16816<false>(acc, qa[k], cvt_e4m3_pair(kw[t][k]), cvt_e4m3_pair(kw[t][k] >> 16));
          else mma16816<false>(acc, qa[k], widen_word<kType>(kw[t][k], 0), widen_word<kType>(kw[t][k], 1));
        s[t][0] = (acc[0] + acc[2]) * unscale_q, s[t][1] = (acc[1] + acc[3]) * unscale_q;
      }
    } else {
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const unsigned char* row = stage + (8 * t + 2 * c + i) * G::kKRow;
          float dot = 0.0f;
          for (int d = 0; d < p.head_dim; ++d) dot = fmaf(q_scaled[r][d], rpa::code_to_float(kType, row[d]), dot);
          s[t][i] = dot;
        }
    }
    // Scale and cap in log2 units (as matrix_core_kernel), keys past the end -inf (select).
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float x = p.soft_cap > 0.0f ? cap_log2 * tanhf(s[t][i] * scale_over_cap) : s[t][i] * scale_log2;
        s[t][i] = key0 + 8 * t + 2 * c + i < tile.key_end ? x : -INFINITY;
      }
    // Online softmax of head r over the quad's 16 keys; the reference max moves only past kMaxSlack.
    constexpr float kMaxSlack = 8.0f;
    float step_max = fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]));
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 1));
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 2));
    float rescale = 1.0f;
    if (step_max > row_max + kMaxSlack) {
      rescale = exp2_ftz(row_max - step_max);
      row_max = step_max, row_sum *= rescale;
    }
    if (__any_sync(0xffffffffu, rescale != 1.0f)) {  // O^T's columns are heads 2c and 2c + 1
      const float f0 = __shfl_sync(0xffffffffu, rescale, 8 * c), f1 = __shfl_sync(0xffffffffu, rescale, 8 * c + 4);
#pragma unroll
      for (int m = 0; m < D_MAX / 16; ++m) o[m][0] *= f0, o[m][2] *= f0, o[m][1] *= f1, o[m][3] *= f1;
    }
    const float subtract = row_max == -INFINITY ? 0.0f : row_max;
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int i = 0; i < 2; ++i) s[t][i] = exp2_ftz(s[t][i] - subtract);

    if (!fma_path) {
      uint32_t hi[2], lo[2];
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        split_pair<false>(s[t][0], s[t][1], hi[t], lo[t], s[t][0], s[t][1]);
        row_sum += s[t][0] + s[t][1];
      }
#pragma unroll
      for (int m = 0; m < D_MAX / 16; ++m) {
        const int w = m / 2, j = 2 * (m % 2);
        uint32_t a[4];
        if constexpr (kCvt) {  // bytes j (then j + 1) of two keys into the low 16 bits
          a[0] = cvt_e4m3_pair(__byte_perm(vw[0][w], vw[1][w], j | (4 + j) << 4));
          a[1] = cvt_e4m3_pair(__byte_perm(vw[0][w], vw[1][w], (j + 1) | (5 + j) << 4));
          a[2] = cvt_e4m3_pair(__byte_perm(vw[2][w], vw[3][w], j | (4 + j) << 4));
          a[3] = cvt_e4m3_pair(__byte_perm(vw[2][w], vw[3][w], (j + 1) | (5 + j) << 4));
        } else {
          a[0] = widen_across<kType>(vw[0][w], vw[1][w], j), a[1] = widen_across<kType>(vw[0][w], vw[1][w], j + 1);
          a[2] = widen_across<kType>(vw[2][w], vw[3][w], j), a[3] = widen_across<kType>(vw[2][w], vw[3][w], j + 1);
        }
        mma16816<false>(o[m], a, hi[0], hi[1]);
        mma16816<false>(o[m], a, lo[0], lo[1]);
      }
    } else {  // P of heads 2c and 2c + 1 for each key from the quad holding it; V's exact values
      row_sum += s[0][0] + s[0][1] + s[1][0] + s[1][1];
#pragma unroll
      for (int key = 0; key < G::kKeys; ++key) {
        const int from = key % 8 / 2;
        const float p0 = __shfl_sync(0xffffffffu, s[key / 8][key % 2], 8 * c + from);
        const float p1 = __shfl_sync(0xffffffffu, s[key / 8][key % 2], 8 * c + 4 + from);
        const unsigned char* row = v_rows + key * G::kVRow + r * (D_MAX / 8);
#pragma unroll
        for (int m = 0; m < D_MAX / 16; ++m) {
          const float v0 = rpa::code_to_float(kType, row[2 * m]) / kUnscale;
          const float v1 = rpa::code_to_float(kType, row[2 * m + 1]) / kUnscale;
          o[m][0] = fmaf(p0, v0, o[m][0]), o[m][1] = fmaf(p1, v0, o[m][1]);
          o[m][2] = fmaf(p0, v1, o[m][2]), o[m][3] = fmaf(p1, v1, o[m][3]);
        }
      }
    }
  }

  copy_async_wait<0>();
  if constexpr (!kChecked && CodeChecks<Kv>::kDeferred) {
    float sum = row_sum;  // non-finite when any of its terms is
#pragma unroll
    for (int m = 0; m < D_MAX / 16; ++m) sum += o[m][0] + o[m][1] + o[m][2] + o[m][3];
    if (__syncthreads_or(!is_finite(sum))) return false;
  }
  // The warps' states into the ring (natural-log max), combined by decode_finish.
  row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
  row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
  __syncthreads();
  Combine& combine = *reinterpret_cast<Combine*>(ring);
  if (c == 0 && r < ROWS) combine.max[warp][r] = row_max / kLog2e, combine.sum[warp][r] = row_sum;
  float* acc = reinterpret_cast<float*>(combine.acc);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (2 * c + h >= ROWS) continue;
    float* to = acc + (warp * ROWS + 2 * c + h) * D_MAX + r * (D_MAX / 8);
#pragma unroll
    for (int m = 0; m < D_MAX / 16; ++m) to[2 * m] = o[m][h], to[2 * m + 1] = o[m][2 + h];
  }
  __syncthreads();
  decode_finish<D_MAX, ROWS, G::kWarps>(p, tile, combine, kUnscale * v_scale);
  return true;
}

template <typename Kv, int D_MAX, int ROWS>
__device__ __forceinline__ void code_decode_kernel(Params p) {
  using Checks = CodeChecks<Kv>;
  __shared__ __align__(16) CodeDecodeShared<D_MAX, Checks::kCheck> shared;  // one for both passes
  // A failed unchecked pass ends on a barrier after its last ring read.
  if constexpr (Checks::kDeferred)
    if (code_decode_tile<Kv, D_MAX, ROWS, false>(p, shared)) return;
  code_decode_tile<Kv, D_MAX, ROWS, Checks::kCheck>(p, shared);
}

// The decode entries of kernel_list.h on NVIDIA: 8-bit caches with head dims up to 128 take the tensor
// cores, the rest decode_kernel.
template <typename Kv, int D_MAX, int ROWS>
struct NvidiaDecode {
  static constexpr bool kCodes = Kv::kQuantised && D_MAX <= 128;
  static constexpr int kMinBlocks = kCodes ? kCodeDecodeBlocks : DecodeGeometry<Kv, D_MAX, ROWS>::kMinBlocks;
};
template <typename Kv, int D_MAX, int ROWS>
__device__ __forceinline__ void nvidia_decode_kernel(Params p) {
  if constexpr (NvidiaDecode<Kv, D_MAX, ROWS>::kCodes) code_decode_kernel<Kv, D_MAX, ROWS>(p);
  else decode_kernel<Kv, D_MAX, ROWS>(p);
}

}  // namespace rpa_gpu

#endif  // RPA_GPU_CUDA
