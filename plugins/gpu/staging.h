// Host memory on the device: a call whose tensors are host memory runs on copies of them in the context's
// staging buffer, copied in and back around the launch; device memory runs in place on the caller's stream.
#pragma once

#include <cstddef>

#include "plugins/gpu/device.h"

namespace rpa_gpu {

// A problem whose float tensors point at device memory, with the stream to run on.
struct DeviceCall {
  rpa_problem problem;
  hipStream_t stream;
};

// Host memory: copies every float tensor's span to the staging buffer (out and lse too, so the gaps of
// strided outputs come back unchanged) and points the problem at the copies.
struct HostSpans {
  struct Span {
    const void* host;
    size_t offset, bytes;
  };
  Span queries, k, v, sinks, out, lse;
  size_t total = 0;
};

HostSpans host_spans(const rpa_problem& p);
DeviceCall copy_in(rpa_plugin_state& state, const rpa_problem& host, const HostSpans& spans);
void copy_out(const DeviceCall& call, const rpa_problem& host, const HostSpans& spans);

hipStream_t stream_of(const rpa_plugin_state& state, const rpa_problem& problem);

// Runs `body(call)` with the call's tensors on the device: host memory is staged in and out around it.
// The caller holds state.mutex.
template <typename Body>
void on_device(rpa_plugin_state& state, const rpa_problem& problem, Body&& body) {
  const bool on_host = problem.memory == RPA_MEMORY_HOST;
  const HostSpans spans = on_host ? host_spans(problem) : HostSpans{};
  const DeviceCall call = on_host ? copy_in(state, problem, spans) : DeviceCall{problem, stream_of(state, problem)};
  body(call);
  if (on_host) copy_out(call, problem, spans);
  else if (problem.synchronize) check(hipStreamSynchronize(call.stream), "hipStreamSynchronize");
}

// The K then V scale of every kv head (per-tensor scales repeated), as the kernels index them.
void put_scales(const float* k_scale, int64_t k_stride, const float* v_scale, int64_t v_stride, int64_t kv_heads,
                float* k_to, float* v_to);

}  // namespace rpa_gpu
