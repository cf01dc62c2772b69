#include "plugins/gpu/launch.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "plugins/gpu/nvidia/warp_specialized_kernel.h"
#include "plugins/gpu/staging.h"

namespace rpa_gpu {
namespace {

// The one place a head-dim bucket (64, 128 or 256) becomes the compile-time D_MAX of the kernels'
// geometry: calls f(std::integral_constant<int, D_MAX>).
template <typename F>
auto by_head_dim(int d_max, F&& f) {
  if (d_max == 64) return f(std::integral_constant<int, 64>{});
  if (d_max == 128) return f(std::integral_constant<int, 128>{});
  return f(std::integral_constant<int, 256>{});
}

#if defined(RPA_GPU_CUDA)
// Dynamic shared memory of matrix_core_kernel with product policy MmaOf, for an f16, bf16 or 8-bit (bf16
// tiles) cache and a head-dim bucket of 64 or 128.
template <template <bool, int, int> class MmaOf>
int matrix_shared_of(rpa_dtype kv, int d_max) {
  const auto bytes = [&](auto d) {
    constexpr int D = decltype(d)::value;
    return kv != RPA_DTYPE_F16 ? int(MatrixGeometry<D, MatrixMma<KvBf16, D, MmaOf>>::kSharedBytes)
                               : int(MatrixGeometry<D, MatrixMma<KvF16, D, MmaOf>>::kSharedBytes);
  };
  return d_max == 64 ? bytes(std::integral_constant<int, 64>{}) : bytes(std::integral_constant<int, 128>{});
}

int matrix_shared(bool warpgroup, rpa_dtype kv, int d_max) {
  return warpgroup ? matrix_shared_of<WarpgroupMma>(kv, d_max) : matrix_shared_of<WarpMma>(kv, d_max);
}

int specialised_shared(int d_max) {
  return d_max == 64 ? int(SpecialisedGeometry<64>::kSharedBytes) : int(SpecialisedGeometry<128>::kSharedBytes);
}
#endif

size_t attention_shared(int d_max) {
  return by_head_dim(d_max, [](auto d) { return Geometry<decltype(d)::value>::kSharedBytes; });
}
int rows_per_block(int d_max) {
  return by_head_dim(d_max, [](auto d) { return Geometry<decltype(d)::value>::kRows; });
}
int keys_per_tile(int d_max) {
  return by_head_dim(d_max, [](auto d) { return Geometry<decltype(d)::value>::kKeys; });
}

// Whether prepare_metadata_kernel lists the attention slots' row chunks (device metadata without a
// direct grid), which puts it before them on their stream.
bool lists_row_chunks(const Launch& launch) { return launch.device_metadata && !launch.params.grid.direct; }

// A listed grid: the attention kernel follows prepare_metadata_kernel on its stream and may start early
// (KernelSet::launch_early): its launch and blocks' start overlap that kernel's end, and each block waits
// for it before reading the row chunks (fetch_tile).
void launch_attention(const Launch& launch, const Params& params) {
  const auto start = [&](Kernel kernel, unsigned threads, size_t shared) {
    check(lists_row_chunks(launch)
              ? launch.kernels->launch_early(kernel, launch.attention_blocks, threads, shared, launch.stream, params)
              : launch.kernels->launch(kernel, launch.attention_blocks, threads, shared, launch.stream, params));
  };
#if defined(RPA_GPU_CUDA)
  if (launch.matrix_path == MatrixPath::specialised) {
    check(launch.kernels->launch(specialised_entry(launch.kv_dtype, launch.d_max), launch.attention_blocks,
                                 kSpecialisedThreads, specialised_shared(launch.d_max), launch.stream, params));
    return;
  }
  if (launch.matrix_path != MatrixPath::none) {
    const bool warpgroup = launch.matrix_path == MatrixPath::warpgroup;
    start(matrix_entry(warpgroup, launch.kv_dtype, launch.d_max), kMatrixThreads,
          matrix_shared(warpgroup, launch.kv_dtype, launch.d_max));
    return;
  }
#endif
  start(attention_entry(launch.kv_dtype, launch.d_max), kThreads, attention_shared(launch.d_max));
}

// With both kinds of tiles, the decode tiles (memory bound) run on the side stream beside the others
// (compute bound), and the merge waits for both. Device metadata: the side stream also merges the decode
// splits (the decode slots and merges check their own sequence: fetch_tile), so nothing there waits for
// prepare_metadata_kernel, which runs before the other tiles. A direct grid (DeviceGrid::direct) has no
// decode part and no prepare kernel: its tiles and merges run alone, and the tile launch's last blocks
// zero the rows (direct_slot_tile). Kernels beside the tiles cost W2 (H200, graph replay) 0.179 ms with a
// side stream of 8 zeroing blocks against 0.176-0.177 after them: they take places of the tiles' first
// wave, which the last waves then wait for.
void launch_tiles(const Launch& launch) {
  Params params = launch.params;
  const bool decode = launch.decode_blocks > 0, attention = launch.attention_blocks > 0;
  const bool beside = lists_row_chunks(launch) || (decode && attention);
  const hipStream_t decode_stream = beside ? launch.side_stream : launch.stream;
  if (beside) {
    check(hipEventRecord(launch.fork, launch.stream), "hipEventRecord (fork)");
    check(hipStreamWaitEvent(launch.side_stream, launch.fork, 0), "hipStreamWaitEvent (fork)");
  }
  if (decode) {
    const int rows = launch.decode_rows <= 4 ? 4 : 8;
    params.grid_kind = kGridDecode;
    check(launch.kernels->launch(decode_entry(launch.kv_dtype, launch.d_max, rows), launch.decode_blocks,
                                 kThreads, 0, decode_stream, params));
  }
  // Device metadata only (host tiles count every merge in merge_blocks).
  if (launch.merge_decode_blocks > 0) {
    params.grid_kind = kGridMergeDecode;
    check(launch.kernels->launch(Kernel::rpa_merge, launch.merge_decode_blocks, kThreads, 0, decode_stream, params));
  }
  if (lists_row_chunks(launch))
    check(launch.kernels->launch(Kernel::rpa_prepare_metadata, launch.prepare_blocks, kThreads, 0, launch.stream,
                                 params));
  if (params.tiles) params.tiles += launch.decode_blocks;
  params.grid_kind = kGridAttention;
  if (attention) launch_attention(launch, params);
  if (params.tiles) params.tiles += launch.attention_blocks;
  if (beside) {
    check(hipEventRecord(launch.join, launch.side_stream), "hipEventRecord (join)");
    check(hipStreamWaitEvent(launch.stream, launch.join, 0), "hipStreamWaitEvent (join)");
  }
  params.grid_kind = kGridMergeAttention;
  if (launch.merge_blocks > 0)
    check(launch.kernels->launch(Kernel::rpa_merge, launch.merge_blocks, kThreads, 0, launch.stream, params));
}

// Blocks of a grid-stride launch over `rows` output rows.
int grid_stride_blocks(const Params& params, int64_t rows) {
  const int64_t elements = rows * params.num_q_heads * params.head_dim;
  return static_cast<int>(std::clamp<int64_t>((elements + kThreads - 1) / kThreads, 1, 4096));
}

void launch_zero_rows(const Launch& launch, int64_t begin, int64_t end) {
  if (begin >= end) return;
  const int blocks = grid_stride_blocks(launch.params, end - begin);
  check(launch.kernels->launch(Kernel::rpa_zero_rows, blocks, kThreads, 0, launch.stream, launch.params, begin, end));
}

// Whether every row of a tensor (head_dim elements of `dtype` at `data` plus any combination of `strides`)
// is 16-byte aligned and a whole number of 16-byte vectors.
bool rows_vectorizable(const void* data, rpa_dtype dtype, std::initializer_list<int64_t> strides, int64_t head_dim) {
  const int64_t vector = 16 / rpa::dtype_size(dtype);
  if (reinterpret_cast<uintptr_t>(data) % 16 || head_dim % vector) return false;
  for (int64_t stride : strides)
    if (stride % vector) return false;
  return true;
}

}  // namespace

int head_dim_bucket(int64_t head_dim) {
  if (head_dim <= 64) return 64;
  if (head_dim <= 128) return 128;
  return 256;
}

bool kv_vectorizable(const rpa_problem& p) {
  for (const rpa_kv_view* view : {&p.k, &p.v})
    if (!rows_vectorizable(view->data, p.kv_dtype, {view->page_stride, view->slot_stride, view->head_stride}, p.head_dim))
      return false;
  return true;
}


void enqueue(const Launch& launch) {
  if (!launch.device_metadata) {  // device metadata: prepare_metadata_kernel zeroes the rows no sequence covers
    launch_zero_rows(launch, 0, launch.covered_begin);
    launch_zero_rows(launch, launch.covered_end, launch.num_tokens);
  }
  launch_tiles(launch);
}

void allow_shared_memory_all(const KernelSet& kernels) {
  // The small kernels take the attention kernels' split of L1 and shared memory, so a multiprocessor
  // that ran one takes attention blocks without switching first. H200, W3 with device metadata:
  // 0.179 ms a run with none, 0.161 with prepare_metadata_kernel's (its planned run: 0.160), 0.144 (a
  // captured graph's replay) with these; W1 and W2 did not move.
  for (Kernel kernel : {Kernel::rpa_prepare_metadata, Kernel::rpa_merge, Kernel::rpa_zero_rows})
    check(kernels.prefer_shared(kernel));
  for (rpa_dtype kv : {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16, RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8})
    for (int d_max : {64, 128, 256}) {
      for (int rows : {4, 8}) check(kernels.prefer_shared(decode_entry(kv, d_max, rows)));
      check(kernels.allow_shared(attention_entry(kv, d_max), int(attention_shared(d_max))));
#if defined(RPA_GPU_CUDA)
      if (kv != RPA_DTYPE_F32 && d_max <= 128)
        for (bool warpgroup : {false, true})
          check(kernels.allow_shared(matrix_entry(warpgroup, kv, d_max), matrix_shared(warpgroup, kv, d_max)));
      if ((kv == RPA_DTYPE_F16 || kv == RPA_DTYPE_BF16) && d_max <= 128)
        check(kernels.allow_shared(specialised_entry(kv, d_max), specialised_shared(d_max)));
#endif
    }
}

int resident_blocks(const KernelSet& kernels, int d_max) {
  int blocks = 0;
  check(kernels.occupancy(attention_entry(RPA_DTYPE_BF16, d_max), kThreads, attention_shared(d_max),
                          &blocks));
  return std::max(blocks, 1);
}


namespace {
// Whether the batch may hold one-token sequences (device metadata: unknown to the host, so yes).
bool has_decode_sequences(const rpa_problem& p) {
  if (p.metadata_memory == RPA_MEMORY_DEVICE) return true;
  for (int64_t s = 0; s < p.num_seqs; ++s)
    if (p.query_start_loc[s + 1] - p.query_start_loc[s] == 1) return true;
  return false;
}
// The batch's longest query (device metadata: its bound, 0 the largest the shapes allow).
int64_t longest_query(const rpa_problem& p) {
  if (p.metadata_memory == RPA_MEMORY_DEVICE) return p.max_query_len > 0 ? p.max_query_len : p.num_tokens;
  int64_t longest = 0;
  for (int64_t s = 0; s < p.num_seqs; ++s) longest = std::max<int64_t>(longest, p.query_start_loc[s + 1] - p.query_start_loc[s]);
  return longest;
}
}  // namespace

void check_supported(const rpa_problem& p) {
  if (p.head_dim > 256)
    fail(RPA_STATUS_UNSUPPORTED, "argument 'queries': head_dim " + std::to_string(p.head_dim) +
                                     " exceeds 256, the largest the GPU kernels support");
  if (const std::string why = plan_limit_error(p); !why.empty()) fail(RPA_STATUS_UNSUPPORTED, why);
  // A quantised cache's scales travel in the kernel parameters (a run uploads nothing: graph capture).
  if (rpa::is_quantised_dtype(p.kv_dtype) && p.num_kv_heads > kMaxScaleHeads)
    fail(RPA_STATUS_UNSUPPORTED, "argument 'kv_pages': a quantised cache with " + std::to_string(p.num_kv_heads) +
                                     " kv heads; the GPU kernels take at most " +
                                     std::to_string(kMaxScaleHeads));
  // Device metadata: a slot per (row chunk, q head) of the batch's tokens and of each sequence's last
  // partial chunk, and a launch holds < 2^31 blocks.
  const int64_t slots = (p.num_tokens + int64_t(p.num_seqs) * kMaxTileRows) * p.num_q_heads;
  if (p.metadata_memory == RPA_MEMORY_DEVICE && slots > (int64_t(1) << 30))
    fail(RPA_STATUS_UNSUPPORTED, "argument 'num_seqs': (T + num_seqs * " + std::to_string(kMaxTileRows) +
                                     ") * QH = " + std::to_string(slots) +
                                     " exceeds the GPU backend's limit of 2^30 for device metadata");
}

Schedule make_schedule(const rpa_plugin_state& state, const rpa_problem& p, bool vector_kv) {
  check_supported(p);
  Schedule schedule{};
  schedule.d_max = head_dim_bucket(p.head_dim);
  schedule.vector_kv = vector_kv;
  // Matrix cores for 16-bit Q and KV of one type or bf16 Q and an 8-bit cache (widened into bf16 tiles),
  // rows that allow 16-byte copies, head dims up to 128.
  const bool matrix_types = (p.query_dtype == p.kv_dtype && p.kv_dtype != RPA_DTYPE_F32) ||
                            (p.query_dtype == RPA_DTYPE_BF16 && rpa::is_quantised_dtype(p.kv_dtype));
  const bool matrix_cores = state.matrix_path != MatrixPath::none && matrix_types && schedule.d_max <= 128 && vector_kv;
  schedule.matrix_path = matrix_cores ? state.matrix_path : MatrixPath::none;
  PlanLimits limits{};
  // decode_kernel reads 8 elements a lane (16 bytes; an 8-bit cache 16 or 8).
  limits.decode_eligible = vector_kv && p.head_dim % (rpa::is_quantised_dtype(p.kv_dtype) ? 16 : 8) == 0;
  // The warp-specialised kernel (device.h) takes 16-bit caches, and batches without decode tiles: it holds
  // a whole multiprocessor (registers), so decode tiles could not run beside it (W3 on an H100: 0.37 ms
  // against matrix_core_kernel's 0.19). Device metadata may hold decode tiles whenever they are eligible.
  if (schedule.matrix_path == MatrixPath::warpgroup && !rpa::is_quantised_dtype(p.kv_dtype) &&
      !(limits.decode_eligible && has_decode_sequences(p)) && longest_query(p) >= state.specialised_min_query)
    schedule.matrix_path = MatrixPath::specialised;
  limits.decode_max_rows = kDecodeMaxRows;
  limits.max_rows = schedule.matrix_path == MatrixPath::specialised ? kMaxTileRows
                    : matrix_cores                                   ? kMatrixRows
                                                                     : rows_per_block(schedule.d_max);
  limits.tile_keys = keys_per_tile(schedule.d_max);
  // Split long key ranges only up to one wave of resident blocks: each split costs a partial write and a
  // merge, which measured slower on an H100 than a last wave the splits would fill (W1: 0.29 ms unsplit,
  // 0.32 ms with four waves).
  limits.target_blocks = int64_t(state.multiprocessors) * state.resident_blocks[schedule.d_max / 128];
  limits.direct_slots = state.direct_slots;
  if (p.metadata_memory == RPA_MEMORY_DEVICE) {
    schedule.device_metadata = true;
    schedule.grid = make_device_grid(p, limits, schedule.tiles.partial_rows);
    schedule.tiles.decode_rows = schedule.grid.decode.heads;
    schedule.tiles_offset = 256;
    schedule.row_chunks_offset =
        align_up(schedule.tiles_offset + static_cast<size_t>(p.num_seqs) * sizeof(int32_t), sizeof(RowChunk));
    const size_t listed = schedule.grid.direct ? 0 : size_t(schedule.grid.attention.chunks);
    schedule.metadata_bytes = schedule.row_chunks_offset + listed * sizeof(RowChunk);
  } else {
    schedule.tiles = make_tile_plan(p, limits);
    const size_t table_bytes = static_cast<size_t>(p.num_seqs) * p.pages_per_seq * sizeof(int32_t);
    schedule.tiles_offset = align_up(table_bytes, 256);
    schedule.metadata_bytes = std::max<size_t>(schedule.tiles_offset + schedule.tiles.tiles.size() * sizeof(Tile), 1);
  }
  schedule.partial_bytes =
      std::max<size_t>(static_cast<size_t>(schedule.tiles.partial_rows) * (p.head_dim + 2) * sizeof(float), 1);
  return schedule;
}

void write_metadata(char* host, const rpa_problem& p, const Schedule& schedule) {
  if (schedule.device_metadata) {  // the empty error record, then a zero block count (launch.h)
    const int32_t words[2] = {INT32_MAX, 0};
    std::memcpy(host, words, sizeof words);
    return;
  }
  for (int32_t s = 0; s < p.num_seqs; ++s)
    std::memcpy(host + s * p.pages_per_seq * sizeof(int32_t), p.block_tables + s * p.block_table_stride,
                p.pages_per_seq * sizeof(int32_t));
  std::memcpy(host + schedule.tiles_offset, schedule.tiles.tiles.data(), schedule.tiles.tiles.size() * sizeof(Tile));
}

Launch make_launch(const rpa_plugin_state& state, const rpa_problem& p, const Schedule& schedule,
                   const char* metadata, float* partials, hipStream_t stream) {
  Launch launch{};
  Params& k = launch.params;
  k.queries = p.queries;
  k.query_token_stride = p.query_token_stride, k.query_head_stride = p.query_head_stride;
  k.query_dtype = p.query_dtype;
  k.k = KvView{p.k.data, p.k.page_stride, p.k.slot_stride, p.k.head_stride};
  k.v = KvView{p.v.data, p.v.page_stride, p.v.slot_stride, p.v.head_stride};
  k.out = p.out;
  k.out_token_stride = p.out_token_stride, k.out_head_stride = p.out_head_stride;
  k.out_dtype = p.out_dtype;
  k.lse = p.lse;
  k.lse_token_stride = p.lse_token_stride, k.lse_head_stride = p.lse_head_stride;
  k.sinks = p.sinks;
  k.sink_dtype = p.sink_dtype;
  k.sink_heads = static_cast<int32_t>(p.sink_heads), k.sinks_per_head = static_cast<int32_t>(p.sinks_per_head);
  k.sink_head_stride = p.sink_head_stride, k.sink_stride = p.sink_stride;
  k.softmax_scale = static_cast<float>(p.softmax_scale);
  k.soft_cap = static_cast<float>(p.logits_soft_cap);
  k.window = static_cast<int32_t>(p.sliding_window);
  k.num_q_heads = static_cast<int32_t>(p.num_q_heads), k.num_kv_heads = static_cast<int32_t>(p.num_kv_heads);
  k.group = k.num_q_heads / k.num_kv_heads;
  k.head_dim = static_cast<int32_t>(p.head_dim), k.page_size = Divisor(static_cast<int32_t>(p.page_size));
  if (schedule.device_metadata) {
    k.block_tables = p.block_tables;
    k.block_table_stride = p.block_table_stride;
    k.grid = schedule.grid;
    k.grid.context_lens = p.context_lens, k.grid.query_start_loc = p.query_start_loc;  // the run's (rpa_plan_run)
    k.grid.seq_ok = reinterpret_cast<const int32_t*>(metadata + schedule.tiles_offset);
    k.grid.row_chunks = reinterpret_cast<const RowChunk*>(metadata + schedule.row_chunks_offset);
    // prepare_metadata_kernel (none in a direct grid, whose slots check): one block checks while the block
    // table entries (num_seqs * W) are few, else up to one a sequence. Rows left uncovered are padding,
    // most often none, which more blocks zero.
    const int64_t table_entries = int64_t(p.num_seqs) * p.pages_per_seq;
    const auto check_blocks = static_cast<int32_t>(std::clamp<int64_t>(
        (table_entries + kPreparePagesPerBlock - 1) / kPreparePagesPerBlock, 1, std::clamp<int64_t>(p.num_seqs, 1, kPrepareBlocks)));
    k.check = MetadataCheck{
        p.context_lens, p.query_start_loc, p.block_tables, p.block_table_stride,
        reinterpret_cast<int32_t*>(const_cast<char*>(metadata + schedule.tiles_offset)),
        reinterpret_cast<int32_t*>(const_cast<char*>(metadata)),
        reinterpret_cast<int32_t*>(const_cast<char*>(metadata)) + 1, p.num_tokens, p.num_pages,
        p.pages_per_seq * p.page_size, p.num_seqs, p.max_query_len, p.max_context_len, check_blocks};
    launch.prepare_blocks = std::max<int>(check_blocks, std::min(grid_stride_blocks(k, p.num_tokens), 2 * state.multiprocessors));
  } else {
    k.block_tables = reinterpret_cast<const int32_t*>(metadata);
    k.block_table_stride = p.pages_per_seq;
    k.tiles = reinterpret_cast<const Tile*>(metadata + schedule.tiles_offset);
  }
  k.partial_acc = partials;
  k.partial_stats = partials + static_cast<size_t>(schedule.tiles.partial_rows) * p.head_dim;
  k.vector_kv = schedule.vector_kv ? 1 : 0;
  k.vector_queries =
      rows_vectorizable(p.queries, p.query_dtype, {p.query_token_stride, p.query_head_stride}, p.head_dim) ? 1 : 0;
  k.out_pairs = reinterpret_cast<uintptr_t>(p.out) % (2 * rpa::dtype_size(p.out_dtype)) == 0 &&
                p.out_token_stride % 2 == 0 && p.out_head_stride % 2 == 0;
  // Scales of a quantised cache (at most kMaxScaleHeads: check_supported).
  if (rpa::is_quantised_dtype(p.kv_dtype))
    put_scales(p.k_scale, p.k_scale_stride, p.v_scale, p.v_scale_stride, p.num_kv_heads, k.k_scales, k.v_scales);

  const TilePlan& tiles = schedule.tiles;
  launch.d_max = schedule.d_max;
  launch.kv_dtype = p.kv_dtype;
  launch.matrix_path = schedule.matrix_path;
  launch.decode_rows = tiles.decode_rows;
  launch.device_metadata = schedule.device_metadata;
  if (schedule.device_metadata) {
    // check_supported bounds the slots of each kind below 2^31.
    launch.decode_blocks = static_cast<int>(grid_blocks(schedule.grid, kGridDecode));
    launch.attention_blocks = static_cast<int>(grid_blocks(schedule.grid, kGridAttention));
    // A direct grid's zeroing blocks follow its slots, one a multiprocessor at most (direct_slot_tile).
    if (schedule.grid.direct) launch.attention_blocks += std::min(grid_stride_blocks(k, p.num_tokens), state.multiprocessors);
    launch.merge_decode_blocks = static_cast<int>(grid_blocks(schedule.grid, kGridMergeDecode));
    launch.merge_blocks = static_cast<int>(grid_blocks(schedule.grid, kGridMergeAttention));
  } else {
    launch.decode_blocks = static_cast<int>(tiles.decode_tiles);
    launch.attention_blocks = static_cast<int>(tiles.attention_tiles - tiles.decode_tiles);
    launch.merge_blocks = static_cast<int>(tiles.tiles.size() - tiles.attention_tiles);
  }
  if (!schedule.device_metadata) {  // device metadata: prepare_metadata_kernel reads these on the device
    launch.covered_begin = p.num_seqs > 0 ? p.query_start_loc[0] : p.num_tokens;
    launch.covered_end = p.num_seqs > 0 ? p.query_start_loc[p.num_seqs] : p.num_tokens;
  }
  launch.num_tokens = p.num_tokens;
  launch.stream = stream;
  launch.side_stream = state.side_stream;
  launch.fork = state.fork, launch.join = state.join;
  launch.kernels = &state.kernels;
  return launch;
}
}  // namespace rpa_gpu
