// Backend selection, in one place: which backend a context gets for options.backend, the AUTO policy
// (the GPU when a plugin has a device, else the CPU) and AUTO's CPU fallback for problems the GPU cannot run.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "core/backend.h"

namespace rpa {

class ContextBackends {
 public:
  // Throws Error(RPA_STATUS_INVALID_ARGUMENT) for bad options, RPA_STATUS_UNAVAILABLE when the backend
  // asked for cannot run here.
  explicit ContextBackends(const rpa_context_options& options);

  // The backend the context was created with (what rpa_context_get_backend reports).
  Backend& primary() const { return *primary_; }

  // The backend that runs `problem`: the primary, or for AUTO on the GPU a CPU backend when the GPU
  // answers RPA_STATUS_UNSUPPORTED for a host-memory problem (made on first need).
  Backend& for_problem(const rpa_problem& problem);

 private:
  std::unique_ptr<Backend> primary_;
  bool cpu_fallback_ = false;
  std::mutex fallback_mutex_;
  std::unique_ptr<Backend> fallback_;
};

// rpa_backend_available(): whether a context of this rpa_backend value can be created here.
bool backend_available(int32_t backend);

}  // namespace rpa
