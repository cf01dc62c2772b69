// The GPU plugin's ABI entries (plugins/plugin_abi.h) over the HIP API (CUDA through gpu_vendor.h): a
// single call plans into the context's scratch and uploads its metadata each time; a plan uploads once and
// its runs only enqueue (launch.h), host memory staged around them (staging.h). Nothing throws across the
// ABI: every entry runs under core/error.h's guarded(), which leaves the message in the thread's last_error.
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "plugins/gpu/launch.h"
#include "plugins/gpu/staging.h"
#include "plugins/plugin_abi.h"

using namespace rpa_gpu;

namespace {

thread_local std::string last_error;

template <typename Body>
rpa_status guarded(Body&& body) noexcept {
  return rpa::guarded(last_error, std::forward<Body>(body));
}

// The core's problem as this plugin's struct (plugins/plugin_abi.h); a core that wrote fewer than the
// `required` bytes the kernels need is named.
template <typename Problem>
Problem read(const Problem* given, uint32_t required) {
  Problem copy;
  if (!rpa_plugin_read_problem(&copy, sizeof copy, given, required))
    fail(RPA_STATUS_UNSUPPORTED, std::string("the core's problem has ") + std::to_string(given->struct_size) +
                                     " bytes; the " RPA_GPU_PLUGIN_NAME " plugin needs " + std::to_string(required) +
                                     " (a librpa as new as the plugin)");
  return copy;
}

// A single call: plans into the context's scratch and uploads through the pinned buffer, stream-ordered
// after the previous single call's use of it. The caller holds state.mutex.
Launch prepare_single(rpa_plugin_state& state, const DeviceCall& call) {
  const rpa_problem& p = call.problem;
  const Schedule schedule = make_schedule(state, p, kv_vectorizable(p));
  if (state.any_work) check(hipEventSynchronize(state.upload_done), "hipEventSynchronize");
  char* host = state.upload.reserve(schedule.metadata_bytes);
  write_metadata(host, p, schedule);
  char* device = state.metadata.reserve(schedule.metadata_bytes);
  float* partials = reinterpret_cast<float*>(state.partials.reserve(schedule.partial_bytes));
  check(hipMemcpyAsync(device, host, schedule.metadata_bytes, hipMemcpyHostToDevice, call.stream),
        "hipMemcpyAsync (plan)");
  check(hipEventRecord(state.upload_done, call.stream), "hipEventRecord");
  state.any_work = true;
  return make_launch(state, p, schedule, device, partials, call.stream);
}

// Runs `body(launch)` for a single call.
template <typename Body>
void with_single_call(rpa_plugin_state& state, const rpa_problem& problem, Body&& body) {
  check(hipSetDevice(state.device), "hipSetDevice");
  std::lock_guard<std::mutex> lock(state.mutex);
  const hipStream_t stream = stream_of(state, problem);
  // Scratch is reused: wait (on the device) until the previous call, on whatever stream, is done with it.
  if (state.any_work) check(hipStreamWaitEvent(stream, state.scratch_released, 0), "hipStreamWaitEvent");
  on_device(state, problem, [&](const DeviceCall& call) {
    body(prepare_single(state, call));
    check(hipEventRecord(state.scratch_released, call.stream), "hipEventRecord");
  });
}

bool capturing(hipStream_t stream) {
  hipStreamCaptureStatus status = hipStreamCaptureStatusNone;
  check(hipStreamIsCapturing(stream, &status), "hipStreamIsCapturing");
  return status != hipStreamCaptureStatusNone;
}

}  // namespace

// A plan's schedule with its own device metadata and partials, uploaded once.
struct PlannedSchedule {
  Schedule schedule;
  DeviceBuffer metadata{"plan metadata"}, partials{"plan split partials"};
};

struct rpa_plugin_plan {
  rpa_plugin_state* state;
  rpa_problem problem;  // as planned: the metadata pointers stay valid until plan_destroy
  // By vector_kv. The one the planned pointers suggest (aligned when they are NULL) is made at creation;
  // a run whose KV pointers disagree makes the other on first need (an upload: not capture-safe).
  std::unique_ptr<PlannedSchedule> schedules[2];
  hipEvent_t released = nullptr;  // after the last uncaptured run: its partials may be reused
  bool ran = false;

  ~rpa_plugin_plan() {
    (void)hipSetDevice(state->device);
    if (released) (void)hipEventSynchronize(released), (void)hipEventDestroy(released);
  }

  // The caller holds state->mutex.
  PlannedSchedule& schedule(bool vector_kv) {
    std::unique_ptr<PlannedSchedule>& slot = schedules[vector_kv ? 1 : 0];
    if (!slot) {
      auto made = std::make_unique<PlannedSchedule>();
      made->schedule = make_schedule(*state, problem, vector_kv);
      std::vector<char> host(made->schedule.metadata_bytes);
      write_metadata(host.data(), problem, made->schedule);
      check(hipMemcpy(made->metadata.reserve(host.size()), host.data(), host.size(), hipMemcpyHostToDevice),
            "hipMemcpy (plan)");
      made->partials.reserve(made->schedule.partial_bytes);
      slot = std::move(made);
    }
    return *slot;
  }
};

namespace {

// Runs `body(launch)` for one run of a plan: only enqueues, apart from host-memory staging.
template <typename Body>
void with_planned_run(rpa_plugin_plan& plan, const rpa_problem& problem, Body&& body) {
  rpa_plugin_state& state = *plan.state;
  check(hipSetDevice(state.device), "hipSetDevice");
  std::lock_guard<std::mutex> lock(state.mutex);
  on_device(state, problem, [&](const DeviceCall& call) {
    PlannedSchedule& planned = plan.schedule(kv_vectorizable(call.problem));
    // Runs of one plan on different streams share its partials; in a capture the caller's order holds
    // (and an event from outside the capture cannot be waited on).
    const bool captured = capturing(call.stream);
    if (plan.ran && !captured) check(hipStreamWaitEvent(call.stream, plan.released, 0), "hipStreamWaitEvent");
    body(make_launch(state, call.problem, planned.schedule, planned.metadata.data(),
                     reinterpret_cast<float*>(planned.partials.data()), call.stream));
    if (!captured) {
      check(hipEventRecord(plan.released, call.stream), "hipEventRecord");
      plan.ran = true;
    }
  });
}

// Device events around `iterations` calls of `enqueue(i)` on `stream`, in milliseconds.
template <typename Enqueue>
void time_with_events(int device, hipStream_t stream, int32_t iterations, double* milliseconds, Enqueue&& enqueue_one) {
  std::vector<hipEvent_t> events(2 * static_cast<size_t>(iterations), nullptr);
  struct Destroy {
    std::vector<hipEvent_t>& events;
    ~Destroy() {
      for (hipEvent_t event : events)
        if (event) (void)hipEventDestroy(event);
    }
  } destroy{events};
  check(hipSetDevice(device), "hipSetDevice");
  for (hipEvent_t& event : events) check(hipEventCreate(&event), "hipEventCreate");
  enqueue_one([&](int32_t i, bool end) { check(hipEventRecord(events[2 * i + (end ? 1 : 0)], stream), "hipEventRecord"); });
  for (int32_t i = 0; i < iterations; ++i) {
    check(hipEventSynchronize(events[2 * i + 1]), "hipEventSynchronize");
    float elapsed = 0;
    check(hipEventElapsedTime(&elapsed, events[2 * i], events[2 * i + 1]), "hipEventElapsedTime");
    milliseconds[i] = elapsed;
  }
}

// ---- the ABI entries ----

int32_t cached_device_count = 0;

const char* plugin_last_error() { return last_error.c_str(); }

rpa_status plugin_init() {
  return guarded([] {
    const hipError_t error = hipGetDeviceCount(&cached_device_count);
    if (error == hipErrorNoDevice) {
      cached_device_count = 0;
      return;
    }
    check(error, "hipGetDeviceCount");
  });
}

rpa_status plugin_device_count(int32_t* count) {
  *count = cached_device_count;
  return RPA_STATUS_OK;
}

rpa_status plugin_describe_device(int32_t ordinal, char* text, size_t text_size) {
  return guarded([&] {
#if defined(RPA_GPU_AMD_HOST)
    char name[256] = "";
    size_t memory = 0;
    check(hip().hipDeviceGetName(name, sizeof name, ordinal), "hipDeviceGetName");
    check(hip().hipDeviceTotalMem(&memory, ordinal), "hipDeviceTotalMem");
    const std::string arch = " (" + hip_arch_name(ordinal) + ")";
#else
    cudaDeviceProp properties;
    check(cudaGetDeviceProperties(&properties, ordinal), "cudaGetDeviceProperties");
    const char* name = properties.name;
    const size_t memory = properties.totalGlobalMem;
    const std::string arch;
#endif
    std::snprintf(text, text_size, "%s%s, %d multiprocessors, %.1f GiB, warp %d, 16-bit products: %s, kernels: %s", name,
                  arch.c_str(), device_attribute(hipDeviceAttributeMultiprocessorCount, ordinal), memory / 1073741824.0,
                  device_attribute(hipDeviceAttributeWarpSize, ordinal), matrix_path_name(matrix_path(ordinal)),
                  kernel_path(ordinal).c_str());
  });
}

rpa_status plugin_create(int32_t ordinal, rpa_plugin_state** out) {
  *out = nullptr;
  return guarded([&] {
    if (ordinal < 0 || ordinal >= cached_device_count)
      fail(RPA_STATUS_UNAVAILABLE, "no device " + std::to_string(ordinal) + " (" +
                                       std::to_string(cached_device_count) + " present)");
    auto state = std::make_unique<rpa_plugin_state>();
    state->device = ordinal;
    check(hipSetDevice(ordinal), "hipSetDevice");
    state->multiprocessors = device_attribute(hipDeviceAttributeMultiprocessorCount, ordinal);
    state->matrix_path = matrix_path(ordinal);
    state->specialised_min_query = specialised_min_query();
    state->direct_slots = direct_slots();
    std::string error;
    if (const rpa_status status = state->kernels.load(ordinal, &error); status != RPA_STATUS_OK)
      fail(status, "device " + std::to_string(ordinal) + ": no kernels: " + error);
    check(hipStreamCreateWithFlags(&state->own_stream, hipStreamNonBlocking), "hipStreamCreateWithFlags");
    check(hipStreamCreateWithFlags(&state->side_stream, hipStreamNonBlocking), "hipStreamCreateWithFlags");
    check(hipEventCreateWithFlags(&state->fork, hipEventDisableTiming), "hipEventCreateWithFlags");
    check(hipEventCreateWithFlags(&state->join, hipEventDisableTiming), "hipEventCreateWithFlags");
    check(hipEventCreateWithFlags(&state->scratch_released, hipEventDisableTiming), "hipEventCreateWithFlags");
    check(hipEventCreateWithFlags(&state->upload_done, hipEventDisableTiming), "hipEventCreateWithFlags");
    allow_shared_memory_all(state->kernels);
    for (int d_max : {64, 128, 256}) state->resident_blocks[d_max / 128] = resident_blocks(state->kernels, d_max);
    *out = state.release();
  });
}

void plugin_destroy(rpa_plugin_state* state) { delete state; }

rpa_status plugin_run(rpa_plugin_state* state, const rpa_problem* given) {
  return guarded([&] {
    const rpa_problem problem = read(given, RPA_PROBLEM_REQUIRED_SIZE);
    if (problem.metadata_memory == RPA_MEMORY_DEVICE)
      fail(RPA_STATUS_INTERNAL, "plugin run: device metadata reached the single-call path (the core plans it)");
    with_single_call(*state, problem, [](const Launch& launch) { enqueue(launch); });
  });
}

rpa_status plugin_plan_create(rpa_plugin_state* state, const rpa_problem* given, rpa_plugin_plan** out) {
  *out = nullptr;
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    auto plan = std::make_unique<rpa_plugin_plan>();
    plan->state = state;
    plan->problem = read(given, RPA_PROBLEM_REQUIRED_SIZE);
    check(hipEventCreateWithFlags(&plan->released, hipEventDisableTiming), "hipEventCreateWithFlags");
    // Without pointers the KV is taken as aligned (host memory is staged aligned).
    const rpa_problem& problem = plan->problem;
    const bool vector_kv = !problem.k.data || kv_vectorizable(problem);
    std::lock_guard<std::mutex> lock(state->mutex);
    plan->schedule(vector_kv);
    *out = plan.release();
  });
}

rpa_status plugin_plan_run(rpa_plugin_plan* plan, const rpa_problem* given) {
  return guarded([&] {
    with_planned_run(*plan, read(given, RPA_PROBLEM_REQUIRED_SIZE), [](const Launch& launch) { enqueue(launch); });
  });
}

rpa_status plugin_plan_time(rpa_plugin_plan* plan, const rpa_problem* given, int32_t iterations,
                            double* milliseconds, int32_t whole_runs) {
  return guarded([&] {
    const rpa_problem problem = read(given, RPA_PROBLEM_REQUIRED_SIZE);
    const hipStream_t stream = stream_of(*plan->state, problem);
    time_with_events(plan->state->device, stream, iterations, milliseconds, [&](auto&& record) {
      if (whole_runs) {
        for (int32_t i = 0; i < iterations; ++i) {
          record(i, false);
          with_planned_run(*plan, problem, [](const Launch& launch) { enqueue(launch); });
          record(i, true);
        }
        return;
      }
      // The kernels alone, back to back.
      with_planned_run(*plan, problem, [&](const Launch& launch) {
        for (int32_t i = 0; i < iterations; ++i) {
          record(i, false);
          enqueue(launch);
          record(i, true);
        }
      });
    });
  });
}

void plugin_plan_destroy(rpa_plugin_plan* plan) { delete plan; }

// Device metadata: the lowest sequence any run since the last call recorded as broken, record cleared.
rpa_status plugin_plan_take_error(rpa_plugin_plan* plan, int32_t* first_seq) {
  *first_seq = -1;
  return guarded([&] {
    if (plan->problem.metadata_memory != RPA_MEMORY_DEVICE) return;
    rpa_plugin_state& state = *plan->state;
    check(hipSetDevice(state.device), "hipSetDevice");
    std::lock_guard<std::mutex> lock(state.mutex);
    check(hipDeviceSynchronize(), "hipDeviceSynchronize");  // the runs may be on any stream, or in a graph
    const int32_t none = INT32_MAX;
    for (const std::unique_ptr<PlannedSchedule>& planned : plan->schedules) {
      if (!planned) continue;
      int32_t recorded = none;
      check(hipMemcpy(&recorded, planned->metadata.data(), sizeof recorded, hipMemcpyDeviceToHost), "hipMemcpy (record)");
      if (recorded == none) continue;
      *first_seq = *first_seq < 0 ? recorded : std::min(*first_seq, recorded);
      check(hipMemcpy(planned->metadata.data(), &none, sizeof none, hipMemcpyHostToDevice), "hipMemcpy (record)");
    }
  });
}

rpa_status plugin_supports(rpa_plugin_state*, const rpa_problem* given) {
  return guarded([&] { check_supported(read(given, RPA_PROBLEM_REQUIRED_SIZE)); });
}

rpa_status plugin_merge_states(rpa_plugin_state* state, const rpa_merge_problem* given) {
  return guarded([&] {
    const rpa_merge_problem problem = read(given, RPA_MERGE_PROBLEM_REQUIRED_SIZE);
    check(hipSetDevice(state->device), "hipSetDevice");
    const hipStream_t stream = static_cast<hipStream_t>(problem.stream);
    const int64_t rows = problem.num_tokens * problem.num_heads;
    const int blocks = static_cast<int>(std::min<int64_t>((rows + 1) / 2, 65535));  // >= 2 rows a block
    check(state->kernels.launch(Kernel::rpa_merge_states_kernel, blocks, kThreads, 0, stream, problem));
    if (problem.synchronize) check(hipStreamSynchronize(stream), "hipStreamSynchronize");
  });
}

rpa_status plugin_device_alloc(rpa_plugin_state* state, size_t bytes, void** pointer) {
  *pointer = nullptr;
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    check(hipMalloc(pointer, std::max<size_t>(bytes, 1)), "hipMalloc");
  });
}

rpa_status plugin_device_free(rpa_plugin_state* state, void* pointer) {
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    check(hipFree(pointer), "hipFree");
  });
}

rpa_status plugin_device_copy(rpa_plugin_state* state, void* dst, const void* src, size_t bytes, rpa_copy_kind kind) {
  return guarded([&] {
    check(hipSetDevice(state->device), "hipSetDevice");
    const hipMemcpyKind direction = kind == RPA_COPY_HOST_TO_DEVICE   ? hipMemcpyHostToDevice
                                    : kind == RPA_COPY_DEVICE_TO_HOST ? hipMemcpyDeviceToHost
                                                                      : hipMemcpyDeviceToDevice;
    check(hipMemcpy(dst, src, bytes, direction), "hipMemcpy");
    // A device-to-device hipMemcpy may return before the copy ends; the ABI promises it has ended.
    if (direction == hipMemcpyDeviceToDevice) check(hipDeviceSynchronize(), "hipDeviceSynchronize");
  });
}

// Device memory only (the core writes host memory itself): uploads the slots and scales through the
// scratch the attention calls use, and queues one kernel on the caller's stream.
rpa_status plugin_write_kv(rpa_plugin_state* state, const rpa_write_problem* given) {
  return guarded([&] {
    const rpa_write_problem w = read(given, RPA_WRITE_PROBLEM_REQUIRED_SIZE);
    if (w.memory != RPA_MEMORY_DEVICE) fail(RPA_STATUS_INTERNAL, "plugin write_kv: host memory reached the plugin");
    check(hipSetDevice(state->device), "hipSetDevice");
    std::lock_guard<std::mutex> lock(state->mutex);
    const hipStream_t stream = static_cast<hipStream_t>(w.stream);
    if (state->any_work) {
      check(hipStreamWaitEvent(stream, state->scratch_released, 0), "hipStreamWaitEvent");
      check(hipEventSynchronize(state->upload_done), "hipEventSynchronize");
    }
    const size_t slots_bytes = static_cast<size_t>(w.num_tokens) * sizeof(int32_t);
    const size_t scales_offset = align_up(slots_bytes, 256);
    const size_t upload_bytes = scales_offset + 2 * w.num_kv_heads * sizeof(float);
    char* host = state->upload.reserve(upload_bytes);
    std::memcpy(host, w.slots, slots_bytes);
    float* host_scales = reinterpret_cast<float*>(host + scales_offset);
    put_scales(w.k_scale, w.k_scale_stride, w.v_scale, w.v_scale_stride, w.num_kv_heads, host_scales,
               host_scales + w.num_kv_heads);
    char* device = state->metadata.reserve(upload_bytes);
    check(hipMemcpyAsync(device, host, upload_bytes, hipMemcpyHostToDevice, stream), "hipMemcpyAsync (slots)");
    check(hipEventRecord(state->upload_done, stream), "hipEventRecord");
    state->any_work = true;

    // The kernel reads the problem as the core wrote it, but the slots and scales from their device copies.
    WriteParams params{w, reinterpret_cast<const int32_t*>(device), reinterpret_cast<const float*>(device + scales_offset),
                       reinterpret_cast<const float*>(device + scales_offset) + w.num_kv_heads};
    const int64_t elements = w.num_tokens * w.num_kv_heads * w.head_dim;
    const int blocks =
        static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((elements + kThreads - 1) / kThreads, 4096)));
    check(state->kernels.launch(Kernel::rpa_write_kv_kernel, blocks, kThreads, 0, stream, params));
    check(hipEventRecord(state->scratch_released, stream), "hipEventRecord");
    if (w.synchronize) check(hipStreamSynchronize(stream), "hipStreamSynchronize");
  });
}

const rpa_plugin_api plugin_api = {
    RPA_PLUGIN_ABI_VERSION, sizeof(rpa_plugin_api), RPA_GPU_PLUGIN_NAME, plugin_last_error, plugin_init,
    plugin_device_count, plugin_describe_device, plugin_create, plugin_destroy, plugin_run, plugin_plan_create,
    plugin_plan_run, plugin_plan_time, plugin_plan_destroy, plugin_device_alloc, plugin_device_free, plugin_device_copy,
    plugin_supports, plugin_merge_states, plugin_write_kv, plugin_plan_take_error};

}  // namespace

extern "C" {

__attribute__((visibility("default"))) const rpa_plugin_api* rpa_plugin_entry(void) { return &plugin_api; }

// Declines before the runtime is initialised when the vendor's kernel driver is absent.
__attribute__((visibility("default"))) int32_t rpa_plugin_score(void) {
#if defined(RPA_GPU_CUDA)
  if (!dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL)) {
    last_error = "the NVIDIA driver is not installed (libcuda.so.1 cannot be opened)";
    return 0;
  }
#else
  // A runtime named by RPA_HIP_RUNTIME is asked for its devices even without /dev/kfd (the tests' fake
  // runtimes).
  const char* named_runtime = std::getenv("RPA_HIP_RUNTIME");
  if (!(named_runtime && *named_runtime) && access("/dev/kfd", R_OK | W_OK) != 0) {
    last_error = "the AMD GPU kernel driver is absent or not accessible (/dev/kfd)";
    return 0;
  }
  if (!load_hip(&last_error)) return 0;
#endif
  return 1;
}

}  // extern "C"
