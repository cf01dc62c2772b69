// Debian's own hipRTC (inside libamdhip64.so.5, ROCm 5.2) compiles the kernel source that librpa_hip.so
// embeds for gfx90a, without a GPU, with the options the plugin passes at a user's first call
// (kernel_set.cpp); the code object must define every entry point of kernel_list.h. A source that would
// fail on a user's machine fails here first. Skipped (77) where no libamdhip64.so.5 is installed.
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "plugins/gpu/kernel_list.h"

namespace {

const char* const kKernelNames[] = {
#define NAME(name, bounds, body, parameters, arguments) #name,
    RPA_GPU_KERNELS(NAME)
#undef NAME
};

template <typename Function>
Function symbol(void* library, const char* name) {
  return reinterpret_cast<Function>(dlsym(library, name));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: test_hiprtc_compile KERNEL_SOURCE\n");
    return 2;
  }
  std::ifstream file(argv[1], std::ios::binary);
  const std::string source((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (source.empty()) {
    std::fprintf(stderr, "cannot read %s\n", argv[1]);
    return 1;
  }
  void* library = dlopen("libamdhip64.so.5", RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    std::printf("skipped: %s\n", dlerror());
    return 77;
  }
  using Program = void*;
  const auto create = symbol<int (*)(Program*, const char*, const char*, int, const char**, const char**)>(library, "hiprtcCreateProgram");
  const auto compile = symbol<int (*)(Program, int, const char**)>(library, "hiprtcCompileProgram");
  const auto log_size = symbol<int (*)(Program, size_t*)>(library, "hiprtcGetProgramLogSize");
  const auto get_log = symbol<int (*)(Program, char*)>(library, "hiprtcGetProgramLog");
  const auto code_size = symbol<int (*)(Program, size_t*)>(library, "hiprtcGetCodeSize");
  const auto get_code = symbol<int (*)(Program, char*)>(library, "hiprtcGetCode");
  if (!create || !compile || !log_size || !get_log || !code_size || !get_code) {
    std::fprintf(stderr, "libamdhip64.so.5 lacks a hipRTC entry point\n");
    return 1;
  }
  Program program = nullptr;
  if (create(&program, source.c_str(), "rpa_kernels.hip", 0, nullptr, nullptr) != 0) return 1;
  const char* options[] = {"--offload-arch=gfx90a", "-O3", "-std=c++17"};
  const int compiled = compile(program, 3, options);
  size_t bytes = 0;
  log_size(program, &bytes);
  std::string log(bytes, '\0');
  if (bytes) get_log(program, log.data());
  if (compiled != 0) {
    std::fprintf(stderr, "hipRTC failed (%d):\n%s\n", compiled, log.c_str());
    return 1;
  }
  code_size(program, &bytes);
  std::vector<char> code(bytes);
  get_code(program, code.data());
  if (bytes < 64 || std::memcmp(code.data(), "\177ELF", 4) != 0) {
    std::fprintf(stderr, "hipRTC returned %zu bytes, not an ELF code object\n", bytes);
    return 1;
  }
  int missing = 0;
  for (const char* name : kKernelNames) {
    const std::string wanted = std::string(name) + '\0';
    if (std::search(code.begin(), code.end(), wanted.begin(), wanted.end()) == code.end()) {
      std::fprintf(stderr, "the code object lacks %s\n", name);
      ++missing;
    }
  }
  std::printf("hipRTC compiled the kernel source for gfx90a: %zu bytes, %zu entry points\n", bytes,
              sizeof kKernelNames / sizeof kKernelNames[0]);
  return missing ? 1 : 0;
}
