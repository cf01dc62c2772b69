// NVIDIA: maps each HIP name the plugin uses to its CUDA twin (the reverse of ggml's vendors/hip.h), for
// nvcc (the plugin and its precompiled kernels) and NVRTC (the embedded kernel source at first use). Only
// names the plugin uses are mapped.
#pragma once

#if defined(__CUDACC_RTC__)

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

#elif defined(__CUDACC__)

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define RPA_GPU_PLUGIN_NAME "cuda"

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

#endif

#define RPA_GPU_CUDA 1

// HIP's shuffle spans the whole wavefront; CUDA's takes the mask of participating lanes explicitly.
#define __shfl(value, source_lane, width) __shfl_sync(0xffffffffu, value, source_lane, width)
#define __shfl_xor(value, lane_mask) __shfl_xor_sync(0xffffffffu, value, lane_mask)
#define __shfl_up(value, delta) __shfl_up_sync(0xffffffffu, value, delta)
