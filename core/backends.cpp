// The Backend defaults and the reference backend (the other factories live in simd/ and core/plugins.cpp).
#include <chrono>

#include "core/backend.h"
#include "core/error.h"
#include "reference/reference.h"

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

namespace {

class ReferenceBackend final : public Backend {
 public:
  rpa_backend kind() const override { return RPA_BACKEND_REFERENCE; }
  int num_threads() const override { return 1; }
  std::unique_ptr<BackendPlan> plan(const rpa_problem&) override { return std::make_unique<Plan>(); }

 private:
  // The reference plans nothing: it walks the contract row by row on every run.
  struct Plan final : BackendPlan {
    void run(const rpa_problem& problem) override { reference::attention(problem); }
  };
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend() { return std::make_unique<ReferenceBackend>(); }

}  // namespace rpa
