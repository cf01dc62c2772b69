// The plugin is written against the HIP API; this header picks the vendor header that makes those names
// mean something for the compiler at hand, so one source serves AMD and NVIDIA (as ggml's vendors/).
#pragma once

#if defined(RPA_GPU_AMD_HOST) || defined(__HIPCC__) || defined(__HIPCC_RTC__)
#include "plugins/gpu/vendors/hip.h"
#elif defined(__CUDACC__) || defined(__CUDACC_RTC__)
#include "plugins/gpu/vendors/cuda.h"
#else
#error "plugins/gpu is compiled by hipcc or hipRTC (AMD), nvcc or NVRTC (NVIDIA), or as AMD host code (RPA_GPU_AMD_HOST)"
#endif
