// Opens the GPU runtimes of runtime_loader.h with dlopen and resolves their entry points.
#include "plugins/gpu/runtime_loader.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <vector>

namespace rpa_gpu {
namespace {

// dlopen of the first name that opens; `tried` collects each failure's dlerror.
void* open_first(const std::vector<std::string>& names, std::string* opened, std::string* tried) {
  for (const std::string& name : names) {
    if (void* handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      *opened = name;
      return handle;
    }
    const char* error = dlerror();
    *tried += std::string(tried->empty() ? "" : "; ") + (error ? error : name + ": cannot be opened");
  }
  return nullptr;
}

// Resolves every entry of a table; the first missing one is the reason.
template <typename Table>
bool resolve(void* handle, const char* name, Table& function, const std::string& library, std::string* why) {
  function = reinterpret_cast<Table>(dlsym(handle, name));
  if (function) return true;
  *why = library + " lacks " + name;
  return false;
}

// The directory of the library that defines `symbol`, for finding its siblings.
std::string directory_of(const void* symbol) {
  Dl_info info{};
  if (!dladdr(symbol, &info) || !info.dli_fname) return "";
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

}  // namespace

#if defined(RPA_GPU_AMD_HOST)

namespace {

HipApi loaded_hip;

// hipRTC: ROCm 5 keeps it in libamdhip64 itself, ROCm 6 and 7 in libhiprtc.so.<major> beside it.
void load_hiprtc(void* runtime, HipApi& api) {
  std::string why;
  if (dlsym(runtime, "hiprtcCompileProgram")) {
#define RPA_GPU_RESOLVE(type, name, parameters) ok = ok && resolve(runtime, #name, api.name, api.runtime_path, &why);
    bool ok = true;
    RPA_HIPRTC_FUNCTIONS(RPA_GPU_RESOLVE)
#undef RPA_GPU_RESOLVE
    if (ok) api.rtc_path = api.runtime_path;
    else api.rtc_missing = why;
    return;
  }
  const std::string major = std::to_string(api.runtime_version / 10000000);
  const std::string directory = directory_of(reinterpret_cast<void*>(api.hipGetDeviceCount));
  std::vector<std::string> names;
  for (const std::string& name : {"libhiprtc.so." + major, std::string("libhiprtc.so")}) {
    if (!directory.empty()) names.push_back(directory + name);
    names.push_back(name);
  }
  std::string opened, tried;
  void* handle = open_first(names, &opened, &tried);
  if (!handle) {
    api.rtc_missing = "no hipRTC library (" + tried + ")";
    return;
  }
  bool ok = true;
#define RPA_GPU_RESOLVE(type, name, parameters) ok = ok && resolve(handle, #name, api.name, opened, &why);
  RPA_HIPRTC_FUNCTIONS(RPA_GPU_RESOLVE)
#undef RPA_GPU_RESOLVE
  if (ok) {
    api.rtc_path = opened;
  } else {
#define RPA_GPU_CLEAR(type, name, parameters) api.name = nullptr;
    RPA_HIPRTC_FUNCTIONS(RPA_GPU_CLEAR)
#undef RPA_GPU_CLEAR
    api.rtc_missing = why;
  }
}

bool load_hip_once(std::string* why) {
  std::vector<std::string> names;
  if (const char* path = std::getenv("RPA_HIP_RUNTIME"); path && *path) {
    names.push_back(path);
  } else {
    for (const char* name : {"libamdhip64.so.7", "libamdhip64.so.6", "libamdhip64.so.5", "libamdhip64.so"})
      names.push_back(name);
    // ROCm's own directory, where the dynamic linker is not configured to look.
    const char* rocm = std::getenv("ROCM_PATH");
    for (const std::string& root : {std::string(rocm ? rocm : ""), std::string("/opt/rocm")})
      if (!root.empty()) names.push_back(root + "/lib/libamdhip64.so");
  }
  std::string tried;
  void* handle = open_first(names, &loaded_hip.runtime_path, &tried);
  if (!handle) {
    *why = "no HIP runtime (ROCm 5 or later) found: " + tried;
    return false;
  }
  HipApi& api = loaded_hip;
  bool ok = true;
#define RPA_GPU_RESOLVE(type, name, parameters) ok = ok && resolve(handle, #name, api.name, api.runtime_path, why);
  RPA_HIP_FUNCTIONS(RPA_GPU_RESOLVE)
#undef RPA_GPU_RESOLVE
  if (!ok) {
    *why = "the HIP runtime is incomplete: " + *why;
    return false;
  }
  if (api.hipRuntimeGetVersion(&api.runtime_version) != hipSuccess || api.runtime_version < 50000000) {
    *why = "the HIP runtime " + api.runtime_path + " is version " + std::to_string(api.runtime_version / 10000000) +
           "." + std::to_string(api.runtime_version / 100000 % 100) + ": rpa needs ROCm 5 or later";
    return false;
  }
  // gcnArchName sits at offset 1160 in ROCm 6's hipDeviceProp_tR0600 and at 396 in the older layout that
  // hipGetDevicePropertiesR0000 and ROCm 5's hipGetDeviceProperties fill (the offsets LLVM's amdgpu-arch
  // uses too).
  for (const auto& [name, offset] : {std::pair<const char*, size_t>{"hipGetDevicePropertiesR0600", 1160},
                                     {"hipGetDevicePropertiesR0000", 396}, {"hipGetDeviceProperties", 396}}) {
    if (void* symbol = dlsym(handle, name)) {
      api.get_properties = reinterpret_cast<hipError_t (*)(void*, int)>(symbol);
      api.gcn_arch_offset = offset;
      break;
    }
  }
  load_hiprtc(handle, api);
  return true;
}

}  // namespace

const HipApi* load_hip(std::string* why) {
  static std::string reason;
  static const bool ok = load_hip_once(&reason);
  *why = reason;
  return ok ? &loaded_hip : nullptr;
}

const HipApi& hip() { return loaded_hip; }

std::string hip_arch_name(int device) {
  const HipApi& api = loaded_hip;
  if (!api.get_properties) return "";
  // Larger than any layout of the struct (1472 bytes in ROCm 6 and 7).
  alignas(16) static thread_local char properties[8192];
  std::memset(properties, 0, sizeof properties);
  if (api.get_properties(properties, device) != hipSuccess) return "";
  return std::string(properties + api.gcn_arch_offset, strnlen(properties + api.gcn_arch_offset, 256));
}

#elif defined(__CUDACC__)

namespace {

CudaModuleApi loaded_cuda;

bool load_cuda_once(std::string* why) {
  CudaModuleApi& api = loaded_cuda;
  std::string opened, tried;
  void* driver = open_first({"libcuda.so.1"}, &opened, &tried);
  if (!driver) {
    *why = "the NVIDIA driver's libcuda.so.1 cannot be opened: " + tried;
    return false;
  }
  bool ok = true;
#define RPA_GPU_RESOLVE(type, name, parameters) ok = ok && resolve(driver, #name, api.name, opened, why);
  RPA_CUDA_FUNCTIONS(RPA_GPU_RESOLVE)
#undef RPA_GPU_RESOLVE
  if (!ok) return false;

  std::vector<std::string> names;
  if (const char* path = std::getenv("RPA_NVRTC"); path && *path) names.push_back(path);
  for (const char* name : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"}) names.push_back(name);
  for (const char* name : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"})
    names.push_back(std::string(RPA_CUDA_TOOLKIT "/lib64/") + name);
  tried.clear();
  void* nvrtc = open_first(names, &api.nvrtc_path, &tried);
  if (!nvrtc) {
    *why = "no NVRTC library found: " + tried;
    return false;
  }
#define RPA_GPU_RESOLVE(type, name, parameters) ok = ok && resolve(nvrtc, #name, api.name, api.nvrtc_path, why);
  RPA_NVRTC_FUNCTIONS(RPA_GPU_RESOLVE)
#undef RPA_GPU_RESOLVE
  if (!ok) return false;
  int major = 0, minor = 0;
  api.nvrtcVersion(&major, &minor);
  api.nvrtc_version = major * 1000 + minor * 10;
  // cuda_fp16.h: beside NVRTC's toolkit (lib64/../include), else the toolkit the plugin was built with.
  struct stat status {};
  for (const std::string& directory : {directory_of(reinterpret_cast<void*>(api.nvrtcCreateProgram)) + "../include",
                                       std::string(RPA_CUDA_TOOLKIT "/include")})
    if (stat((directory + "/cuda_fp16.h").c_str(), &status) == 0) {
      api.include_dir = directory;
      break;
    }
  if (api.include_dir.empty()) {
    *why = "NVRTC (" + api.nvrtc_path + ") has no cuda_fp16.h beside it";
    return false;
  }
  return true;
}

}  // namespace

const CudaModuleApi* load_cuda_modules(std::string* why) {
  static std::string reason;
  static const bool ok = load_cuda_once(&reason);
  *why = reason;
  return ok ? &loaded_cuda : nullptr;
}

#endif

}  // namespace rpa_gpu
