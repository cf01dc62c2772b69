// A device's kernels and the one way every launch site launches them. The kernels come from:
// - NVIDIA, by default: the plugin itself (nvcc's fatbin), launched through the runtime API;
// - AMD: the embedded code object of the device's architecture (hipModuleLoadData), else the embedded
//   kernel source compiled for the device's exact gcnArchName by the user's hipRTC (cached on disk,
//   code_cache.h);
// - RPA_GPU_KERNELS=rtc, on either vendor: always the run-time compile (NVRTC with the driver's module
//   API on NVIDIA), so the path AMD devices without a code object take also runs on the GPUs at hand.
// All of them are looked up by the unmangled names of kernel_list.h and launched with one packed
// argument list.
#pragma once

#include <stddef.h>

#include <string>
#include <vector>

#include "plugins/gpu/attention_kernels.h"
#include "plugins/gpu/kernel_list.h"

namespace rpa_gpu {

enum class Kernel : int {
#define RPA_GPU_KERNEL_ENUM(name, bounds, body, parameters, arguments) name,
  RPA_GPU_KERNELS(RPA_GPU_KERNEL_ENUM)
#undef RPA_GPU_KERNEL_ENUM
      count
};

inline int dtype_index(rpa_dtype dtype) {
  switch (dtype) {
    case RPA_DTYPE_F16: return 1;
    case RPA_DTYPE_BF16: return 2;
    case RPA_DTYPE_FP8_E4M3: return 3;
    case RPA_DTYPE_FP8_E5M2: return 4;
    case RPA_DTYPE_INT8: return 5;
    default: return 0;
  }
}
inline int head_dim_index(int d_max) { return d_max == 64 ? 0 : d_max == 128 ? 1 : 2; }

// attention_kernel<Kv, D_MAX> (kernel_list.h orders it by dtype, then head dim).
inline Kernel attention_entry(rpa_dtype kv, int d_max) {
  return Kernel(int(Kernel::rpa_attention_f32_64) + 3 * dtype_index(kv) + head_dim_index(d_max));
}
// decode_kernel<Kv, D_MAX, rows>: 4 or 8 rows (by rows, dtype, head dim).
inline Kernel decode_entry(rpa_dtype kv, int d_max, int rows) {
  const Kernel first = rows == 8 ? Kernel::rpa_decode_f32_64_8 : Kernel::rpa_decode_f32_64_4;
  return Kernel(int(first) + 3 * dtype_index(kv) + head_dim_index(d_max));
}
static_assert(int(Kernel::rpa_attention_int8_256) == int(Kernel::rpa_attention_f32_64) + 17, "kernel_list.h order");
static_assert(int(Kernel::rpa_decode_int8_256_4) == int(Kernel::rpa_decode_f32_64_4) + 17, "kernel_list.h order");
static_assert(int(Kernel::rpa_decode_int8_256_8) == int(Kernel::rpa_decode_f32_64_8) + 17, "kernel_list.h order");
#if defined(RPA_GPU_CUDA)
// matrix_core_kernel<Kv, D_MAX, WarpMma or WarpgroupMma> (ordered by policy, dtype, head dim; the 16-bit
// caches, then the 8-bit ones).
inline Kernel matrix_entry(bool warpgroup, rpa_dtype kv, int d_max) {
  if (dtype_index(kv) >= 3)
    return Kernel(int(Kernel::rpa_matrix_mma_e4m3_64) + 6 * warpgroup + 2 * (dtype_index(kv) - 3) + (d_max == 128));
  return Kernel(int(Kernel::rpa_matrix_mma_f16_64) + 4 * warpgroup + 2 * (kv == RPA_DTYPE_BF16) + (d_max == 128));
}
static_assert(int(Kernel::rpa_matrix_wgmma_bf16_128) == int(Kernel::rpa_matrix_mma_f16_64) + 7, "kernel_list.h order");
static_assert(int(Kernel::rpa_matrix_wgmma_int8_128) == int(Kernel::rpa_matrix_mma_e4m3_64) + 11, "kernel_list.h order");
// specialised_kernel<Kv, D_MAX> (by dtype f16, bf16, then head dim 64, 128).
inline Kernel specialised_entry(rpa_dtype kv, int d_max) {
  return Kernel(int(Kernel::rpa_specialised_f16_64) + 2 * (kv == RPA_DTYPE_BF16) + (d_max == 128));
}
static_assert(int(Kernel::rpa_specialised_bf16_128) == int(Kernel::rpa_specialised_f16_64) + 3, "kernel_list.h order");
#endif

// A file built into the plugin (embed.py): the AMD code objects by architecture, the kernel source.
struct EmbeddedFile {
  const char* name;
  const unsigned char* data;
  size_t size;
};
extern const EmbeddedFile embedded_code_objects[];
extern const size_t embedded_code_object_count;
extern const EmbeddedFile embedded_kernel_source;

class KernelSet {
 public:
  KernelSet() = default;
  KernelSet(const KernelSet&) = delete;
  KernelSet& operator=(const KernelSet&) = delete;
  ~KernelSet();

  // Loads the kernels for `device`, which is the current device; on failure, a status and the reason.
  rpa_status load(int device, std::string* error);
  // Where the kernels came from, for rpa info.
  const std::string& origin() const { return origin_; }

  // Launches `kernel` on a 1-D grid; the arguments must have the exact types of its parameters
  // (kernel_list.h). Returns an empty string, or what failed.
  template <typename... Args>
  std::string launch(Kernel kernel, unsigned grid, unsigned block, size_t shared, hipStream_t stream,
                     Args... args) const {
    void* arguments[] = {static_cast<void*>(&args)...};
    return launch_packed(kernel, grid, block, shared, stream, arguments);
  }
  // As launch, but with RPA_GPU_EARLY_LAUNCH=1 the kernel may start while the previous kernel of the
  // stream still runs, its launch and start overlapping that kernel's end (NVIDIA sm_90+ precompiled
  // kernels: programmatic dependent launch; elsewhere, and by default, as launch: README, "Device-resident
  // metadata", says why). It calls wait_for_previous_grid() before reading that kernel's writes.
  template <typename... Args>
  std::string launch_early(Kernel kernel, unsigned grid, unsigned block, size_t shared, hipStream_t stream,
                           Args... args) const {
    void* arguments[] = {static_cast<void*>(&args)...};
    return launch_packed(kernel, grid, block, shared, stream, arguments, early_launch_);
  }
  // Lets `kernel` take `bytes` of dynamic shared memory (NVIDIA asks above 48 KiB; AMD's 64 KiB are free).
  std::string allow_shared(Kernel kernel, int bytes) const;
  // Asks for the largest shared-memory carveout for `kernel` (NVIDIA; AMD has no carveout).
  std::string prefer_shared(Kernel kernel) const;
  // Blocks of `kernel` one multiprocessor holds at once.
  std::string occupancy(Kernel kernel, int threads, size_t shared, int* blocks) const;

 private:
  std::string launch_packed(Kernel kernel, unsigned grid, unsigned block, size_t shared, hipStream_t stream,
                            void** arguments, bool early = false) const;
  rpa_status load_module(const void* code, std::string* error);
  rpa_status compile(int device, std::vector<char>* code, std::string* error);

  std::string origin_;
  void* module_ = nullptr;        // hipModule_t or CUmodule; null on NVIDIA's precompiled path
  std::vector<void*> functions_;  // by Kernel: hipFunction_t, CUfunction, or the precompiled kernel itself
  bool early_launch_ = false;     // launch_early overlaps (RPA_GPU_EARLY_LAUNCH=1 on sm_90+, precompiled)
};

// The path `device` takes, in words, without compiling anything (describe_device).
std::string kernel_path(int device);

}  // namespace rpa_gpu
