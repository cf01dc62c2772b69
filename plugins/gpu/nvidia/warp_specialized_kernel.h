// The warp-specialised prefill kernel of Hopper (sm_90a code only; elsewhere its body traps and the host
// never launches it), FlashAttention-3's arrangement over a paged cache, for 16-bit Q and KV of one type
// and head dims up to 128. The tiles, masking, online softmax, hi + lo products and output are
// matrix_core_kernel's (whose pieces it calls); a block of three warpgroups takes a tile of up to
// kMaxTileRows = 128 rows:
// - a producer warpgroup, on few registers (setmaxnreg), gathers the tile's queries, then its paged K/V
//   rows, kSpecialisedKeys keys a tile, with cp.async into a ring of kStages shared-memory stages; a
//   stage's `full` mbarrier completes when its copies landed (cp.async.mbarrier.arrive), its `empty`
//   mbarrier when both consumers are done with it;
// - two consumer warpgroups, each with its own 64 rows of the tile, use every K/V stage. Each issues the
//   scores of tile t (wgmma, asynchronous) together with the products P V of tile t - 1, runs tile t's
//   softmax while they run, then waits for the products; and the two take turns at issuing (named
//   barriers: ping-pong), so one's softmax overlaps the other's products.
#pragma once

#include "plugins/gpu/nvidia/matrix_core_kernel.h"

#if defined(RPA_GPU_CUDA)

namespace rpa_gpu {

constexpr int kSpecialisedKeys = 64;          // keys per K/V tile
constexpr int kSpecialisedThreads = 3 * 128;  // the producer warpgroup, then two consumers
static_assert(kMaxTileRows == 128, "a consumer warpgroup's 64 rows each");

// Shared memory: Q [128][D_MAX], kStages stages of K then V [kKeys][D_MAX] (16-bit, WarpgroupMma's
// swizzled layout), then the mbarriers (full, empty, the queries'), a 1 KiB atom of zeros (the zero
// tile) and the query rows' offsets.
template <int D_MAX>
struct SpecialisedGeometry {
  using Layout = typename WarpgroupMma<true, D_MAX, kSpecialisedKeys>::Layout;  // f16's is the same
  static constexpr int kKeys = kSpecialisedKeys, kRows = kMaxTileRows;
  static constexpr int kStages = D_MAX == 64 ? 8 : 4;  // 128 KiB of K/V in flight either way
  static constexpr int kQueryElements = Layout::elements(kRows);
  static constexpr int kTileElements = Layout::elements(kKeys);  // K or V of one stage
  static constexpr size_t kAlignment = 1024;                     // of the tiles: wgmma's swizzle atoms
  static constexpr size_t kTileBytes = 2 * (size_t(kQueryElements) + size_t(kStages) * 2 * kTileElements);
  static constexpr int kZeroOffset = 1024 / 2;  // elements from the barriers to the zero tile (aligned)
  static constexpr size_t kSharedBytes = kAlignment + kTileBytes + 2 * kZeroOffset + 1024 + 8 * kRows;
  static_assert(8 * (2 * kStages + 1) <= 1024, "the barriers fit before the zero tile");
};

#if defined(RPA_GPU_WGMMA_CODE)
__device__ inline void mbarrier_init(uint64_t* barrier, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(barrier)), "r"(count) : "memory");
}
__device__ inline void mbarrier_arrive(uint64_t* barrier) {  // release: this thread's accesses before it
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(shared_address(barrier)) : "memory");
}
// An arrival once this thread's cp.async copies issued so far have completed (one of the barrier's count).
__device__ inline void mbarrier_arrive_copies(uint64_t* barrier) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(shared_address(barrier)) : "memory");
}
// Waits until the barrier's phase of this parity completed (acquire).
__device__ inline void mbarrier_wait(uint64_t* barrier, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait;\n}\n" ::"r"(shared_address(barrier)),
      "r"(parity)
      : "memory");
}
// Named barriers of some of the block's warps (0 is __syncthreads'; 1 and 2 the consumers' turns, 3 and 4
// their V checks, 5 the producer's): sync waits for `threads` arrivals
// (its own included), arrive counts one without waiting; sync_or also ORs a flag over the waiting threads.
__device__ inline void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ inline void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ inline bool named_sync_or(int id, int threads, bool flag) {
  uint32_t any;
  asm volatile("{\n.reg .pred f, a;\nsetp.ne.u32 f, %1, 0;\nbar.red.or.pred a, %2, %3, f;\nselp.u32 %0, 1, 0, a;\n}\n"
               : "=r"(any)
               : "r"(uint32_t(flag)), "r"(id), "r"(threads)
               : "memory");
  return any != 0;
}
#endif

// Registers of a producer and of a consumer thread: 128 * 72 + 256 * 208 <= 64 Ki, the SM's file.
constexpr int kProducerRegisters = 72, kConsumerRegisters = 208;

template <typename Kv, int D_MAX>
__device__ __forceinline__ void specialised_kernel(Params p) {
#if defined(RPA_GPU_WGMMA_CODE)
  using G = SpecialisedGeometry<D_MAX>;
  using Layout = typename G::Layout;
  constexpr bool kBf16 = Kv::kDtype == RPA_DTYPE_BF16;
  using Mma = WarpgroupMma<kBf16, D_MAX, G::kKeys>;
  constexpr int kStages = G::kStages, kStageElements = 2 * G::kTileElements, kDimTiles = D_MAX / 8;
  extern __shared__ float4 shared_raw[];
  uint16_t* q_rows = reinterpret_cast<uint16_t*>(shared_raw) + (-shared_address(shared_raw) % G::kAlignment) / 2;
  uint16_t* ring = q_rows + G::kQueryElements;
  uint64_t* full = reinterpret_cast<uint64_t*>(ring + kStages * kStageElements);
  uint64_t* empty = full + kStages;
  uint64_t* queries_ready = empty + kStages;
  uint16_t* zero_tile = ring + kStages * kStageElements + G::kZeroOffset;
  int64_t* row_offsets = reinterpret_cast<int64_t*>(zero_tile + 512);

  Tile tile;
  if (!fetch_tile<true>(p, tile)) return;
  const int tile_rows = tile.heads * tile.rows;
  const int key_tiles = tile.key_end > tile.key_begin ? (tile.key_end - tile.key_begin + G::kKeys - 1) / G::kKeys : 0;
  const int role = threadIdx.x / 128, thread = threadIdx.x % 128;
  if (threadIdx.x == 0)
    for (int s = 0; s < kStages; ++s) mbarrier_init(&full[s], 128), mbarrier_init(&empty[s], 256);
  if (threadIdx.x == 0) mbarrier_init(queries_ready, 128);
  for (int i = threadIdx.x; i < 512 / 8; i += blockDim.x) reinterpret_cast<uint4*>(zero_tile)[i] = make_uint4(0, 0, 0, 0);
  Mma::publish_shared();  // the zero tile, read by wgmma
  __syncthreads();

  if (role == 0) {  // the producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegisters));
    KvGather<Kv, D_MAX, G::kKeys, 128> gather(p, tile, thread);
    gather.fetch_entries(p, tile, tile.key_begin);
    // The queries: copies tracked by their barrier, or (rows that take element loads) stores it releases.
    row_offsets[thread] = query_row_offset(p, tile, thread);
    named_sync(5, 128);  // the producer's threads
    load_queries<Layout, D_MAX, G::kRows, 128>(p, row_offsets, q_rows, thread);
    if (p.vector_queries) mbarrier_arrive_copies(queries_ready);
    else mbarrier_arrive(queries_ready);
    // Each stage's full barrier completes once the copies of all 128 threads landed, so the producer runs
    // up to kStages tiles ahead of the slower consumer.
    for (int t = 0; t < key_tiles; ++t) {
      const int stage = t % kStages, key0 = tile.key_begin + t * G::kKeys;
      if (t >= kStages) mbarrier_wait(&empty[stage], (t / kStages - 1) & 1);
      uint16_t* k_rows = ring + stage * kStageElements;
      gather.template copy<Layout>(p, tile, key0, k_rows, k_rows + G::kTileElements);
      mbarrier_arrive_copies(&full[stage]);
      gather.fetch_entries(p, tile, key0 + G::kKeys);
    }
    copy_async_wait<0>();  // no copy outlives its thread
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegisters));
  const int consumer = role - 1, warp = thread / 32, lane = thread % 32;
  // A tile of at most 64 rows leaves the second consumer nothing to compute: it only frees the stages.
  const bool both = tile_rows > 64;
  if (consumer == 1 && !both) {
    for (int t = 0; t < key_tiles; ++t) {
      mbarrier_wait(&full[t % kStages], (t / kStages) & 1);
      mbarrier_arrive(&empty[t % kStages]);
    }
    return;
  }
  // The turns at issuing products: consumer c waits at barrier 1 + c for the other's arrival (the first
  // consumer goes first, and takes the second's last arrival at the end); alone, a consumer skips them.
  const auto take_turn = [&] {
    if (both) named_sync(1 + consumer, 256);
  };
  const auto pass_turn = [&] {
    if (both) named_arrive(2 - consumer, 256);
  };
  if (consumer == 1) pass_turn();

  const LaneRows visible(p, tile, consumer * 64 + warp * 16, lane);  // this lane's rows of the consumer's 64
  const SoftmaxScale scaling = softmax_scale_of(p, 1.0f);
  const uint16_t* my_queries = q_rows + Layout::at(consumer * 64, 0, G::kRows);
  float out[kDimTiles][4], row_sum[2] = {0.0f, 0.0f};
  float row_max[2] = {-INFINITY, -INFINITY};  // in log2 units, like the scores
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) out[n][0] = out[n][1] = out[n][2] = out[n][3] = 0.0f;
  float s[G::kKeys / 8][4];
  uint32_t hi[G::kKeys / 16][4], lo[G::kKeys / 16][4];  // A fragments of the previous tile's P, 16 keys each
  // The previous tile's V (or the zero tile, when FMA took it) and stage: its products are issued with
  // this tile's scores. Every tile issues the same products, so no wgmma is on a divergent path.
  const uint16_t* previous_values = nullptr;
  int previous_stage = 0;
  // Tile t's softmax, after its scores: its weights become hi and lo for the products issued with the next
  // tile's scores, or, where V holds an Inf or NaN, go into out at once on the FMA path (the products then
  // read the zero tile: 0 times finite weights adds nothing).
  const auto tile_softmax = [&](int t, bool pending) {
    const int stage = t % kStages, key0 = tile.key_begin + t * G::kKeys;
    const uint16_t* v_rows = ring + stage * kStageElements + G::kTileElements;
    const bool full_tile = tile_fully_visible(p, tile, key0, G::kKeys);
    const bool nonfinite =
        !full_tile && named_sync_or(3 + consumer, 128, values_nonfinite<kBf16, Layout, D_MAX, G::kKeys, 128>(v_rows, thread));
    if (pending) wgmma_wait<1>();  // the scores (the previous tile's products may run on)
    else wgmma_wait<0>();
    keep(s);
    float rescale[2];
    const bool moved = softmax_weights(p, scaling, s, full_tile, key0, visible.pair, visible, row_max, row_sum, rescale);
    if (pending) {
      wgmma_wait<0>();
      keep(out), keep(hi), keep(lo);
      mbarrier_arrive(&empty[previous_stage]);
    }
    if (moved) rescale_rows(out, rescale);
    if (!nonfinite) {
      split_weights<kBf16>(s, hi, lo, row_sum);
      previous_values = v_rows;
    } else {
      fma_values<kBf16, Layout, G::kKeys>(s, out, row_sum, key0, lane, visible, v_rows);
#pragma unroll
      for (int k = 0; k < G::kKeys / 16; ++k)
#pragma unroll
        for (int r = 0; r < 4; ++r) hi[k][r] = lo[k][r] = 0;  // finite, for the zero tile's products
      previous_values = nullptr;
    }
    previous_stage = stage;
  };

  // The copies were written through the generic proxy; wgmma reads through the async one.
  const auto acquire = [&](uint64_t* barrier, uint32_t parity) {
    mbarrier_wait(barrier, parity);
    Mma::publish_shared();
  };
  acquire(queries_ready, 0);
  if (key_tiles > 0) {
    acquire(&full[0], 0);
    take_turn();
    Mma::issue_scores(s, my_queries, G::kRows, ring);
    pass_turn();
    tile_softmax(0, false);
  }
  for (int t = 1; t < key_tiles; ++t) {
    const int stage = t % kStages;
    acquire(&full[stage], (t / kStages) & 1);
    take_turn();
    Mma::issue_scores(s, my_queries, G::kRows, ring + stage * kStageElements);
    Mma::issue_values(out, hi, lo, previous_values ? previous_values : zero_tile, previous_values == nullptr);
    pass_turn();
    tile_softmax(t, true);
  }
  if (key_tiles > 0) {
    take_turn();
    Mma::issue_values(out, hi, lo, previous_values ? previous_values : zero_tile, previous_values == nullptr);
    pass_turn();
    wgmma_wait<0>();
    keep(out), keep(hi), keep(lo);
    mbarrier_arrive(&empty[previous_stage]);
  }
  if (consumer == 0) take_turn();
  store_matrix_rows(p, tile, visible.rows, lane, out, row_max, row_sum, 1.0f);
#else
  (void)p;
  __trap();
#endif
}

}  // namespace rpa_gpu

#endif  // RPA_GPU_CUDA
