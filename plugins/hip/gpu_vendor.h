// The plugin is written against the HIP 5.2 API. Built by hipcc this header is just HIP; built by nvcc it
// maps each HIP name the plugin uses to its CUDA twin (the reverse of ggml's vendors/hip.h), so one source
// serves AMD and NVIDIA. Only names the plugin uses are mapped.
#pragma once

#if defined(__HIPCC__)

#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>

#define RPA_GPU_PLUGIN_NAME "hip"

#elif defined(__CUDACC__)

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define RPA_GPU_PLUGIN_NAME "cuda"
#define RPA_GPU_CUDA 1

#define hipDeviceProp_t cudaDeviceProp
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
#define hipFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
#define hipFuncSetAttribute cudaFuncSetAttribute
#define hipGetDeviceCount cudaGetDeviceCount
#define hipGetDeviceProperties cudaGetDeviceProperties
#define hipGetErrorName cudaGetErrorName
#define hipGetErrorString cudaGetErrorString
#define hipGetLastError cudaGetLastError
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
#define hipOccupancyMaxActiveBlocksPerMultiprocessor cudaOccupancyMaxActiveBlocksPerMultiprocessor
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
#error "plugins/hip is compiled by hipcc (AMD) or nvcc (NVIDIA)"
#endif
