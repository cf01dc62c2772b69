#include "core/registry.h"

#include <string>

#include "core/enums.h"
#include "core/error.h"

namespace rpa {
namespace {

std::unique_ptr<Backend> make_cpu_backend(int num_threads) {
  if (simd_backend_available()) return make_simd_backend(num_threads);
  return make_reference_backend();
}

std::unique_ptr<Backend> make_backend(const rpa_context_options& options) {
  if (options.num_threads < 0)
    invalid("argument 'options.num_threads': " + std::to_string(options.num_threads) + " must be >= 0");
  if (options.device_ordinal < 0)
    invalid("argument 'options.device_ordinal': " + std::to_string(options.device_ordinal) + " must be >= 0");
  switch (const int32_t backend = enum_value(options.backend)) {
    case RPA_BACKEND_REFERENCE: return make_reference_backend();
    case RPA_BACKEND_SIMD: return make_simd_backend(options.num_threads);
    case RPA_BACKEND_GPU: return make_gpu_backend(options.device_ordinal, options.num_threads);
    case RPA_BACKEND_AUTO:
      if (gpu_backend_available()) return make_gpu_backend(options.device_ordinal, options.num_threads);
      return make_cpu_backend(options.num_threads);
    default:
      invalid("argument 'options.backend': " + std::to_string(backend) + " is not an rpa_backend");
  }
}

}  // namespace

ContextBackends::ContextBackends(const rpa_context_options& options)
    : primary_(make_backend(options)),
      cpu_fallback_(options.backend == RPA_BACKEND_AUTO && primary_->kind() == RPA_BACKEND_GPU) {}

Backend& ContextBackends::for_problem(const rpa_problem& problem) {
  if (!cpu_fallback_ || problem.memory != RPA_MEMORY_HOST) return *primary_;
  try {
    primary_->check_supported(problem);
    return *primary_;
  } catch (const Error& error) {
    if (error.status() != RPA_STATUS_UNSUPPORTED) throw;
  }
  std::lock_guard<std::mutex> lock(fallback_mutex_);
  if (!fallback_) fallback_ = make_cpu_backend(0);
  return *fallback_;
}

bool backend_available(int32_t backend) {
  switch (backend) {
    case RPA_BACKEND_AUTO:
    case RPA_BACKEND_REFERENCE: return true;
    case RPA_BACKEND_SIMD: return simd_backend_available();
    case RPA_BACKEND_GPU: return gpu_backend_available();
  }
  return false;
}

}  // namespace rpa
