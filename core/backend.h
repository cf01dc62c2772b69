// What the core dispatches to. Each context owns one Backend, which turns a validated problem into a
// backend plan; a plan runs any number of times with that problem's tensors. Methods of both may be
// called from several threads at once and report failure by throwing rpa::Error.
#pragma once

#include <cstddef>
#include <memory>

#include "plugins/plugin_abi.h"

namespace rpa {

class BackendPlan {
 public:
  virtual ~BackendPlan() = default;
  // `problem` is the planned problem with one run's tensors and scalars (validate_run_args).
  virtual void run(const rpa_problem& problem) = 0;

  // Runs `problem` iterations times, each run's milliseconds into milliseconds[]: whole runs (what
  // run() does), or with `whole_runs` false only the work a GPU plan enqueues (its kernels). The default
  // times run() with a steady clock; a GPU plan overrides it with device events.
  virtual void time_runs(const rpa_problem& problem, int iterations, double* milliseconds, bool whole_runs);

  // Device metadata: waits for the plan's work and returns the lowest sequence a run since the last call
  // found breaking a rule (clearing the record), or -1. Plans of host metadata have none.
  virtual int32_t take_device_error() { return -1; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual rpa_backend kind() const = 0;
  virtual int num_threads() const = 0;
  // rpa_write_kv(); the default is the scalar writer of the reference (host memory).
  virtual void write_kv(const rpa_write_problem& problem);

  // `problem` holds the metadata (which the returned plan may keep pointing at: the core's plan owns
  // it) and the layouts; its tensor pointers may be NULL and its scalars are unset.
  virtual std::unique_ptr<BackendPlan> plan(const rpa_problem& problem) = 0;

  // One call: plan then run. A backend whose plans are costly to make for a single run overrides it.
  virtual void run_once(const rpa_problem& problem) { plan(problem)->run(problem); }

  // Throws Error(RPA_STATUS_UNSUPPORTED, why) for a validated problem this backend cannot run.
  virtual void check_supported(const rpa_problem&) const {}

  // rpa_merge_states. The default merges host memory on the calling thread.
  virtual void merge_states(const rpa_merge_problem& problem);

  // Device memory of a GPU backend; the CPU backends answer RPA_STATUS_UNSUPPORTED.
  virtual void* device_alloc(size_t bytes);
  virtual void device_free(void* pointer);
  virtual void device_copy(void* dst, const void* src, size_t bytes, rpa_copy_kind kind);
};

// Merges host-memory states (core/merge.cpp).
void merge_states_on_host(const rpa_merge_problem& problem);

// Each factory throws Error(RPA_STATUS_UNAVAILABLE, why) when its backend cannot run here.
std::unique_ptr<Backend> make_reference_backend();
std::unique_ptr<Backend> make_simd_backend(int num_threads);
std::unique_ptr<Backend> make_gpu_backend(int device_ordinal, int num_threads);

// Whether make_simd_backend() can succeed: a cheap CPU check, no arena or scratch is made.
bool simd_backend_available();

// Whether make_gpu_backend() can succeed for some device (loads the plugins on first use).
bool gpu_backend_available();

}  // namespace rpa
