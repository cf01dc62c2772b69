// The C ABI boundary: every exported function catches everything and turns it into a status plus the
// thread's last-error text.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/enums.h"
#include "core/error.h"
#include "core/plugins.h"
#include "core/registry.h"
#include "core/validate.h"

struct rpa_context {
  explicit rpa_context(const rpa_context_options& options) : backends(options) {}
  rpa::ContextBackends backends;
};

// A validated call (metadata copied) and its backend's plan. Runs only read it, so it may run from
// several threads at once, but for the record of the device metadata the latest run read.
struct rpa_plan {
  rpa_context* context;
  std::unique_ptr<rpa::PlannedCall> call;
  std::unique_ptr<rpa::BackendPlan> backend_plan;

  // Device metadata: the planned problem, with the arrays of the latest run (rpa_plan_get_error reports
  // from them; a run may pass its own: validate_run_args).
  rpa_problem latest_metadata() {
    std::lock_guard<std::mutex> lock(mutex);
    return latest;
  }
  // Validates a run's arguments, and records its device metadata arrays (host metadata: the plan's copy).
  rpa_problem run_problem(const rpa_attention_args& args) {
    const rpa_problem run = rpa::validate_run_args(*call, args);
    if (run.metadata_memory != RPA_MEMORY_DEVICE) return run;
    std::lock_guard<std::mutex> lock(mutex);
    latest.context_lens = run.context_lens, latest.query_start_loc = run.query_start_loc;
    latest.block_tables = run.block_tables, latest.block_table_stride = run.block_table_stride;
    return run;
  }

  std::mutex mutex;
  rpa_problem latest{};
};

namespace rpa {
namespace {

thread_local std::string last_error;

template <typename Body>
rpa_status guarded(Body&& body) noexcept {
  return rpa::guarded(last_error, std::forward<Body>(body));
}

void require(const void* pointer, const char* name) {
  if (!pointer) invalid(std::string("argument '") + name + "' is NULL");
}

Backend& backend_of(rpa_context* context) {
  require(context, "context");
  return context->backends.primary();
}

// Copies a versioned struct: fields a caller's older struct lacks keep their defaults.
template <typename Struct>
Struct read_versioned(const Struct* given, const char* name, void (*init)(Struct*)) {
  require(given, name);
  Struct result;
  init(&result);
  const size_t given_size = given->struct_size;
  if (given_size < sizeof(size_t) || given_size > (1u << 20))
    invalid(std::string("argument '") + name + "': struct_size " + std::to_string(given_size) +
            " is implausible; initialise the struct with its _init function");
  std::memcpy(&result, given, std::min(given_size, sizeof(Struct)));
  result.struct_size = sizeof(Struct);
  return result;
}

void check_memory(const Backend& backend, rpa_memory_kind memory) {
  if (memory == RPA_MEMORY_DEVICE && backend.kind() != RPA_BACKEND_GPU)
    invalid(std::string("argument 'memory': device memory needs the gpu backend, but the context runs ") +
            rpa_backend_string(backend.kind()));
}

rpa_attention_args args_of(const rpa_attention_args* given) {
  return read_versioned(given, "args", rpa_attention_args_init);
}

std::unique_ptr<PlannedCall> planned_call(const Backend& backend, const rpa_attention_args& args) {
  std::unique_ptr<PlannedCall> call = validate_plan_args(args);
  check_memory(backend, call->problem().memory);
  return call;
}

// Device metadata: the record of `plan`'s runs as the message host validation gives for the metadata now.
void report_device_error(Backend& backend, const rpa_problem& p, BackendPlan& plan) {
  if (p.metadata_memory != RPA_MEMORY_DEVICE) return;
  const int32_t seq = plan.take_device_error();
  if (seq < 0) return;
  const auto copy_back = [&](const int32_t* device, size_t count) {
    std::vector<int32_t> host(count);
    if (count) backend.device_copy(host.data(), device, count * sizeof(int32_t), RPA_COPY_DEVICE_TO_HOST);
    return host;
  };
  const size_t seqs = static_cast<size_t>(p.num_seqs);
  const std::vector<int32_t> lens = copy_back(p.context_lens, seqs);
  const std::vector<int32_t> qsl = copy_back(p.query_start_loc, seqs + 1);
  const std::vector<int32_t> tables =
      copy_back(p.block_tables, seqs ? (seqs - 1) * p.block_table_stride + p.pages_per_seq : 0);
  check_device_metadata(p, lens.data(), tables.data(), p.block_table_stride, qsl.data());
  invalid("argument 'context_lens': a run found the metadata of sequence [" + std::to_string(seq) +
          "] breaking a rule, but it follows every rule now (it was changed after that run)");
}

rpa_plan& plan_of(rpa_plan* plan) {
  require(plan, "plan");
  return *plan;
}

}  // namespace
}  // namespace rpa

using namespace rpa;

extern "C" {

int32_t rpa_get_version(void) { return RPA_VERSION; }

const char* rpa_status_string(rpa_status status) {
  switch (enum_value(status)) {
    case RPA_STATUS_OK: return "ok";
    case RPA_STATUS_INVALID_ARGUMENT: return "invalid argument";
    case RPA_STATUS_UNSUPPORTED: return "unsupported";
    case RPA_STATUS_UNAVAILABLE: return "unavailable";
    case RPA_STATUS_OUT_OF_MEMORY: return "out of memory";
    case RPA_STATUS_DEVICE_ERROR: return "device error";
    case RPA_STATUS_INTERNAL: return "internal error";
  }
  return "unknown status";
}

const char* rpa_backend_string(rpa_backend backend) {
  switch (enum_value(backend)) {
    case RPA_BACKEND_AUTO: return "auto";
    case RPA_BACKEND_REFERENCE: return "reference";
    case RPA_BACKEND_SIMD: return "simd";
    case RPA_BACKEND_GPU: return "gpu";
  }
  return "unknown backend";
}

const char* rpa_last_error(void) { return last_error.c_str(); }

void rpa_context_options_init(rpa_context_options* options) {
  if (!options) return;
  *options = rpa_context_options{};
  options->struct_size = sizeof(rpa_context_options);
  options->backend = RPA_BACKEND_AUTO;
}

rpa_status rpa_context_create(const rpa_context_options* options, rpa_context** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    require(out, "out");
    rpa_context_options defaults;
    rpa_context_options_init(&defaults);
    const rpa_context_options resolved =
        options ? read_versioned(options, "options", rpa_context_options_init) : defaults;
    *out = new rpa_context(resolved);
  });
}

void rpa_context_destroy(rpa_context* context) { delete context; }

rpa_status rpa_context_get_backend(const rpa_context* context, rpa_backend* out) {
  return guarded([&] {
    require(context, "context");
    require(out, "out");
    *out = context->backends.primary().kind();
  });
}

rpa_status rpa_context_get_num_threads(const rpa_context* context, int32_t* out) {
  return guarded([&] {
    require(context, "context");
    require(out, "out");
    *out = context->backends.primary().num_threads();
  });
}

void rpa_attention_args_init(rpa_attention_args* args) {
  if (!args) return;
  *args = rpa_attention_args{};
  args->struct_size = sizeof(rpa_attention_args);
  args->memory = RPA_MEMORY_HOST;
}

rpa_status rpa_attention(rpa_context* context, const rpa_attention_args* args) {
  return guarded([&] {
    Backend& backend = backend_of(context);
    const rpa_attention_args resolved = args_of(args);
    const std::unique_ptr<PlannedCall> call = planned_call(backend, resolved);
    const rpa_problem& problem = call->problem();
    if (problem.metadata_memory == RPA_MEMORY_DEVICE) {
      // One call cannot leave its device error record for later: run a plan and report before returning.
      const std::unique_ptr<BackendPlan> plan = backend.plan(problem);
      plan->run(validate_run_args(*call, resolved));
      report_device_error(backend, problem, *plan);
      return;
    }
    context->backends.for_problem(problem).run_once(validate_run_args(*call, resolved));
  });
}

rpa_status rpa_plan_create(rpa_context* context, const rpa_attention_args* args, rpa_plan** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    Backend& backend = backend_of(context);
    require(out, "out");
    auto plan = std::make_unique<rpa_plan>();
    plan->context = context;
    plan->call = planned_call(backend, args_of(args));
    plan->latest = plan->call->problem();
    plan->backend_plan = context->backends.for_problem(plan->call->problem()).plan(plan->call->problem());
    *out = plan.release();
  });
}

rpa_status rpa_plan_run(rpa_plan* plan, const rpa_attention_args* args) {
  return guarded([&] {
    rpa_plan& planned = plan_of(plan);
    planned.backend_plan->run(planned.run_problem(args_of(args)));
  });
}

rpa_status rpa_plan_get_error(rpa_plan* plan) {
  return guarded([&] {
    rpa_plan& planned = plan_of(plan);
    report_device_error(backend_of(planned.context), planned.latest_metadata(), *planned.backend_plan);
  });
}

void rpa_plan_destroy(rpa_plan* plan) { delete plan; }

rpa_status rpa_plan_time(rpa_plan* plan, const rpa_attention_args* args, int32_t iterations, double* milliseconds) {
  return guarded([&] {
    rpa_plan& planned = plan_of(plan);
    if (iterations <= 0) invalid("argument 'iterations': " + std::to_string(iterations) + " must be > 0");
    require(milliseconds, "milliseconds");
    planned.backend_plan->time_runs(planned.run_problem(args_of(args)), iterations, milliseconds, true);
  });
}

void rpa_write_kv_args_init(rpa_write_kv_args* args) {
  if (!args) return;
  *args = rpa_write_kv_args{};
  args->struct_size = sizeof(rpa_write_kv_args);
  args->memory = RPA_MEMORY_HOST;
}

rpa_status rpa_write_kv(rpa_context* context, const rpa_write_kv_args* given) {
  return guarded([&] {
    Backend& backend = backend_of(context);
    const rpa_write_kv_args args = read_versioned(given, "args", rpa_write_kv_args_init);
    std::vector<int32_t> slots;
    const rpa_write_problem problem = validate_write_kv_args(args, slots);
    check_memory(backend, problem.memory);
    backend.write_kv(problem);
  });
}

rpa_status rpa_time_attention(rpa_context* context, const rpa_attention_args* args, int32_t iterations,
                              double* milliseconds) {
  return guarded([&] {
    Backend& backend = backend_of(context);
    if (iterations <= 0) invalid("argument 'iterations': " + std::to_string(iterations) + " must be > 0");
    require(milliseconds, "milliseconds");
    const rpa_attention_args resolved = args_of(args);
    const std::unique_ptr<PlannedCall> call = planned_call(backend, resolved);
    context->backends.for_problem(call->problem())
        .plan(call->problem())
        ->time_runs(validate_run_args(*call, resolved), iterations, milliseconds, false);
  });
}

rpa_status rpa_context_supports(rpa_context* context, const rpa_attention_args* args) {
  return guarded([&] {
    Backend& backend = backend_of(context);
    backend.check_supported(planned_call(backend, args_of(args))->problem());
  });
}

void rpa_merge_args_init(rpa_merge_args* args) {
  if (!args) return;
  *args = rpa_merge_args{};
  args->struct_size = sizeof(rpa_merge_args);
  args->memory = RPA_MEMORY_HOST;
}

rpa_status rpa_merge_states(rpa_context* context, const rpa_merge_args* args) {
  return guarded([&] {
    Backend& backend = backend_of(context);
    const rpa_merge_problem problem = validate_merge_args(read_versioned(args, "args", rpa_merge_args_init));
    check_memory(backend, problem.memory);
    backend.merge_states(problem);
  });
}

rpa_status rpa_device_alloc(rpa_context* context, size_t bytes, void** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    Backend& backend = backend_of(context);
    require(out, "out");
    *out = backend.device_alloc(bytes);
  });
}

rpa_status rpa_device_free(rpa_context* context, void* pointer) {
  return guarded([&] {
    Backend& backend = backend_of(context);
    if (pointer) backend.device_free(pointer);
  });
}

rpa_status rpa_device_copy(rpa_context* context, void* dst, const void* src, size_t bytes, rpa_copy_kind kind) {
  return guarded([&] {
    Backend& backend = backend_of(context);
    require(dst, "dst");
    require(src, "src");
    const int32_t value = enum_value(kind);
    if (value != RPA_COPY_HOST_TO_DEVICE && value != RPA_COPY_DEVICE_TO_HOST && value != RPA_COPY_DEVICE_TO_DEVICE)
      invalid("argument 'kind': " + std::to_string(value) + " is not an rpa_copy_kind");
    backend.device_copy(dst, src, bytes, kind);
  });
}

int32_t rpa_backend_available(rpa_backend backend) {
  try {
    return backend_available(enum_value(backend)) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

int32_t rpa_plugin_report_count(void) {
  try {
    return static_cast<int32_t>(plugin_reports().size());
  } catch (...) {
    return 0;
  }
}

rpa_status rpa_get_plugin_report(int32_t index, rpa_plugin_report* out) {
  return guarded([&] {
    require(out, "out");
    const auto& reports = plugin_reports();
    if (index < 0 || static_cast<size_t>(index) >= reports.size())
      invalid("argument 'index': " + std::to_string(index) + " is outside [0, " + std::to_string(reports.size()) + ")");
    const PluginReport& report = reports[index];
    *out = rpa_plugin_report{report.path.c_str(), report.name.c_str(), report.usable ? 1 : 0, report.device_count,
                             report.reason.c_str()};
  });
}

}  // extern "C"
