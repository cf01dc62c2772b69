// The gpu backend: forwards each call to the GPU plugin that core/plugins.cpp loaded (plugins/plugin_abi.h).
#include <memory>
#include <string>

#include "core/backend.h"
#include "core/error.h"
#include "core/plugins.h"

namespace rpa {
namespace {

void check(const rpa_plugin_api* api, rpa_status status) {
  if (status != RPA_STATUS_OK) fail(status, std::string(api->name) + " plugin: " + last_error_of(api));
}

class GpuBackend final : public Backend {
 public:
  GpuBackend(const rpa_plugin_api* api, rpa_plugin_state* state) : api_(api), state_(state) {}
  ~GpuBackend() override { api_->destroy(state_); }
  GpuBackend(const GpuBackend&) = delete;
  GpuBackend& operator=(const GpuBackend&) = delete;

  rpa_backend kind() const override { return RPA_BACKEND_GPU; }
  int num_threads() const override { return 1; }  // the calling thread drives the device
  std::unique_ptr<BackendPlan> plan(const rpa_problem& problem) override {
    if (problem.metadata_memory == RPA_MEMORY_DEVICE) check_supported(problem);
    rpa_plugin_plan* plan = nullptr;
    check(api_, api_->plan_create(state_, &problem, &plan));
    return std::make_unique<Plan>(api_, plan);
  }
  // Host memory is written on the host: staging the whole cache through the device would cost far more.
  void write_kv(const rpa_write_problem& problem) override {
    if (problem.memory == RPA_MEMORY_HOST) Backend::write_kv(problem);
    else check(api_, api_->write_kv(state_, &problem));
  }
  // A single call plans into the context's scratch instead of allocating and uploading a plan's own.
  void run_once(const rpa_problem& problem) override { check(api_, api_->run(state_, &problem)); }
  void check_supported(const rpa_problem& problem) const override {
    if (problem.metadata_memory == RPA_MEMORY_DEVICE && !RPA_PLUGIN_HAS(api_, plan_take_error))
      fail(RPA_STATUS_UNSUPPORTED, std::string("argument 'metadata_memory': the ") + api_->name +
                                       " plugin predates device metadata");
    check(api_, api_->supports(state_, &problem));
  }
  void merge_states(const rpa_merge_problem& problem) override {
    if (problem.memory == RPA_MEMORY_HOST) return merge_states_on_host(problem);
    check(api_, api_->merge_states(state_, &problem));
  }
  void* device_alloc(size_t bytes) override {
    void* pointer = nullptr;
    check(api_, api_->device_alloc(state_, bytes, &pointer));
    return pointer;
  }
  void device_free(void* pointer) override { check(api_, api_->device_free(state_, pointer)); }
  void device_copy(void* dst, const void* src, size_t bytes, rpa_copy_kind kind) override {
    check(api_, api_->device_copy(state_, dst, src, bytes, kind));
  }

 private:
  class Plan final : public BackendPlan {
   public:
    Plan(const rpa_plugin_api* api, rpa_plugin_plan* plan) : api_(api), plan_(plan) {}
    ~Plan() override { api_->plan_destroy(plan_); }
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    void run(const rpa_problem& problem) override { check(api_, api_->plan_run(plan_, &problem)); }
    void time_runs(const rpa_problem& problem, int iterations, double* milliseconds, bool whole_runs) override {
      check(api_, api_->plan_time(plan_, &problem, iterations, milliseconds, whole_runs ? 1 : 0));
    }
    int32_t take_device_error() override {
      int32_t first_seq = -1;
      if (RPA_PLUGIN_HAS(api_, plan_take_error)) check(api_, api_->plan_take_error(plan_, &first_seq));
      return first_seq;
    }

   private:
    const rpa_plugin_api* api_;
    rpa_plugin_plan* plan_;
  };

  const rpa_plugin_api* api_;
  rpa_plugin_state* state_;
};

}  // namespace

bool gpu_backend_available() { return best_plugin() != nullptr; }

std::unique_ptr<Backend> make_gpu_backend(int device_ordinal, int) {
  const UsablePlugin* best = best_plugin();
  if (!best) fail(RPA_STATUS_UNAVAILABLE, no_usable_plugin_reason());
  const UsablePlugin& plugin = *best;
  if (device_ordinal >= plugin.device_count)
    fail(RPA_STATUS_UNAVAILABLE, "no device: argument 'options.device_ordinal' is " + std::to_string(device_ordinal) +
                                     " but the " + plugin.api->name + " plugin has " +
                                     std::to_string(plugin.device_count) + " device(s)");
  rpa_plugin_state* state = nullptr;
  check(plugin.api, plugin.api->create(device_ordinal, &state));
  return std::make_unique<GpuBackend>(plugin.api, state);
}

}  // namespace rpa
