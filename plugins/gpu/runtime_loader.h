// The GPU runtimes the plugin opens with dlopen at run time, as tables of entry points:
// - AMD (RPA_GPU_AMD_HOST): the HIP runtime (libamdhip64.so.7, .6, .5, then libamdhip64.so; or the file
//   RPA_HIP_RUNTIME names) and hipRTC (inside libamdhip64.so.5; libhiprtc.so.N from ROCm 6 on). The
//   plugin links neither, so one build loads on ROCm 5, 6 and 7. Only entry points whose ABI is the same
//   in all three are used: device attributes come from hipDeviceGetAttribute, and the one string the
//   properties struct alone carries (gcnArchName) is read at its offset in the layout of the symbol found.
// - NVIDIA: the driver's module API (libcuda.so.1) and NVRTC, for the run-time compiled path
//   (RPA_GPU_KERNELS=rtc); the precompiled path needs neither.
// Each failure to load is a sentence naming the library or symbol, which `rpa info` shows.
#pragma once

#include <stddef.h>

#include <string>

#if defined(RPA_GPU_AMD_HOST)

// The HIP types and constants the plugin uses (values as in every HIP header from ROCm 5.0 to 7).
enum hipError_t : int { hipSuccess = 0, hipErrorOutOfMemory = 2, hipErrorInsufficientDriver = 35, hipErrorNoDevice = 100 };
enum hipStreamCaptureStatus : int { hipStreamCaptureStatusNone = 0 };
enum hipMemcpyKind : int { hipMemcpyHostToDevice = 1, hipMemcpyDeviceToHost = 2, hipMemcpyDeviceToDevice = 3 };
enum hipDeviceAttribute_t : int {
  hipDeviceAttributeComputeCapabilityMajor = 23,
  hipDeviceAttributeComputeCapabilityMinor = 61,
  hipDeviceAttributeMultiprocessorCount = 63,
  hipDeviceAttributeWarpSize = 87,
};
constexpr unsigned hipStreamNonBlocking = 1, hipEventDisableTiming = 2, hipHostMallocDefault = 0;
typedef struct ihipStream_t* hipStream_t;
typedef struct ihipEvent_t* hipEvent_t;
typedef struct ihipModule_t* hipModule_t;
typedef struct ihipModuleSymbol_t* hipFunction_t;
typedef struct ihiprtcProgram* hiprtcProgram;
typedef int hiprtcResult;  // 0: success

// X(return type, name, parameters): the HIP runtime's entry points the plugin needs.
#define RPA_HIP_FUNCTIONS(X)                                                                              \
  X(hipError_t, hipRuntimeGetVersion, (int*))                                                             \
  X(hipError_t, hipGetDeviceCount, (int*))                                                                \
  X(hipError_t, hipSetDevice, (int))                                                                      \
  X(hipError_t, hipDeviceGetAttribute, (int*, hipDeviceAttribute_t, int))                                 \
  X(hipError_t, hipDeviceGetName, (char*, int, int))                                                      \
  X(hipError_t, hipDeviceTotalMem, (size_t*, int))                                                        \
  X(hipError_t, hipDeviceSynchronize, ())                                                                 \
  X(const char*, hipGetErrorName, (hipError_t))                                                           \
  X(const char*, hipGetErrorString, (hipError_t))                                                         \
  X(hipError_t, hipMalloc, (void**, size_t))                                                              \
  X(hipError_t, hipFree, (void*))                                                                         \
  X(hipError_t, hipHostMalloc, (void**, size_t, unsigned))                                                \
  X(hipError_t, hipHostFree, (void*))                                                                     \
  X(hipError_t, hipMemcpy, (void*, const void*, size_t, hipMemcpyKind))                                   \
  X(hipError_t, hipMemcpyAsync, (void*, const void*, size_t, hipMemcpyKind, hipStream_t))                 \
  X(hipError_t, hipStreamCreateWithFlags, (hipStream_t*, unsigned))                                       \
  X(hipError_t, hipStreamDestroy, (hipStream_t))                                                          \
  X(hipError_t, hipStreamSynchronize, (hipStream_t))                                                      \
  X(hipError_t, hipStreamWaitEvent, (hipStream_t, hipEvent_t, unsigned))                                  \
  X(hipError_t, hipStreamIsCapturing, (hipStream_t, hipStreamCaptureStatus*))                             \
  X(hipError_t, hipEventCreate, (hipEvent_t*))                                                            \
  X(hipError_t, hipEventCreateWithFlags, (hipEvent_t*, unsigned))                                         \
  X(hipError_t, hipEventDestroy, (hipEvent_t))                                                            \
  X(hipError_t, hipEventRecord, (hipEvent_t, hipStream_t))                                                \
  X(hipError_t, hipEventSynchronize, (hipEvent_t))                                                        \
  X(hipError_t, hipEventElapsedTime, (float*, hipEvent_t, hipEvent_t))                                    \
  X(hipError_t, hipModuleLoadData, (hipModule_t*, const void*))                                           \
  X(hipError_t, hipModuleUnload, (hipModule_t))                                                           \
  X(hipError_t, hipModuleGetFunction, (hipFunction_t*, hipModule_t, const char*))                         \
  X(hipError_t, hipModuleLaunchKernel, (hipFunction_t, unsigned, unsigned, unsigned, unsigned, unsigned,  \
                                        unsigned, unsigned, hipStream_t, void**, void**))                 \
  X(hipError_t, hipModuleOccupancyMaxActiveBlocksPerMultiprocessor, (int*, hipFunction_t, int, size_t))

#define RPA_HIPRTC_FUNCTIONS(X)                                                                           \
  X(hiprtcResult, hiprtcVersion, (int*, int*))                                                            \
  X(const char*, hiprtcGetErrorString, (hiprtcResult))                                                    \
  X(hiprtcResult, hiprtcCreateProgram, (hiprtcProgram*, const char*, const char*, int, const char**,      \
                                        const char**))                                                    \
  X(hiprtcResult, hiprtcCompileProgram, (hiprtcProgram, int, const char**))                               \
  X(hiprtcResult, hiprtcGetProgramLogSize, (hiprtcProgram, size_t*))                                      \
  X(hiprtcResult, hiprtcGetProgramLog, (hiprtcProgram, char*))                                            \
  X(hiprtcResult, hiprtcGetCodeSize, (hiprtcProgram, size_t*))                                            \
  X(hiprtcResult, hiprtcGetCode, (hiprtcProgram, char*))                                                  \
  X(hiprtcResult, hiprtcDestroyProgram, (hiprtcProgram*))

namespace rpa_gpu {

#define RPA_GPU_TABLE_FIELD(type, name, parameters) type(*name) parameters = nullptr;

struct HipApi {
  RPA_HIP_FUNCTIONS(RPA_GPU_TABLE_FIELD)
  RPA_HIPRTC_FUNCTIONS(RPA_GPU_TABLE_FIELD)  // all null without hipRTC (rtc_missing says why)
  std::string runtime_path;  // the library opened
  int runtime_version = 0;   // hipRuntimeGetVersion: major * 10^7 + minor * 10^5 + patch
  std::string rtc_path;      // the library holding hipRTC, or empty
  std::string rtc_missing;   // why there is no hipRTC
  // The properties call whose struct holds gcnArchName at gcn_arch_offset (ROCm 6 changed the layout).
  hipError_t (*get_properties)(void*, int) = nullptr;
  size_t gcn_arch_offset = 0;
};

// Opens the runtime once per process; null when it cannot be used, with the reason in `why`.
const HipApi* load_hip(std::string* why);
// The table, once load_hip succeeded.
const HipApi& hip();
// The device's gcnArchName, e.g. "gfx90a:sramecc+:xnack-"; empty when the runtime does not tell.
std::string hip_arch_name(int device);

}  // namespace rpa_gpu

#elif defined(__CUDACC__)

#include <cuda.h>
#include <nvrtc.h>

#define RPA_CUDA_FUNCTIONS(X)                                                                             \
  X(CUresult, cuModuleLoadData, (CUmodule*, const void*))                                                 \
  X(CUresult, cuModuleUnload, (CUmodule))                                                                 \
  X(CUresult, cuModuleGetFunction, (CUfunction*, CUmodule, const char*))                                  \
  X(CUresult, cuLaunchKernel, (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,    \
                               unsigned, CUstream, void**, void**))                                       \
  X(CUresult, cuFuncSetAttribute, (CUfunction, CUfunction_attribute, int))                                \
  X(CUresult, cuOccupancyMaxActiveBlocksPerMultiprocessor, (int*, CUfunction, int, size_t))              \
  X(CUresult, cuGetErrorString, (CUresult, const char**))

#define RPA_NVRTC_FUNCTIONS(X)                                                                            \
  X(nvrtcResult, nvrtcVersion, (int*, int*))                                                              \
  X(const char*, nvrtcGetErrorString, (nvrtcResult))                                                      \
  X(nvrtcResult, nvrtcCreateProgram, (nvrtcProgram*, const char*, const char*, int, const char* const*,   \
                                      const char* const*))                                                \
  X(nvrtcResult, nvrtcCompileProgram, (nvrtcProgram, int, const char* const*))                            \
  X(nvrtcResult, nvrtcGetProgramLogSize, (nvrtcProgram, size_t*))                                         \
  X(nvrtcResult, nvrtcGetProgramLog, (nvrtcProgram, char*))                                               \
  X(nvrtcResult, nvrtcGetCUBINSize, (nvrtcProgram, size_t*))                                              \
  X(nvrtcResult, nvrtcGetCUBIN, (nvrtcProgram, char*))                                                    \
  X(nvrtcResult, nvrtcDestroyProgram, (nvrtcProgram*))

namespace rpa_gpu {

#define RPA_GPU_TABLE_FIELD(type, name, parameters) type(*name) parameters = nullptr;

struct CudaModuleApi {
  RPA_CUDA_FUNCTIONS(RPA_GPU_TABLE_FIELD)
  RPA_NVRTC_FUNCTIONS(RPA_GPU_TABLE_FIELD)
  std::string nvrtc_path;
  std::string include_dir;  // holds cuda_fp16.h, for NVRTC
  int nvrtc_version = 0;    // major * 1000 + minor * 10
};

// The driver's module API and NVRTC, opened once; null when either is missing, with the reason in `why`.
const CudaModuleApi* load_cuda_modules(std::string* why);

}  // namespace rpa_gpu

#endif
