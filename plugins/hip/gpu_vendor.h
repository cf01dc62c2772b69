// The plugin is written against the HIP API. Built by hipcc or hipRTC this header is just HIP; built by
// nvcc or NVRTC it maps each HIP name the plugin uses to its CUDA twin (the reverse of ggml's
// vendors/hip.h), so one source serves AMD and NVIDIA. Only names the plugin uses are mapped.
//
// The AMD plugin's host code is compiled by the C++ compiler alone (RPA_GPU_AMD_HOST): it links no HIP
// runtime, and each HIP name it uses is an entry of the table that runtime_loader.cpp fills from the
// libamdhip64 it finds at run time. Its kernels are device code only (kernel_entries.cpp).
#pragma once

#if defined(RPA_GPU_AMD_HOST)

#include "plugins/hip/runtime_loader.h"

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

#elif defined(__CUDACC_RTC__)

// NVRTC has no C library: the fixed-width types of the LP64 platforms CUDA runs on.
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef unsigned long uintptr_t;
#define INFINITY __int_as_float(0x7f800000)
#include <cuda_fp16.h>

#define RPA_GPU_CUDA 1

#define __shfl(value, source_lane, width) __shfl_sync(0xffffffffu, value, source_lane, width)
#define __shfl_xor(value, lane_mask) __shfl_xor_sync(0xffffffffu, value, lane_mask)

#elif defined(__CUDACC__)

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define RPA_GPU_PLUGIN_NAME "cuda"
#define RPA_GPU_CUDA 1

#define hipDeviceAttribute_t cudaDeviceAttr
#define hipDeviceAttributeComputeCapabilityMajor cudaDevAttrComputeCapabilityMajor
#define hipDeviceAttributeComputeCapabilityMinor cudaDevAttrComputeCapabilityMinor
#define hipDeviceAttributeMultiprocessorCount cudaDevAttrMultiProcessorCount
#define hipDeviceAttributeWarpSize cudaDevAttrWarpSize
#define hipDeviceGetAttribute cudaDeviceGetAttribute
#define hipDeviceSynchronize cudaDeviceSynchronize
#define hipError_t cudaError_t
#define hipErrorInsufficientDriver cudaErrorInsufficientDriver
#define hipErrorNoDevice cudaErrorNoDevice
#define hipErrorOutOfMemory cudaErrorMemoryAllocation
#define hipEventCreate cudaEventCreate
#define hipEventCreateWithFlags cudaEventCreateWithFlags
#define hipEventDestroy cudaEventDestroy
#define hipEventDisableTiming cudaEventDisableTiming
#define hipEventElapsedTime cudaEventElapsedTime
#define hipEventRecord cudaEventRecord
#define hipEventSynchronize cudaEventSynchronize
#define hipEvent_t cudaEvent_t
#define hipFree cudaFree
#define hipGetDeviceCount cudaGetDeviceCount
#define hipGetErrorName cudaGetErrorName
#define hipGetErrorString cudaGetErrorString
#define hipHostFree cudaFreeHost
#define hipHostMalloc(pointer, bytes, flags) cudaMallocHost(pointer, bytes)
#define hipHostMallocDefault 0
#define hipMalloc cudaMalloc
#define hipMemcpy cudaMemcpy
#define hipMemcpyAsync cudaMemcpyAsync
#define hipMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define hipMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define hipMemcpyHostToDevice cudaMemcpyHostToDevice
#define hipMemcpyKind cudaMemcpyKind
#define hipSetDevice cudaSetDevice
#define hipStreamCreateWithFlags cudaStreamCreateWithFlags
#define hipStreamCaptureStatus cudaStreamCaptureStatus
#define hipStreamCaptureStatusNone cudaStreamCaptureStatusNone
#define hipStreamDestroy cudaStreamDestroy
#define hipStreamIsCapturing cudaStreamIsCapturing
#define hipStreamNonBlocking cudaStreamNonBlocking
#define hipStreamSynchronize cudaStreamSynchronize
#define hipStreamWaitEvent cudaStreamWaitEvent
#define hipStream_t cudaStream_t
#define hipSuccess cudaSuccess

// HIP's shuffle spans the whole wavefront; CUDA's takes the mask of participating lanes explicitly.
#define __shfl(value, source_lane, width) __shfl_sync(0xffffffffu, value, source_lane, width)
#define __shfl_xor(value, lane_mask) __shfl_xor_sync(0xffffffffu, value, lane_mask)

#else
#error "plugins/hip is compiled by hipcc or hipRTC (AMD), nvcc or NVRTC (NVIDIA), or as AMD host code (RPA_GPU_AMD_HOST)"
#endif
