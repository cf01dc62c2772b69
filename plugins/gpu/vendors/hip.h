// AMD: the plugin's HIP names as they are. Three compilers see this file: the C++ compiler for the AMD
// plugin's host code (RPA_GPU_AMD_HOST), which links no HIP runtime, so each HIP name it uses is an entry
// of the table that runtime_loader.cpp fills from the libamdhip64 it finds at run time; hipcc for the
// embedded code objects; and hipRTC for the embedded kernel source at first use.
#pragma once

#if defined(RPA_GPU_AMD_HOST)

#include "plugins/gpu/runtime_loader.h"

#define RPA_GPU_PLUGIN_NAME "hip"

#define hipDeviceGetAttribute rpa_gpu::hip().hipDeviceGetAttribute
#define hipDeviceSynchronize rpa_gpu::hip().hipDeviceSynchronize
#define hipEventCreate rpa_gpu::hip().hipEventCreate
#define hipEventCreateWithFlags rpa_gpu::hip().hipEventCreateWithFlags
#define hipEventDestroy rpa_gpu::hip().hipEventDestroy
#define hipEventElapsedTime rpa_gpu::hip().hipEventElapsedTime
#define hipEventRecord rpa_gpu::hip().hipEventRecord
#define hipEventSynchronize rpa_gpu::hip().hipEventSynchronize
#define hipFree rpa_gpu::hip().hipFree
#define hipGetDeviceCount rpa_gpu::hip().hipGetDeviceCount
#define hipGetErrorName rpa_gpu::hip().hipGetErrorName
#define hipGetErrorString rpa_gpu::hip().hipGetErrorString
#define hipHostFree rpa_gpu::hip().hipHostFree
#define hipHostMalloc rpa_gpu::hip().hipHostMalloc
#define hipMalloc rpa_gpu::hip().hipMalloc
#define hipMemcpy rpa_gpu::hip().hipMemcpy
#define hipMemcpyAsync rpa_gpu::hip().hipMemcpyAsync
#define hipSetDevice rpa_gpu::hip().hipSetDevice
#define hipStreamCreateWithFlags rpa_gpu::hip().hipStreamCreateWithFlags
#define hipStreamDestroy rpa_gpu::hip().hipStreamDestroy
#define hipStreamIsCapturing rpa_gpu::hip().hipStreamIsCapturing
#define hipStreamSynchronize rpa_gpu::hip().hipStreamSynchronize
#define hipStreamWaitEvent rpa_gpu::hip().hipStreamWaitEvent

#elif defined(__HIPCC_RTC__)

// hipRTC brings the HIP device runtime but, up to ROCm 5, not every <stdint.h> name; clang's builtin
// type macros give the ones the platform's header would.
typedef __INT8_TYPE__ int8_t;
typedef __UINT8_TYPE__ uint8_t;
typedef __UINT16_TYPE__ uint16_t;
typedef __UINTPTR_TYPE__ uintptr_t;
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

#elif defined(__HIPCC__)

#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>

#define RPA_GPU_PLUGIN_NAME "hip"

#endif
