#include "plugins/gpu/device.h"

#include <cstdlib>
#include <cstring>

namespace rpa_gpu {

void check(hipError_t error, const char* what) {
  if (error == hipSuccess) return;
  fail(error == hipErrorOutOfMemory ? RPA_STATUS_OUT_OF_MEMORY : RPA_STATUS_DEVICE_ERROR,
       std::string(what) + " failed: " + hipGetErrorName(error) + ": " + hipGetErrorString(error));
}

void check(const std::string& error) {
  if (!error.empty()) fail(RPA_STATUS_DEVICE_ERROR, error);
}

int device_attribute(hipDeviceAttribute_t attribute, int device) {
  int value = 0;
  check(hipDeviceGetAttribute(&value, attribute, device), "hipDeviceGetAttribute");
  return value;
}

MatrixPath matrix_path(int device) {
#if defined(RPA_GPU_CUDA)
  const char* request = std::getenv("RPA_GPU_MATRIX_CORES");
  const int major = device_attribute(hipDeviceAttributeComputeCapabilityMajor, device);
  if ((request && std::strcmp(request, "0") == 0) || major < 8) return MatrixPath::none;
#if defined(RPA_GPU_WGMMA)
  // Hopper runs the sm_90a code, which carries no mma.sync kernels.
  if (major == 9 && device_attribute(hipDeviceAttributeComputeCapabilityMinor, device) == 0) return MatrixPath::warpgroup;
#endif
  return MatrixPath::warp;
#else
  (void)device;
  return MatrixPath::none;
#endif
}

int64_t specialised_min_query() {
  const char* request = std::getenv("RPA_GPU_MATRIX_CORES");
  if (request && std::strcmp(request, "specialised") == 0) return 1;
  if (request && std::strcmp(request, "wgmma") == 0) return INT64_MAX;
  return kSpecialisedMinQuery;
}

bool direct_slots() {
  const char* request = std::getenv("RPA_GPU_DIRECT_SLOTS");
  return !(request && std::strcmp(request, "0") == 0);
}

const char* matrix_path_name(MatrixPath path) {
  return path == MatrixPath::specialised ? "wgmma, warp-specialised"
         : path == MatrixPath::warpgroup ? "wgmma"
         : path == MatrixPath::warp      ? "mma.sync"
                                         : "FMA";
}

hipError_t allocate_device(void** pointer, size_t bytes) { return hipMalloc(pointer, bytes); }
hipError_t allocate_pinned(void** pointer, size_t bytes) { return hipHostMalloc(pointer, bytes, hipHostMallocDefault); }
hipError_t free_device(void* pointer) { return hipFree(pointer); }
hipError_t free_pinned(void* pointer) { return hipHostFree(pointer); }

}  // namespace rpa_gpu
