// The GPU plugin: host side. Implements plugins/plugin_abi.h over the HIP API (CUDA through
// gpu_vendor.h): plans a problem into tiles on the host (planner.h; metadata is host memory), uploads
// block tables and tiles (once per plan, or per call into the context's scratch for a single call), and
// launches the kernels of attention_kernels.h and matrix_core_kernel.h. Nothing here throws across the
// ABI: every entry catches and leaves its message in the thread's last_error.
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "plugins/gpu/attention_kernels.h"
#include "plugins/gpu/kernel_set.h"
#include "plugins/gpu/nvidia/matrix_core_kernel.h"
#include "plugins/gpu/planner.h"
#include "plugins/plugin_abi.h"

using rpa_gpu::Kernel;
using rpa_gpu::Params;
using rpa_gpu::Tile;

namespace {

thread_local std::string last_error;

struct Failure {
  rpa_status status;
  std::string message;
};

[[noreturn]] void fail(rpa_status status, std::string message) { throw Failure{status, std::move(message)}; }

void check(hipError_t error, const char* what) {
  if (error == hipSuccess) return;
  fail(error == hipErrorOutOfMemory ? RPA_STATUS_OUT_OF_MEMORY : RPA_STATUS_DEVICE_ERROR,
       std::string(what) + " failed: " + hipGetErrorName(error) + ": " + hipGetErrorString(error));
}

// The KernelSet's answer: empty, or what failed.
void check(const std::string& error) {
  if (!error.empty()) fail(RPA_STATUS_DEVICE_ERROR, error);
}

int device_attribute(hipDeviceAttribute_t attribute, int device) {
  int value = 0;
  check(hipDeviceGetAttribute(&value, attribute, device), "hipDeviceGetAttribute");
  return value;
}

// The products of the tiled kernel for 16-bit inputs: wgmma on Hopper when the plugin carries sm_90a code
// (RPA_GPU_WGMMA), mma.sync from sm_80 on, FMA elsewhere (AMD). RPA_GPU_MATRIX_CORES=0 (FMA) or =mma
// (mma.sync on Hopper) picks a slower path, to compare the paths in tests and benchmarks.
enum class MatrixPath { none, warp, warpgroup };

MatrixPath matrix_path(int device) {
#if defined(RPA_GPU_CUDA)
  const char* request = std::getenv("RPA_GPU_MATRIX_CORES");
  const int major = device_attribute(hipDeviceAttributeComputeCapabilityMajor, device);
  if ((request && std::strcmp(request, "0") == 0) || major < 8) return MatrixPath::none;
#if defined(RPA_GPU_WGMMA)
  if (!(request && std::strcmp(request, "mma") == 0) && major == 9 &&
      device_attribute(hipDeviceAttributeComputeCapabilityMinor, device) == 0)
    return MatrixPath::warpgroup;
#endif
  return MatrixPath::warp;
#else
  (void)device;
  return MatrixPath::none;
#endif
}

const char* matrix_path_name(MatrixPath path) {
  return path == MatrixPath::warpgroup ? "wgmma" : path == MatrixPath::warp ? "mma.sync" : "FMA";
}

template <typename Body>
rpa_status guarded(Body&& body) noexcept {
  try {
    body();
    return RPA_STATUS_OK;
  } catch (const Failure& failure) {
    last_error = failure.message;
    return failure.status;
  } catch (const std::bad_alloc&) {
    last_error = "host memory allocation failed";
    return RPA_STATUS_OUT_OF_MEMORY;
  } catch (const std::exception& error) {
    last_error = error.what();
    return RPA_STATUS_INTERNAL;
  } catch (...) {
    last_error = "unknown exception";
    return RPA_STATUS_INTERNAL;
  }
}

// Memory that only grows (by half again at least), so repeated calls allocate nothing.
template <hipError_t (*Allocate)(void**, size_t), hipError_t (*Free)(void*)>
class GrowingBuffer {
 public:
  explicit GrowingBuffer(const char* what) : what_(what) {}
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() {
    if (data_) (void)Free(data_);
  }
  char* data() const { return data_; }
  char* reserve(size_t bytes) {
    if (bytes > bytes_) {
      const size_t grown = std::max(bytes, bytes_ + bytes_ / 2);
      if (data_) check(Free(data_), what_);
      data_ = nullptr, bytes_ = 0;
      check(Allocate(reinterpret_cast<void**>(&data_), grown), what_);
      bytes_ = grown;
    }
    return data_;
  }

 private:
  const char* what_;
  char* data_ = nullptr;
  size_t bytes_ = 0;
};

hipError_t allocate_device(void** pointer, size_t bytes) { return hipMalloc(pointer, bytes); }
hipError_t allocate_pinned(void** pointer, size_t bytes) { return hipHostMalloc(pointer, bytes, hipHostMallocDefault); }
hipError_t free_device(void* pointer) { return hipFree(pointer); }
hipError_t free_pinned(void* pointer) { return hipHostFree(pointer); }
using DeviceBuffer = GrowingBuffer<allocate_device, free_device>;  // scratch
using PinnedBuffer = GrowingBuffer<allocate_pinned, free_pinned>;  // the per-call upload: copies are asynchronous

size_t align_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

int head_dim_bucket(int64_t head_dim) {
  if (head_dim <= 64) return 64;
  if (head_dim <= 128) return 128;
  return 256;
}

template <int D_MAX>
using Geometry = rpa_gpu::Geometry<D_MAX>;

int rows_per_block(int d_max) { return d_max == 64 ? Geometry<64>::kRows : d_max == 128 ? Geometry<128>::kRows : Geometry<256>::kRows; }
int keys_per_tile(int d_max) { return d_max == 64 ? Geometry<64>::kKeys : d_max == 128 ? Geometry<128>::kKeys : Geometry<256>::kKeys; }

// Bytes from a tensor's first element to one past its last (strides are non-negative).
size_t span_bytes(int element_size, std::initializer_list<std::pair<int64_t, int64_t>> extents_and_strides,
                  int64_t last_dim) {
  int64_t last = last_dim - 1;
  for (const auto& [extent, stride] : extents_and_strides) last += (extent - 1) * stride;
  return static_cast<size_t>(last + 1) * element_size;
}

int element_size(rpa_dtype dtype) { return rpa::dtype_size(dtype); }

}  // namespace

struct rpa_plugin_state {
  int device = 0;
  int multiprocessors = 1;
  int resident_blocks[3] = {1, 1, 1};  // attention blocks one multiprocessor holds, by head-dim bucket 64/128/256
  MatrixPath matrix_path = MatrixPath::none;  // products for 16-bit inputs (see plugin_create)
  hipStream_t own_stream = nullptr;  // host-memory calls
  hipStream_t side_stream = nullptr;  // decode tiles beside the other attention tiles (see launch_tiles)
  hipEvent_t fork = nullptr, join = nullptr;  // the side stream starts after, and is joined back into, the call's
  hipEvent_t scratch_released = nullptr;  // after the last single call's kernels: the next may reuse scratch
  hipEvent_t upload_done = nullptr;       // after the last upload: the pinned buffer may be rewritten
  bool any_work = false;
  std::mutex mutex;  // one call or run at a time enqueues (scratch, side stream and events are shared)
  DeviceBuffer metadata{"device scratch (metadata)"}, partials{"device scratch (split partials)"},
      staging{"device scratch (host-memory inputs)"};
  PinnedBuffer upload{"pinned upload buffer"};
  rpa_gpu::KernelSet kernels;  // unloaded after the destructor's body has drained the streams

  ~rpa_plugin_state() {
    (void)hipSetDevice(device);
    if (own_stream) (void)hipStreamSynchronize(own_stream), (void)hipStreamDestroy(own_stream);
    if (side_stream) (void)hipStreamSynchronize(side_stream), (void)hipStreamDestroy(side_stream);
    if (fork) (void)hipEventDestroy(fork);
    if (join) (void)hipEventDestroy(join);
    if (scratch_released) (void)hipEventSynchronize(scratch_released), (void)hipEventDestroy(scratch_released);
    if (upload_done) (void)hipEventDestroy(upload_done);
  }
};

namespace {

// A problem whose float tensors point at device memory, with the stream to run on.
struct DeviceCall {
  rpa_problem problem;
  hipStream_t stream;
};

// Host memory: copies every float tensor's span to the staging buffer (out and lse too, so the gaps of
// strided outputs come back unchanged) and points the problem at the copies.
struct HostSpans {
  struct Span {
    const void* host;
    size_t offset, bytes;
  };
  Span queries, k, v, sinks, out, lse;
  size_t total = 0;
};

HostSpans host_spans(const rpa_problem& p) {
  HostSpans spans;
  auto add = [&](const void* host, size_t bytes) {
    HostSpans::Span span{host, spans.total, host ? bytes : 0};
    spans.total = align_up(spans.total + span.bytes, 256);
    return span;
  };
  const int kv_size = element_size(p.kv_dtype);
  spans.queries = add(p.queries, span_bytes(element_size(p.query_dtype),
                                            {{p.num_tokens, p.query_token_stride}, {p.num_q_heads, p.query_head_stride}},
                                            p.head_dim));
  for (auto [view, span] : {std::pair{&p.k, &spans.k}, std::pair{&p.v, &spans.v}})
    *span = add(view->data, span_bytes(kv_size,
                                      {{p.num_pages, view->page_stride}, {p.page_size, view->slot_stride},
                                       {p.num_kv_heads, view->head_stride}},
                                      p.head_dim));
  spans.sinks = add(p.sinks, span_bytes(element_size(p.sink_dtype), {{p.sink_heads, p.sink_head_stride}},
                                        1 + (p.sinks_per_head - 1) * p.sink_stride));
  spans.out = add(p.out, span_bytes(element_size(p.out_dtype),
                                    {{p.num_tokens, p.out_token_stride}, {p.num_q_heads, p.out_head_stride}},
                                    p.head_dim));
  spans.lse = add(p.lse, span_bytes(4, {{p.num_tokens, p.lse_token_stride}}, 1 + (p.num_q_heads - 1) * p.lse_head_stride));
  return spans;
}

DeviceCall copy_in(rpa_plugin_state& state, const rpa_problem& host, const HostSpans& spans) {
  char* device = state.staging.reserve(spans.total);
  DeviceCall call{host, state.own_stream};
  auto put = [&](const HostSpans::Span& span) -> char* {
    if (!span.bytes) return nullptr;
    check(hipMemcpyAsync(device + span.offset, span.host, span.bytes, hipMemcpyHostToDevice, call.stream),
          "hipMemcpyAsync (host inputs)");
    return device + span.offset;
  };
  rpa_problem& p = call.problem;
  p.queries = put(spans.queries);
  p.k.data = put(spans.k);
  p.v.data = put(spans.v);
  p.sinks = put(spans.sinks);
  p.out = put(spans.out);
  p.lse = reinterpret_cast<float*>(put(spans.lse));
  return call;
}

void copy_out(const DeviceCall& call, const rpa_problem& host, const HostSpans& spans) {
  check(hipMemcpyAsync(host.out, call.problem.out, spans.out.bytes, hipMemcpyDeviceToHost, call.stream),
        "hipMemcpyAsync (out)");
  if (host.lse)
    check(hipMemcpyAsync(host.lse, call.problem.lse, spans.lse.bytes, hipMemcpyDeviceToHost, call.stream),
          "hipMemcpyAsync (lse)");
  check(hipStreamSynchronize(call.stream), "hipStreamSynchronize");
}

// Kernels and launch parameters of one planned call, ready to be launched (again, when timing).
struct Launch {
  Params params;
  int d_max;
  rpa_dtype kv_dtype;
  int decode_blocks, decode_rows, attention_blocks, merge_blocks;
  MatrixPath matrix_path;  // none: the attention tiles take attention_kernel, else matrix_core_kernel
  // Device metadata: its slot grid replaces the tiles (merge_blocks then counts the attention merges).
  bool device_metadata;
  int merge_decode_blocks;
  rpa_gpu::MetadataCheck metadata_check;
  int64_t covered_begin, covered_end, num_tokens;
  hipStream_t stream, side_stream;
  hipEvent_t fork, join;
  const rpa_gpu::KernelSet* kernels;
};

#if defined(RPA_GPU_CUDA)
template <typename Kv, int D_MAX, template <bool, int, int> class MmaOf>
constexpr int matrix_shared_bytes =
    int(rpa_gpu::MatrixGeometry<D_MAX, rpa_gpu::MatrixMma<Kv, D_MAX, MmaOf>>::kSharedBytes);

// Dynamic shared memory of matrix_core_kernel, by policy (warpgroup or not), dtype and head dim.
int matrix_shared(bool warpgroup, rpa_dtype kv, int d_max) {
  const bool bf16 = kv == RPA_DTYPE_BF16;
  if (warpgroup)
    return d_max == 64 ? (bf16 ? matrix_shared_bytes<rpa_gpu::KvBf16, 64, rpa_gpu::WarpgroupMma>
                               : matrix_shared_bytes<rpa_gpu::KvF16, 64, rpa_gpu::WarpgroupMma>)
                       : (bf16 ? matrix_shared_bytes<rpa_gpu::KvBf16, 128, rpa_gpu::WarpgroupMma>
                               : matrix_shared_bytes<rpa_gpu::KvF16, 128, rpa_gpu::WarpgroupMma>);
  return d_max == 64 ? (bf16 ? matrix_shared_bytes<rpa_gpu::KvBf16, 64, rpa_gpu::WarpMma>
                             : matrix_shared_bytes<rpa_gpu::KvF16, 64, rpa_gpu::WarpMma>)
                     : (bf16 ? matrix_shared_bytes<rpa_gpu::KvBf16, 128, rpa_gpu::WarpMma>
                             : matrix_shared_bytes<rpa_gpu::KvF16, 128, rpa_gpu::WarpMma>);
}
#endif

size_t attention_shared(int d_max) {
  return d_max == 64 ? Geometry<64>::kSharedBytes : d_max == 128 ? Geometry<128>::kSharedBytes : Geometry<256>::kSharedBytes;
}

void launch_attention(const Launch& launch, const Params& params) {
#if defined(RPA_GPU_CUDA)
  if (launch.matrix_path != MatrixPath::none) {
    const bool warpgroup = launch.matrix_path == MatrixPath::warpgroup;
    check(launch.kernels->launch(rpa_gpu::matrix_entry(warpgroup, launch.kv_dtype, launch.d_max), launch.attention_blocks,
                                 rpa_gpu::kMatrixThreads, matrix_shared(warpgroup, launch.kv_dtype, launch.d_max),
                                 launch.stream, params));
    return;
  }
#endif
  check(launch.kernels->launch(rpa_gpu::attention_entry(launch.kv_dtype, launch.d_max), launch.attention_blocks,
                               rpa_gpu::kThreads, attention_shared(launch.d_max), launch.stream, params));
}

// With both kinds of tiles, the decode tiles (memory bound) run on the side stream beside the others
// (compute bound), and the merge waits for both.
void launch_tiles(const Launch& launch) {
  Params params = launch.params;
  const bool beside = launch.decode_blocks > 0 && launch.attention_blocks > 0;
  const hipStream_t decode_stream = beside ? launch.side_stream : launch.stream;
  if (beside) {
    check(hipEventRecord(launch.fork, launch.stream), "hipEventRecord (fork)");
    check(hipStreamWaitEvent(launch.side_stream, launch.fork, 0), "hipStreamWaitEvent (fork)");
  }
  if (launch.decode_blocks > 0) {
    const int rows = launch.decode_rows <= 4 ? 4 : 8;
    params.grid_kind = rpa_gpu::kGridDecode;
    check(launch.kernels->launch(rpa_gpu::decode_entry(launch.kv_dtype, launch.d_max, rows), launch.decode_blocks,
                                 rpa_gpu::kThreads, 0, decode_stream, params));
  }
  if (params.tiles) params.tiles += launch.decode_blocks;
  params.grid_kind = rpa_gpu::kGridAttention;
  if (launch.attention_blocks > 0) launch_attention(launch, params);
  if (params.tiles) params.tiles += launch.attention_blocks;
  if (beside) {
    check(hipEventRecord(launch.join, launch.side_stream), "hipEventRecord (join)");
    check(hipStreamWaitEvent(launch.stream, launch.join, 0), "hipStreamWaitEvent (join)");
  }
  if (launch.merge_decode_blocks > 0) {
    params.grid_kind = rpa_gpu::kGridMergeDecode;
    check(launch.kernels->launch(Kernel::rpa_merge, launch.merge_decode_blocks, rpa_gpu::kThreads, 0, launch.stream, params));
  }
  params.grid_kind = rpa_gpu::kGridMergeAttention;
  if (launch.merge_blocks > 0)
    check(launch.kernels->launch(Kernel::rpa_merge, launch.merge_blocks, rpa_gpu::kThreads, 0, launch.stream, params));
}

void launch_zero_rows(const Launch& launch, int64_t begin, int64_t end) {
  if (begin >= end) return;
  const int64_t elements = (end - begin) * launch.params.num_q_heads * launch.params.head_dim;
  const int blocks = static_cast<int>(std::min<int64_t>((elements + rpa_gpu::kThreads - 1) / rpa_gpu::kThreads, 4096));
  check(launch.kernels->launch(Kernel::rpa_zero_rows, blocks, rpa_gpu::kThreads, 0, launch.stream, launch.params, begin, end));
}

void enqueue(const Launch& launch) {
  if (launch.device_metadata) {
    // The metadata's rules first (the tiles skip broken sequences), then the rows no sequence covers.
    const rpa_gpu::MetadataCheck& c = launch.metadata_check;
    if (c.num_seqs > 0)
      check(launch.kernels->launch(Kernel::rpa_check_metadata, c.num_seqs, rpa_gpu::kThreads, 0, launch.stream, c));
    if (launch.params.grid.attention.chunks > 0)
      check(launch.kernels->launch(Kernel::rpa_chunk_offsets, 1, rpa_gpu::kThreads, 0, launch.stream, launch.params.grid,
                                   const_cast<int32_t*>(launch.params.grid.chunk_offsets)));
    const int64_t blocks = (launch.num_tokens + rpa_gpu::kZeroRows - 1) / rpa_gpu::kZeroRows;
    check(launch.kernels->launch(Kernel::rpa_zero_uncovered_rows, static_cast<unsigned>(blocks), rpa_gpu::kThreads, 0,
                                 launch.stream, launch.params, c.query_start_loc, c.num_seqs, launch.num_tokens));
  } else {
    launch_zero_rows(launch, 0, launch.covered_begin);
    launch_zero_rows(launch, launch.covered_end, launch.num_tokens);
  }
  launch_tiles(launch);
}

// Kernels above 48 KiB of dynamic shared memory must say so (NVIDIA).
void allow_shared_memory_all(const rpa_gpu::KernelSet& kernels) {
  for (rpa_dtype kv : {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16, RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8})
    for (int d_max : {64, 128, 256}) {
      check(kernels.allow_shared(rpa_gpu::attention_entry(kv, d_max), int(attention_shared(d_max))));
#if defined(RPA_GPU_CUDA)
      if ((kv == RPA_DTYPE_F16 || kv == RPA_DTYPE_BF16) && d_max <= 128)
        for (bool warpgroup : {false, true})
          check(kernels.allow_shared(rpa_gpu::matrix_entry(warpgroup, kv, d_max), matrix_shared(warpgroup, kv, d_max)));
#endif
    }
}

// Blocks of the attention kernel that fit on one multiprocessor at once.
int resident_blocks(const rpa_gpu::KernelSet& kernels, int d_max) {
  int blocks = 0;
  check(kernels.occupancy(rpa_gpu::attention_entry(RPA_DTYPE_BF16, d_max), rpa_gpu::kThreads, attention_shared(d_max),
                          &blocks));
  return std::max(blocks, 1);
}

// Whether every row of a tensor (head_dim elements of `dtype` at `data` plus any combination of `strides`)
// is 16-byte aligned and a whole number of 16-byte vectors.
bool rows_vectorizable(const void* data, rpa_dtype dtype, std::initializer_list<int64_t> strides, int64_t head_dim) {
  const int64_t vector = 16 / element_size(dtype);
  if (reinterpret_cast<uintptr_t>(data) % 16 || head_dim % vector) return false;
  for (int64_t stride : strides)
    if (stride % vector) return false;
  return true;
}

bool kv_vectorizable(const rpa_problem& p) {
  for (const rpa_kv_view* view : {&p.k, &p.v})
    if (!rows_vectorizable(view->data, p.kv_dtype, {view->page_stride, view->slot_stride, view->head_stride}, p.head_dim))
      return false;
  return true;
}

// The K then V scale of every kv head (per-tensor scales repeated), as the kernels index them.
void put_scales(const float* k_scale, int64_t k_stride, const float* v_scale, int64_t v_stride, int64_t kv_heads,
                float* k_to, float* v_to) {
  for (int64_t h = 0; h < kv_heads; ++h) k_to[h] = k_scale[h * k_stride], v_to[h] = v_scale[h * v_stride];
}

// What planning decides: the tiles and the kernels that run them. Tensor pointers do not enter it,
// except through vector_kv (whether the KV rows allow 16-byte loads), which picks the kernels.
struct Schedule {
  rpa_gpu::TilePlan tiles;
  int d_max;
  bool vector_kv;
  MatrixPath matrix_path;  // none: the attention tiles take attention_kernel, else matrix_core_kernel
  size_t tiles_offset, metadata_bytes, partial_bytes;  // device metadata: block tables, then tiles
  // Device metadata (problem.metadata_memory): the slot grid, and the plan's device words: the error
  // record (the lowest broken sequence, INT32_MAX for none) at 0, then seq_ok [num_seqs] at tiles_offset,
  // then chunk_offsets [num_seqs + 1].
  bool device_metadata;
  rpa_gpu::DeviceGrid grid;
};

// Throws RPA_STATUS_UNSUPPORTED for a problem the kernels cannot run.
void check_supported(const rpa_problem& p) {
  if (p.head_dim > 256)
    fail(RPA_STATUS_UNSUPPORTED, "argument 'queries': head_dim " + std::to_string(p.head_dim) +
                                     " exceeds 256, the largest the GPU kernels support");
  if (const std::string why = rpa_gpu::plan_limit_error(p); !why.empty()) fail(RPA_STATUS_UNSUPPORTED, why);
  // A quantised cache's scales travel in the kernel parameters (a run uploads nothing: graph capture).
  if (rpa::is_quantised_dtype(p.kv_dtype) && p.num_kv_heads > rpa_gpu::kMaxScaleHeads)
    fail(RPA_STATUS_UNSUPPORTED, "argument 'kv_pages': a quantised cache with " + std::to_string(p.num_kv_heads) +
                                     " kv heads; the GPU kernels take at most " +
                                     std::to_string(rpa_gpu::kMaxScaleHeads));
  // Device metadata: a slot per (row chunk, q head) of the batch's tokens and of each sequence's last
  // partial chunk, and a launch holds < 2^31 blocks.
  const int64_t slots = (p.num_tokens + int64_t(p.num_seqs) * rpa_gpu::kMaxTileRows) * p.num_q_heads;
  if (p.metadata_memory == RPA_MEMORY_DEVICE && slots > (int64_t(1) << 30))
    fail(RPA_STATUS_UNSUPPORTED, "argument 'num_seqs': (T + num_seqs * " + std::to_string(rpa_gpu::kMaxTileRows) +
                                     ") * QH = " + std::to_string(slots) +
                                     " exceeds the GPU backend's limit of 2^30 for device metadata");
}

Schedule make_schedule(const rpa_plugin_state& state, const rpa_problem& p, bool vector_kv) {
  check_supported(p);
  Schedule schedule{};
  schedule.d_max = head_dim_bucket(p.head_dim);
  schedule.vector_kv = vector_kv;
  // Matrix cores for 16-bit Q and KV of one type, rows that allow 16-byte copies, head dims up to 128.
  const bool matrix_cores = state.matrix_path != MatrixPath::none && p.query_dtype == p.kv_dtype &&
                            p.kv_dtype != RPA_DTYPE_F32 && schedule.d_max <= 128 && vector_kv;
  schedule.matrix_path = matrix_cores ? state.matrix_path : MatrixPath::none;
  rpa_gpu::PlanLimits limits{};
  // decode_kernel reads 8 elements a lane (16 bytes; an 8-bit cache 16 or 8).
  limits.decode_eligible = vector_kv && p.head_dim % (rpa::is_quantised_dtype(p.kv_dtype) ? 16 : 8) == 0;
  limits.decode_max_rows = rpa_gpu::kDecodeMaxRows;
  limits.max_rows = matrix_cores ? rpa_gpu::kMatrixRows : rows_per_block(schedule.d_max);
  limits.tile_keys = keys_per_tile(schedule.d_max);
  // Split long key ranges only up to one wave of resident blocks: each split costs a partial write and a
  // merge, which measured slower on an H100 than a last wave the splits would fill (W1: 0.29 ms unsplit,
  // 0.32 ms with four waves).
  limits.target_blocks = int64_t(state.multiprocessors) * state.resident_blocks[schedule.d_max / 128];
  if (p.metadata_memory == RPA_MEMORY_DEVICE) {
    schedule.device_metadata = true;
    schedule.grid = rpa_gpu::make_device_grid(p, limits, schedule.tiles.partial_rows);
    schedule.tiles.decode_rows = schedule.grid.decode.heads;
    schedule.tiles_offset = 256;
    schedule.metadata_bytes = schedule.tiles_offset + (2 * static_cast<size_t>(p.num_seqs) + 1) * sizeof(int32_t);
  } else {
    schedule.tiles = rpa_gpu::make_tile_plan(p, limits);
    const size_t table_bytes = static_cast<size_t>(p.num_seqs) * p.pages_per_seq * sizeof(int32_t);
    schedule.tiles_offset = align_up(table_bytes, 256);
    schedule.metadata_bytes = std::max<size_t>(schedule.tiles_offset + schedule.tiles.tiles.size() * sizeof(Tile), 1);
  }
  schedule.partial_bytes =
      std::max<size_t>(static_cast<size_t>(schedule.tiles.partial_rows) * (p.head_dim + 2) * sizeof(float), 1);
  return schedule;
}

// The schedule's device metadata as it is uploaded: block tables of its sequences, then its tiles; with
// device metadata an empty error record.
void write_metadata(char* host, const rpa_problem& p, const Schedule& schedule) {
  if (schedule.device_metadata) {
    const int32_t none = INT32_MAX;
    std::memcpy(host, &none, sizeof none);
    return;
  }
  for (int32_t s = 0; s < p.num_seqs; ++s)
    std::memcpy(host + s * p.pages_per_seq * sizeof(int32_t), p.block_tables + s * p.block_table_stride,
                p.pages_per_seq * sizeof(int32_t));
  std::memcpy(host + schedule.tiles_offset, schedule.tiles.tiles.data(), schedule.tiles.tiles.size() * sizeof(Tile));
}

// The launch of a scheduled call whose tensors (in `p`) and metadata are on the device.
Launch make_launch(const rpa_plugin_state& state, const rpa_problem& p, const Schedule& schedule,
                   const char* metadata, float* partials, hipStream_t stream) {
  Launch launch{};
  Params& k = launch.params;
  k.queries = p.queries;
  k.query_token_stride = p.query_token_stride, k.query_head_stride = p.query_head_stride;
  k.query_dtype = p.query_dtype;
  k.k = rpa_gpu::KvView{p.k.data, p.k.page_stride, p.k.slot_stride, p.k.head_stride};
  k.v = rpa_gpu::KvView{p.v.data, p.v.page_stride, p.v.slot_stride, p.v.head_stride};
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
  k.head_dim = static_cast<int32_t>(p.head_dim), k.page_size = static_cast<int32_t>(p.page_size);
  // page_of's divisor: shift = ceil(log2 page_size), multiplier = floor(2^32 (2^shift - page_size) / page_size) + 1.
  while ((int64_t(1) << k.page_shift) < p.page_size) ++k.page_shift;
  k.page_multiplier = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << k.page_shift) - p.page_size)) /
                                                p.page_size + 1);
  if (schedule.device_metadata) {
    k.block_tables = p.block_tables;
    k.block_table_stride = p.block_table_stride;
    k.grid = schedule.grid;
    k.grid.seq_ok = reinterpret_cast<const int32_t*>(metadata + schedule.tiles_offset);
    k.grid.chunk_offsets = k.grid.seq_ok + p.num_seqs;
    launch.metadata_check = rpa_gpu::MetadataCheck{
        p.context_lens, p.query_start_loc, p.block_tables, p.block_table_stride,
        reinterpret_cast<int32_t*>(const_cast<char*>(metadata + schedule.tiles_offset)),
        reinterpret_cast<int32_t*>(const_cast<char*>(metadata)), p.num_tokens, p.num_pages, p.page_size,
        p.pages_per_seq * p.page_size, p.num_seqs, p.max_query_len, p.max_context_len,
        static_cast<int32_t>(p.sliding_window)};
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
  k.out_pairs = reinterpret_cast<uintptr_t>(p.out) % (2 * element_size(p.out_dtype)) == 0 &&
                p.out_token_stride % 2 == 0 && p.out_head_stride % 2 == 0;
  // Scales of a quantised cache (at most kMaxScaleHeads: check_supported).
  if (rpa::is_quantised_dtype(p.kv_dtype))
    put_scales(p.k_scale, p.k_scale_stride, p.v_scale, p.v_scale_stride, p.num_kv_heads, k.k_scales, k.v_scales);

  const rpa_gpu::TilePlan& tiles = schedule.tiles;
  launch.d_max = schedule.d_max;
  launch.kv_dtype = p.kv_dtype;
  launch.matrix_path = schedule.matrix_path;
  launch.decode_rows = tiles.decode_rows;
  launch.device_metadata = schedule.device_metadata;
  if (schedule.device_metadata) {
    // check_supported bounds the slots of each kind below 2^31.
    launch.decode_blocks = static_cast<int>(rpa_gpu::grid_blocks(schedule.grid, rpa_gpu::kGridDecode));
    launch.attention_blocks = static_cast<int>(rpa_gpu::grid_blocks(schedule.grid, rpa_gpu::kGridAttention));
    launch.merge_decode_blocks = static_cast<int>(rpa_gpu::grid_blocks(schedule.grid, rpa_gpu::kGridMergeDecode));
    launch.merge_blocks = static_cast<int>(rpa_gpu::grid_blocks(schedule.grid, rpa_gpu::kGridMergeAttention));
  } else {
    launch.decode_blocks = static_cast<int>(tiles.decode_tiles);
    launch.attention_blocks = static_cast<int>(tiles.attention_tiles - tiles.decode_tiles);
    launch.merge_blocks = static_cast<int>(tiles.tiles.size() - tiles.attention_tiles);
  }
  if (!schedule.device_metadata) {  // device metadata: zero_uncovered_rows_kernel reads these on the device
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

// A single call: plans into the context's scratch and uploads through the pinned buffer, stream-ordered
// after the previous single call's use of it. The caller holds state.mutex.
Launch prepare_single(rpa_plugin_state& state, const DeviceCall& call) {
  const rpa_problem& p = call.problem;
  const Schedule schedule = make_schedule(state, p, kv_vectorizable(p));
  if (state.any_work) check(hipEventSynchronize(state.upload_done), "hipEventSynchronize");
  char* host = state.upload.reserve(schedule.metadata_bytes);
  write_metadata(host, p, schedule);
  char* device = state.metadata.reserve(schedule.metadata_bytes);
  float* partials = reinterpret_cast<float*>(state.partials.reserve(schedule.partial_bytes));
  check(hipMemcpyAsync(device, host, schedule.metadata_bytes, hipMemcpyHostToDevice, call.stream),
        "hipMemcpyAsync (plan)");
  check(hipEventRecord(state.upload_done, call.stream), "hipEventRecord");
  state.any_work = true;
  return make_launch(state, p, schedule, device, partials, call.stream);
}

hipStream_t stream_of(const rpa_plugin_state& state, const rpa_problem& problem) {
  return problem.memory == RPA_MEMORY_HOST ? state.own_stream : static_cast<hipStream_t>(problem.stream);
}

// Runs `body(call)` with the call's tensors on the device: host memory is staged in and out around it.
// The caller holds state.mutex.
template <typename Body>
void on_device(rpa_plugin_state& state, const rpa_problem& problem, Body&& body) {
  const bool on_host = problem.memory == RPA_MEMORY_HOST;
  const HostSpans spans = on_host ? host_spans(problem) : HostSpans{};
  const DeviceCall call = on_host ? copy_in(state, problem, spans) : DeviceCall{problem, stream_of(state, problem)};
  body(call);
  if (on_host) copy_out(call, problem, spans);
  else if (problem.synchronize) check(hipStreamSynchronize(call.stream), "hipStreamSynchronize");
}

// Runs `body(launch)` for a single call.
template <typename Body>
void with_single_call(rpa_plugin_state& state, const rpa_problem& problem, Body&& body) {
  check(hipSetDevice(state.device), "hipSetDevice");
  std::lock_guard<std::mutex> lock(state.mutex);
  const hipStream_t stream = stream_of(state, problem);
  // Scratch is reused: wait (on the device) until the previous call, on whatever stream, is done with it.
  if (state.any_work) check(hipStreamWaitEvent(stream, state.scratch_released, 0), "hipStreamWaitEvent");
  on_device(state, problem, [&](const DeviceCall& call) {
    body(prepare_single(state, call));
    check(hipEventRecord(state.scratch_released, call.stream), "hipEventRecord");
  });
}

bool capturing(hipStream_t stream) {
  hipStreamCaptureStatus status = hipStreamCaptureStatusNone;
  check(hipStreamIsCapturing(stream, &status), "hipStreamIsCapturing");
  return status != hipStreamCaptureStatusNone;
}

}  // namespace

// A plan's schedule with its own device metadata and partials, uploaded once.
struct PlannedSchedule {
  Schedule schedule;
  DeviceBuffer metadata{"plan metadata"}, partials{"plan split partials"};
};

struct rpa_plugin_plan {
  rpa_plugin_state* state;
  rpa_problem problem;  // as planned: the metadata pointers stay valid until plan_destroy
  // By vector_kv. The one the planned pointers suggest (aligned when they are NULL) is made at creation;
  // a run whose KV pointers disagree makes the other on first need (an upload: not capture-safe).
  std::unique_ptr<PlannedSchedule> schedules[2];
  hipEvent_t released = nullptr;  // after the last uncaptured run: its partials may be reused
  bool ran = false;

  ~rpa_plugin_plan() {
    (void)hipSetDevice(state->device);
    if (released) (void)hipEventSynchronize(released), (void)hipEventDestroy(released);
  }

  // The caller holds state->mutex.
  PlannedSchedule& schedule(bool vector_kv) {
    std::unique_ptr<PlannedSchedule>& slot = schedules[vector_kv ? 1 : 0];
    if (!slot) {
      auto made = std::make_unique<PlannedSchedule>();
      made->schedule = make_schedule(*state, problem, vector_kv);
      std::vector<char> host(made->schedule.metadata_bytes);
      write_metadata(host.data(), problem, made->schedule);
      check(hipMemcpy(made->metadata.reserve(host.size()), host.data(), host.size(), hipMemcpyHostToDevice),
            "hipMemcpy (plan)");
      made->partials.reserve(made->schedule.partial_bytes);
      slot = std::move(made);
    }
    return *slot;
  }
};

namespace {

// Runs `body(launch)` for one run of a plan: only enqueues, apart from host-memory staging.
template <typename Body>
void with_planned_run(rpa_plugin_plan& plan, const rpa_problem& problem, Body&& body) {
  rpa_plugin_state& state = *plan.state;
  check(hipSetDevice(state.device), "hipSetDevice");
  std::lock_guard<std::mutex> lock(state.mutex);
  on_device(state, problem, [&](const DeviceCall& call) {
    PlannedSchedule& planned = plan.schedule(kv_vectorizable(call.problem));
    // Runs of one plan on different streams share its partials; in a capture the caller's order holds
    // (and an event from outside the capture cannot be waited on).
    const bool captured = capturing(call.stream);
    if (plan.ran && !captured) check(hipStreamWaitEvent(call.stream, plan.released, 0), "hipStreamWaitEvent");
    body(make_launch(state, call.problem, planned.schedule, planned.metadata.data(),
                     reinterpret_cast<float*>(planned.partials.data()), call.stream));
    if (!captured) {
      check(hipEventRecord(plan.released, call.stream), "hipEventRecord");
      plan.ran = true;
    }
  });
}

// Device events around `iterations` calls of `enqueue(i)` on `stream`, in milliseconds.
template <typename Enqueue>
void time_with_events(int device, hipStream_t stream, int32_t iterations, double* milliseconds, Enqueue&& enqueue_one) {
  std::vector<hipEvent_t> events(2 * static_cast<size_t>(iterations), nullptr);
  struct Destroy {
    std::vector<hipEvent_t>& events;
    ~Destroy() {
      for (hipEvent_t event : events)
        if (event) (void)hipEventDestroy(event);
    }
  } destroy{events};
  check(hipSetDevice(device), "hipSetDevice");
  for (hipEvent_t& event : events) check(hipEventCreate(&event), "hipEventCreate");
  enqueue_one([&](int32_t i, bool end) { check(hipEventRecord(events[2 * i + (end ? 1 : 0)], stream), "hipEventRecord"); });
  for (int32_t i = 0; i < iterations; ++i) {
    check(hipEventSynchronize(events[2 * i + 1]), "hipEventSynchronize");
    float elapsed = 0;
    check(hipEventElapsedTime(&elapsed, events[2 * i], events[2 * i + 1]), "hipEventElapsedTime");
    milliseconds[i] = elapsed;
  }
}

// ---- the ABI entries ----

int32_t cached_device_count = 0;

const char* plugin_last_error() { return last_error.c_str(); }

rpa_status plugin_init() {
  return guarded([] {
    const hipError_t error = hipGetDeviceCount(&cached_device_count);
    if (error == hipErrorNoDevice) {
      cached_device_count = 0;
      return;
    }
    check(error, "hipGetDeviceCount");
  });
}

rpa_status plugin_device_count(int32_t* count) {
  *count = cached_device_count;
  return RPA_STATUS_OK;
}

rpa_status plugin_describe_device(int32_t ordinal, char* text, size_t text_size) {
  return guarded([&] {
#if defined(RPA_GPU_AMD_HOST)
    char name[256] = "";
    size_t memory = 0;
    check(rpa_gpu::hip().hipDeviceGetName(name, sizeof name, ordinal), "hipDeviceGetName");
    check(rpa_gpu::hip().hipDeviceTotalMem(&memory, ordinal), "hipDeviceTotalMem");
    const std::string arch = " (" + rpa_gpu::hip_arch_name(ordinal) + ")";
#else
    cudaDeviceProp properties;
    check(cudaGetDeviceProperties(&properties, ordinal), "cudaGetDeviceProperties");
    const char* name = properties.name;
    const size_t memory = properties.totalGlobalMem;
    const std::string arch;
#endif
    std::snprintf(text, text_size, "%s%s, %d multiprocessors, %.1f GiB, warp %d, 16-bit products: %s, kernels: %s", name,
                  arch.c_str(), device_attribute(hipDeviceAttributeMultiprocessorCount, ordinal), memory / 1073741824.0,
                  device_attribute(hipDeviceAttributeWarpSize, ordinal), matrix_path_name(matrix_path(ordinal)),
                  rpa_gpu::kernel_path(ordinal).c_str());
  });
}

rpa_status plugin_create(int32_t ordinal, rpa_plugin_state** out) {
  *out = nullptr;
  return guarded([&] {
    if (ordinal < 0 || ordinal >= cached_device_count)
      fail(RPA_STATUS_UNAVAILABLE, "no device " + std::to_string(ordinal) + " (" +
                                       std::to_string(cached_device_count) + " present)");
    auto state = std::make_unique<rpa_plugin_state>();
    state->device = ordinal;
    check(hipSetDevice(ordinal), "hipSetDevice");
    state->multiprocessors = device_attribute(hipDeviceAttributeMultiprocessorCount, ordinal);
    state->matrix_path = matrix_path(ordinal);
    std::string error;
    if (const rpa_status status = state->kernels.load(ordinal, &error); status != RPA_STATUS_OK)
      fail(status, "device " + std::to_string(ordinal) + ": no kernels: " + error);
    check(hipStreamCreateWithFlags(&state->own_stream, hipStreamNonBlocking), "hipStreamCreateWithFlags");
    check(hipStreamCreateWithFlags(&state->side_stream, hipStreamNonBlocking), "hipStreamCreateWithFlags");
    check(hipEventCreateWithFlags(&state->fork, hipEventDisableTiming), "hipEventCreateWithFlags");
    check(hipEventCreateWithFlags(&state->join, hipEventDisableTiming), "hipEventCreateWithFlags");
    check(hipEventCreateWithFlags(&state->scratch_released, hipEventDisableTiming), "hipEventCreateWithFlags");
    check(hipEventCreateWithFlags(&state->upload_done, hipEventDisableTiming), "hipEventCreateWithFlags");
    allow_shared_memory_all(state->kernels);
    for (int d_max : {64, 128, 256}) state->resident_blocks[d_max / 128] = resident_blocks(state->kernels, d_max);
    *out = state.release();
  });
}

void plugin_destroy(rpa_plugin_state* state) { delete state; }

rpa_status plugin_run(rpa_plugin_state* state, const rpa_problem* problem) {
  return guarded([&] {
    if (problem->metadata_memory == RPA_MEMORY_DEVICE)
      fail(RPA_STATUS_INTERNAL, "plugin run: device metadata reached the single-call path (the core plans it)");
    with_single_call(*state, *problem, [](const Launch& launch) { enqueue(launch); });
  });
}

rpa_status plugin_plan_create(rpa_plugin_state* state, const rpa_problem* problem, rpa_plugin_plan** out) {
  *out = nullptr;
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    auto plan = std::make_unique<rpa_plugin_plan>();
    plan->state = state;
    plan->problem = *problem;
    check(hipEventCreateWithFlags(&plan->released, hipEventDisableTiming), "hipEventCreateWithFlags");
    // Without pointers the KV is taken as aligned (host memory is staged aligned).
    const bool vector_kv = !problem->k.data || kv_vectorizable(*problem);
    std::lock_guard<std::mutex> lock(state->mutex);
    plan->schedule(vector_kv);
    *out = plan.release();
  });
}

rpa_status plugin_plan_run(rpa_plugin_plan* plan, const rpa_problem* problem) {
  return guarded([&] { with_planned_run(*plan, *problem, [](const Launch& launch) { enqueue(launch); }); });
}

rpa_status plugin_plan_time(rpa_plugin_plan* plan, const rpa_problem* problem, int32_t iterations,
                            double* milliseconds, int32_t whole_runs) {
  return guarded([&] {
    const hipStream_t stream = stream_of(*plan->state, *problem);
    time_with_events(plan->state->device, stream, iterations, milliseconds, [&](auto&& record) {
      if (whole_runs) {
        for (int32_t i = 0; i < iterations; ++i) {
          record(i, false);
          with_planned_run(*plan, *problem, [](const Launch& launch) { enqueue(launch); });
          record(i, true);
        }
        return;
      }
      // The kernels alone, back to back.
      with_planned_run(*plan, *problem, [&](const Launch& launch) {
        for (int32_t i = 0; i < iterations; ++i) {
          record(i, false);
          enqueue(launch);
          record(i, true);
        }
      });
    });
  });
}

void plugin_plan_destroy(rpa_plugin_plan* plan) { delete plan; }

// Device metadata: the lowest sequence any run since the last call recorded as broken, record cleared.
rpa_status plugin_plan_take_error(rpa_plugin_plan* plan, int32_t* first_seq) {
  *first_seq = -1;
  return guarded([&] {
    if (plan->problem.metadata_memory != RPA_MEMORY_DEVICE) return;
    rpa_plugin_state& state = *plan->state;
    check(hipSetDevice(state.device), "hipSetDevice");
    std::lock_guard<std::mutex> lock(state.mutex);
    check(hipDeviceSynchronize(), "hipDeviceSynchronize");  // the runs may be on any stream, or in a graph
    const int32_t none = INT32_MAX;
    for (const std::unique_ptr<PlannedSchedule>& planned : plan->schedules) {
      if (!planned) continue;
      int32_t recorded = none;
      check(hipMemcpy(&recorded, planned->metadata.data(), sizeof recorded, hipMemcpyDeviceToHost), "hipMemcpy (record)");
      if (recorded == none) continue;
      *first_seq = *first_seq < 0 ? recorded : std::min(*first_seq, recorded);
      check(hipMemcpy(planned->metadata.data(), &none, sizeof none, hipMemcpyHostToDevice), "hipMemcpy (record)");
    }
  });
}

rpa_status plugin_supports(rpa_plugin_state*, const rpa_problem* problem) {
  return guarded([&] { check_supported(*problem); });
}

rpa_status plugin_merge_states(rpa_plugin_state* state, const rpa_merge_problem* problem) {
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    const hipStream_t stream = static_cast<hipStream_t>(problem->stream);
    const int64_t rows = problem->num_tokens * problem->num_heads;
    const int blocks = static_cast<int>(std::min<int64_t>((rows + 1) / 2, 65535));  // >= 2 rows a block
    check(state->kernels.launch(Kernel::rpa_merge_states_kernel, blocks, rpa_gpu::kThreads, 0, stream, *problem));
    if (problem->synchronize) check(hipStreamSynchronize(stream), "hipStreamSynchronize");
  });
}

rpa_status plugin_device_alloc(rpa_plugin_state* state, size_t bytes, void** pointer) {
  *pointer = nullptr;
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    check(hipMalloc(pointer, std::max<size_t>(bytes, 1)), "hipMalloc");
  });
}

rpa_status plugin_device_free(rpa_plugin_state* state, void* pointer) {
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    check(hipFree(pointer), "hipFree");
  });
}

rpa_status plugin_device_copy(rpa_plugin_state* state, void* dst, const void* src, size_t bytes, rpa_copy_kind kind) {
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    const hipMemcpyKind direction = kind == RPA_COPY_HOST_TO_DEVICE   ? hipMemcpyHostToDevice
                                    : kind == RPA_COPY_DEVICE_TO_HOST ? hipMemcpyDeviceToHost
                                                                      : hipMemcpyDeviceToDevice;
    check(hipMemcpy(dst, src, bytes, direction), "hipMemcpy");
    // A device-to-device hipMemcpy may return before the copy ends; the ABI promises it has ended.
    if (direction == hipMemcpyDeviceToDevice) check(hipDeviceSynchronize(), "hipDeviceSynchronize");
  });
}

// Device memory only (the core writes host memory itself): uploads the slots and scales through the
// scratch the attention calls use, and queues one kernel on the caller's stream.
rpa_status plugin_write_kv(rpa_plugin_state* state, const rpa_write_problem* problem) {
  return guarded([&] {
    const rpa_write_problem& w = *problem;
    if (w.memory != RPA_MEMORY_DEVICE) fail(RPA_STATUS_INTERNAL, "plugin write_kv: host memory reached the plugin");
    check(hipSetDevice(state->device), "hipSetDevice");
    std::lock_guard<std::mutex> lock(state->mutex);
    const hipStream_t stream = static_cast<hipStream_t>(w.stream);
    if (state->any_work) {
      check(hipStreamWaitEvent(stream, state->scratch_released, 0), "hipStreamWaitEvent");
      check(hipEventSynchronize(state->upload_done), "hipEventSynchronize");
    }
    const size_t slots_bytes = static_cast<size_t>(w.num_tokens) * sizeof(int32_t);
    const size_t scales_offset = align_up(slots_bytes, 256);
    const size_t upload_bytes = scales_offset + 2 * w.num_kv_heads * sizeof(float);
    char* host = state->upload.reserve(upload_bytes);
    std::memcpy(host, w.slots, slots_bytes);
    float* host_scales = reinterpret_cast<float*>(host + scales_offset);
    put_scales(w.k_scale, w.k_scale_stride, w.v_scale, w.v_scale_stride, w.num_kv_heads, host_scales,
               host_scales + w.num_kv_heads);
    char* device = state->metadata.reserve(upload_bytes);
    check(hipMemcpyAsync(device, host, upload_bytes, hipMemcpyHostToDevice, stream), "hipMemcpyAsync (slots)");
    check(hipEventRecord(state->upload_done, stream), "hipEventRecord");
    state->any_work = true;

    rpa_gpu::WriteParams params{};
    params.keys = w.keys, params.key_dtype = w.key_dtype;
    params.key_token_stride = w.key_token_stride, params.key_head_stride = w.key_head_stride;
    params.values = w.values, params.value_dtype = w.value_dtype;
    params.value_token_stride = w.value_token_stride, params.value_head_stride = w.value_head_stride;
    params.slots = reinterpret_cast<const int32_t*>(device);
    params.k = w.k.data, params.k_page_stride = w.k.page_stride, params.k_slot_stride = w.k.slot_stride;
    params.k_head_stride = w.k.head_stride;
    params.v = w.v.data, params.v_page_stride = w.v.page_stride, params.v_slot_stride = w.v.slot_stride;
    params.v_head_stride = w.v.head_stride;
    params.kv_dtype = w.kv_dtype;
    params.k_scales = reinterpret_cast<const float*>(device + scales_offset);
    params.v_scales = params.k_scales + w.num_kv_heads;
    params.num_tokens = w.num_tokens;
    params.num_kv_heads = static_cast<int32_t>(w.num_kv_heads);
    params.head_dim = static_cast<int32_t>(w.head_dim);
    params.page_size = static_cast<int32_t>(w.page_size);
    const int64_t elements = w.num_tokens * w.num_kv_heads * w.head_dim;
    const int blocks =
        static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((elements + rpa_gpu::kThreads - 1) / rpa_gpu::kThreads, 4096)));
    check(state->kernels.launch(Kernel::rpa_write_kv_kernel, blocks, rpa_gpu::kThreads, 0, stream, params));
    check(hipEventRecord(state->scratch_released, stream), "hipEventRecord");
    if (w.synchronize) check(hipStreamSynchronize(stream), "hipStreamSynchronize");
  });
}

const rpa_plugin_api plugin_api = {
    RPA_PLUGIN_ABI_VERSION, sizeof(rpa_plugin_api), RPA_GPU_PLUGIN_NAME, plugin_last_error, plugin_init,
    plugin_device_count, plugin_describe_device, plugin_create, plugin_destroy, plugin_run, plugin_plan_create,
    plugin_plan_run, plugin_plan_time, plugin_plan_destroy, plugin_device_alloc, plugin_device_free, plugin_device_copy,
    plugin_supports, plugin_merge_states, plugin_write_kv, plugin_plan_take_error};

}  // namespace

extern "C" {

__attribute__((visibility("default"))) const rpa_plugin_api* rpa_plugin_entry(void) { return &plugin_api; }

// Declines before the runtime is initialised when the vendor's kernel driver is absent.
__attribute__((visibility("default"))) int32_t rpa_plugin_score(void) {
#if defined(RPA_GPU_CUDA)
  if (!dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL)) {
    last_error = "the NVIDIA driver is not installed (libcuda.so.1 cannot be opened)";
    return 0;
  }
#else
  // A runtime named by RPA_HIP_RUNTIME is asked for its devices even without /dev/kfd (the tests' fake
  // runtimes).
  const char* named_runtime = std::getenv("RPA_HIP_RUNTIME");
  if (!(named_runtime && *named_runtime) && access("/dev/kfd", R_OK | W_OK) != 0) {
    last_error = "the AMD GPU kernel driver is absent or not accessible (/dev/kfd)";
    return 0;
  }
  if (!rpa_gpu::load_hip(&last_error)) return 0;
#endif
  return 1;
}

}  // extern "C"
