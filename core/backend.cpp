// The Backend defaults (each backend's adapter lives in its own folder: reference/, simd/, plugins/).
#include <chrono>

#include "core/backend.h"
#include "core/error.h"
#include "reference/reference.h"  // the default write_kv

namespace rpa {

void BackendPlan::time_runs(const rpa_problem& problem, int iterations, double* milliseconds, bool) {
  for (int i = 0; i < iterations; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run(problem);
    milliseconds[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }
}

namespace {

[[noreturn]] void no_device_memory(rpa_backend kind) {
  fail(RPA_STATUS_UNSUPPORTED, std::string("the ") + rpa_backend_string(kind) + " backend has no device memory");
}

}  // namespace

void Backend::merge_states(const rpa_merge_problem& problem) {
  if (problem.memory != RPA_MEMORY_HOST) no_device_memory(kind());
  merge_states_on_host(problem);
}
void Backend::write_kv(const rpa_write_problem& problem) { reference::write_kv(problem); }

void* Backend::device_alloc(size_t) { no_device_memory(kind()); }
void Backend::device_free(void*) { no_device_memory(kind()); }
void Backend::device_copy(void*, const void*, size_t, rpa_copy_kind) { no_device_memory(kind()); }

}  // namespace rpa
