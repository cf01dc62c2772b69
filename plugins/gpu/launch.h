// Planning a problem into kernels (a Schedule: tiles or a device-metadata slot grid, the kernels that run
// them, the device metadata to upload) and launching them (a Launch: the kernel parameters of one call).
#pragma once

#include <cstddef>
#include <cstdint>

#include "plugins/gpu/device.h"
#include "plugins/gpu/planner.h"

namespace rpa_gpu {

// What planning decides: the tiles and the kernels that run them. Tensor pointers do not enter it,
// except through vector_kv (whether the KV rows allow 16-byte loads), which picks the kernels.
struct Schedule {
  TilePlan tiles;
  int d_max;
  bool vector_kv;
  MatrixPath matrix_path;  // none: the attention tiles take attention_kernel, else matrix_core_kernel
  size_t tiles_offset, metadata_bytes, partial_bytes;  // device metadata: block tables, then tiles
  // Device metadata (problem.metadata_memory): the slot grid, and the plan's device words: the error
  // record (the lowest broken sequence, INT32_MAX for none) at 0, prepare_metadata_kernel's block count
  // at 4, then seq_ok [num_seqs] at tiles_offset, then the row chunks (DeviceGrid::row_chunks, none in a
  // direct grid) at row_chunks_offset.
  bool device_metadata;
  size_t row_chunks_offset;
  DeviceGrid grid;
};

// Throws RPA_STATUS_UNSUPPORTED for a problem the kernels cannot run.
void check_supported(const rpa_problem& p);

Schedule make_schedule(const rpa_plugin_state& state, const rpa_problem& p, bool vector_kv);

// The schedule's device metadata as it is uploaded: block tables of its sequences, then its tiles; with
// device metadata an empty error record and a zero block count.
void write_metadata(char* host, const rpa_problem& p, const Schedule& schedule);

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
  int prepare_blocks;  // device metadata: prepare_metadata_kernel's
  int64_t covered_begin, covered_end, num_tokens;
  hipStream_t stream, side_stream;
  hipEvent_t fork, join;
  const KernelSet* kernels;
};


// The launch of a scheduled call whose tensors (in `p`) and metadata are on the device.
Launch make_launch(const rpa_plugin_state& state, const rpa_problem& p, const Schedule& schedule,
                   const char* metadata, float* partials, hipStream_t stream);

// Enqueues every kernel of `launch` on its stream (the side stream joined back in).
void enqueue(const Launch& launch);

// Whether the KV rows and strides allow 16-byte loads (which picks the kernels).
bool kv_vectorizable(const rpa_problem& p);

int head_dim_bucket(int64_t head_dim);

// Kernels above 48 KiB of dynamic shared memory must say so (NVIDIA).
void allow_shared_memory_all(const KernelSet& kernels);

// Blocks of the attention kernel that fit on one multiprocessor at once.
int resident_blocks(const KernelSet& kernels, int d_max);

}  // namespace rpa_gpu
