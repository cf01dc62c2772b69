// The GPU plugin's host side, shared by its files (staging, launch, entries): runtime errors as
// exceptions (core/error.h's, turned into a status at the ABI entries), device buffers, the context's state.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "core/error.h"
#include "plugins/gpu/kernel_set.h"
#include "plugins/plugin_abi.h"

namespace rpa_gpu {

using rpa::fail;

// A runtime call's error as an exception: OUT_OF_MEMORY or DEVICE_ERROR naming `what`.
void check(hipError_t error, const char* what);
// The KernelSet's answer: empty, or what failed.
void check(const std::string& error);

int device_attribute(hipDeviceAttribute_t attribute, int device);

// The products of the tiled kernel for 16-bit inputs: wgmma on Hopper when the plugin carries sm_90a code
// (RPA_GPU_WGMMA), mma.sync from sm_80 on, FMA elsewhere (AMD). RPA_GPU_MATRIX_CORES=0 (FMA) picks a slower
// path, to compare the paths in tests and benchmarks.
// On the wgmma path, batches of a 16-bit cache without decode tiles whose longest query has at least
// specialised_min_query() tokens take the warp-specialised kernel (MatrixPath::specialised, make_schedule):
// faster than matrix_core_kernel from about 2048 tokens on an H100, slower below (README). Its default is
// kSpecialisedMinQuery; RPA_GPU_MATRIX_CORES=specialised makes it 1 (every batch the kernel takes),
// =wgmma never, to compare the two kernels.
enum class MatrixPath { none, warp, warpgroup, specialised };
MatrixPath matrix_path(int device);
constexpr int64_t kSpecialisedMinQuery = 2048;
int64_t specialised_min_query();
const char* matrix_path_name(MatrixPath path);

// Device metadata: prefill slots that resolve and check their own row chunks where the bounds allow
// (DeviceGrid::direct); RPA_GPU_DIRECT_SLOTS=0 has prepare_metadata_kernel list them always, to compare
// the two in tests and benchmarks.
bool direct_slots();

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

hipError_t allocate_device(void** pointer, size_t bytes);
hipError_t allocate_pinned(void** pointer, size_t bytes);
hipError_t free_device(void* pointer);
hipError_t free_pinned(void* pointer);
using DeviceBuffer = GrowingBuffer<allocate_device, free_device>;  // scratch
using PinnedBuffer = GrowingBuffer<allocate_pinned, free_pinned>;  // the per-call upload: copies are asynchronous

inline size_t align_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace rpa_gpu

struct rpa_plugin_state {
  int device = 0;
  int multiprocessors = 1;
  int resident_blocks[3] = {1, 1, 1};  // attention blocks one multiprocessor holds, by head-dim bucket 64/128/256
  rpa_gpu::MatrixPath matrix_path = rpa_gpu::MatrixPath::none;  // products for 16-bit inputs (see plugin_create)
  int64_t specialised_min_query = INT64_MAX;  // wgmma: the longest query that takes the warp-specialised kernel
  bool direct_slots = true;  // device metadata: direct grids allowed (direct_slots())
  hipStream_t own_stream = nullptr;  // host-memory calls
  hipStream_t side_stream = nullptr;  // decode tiles beside the other attention tiles (see launch_tiles)
  hipEvent_t fork = nullptr, join = nullptr;  // the side stream starts after, and is joined back into, the call's
  hipEvent_t scratch_released = nullptr;  // after the last single call's kernels: the next may reuse scratch
  hipEvent_t upload_done = nullptr;       // after the last upload: the pinned buffer may be rewritten
  bool any_work = false;
  std::mutex mutex;  // one call or run at a time enqueues (scratch, side stream and events are shared)
  rpa_gpu::DeviceBuffer metadata{"device scratch (metadata)"}, partials{"device scratch (split partials)"},
      staging{"device scratch (host-memory inputs)"};
  rpa_gpu::PinnedBuffer upload{"pinned upload buffer"};
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
