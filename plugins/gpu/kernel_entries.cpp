// The kernels' extern "C" entry points (kernel_list.h). One source, compiled three ways: by nvcc into the
// NVIDIA plugin (its precompiled path), by hipcc into one code object per AMD architecture that the
// plugin embeds, and, embedded as text (embed.py), by the user's hipRTC or NVRTC for the device at
// first use (kernel_set.cpp).
#include "plugins/gpu/attention_kernels.h"
#include "plugins/gpu/kernel_list.h"
#include "plugins/gpu/nvidia/code_decode_kernel.h"
#include "plugins/gpu/nvidia/matrix_core_kernel.h"
#include "plugins/gpu/nvidia/warp_specialized_kernel.h"

#define RPA_GPU_DEFINE_ENTRY(name, bounds, body, parameters, arguments) \
  extern "C" __global__ void bounds name parameters { body arguments; }
RPA_GPU_KERNELS(RPA_GPU_DEFINE_ENTRY)
