// What the core dispatches to. Each context owns one Backend; its methods may be called from several
// threads at once and report failure by throwing rpa::Error.
#pragma once

#include <cstddef>
#include <memory>

#include "problem.h"

namespace rpa {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual rpa_backend kind() const = 0;
  virtual int num_threads() const = 0;
  virtual void run(const rpa_problem& problem) = 0;

  // Runs `problem` iterations times, each run's milliseconds into milliseconds[]. The default times
  // run() with a steady clock; a GPU backend overrides it with device events.
  virtual void time_runs(const rpa_problem& problem, int iterations, double* milliseconds);

  // Device memory of a GPU backend; the CPU backends answer RPA_STATUS_UNSUPPORTED.
  virtual void* device_alloc(size_t bytes);
  virtual void device_free(void* pointer);
  virtual void device_copy(void* dst, const void* src, size_t bytes, rpa_copy_kind kind);
};

// Each factory throws Error(RPA_STATUS_UNAVAILABLE, why) when its backend cannot run here.
std::unique_ptr<Backend> make_reference_backend();
std::unique_ptr<Backend> make_simd_backend(int num_threads);
std::unique_ptr<Backend> make_gpu_backend(int device_ordinal, int num_threads);

// Whether make_simd_backend() can succeed: a cheap CPU check, no arena or scratch is made.
bool simd_backend_available();

// Whether make_gpu_backend() can succeed for some device (loads the plugins on first use).
bool gpu_backend_available();

}  // namespace rpa
