#include "plugins/gpu/kernel_set.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "plugins/gpu/code_cache.h"
#include "plugins/gpu/runtime_loader.h"

#if defined(RPA_GPU_CUDA)
// The precompiled entry points, defined by kernel_entries.cpp in the same plugin.
#define RPA_GPU_DECLARE_ENTRY(name, bounds, body, parameters, arguments) extern "C" __global__ void name parameters;
RPA_GPU_KERNELS(RPA_GPU_DECLARE_ENTRY)
#undef RPA_GPU_DECLARE_ENTRY
#endif

namespace rpa_gpu {
namespace {

const char* const kKernelNames[] = {
#define RPA_GPU_KERNEL_NAME(name, bounds, body, parameters, arguments) #name,
    RPA_GPU_KERNELS(RPA_GPU_KERNEL_NAME)
#undef RPA_GPU_KERNEL_NAME
};
static_assert(sizeof kKernelNames / sizeof kKernelNames[0] == size_t(Kernel::count), "one name per kernel");

bool run_time_compile_forced() {
  const char* request = std::getenv("RPA_GPU_KERNELS");
  return request && std::strcmp(request, "rtc") == 0;
}

std::string hex(uint64_t value) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

std::string trimmed_log(std::string log) {
  constexpr size_t kMax = 4000;
  if (log.size() > kMax) log = log.substr(0, kMax) + "\n[... log truncated]";
  return log;
}

// The cache key of the embedded source compiled with `options` for `target` by compiler `compiler`.
std::string cache_key(const std::string& compiler, const std::string& target, const std::vector<std::string>& options) {
  uint64_t hash = fnv1a(embedded_kernel_source.data, embedded_kernel_source.size);
  for (const std::string& option : options) hash = fnv1a(option.data(), option.size() + 1, hash);
  return compiler + "-" + target + "-" + hex(hash);
}

#if defined(RPA_GPU_AMD_HOST)

const EmbeddedFile* embedded_code_object(const std::string& arch) {
  const std::string base = arch.substr(0, arch.find(':'));
  for (size_t i = 0; i < embedded_code_object_count; ++i)
    if (base == embedded_code_objects[i].name) return &embedded_code_objects[i];
  return nullptr;
}

std::string embedded_names() {
  std::string names;
  for (size_t i = 0; i < embedded_code_object_count; ++i) names += std::string(i ? ", " : "") + embedded_code_objects[i].name;
  return names;
}

std::string hip_failure(const char* what, hipError_t error) {
  return std::string(what) + " failed: " + hipGetErrorName(error) + ": " + hipGetErrorString(error);
}

std::vector<std::string> rtc_options(const std::string& arch) {
  return {"--offload-arch=" + arch, "-O3", "-std=c++17"};
}

std::string rtc_compiler_name() {
  int major = 0, minor = 0;
  hip().hiprtcVersion(&major, &minor);
  return "hiprtc" + std::to_string(major) + "." + std::to_string(minor) + "-hip" + std::to_string(hip().runtime_version);
}

#else

std::string cuda_failure(const char* what, CUresult result, const CudaModuleApi& api) {
  const char* text = nullptr;
  api.cuGetErrorString(result, &text);
  return std::string(what) + " failed: " + (text ? text : "error " + std::to_string(int(result)));
}

std::string cuda_arch(int device) {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  // The Hopper "a" code carries wgmma (RPA_GPU_WGMMA), as the precompiled plugin's sm_90a does.
  return "sm_" + std::to_string(major) + std::to_string(minor) + (major == 9 && minor == 0 ? "a" : "");
}

std::vector<std::string> rtc_options(const std::string& arch, const CudaModuleApi& api) {
  // -default-device: rpa.h's C declarations, never called, count as device functions (NVRTC refuses host ones).
  std::vector<std::string> options = {"--gpu-architecture=" + arch, "-std=c++17", "-default-device",
                                      "--include-path=" + api.include_dir};
  if (arch == "sm_90a") options.push_back("-DRPA_GPU_WGMMA=1");
  return options;
}

#endif

}  // namespace

KernelSet::~KernelSet() {
  if (!module_) return;
#if defined(RPA_GPU_AMD_HOST)
  (void)hip().hipModuleUnload(static_cast<hipModule_t>(module_));
#else
  std::string why;
  if (const CudaModuleApi* api = load_cuda_modules(&why)) (void)api->cuModuleUnload(static_cast<CUmodule>(module_));
#endif
}

rpa_status KernelSet::load_module(const void* code, std::string* error) {
  functions_.assign(size_t(Kernel::count), nullptr);
#if defined(RPA_GPU_AMD_HOST)
  hipModule_t module = nullptr;
  if (const hipError_t status = hip().hipModuleLoadData(&module, code); status != hipSuccess) {
    *error = hip_failure("hipModuleLoadData", status);
    return RPA_STATUS_DEVICE_ERROR;
  }
  module_ = module;
  for (size_t k = 0; k < functions_.size(); ++k) {
    hipFunction_t function = nullptr;
    if (const hipError_t status = hip().hipModuleGetFunction(&function, module, kKernelNames[k]); status != hipSuccess) {
      *error = hip_failure((std::string("hipModuleGetFunction(") + kKernelNames[k] + ")").c_str(), status);
      return RPA_STATUS_DEVICE_ERROR;
    }
    functions_[k] = function;
  }
#else
  std::string why;
  const CudaModuleApi& api = *load_cuda_modules(&why);
  CUmodule module = nullptr;
  if (const CUresult result = api.cuModuleLoadData(&module, code); result != CUDA_SUCCESS) {
    *error = cuda_failure("cuModuleLoadData", result, api);
    return RPA_STATUS_DEVICE_ERROR;
  }
  module_ = module;
  for (size_t k = 0; k < functions_.size(); ++k) {
    CUfunction function = nullptr;
    if (const CUresult result = api.cuModuleGetFunction(&function, module, kKernelNames[k]); result != CUDA_SUCCESS) {
      *error = cuda_failure((std::string("cuModuleGetFunction(") + kKernelNames[k] + ")").c_str(), result, api);
      return RPA_STATUS_DEVICE_ERROR;
    }
    functions_[k] = function;
  }
#endif
  return RPA_STATUS_OK;
}

// Compiles the embedded source for `device`, or reads the result from the disk cache.
rpa_status KernelSet::compile(int device, std::vector<char>* code, std::string* error) {
#if defined(RPA_GPU_AMD_HOST)
  const HipApi& api = hip();
  const std::string target = hip_arch_name(device);
  if (target.empty()) {
    *error = "the HIP runtime does not report device " + std::to_string(device) + "'s architecture (gcnArchName)";
    return RPA_STATUS_UNAVAILABLE;
  }
  if (!api.hiprtcCompileProgram) {
    *error = "device " + std::to_string(device) + " (" + target + ") has no embedded code object (the plugin carries " +
             embedded_names() + ") and hipRTC is missing: " + api.rtc_missing;
    return RPA_STATUS_UNAVAILABLE;
  }
  const std::vector<std::string> options = rtc_options(target);
  const std::string compiler = rtc_compiler_name(), what = "hipRTC";
#else
  std::string why;
  const CudaModuleApi* loaded = load_cuda_modules(&why);
  if (!loaded) {
    *error = "RPA_GPU_KERNELS=rtc: " + why;
    return RPA_STATUS_UNAVAILABLE;
  }
  const CudaModuleApi& api = *loaded;
  const std::string target = cuda_arch(device);
  const std::vector<std::string> options = rtc_options(target, api);
  const std::string compiler = "nvrtc" + std::to_string(api.nvrtc_version), what = "NVRTC";
#endif
  const std::string directory = code_cache_directory(), key = cache_key(compiler, target, options);
  if (code_cache_read(directory, key, code)) {
    origin_ = what + " for " + target + ", from the cache " + code_cache_path(directory, key);
    return RPA_STATUS_OK;
  }
  std::vector<const char*> option_pointers;
  for (const std::string& option : options) option_pointers.push_back(option.c_str());
  const std::string source(reinterpret_cast<const char*>(embedded_kernel_source.data), embedded_kernel_source.size);
  std::string log;
  bool compiled = false;
#if defined(RPA_GPU_AMD_HOST)
  hiprtcProgram program = nullptr;
  if (api.hiprtcCreateProgram(&program, source.c_str(), "rpa_kernels.hip", 0, nullptr, nullptr) != 0) {
    *error = "hiprtcCreateProgram failed";
    return RPA_STATUS_DEVICE_ERROR;
  }
  compiled = api.hiprtcCompileProgram(program, int(option_pointers.size()), option_pointers.data()) == 0;
  size_t bytes = 0;
  if (api.hiprtcGetProgramLogSize(program, &bytes) == 0 && bytes > 1) {
    log.resize(bytes);
    api.hiprtcGetProgramLog(program, log.data());
  }
  if (compiled && api.hiprtcGetCodeSize(program, &bytes) == 0 && bytes > 0) {
    code->resize(bytes);
    compiled = api.hiprtcGetCode(program, code->data()) == 0;
  }
  api.hiprtcDestroyProgram(&program);
#else
  nvrtcProgram program = nullptr;
  if (api.nvrtcCreateProgram(&program, source.c_str(), "rpa_kernels.cu", 0, nullptr, nullptr) != NVRTC_SUCCESS) {
    *error = "nvrtcCreateProgram failed";
    return RPA_STATUS_DEVICE_ERROR;
  }
  compiled = api.nvrtcCompileProgram(program, int(option_pointers.size()), option_pointers.data()) == NVRTC_SUCCESS;
  size_t bytes = 0;
  if (api.nvrtcGetProgramLogSize(program, &bytes) == NVRTC_SUCCESS && bytes > 1) {
    log.resize(bytes);
    api.nvrtcGetProgramLog(program, log.data());
  }
  if (compiled && api.nvrtcGetCUBINSize(program, &bytes) == NVRTC_SUCCESS && bytes > 0) {
    code->resize(bytes);
    compiled = api.nvrtcGetCUBIN(program, code->data()) == NVRTC_SUCCESS;
  }
  api.nvrtcDestroyProgram(&program);
#endif
  if (!compiled || code->empty()) {
    *error = what + " could not compile the kernels for " + target + ": " + trimmed_log(log);
    return RPA_STATUS_DEVICE_ERROR;
  }
  std::string cache_problem;
  const bool cached = code_cache_write(directory, key, *code, &cache_problem);
  origin_ = what + " for " + target + ", compiled at first use" +
            (directory.empty() ? std::string(" (cache off)")
             : cached          ? ", cached in " + code_cache_path(directory, key)
                               : " (not cached: " + cache_problem + ")");
  return RPA_STATUS_OK;
}

rpa_status KernelSet::load(int device, std::string* error) {
#if defined(RPA_GPU_AMD_HOST)
  if (!run_time_compile_forced()) {
    const std::string arch = hip_arch_name(device);
    if (const EmbeddedFile* object = embedded_code_object(arch)) {
      origin_ = std::string("embedded code object ") + object->name;
      return load_module(object->data, error);
    }
  }
#else
  if (!run_time_compile_forced()) {
    functions_ = {
#define RPA_GPU_ENTRY_ADDRESS(name, bounds, body, parameters, arguments) reinterpret_cast<void*>(&name),
        RPA_GPU_KERNELS(RPA_GPU_ENTRY_ADDRESS)
#undef RPA_GPU_ENTRY_ADDRESS
    };
    origin_ = "precompiled";
    int major = 0;
    const char* early = std::getenv("RPA_GPU_EARLY_LAUNCH");
    early_launch_ = early && std::strcmp(early, "1") == 0 &&
                    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9;
    return RPA_STATUS_OK;
  }
  // The module loads into the current context: the runtime's primary context of `device`.
  if (const cudaError_t status = cudaFree(nullptr); status != cudaSuccess) {
    *error = std::string("cudaFree(0) failed: ") + cudaGetErrorString(status);
    return RPA_STATUS_DEVICE_ERROR;
  }
#endif
  std::vector<char> code;
  if (const rpa_status status = compile(device, &code, error); status != RPA_STATUS_OK) return status;
  return load_module(code.data(), error);
}

std::string KernelSet::launch_packed(Kernel kernel, unsigned grid, unsigned block, size_t shared, hipStream_t stream,
                                     void** arguments, bool early) const {
  void* function = functions_[size_t(kernel)];
#if defined(RPA_GPU_AMD_HOST)
  (void)early;
  const hipError_t status = hip().hipModuleLaunchKernel(static_cast<hipFunction_t>(function), grid, 1, 1, block, 1, 1,
                                                        unsigned(shared), stream, arguments, nullptr);
  return status == hipSuccess ? "" : hip_failure(kKernelNames[size_t(kernel)], status);
#else
  if (module_) {
    std::string why;
    const CudaModuleApi& api = *load_cuda_modules(&why);
    const CUresult result = api.cuLaunchKernel(static_cast<CUfunction>(function), grid, 1, 1, block, 1, 1,
                                               unsigned(shared), static_cast<CUstream>(stream), arguments, nullptr);
    return result == CUDA_SUCCESS ? "" : cuda_failure(kKernelNames[size_t(kernel)], result, api);
  }
  cudaError_t status;
  if (early) {
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(grid), config.blockDim = dim3(block), config.dynamicSmemBytes = shared;
    config.stream = stream, config.attrs = &attribute, config.numAttrs = 1;
    status = cudaLaunchKernelExC(&config, function, arguments);
  } else {
    status = cudaLaunchKernel(function, dim3(grid), dim3(block), arguments, shared, stream);
  }
  return status == cudaSuccess ? "" : std::string(kKernelNames[size_t(kernel)]) + ": " + cudaGetErrorString(status);
#endif
}

#if !defined(RPA_GPU_AMD_HOST)
namespace {
// One attribute of a kernel: through the driver API for a function of a loaded module, else the
// runtime's for a precompiled one.
std::string set_attribute(void* function, bool in_module, CUfunction_attribute module_attribute,
                          cudaFuncAttribute precompiled_attribute, int value) {
  if (in_module) {
    std::string why;
    const CudaModuleApi& api = *load_cuda_modules(&why);
    const CUresult result = api.cuFuncSetAttribute(static_cast<CUfunction>(function), module_attribute, value);
    return result == CUDA_SUCCESS ? "" : cuda_failure("cuFuncSetAttribute", result, api);
  }
  const cudaError_t status = cudaFuncSetAttribute(function, precompiled_attribute, value);
  return status == cudaSuccess ? "" : std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(status);
}
}  // namespace
#endif

std::string KernelSet::prefer_shared(Kernel kernel) const {
#if defined(RPA_GPU_AMD_HOST)
  (void)kernel;
  return "";
#else
  return set_attribute(functions_[size_t(kernel)], module_ != nullptr, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                       cudaFuncAttributePreferredSharedMemoryCarveout, 100);
#endif
}

std::string KernelSet::allow_shared(Kernel kernel, int bytes) const {
#if defined(RPA_GPU_AMD_HOST)
  (void)kernel, (void)bytes;
  return "";
#else
  return set_attribute(functions_[size_t(kernel)], module_ != nullptr, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                       cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
#endif
}

std::string KernelSet::occupancy(Kernel kernel, int threads, size_t shared, int* blocks) const {
  void* function = functions_[size_t(kernel)];
#if defined(RPA_GPU_AMD_HOST)
  const hipError_t status = hip().hipModuleOccupancyMaxActiveBlocksPerMultiprocessor(
      blocks, static_cast<hipFunction_t>(function), threads, shared);
  return status == hipSuccess ? "" : hip_failure("hipModuleOccupancyMaxActiveBlocksPerMultiprocessor", status);
#else
  if (module_) {
    std::string why;
    const CudaModuleApi& api = *load_cuda_modules(&why);
    const CUresult result = api.cuOccupancyMaxActiveBlocksPerMultiprocessor(blocks, static_cast<CUfunction>(function),
                                                                           threads, shared);
    return result == CUDA_SUCCESS ? "" : cuda_failure("cuOccupancyMaxActiveBlocksPerMultiprocessor", result, api);
  }
  const cudaError_t status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, function, threads, shared);
  return status == cudaSuccess ? "" : std::string("cudaOccupancyMaxActiveBlocksPerMultiprocessor: ") +
                                          cudaGetErrorString(status);
#endif
}

std::string kernel_path(int device) {
#if defined(RPA_GPU_AMD_HOST)
  const std::string arch = hip_arch_name(device);
  if (!run_time_compile_forced())
    if (const EmbeddedFile* object = embedded_code_object(arch)) return std::string("embedded code object ") + object->name;
  if (!hip().hiprtcCompileProgram) return "no kernels for " + arch + " (no embedded code object; " + hip().rtc_missing + ")";
  return "hipRTC for " + arch + " at first use (" + hip().rtc_path + ")";
#else
  if (!run_time_compile_forced()) return "precompiled";
  std::string why;
  const CudaModuleApi* api = load_cuda_modules(&why);
  return api ? "NVRTC for " + cuda_arch(device) + " at first use (" + api->nvrtc_path + ")" : "no kernels: " + why;
#endif
}

}  // namespace rpa_gpu
