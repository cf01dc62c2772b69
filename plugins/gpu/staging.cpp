#include "plugins/gpu/staging.h"

#include <cstdint>
#include <initializer_list>
#include <utility>

namespace rpa_gpu {
namespace {

// Bytes from a tensor's first element to one past its last (strides are non-negative).
size_t span_bytes(int element_size, std::initializer_list<std::pair<int64_t, int64_t>> extents_and_strides,
                  int64_t last_dim) {
  int64_t last = last_dim - 1;
  for (const auto& [extent, stride] : extents_and_strides) last += (extent - 1) * stride;
  return static_cast<size_t>(last + 1) * element_size;
}

int element_size(rpa_dtype dtype) { return rpa::dtype_size(dtype); }

}  // namespace

HostSpans host_spans(const rpa_problem& p) {
  HostSpans spans;
  auto add = [&](const void* host, size_t bytes) {
    HostSpans::Span span{host, spans.total, host ? bytes : 0};
    spans.total = align_up(spans.total + span.bytes, 256);
    return span;
  };
  const int kv_size = element_size(p.kv_dtype);
  spans.queries = add(p.queries, span_bytes(element_size(p.query_dtype),
                                            {{p.num_tokens, p.query_token_stride}, {p.num_q_heads, p.query_head_stride}},
                                            p.head_dim));
  for (auto [view, span] : {std::pair{&p.k, &spans.k}, std::pair{&p.v, &spans.v}})
    *span = add(view->data, span_bytes(kv_size,
                                      {{p.num_pages, view->page_stride}, {p.page_size, view->slot_stride},
                                       {p.num_kv_heads, view->head_stride}},
                                      p.head_dim));
  spans.sinks = add(p.sinks, span_bytes(element_size(p.sink_dtype), {{p.sink_heads, p.sink_head_stride}},
                                        1 + (p.sinks_per_head - 1) * p.sink_stride));
  spans.out = add(p.out, span_bytes(element_size(p.out_dtype),
                                    {{p.num_tokens, p.out_token_stride}, {p.num_q_heads, p.out_head_stride}},
                                    p.head_dim));
  spans.lse = add(p.lse, span_bytes(4, {{p.num_tokens, p.lse_token_stride}}, 1 + (p.num_q_heads - 1) * p.lse_head_stride));
  return spans;
}

DeviceCall copy_in(rpa_plugin_state& state, const rpa_problem& host, const HostSpans& spans) {
  char* device = state.staging.reserve(spans.total);
  DeviceCall call{host, state.own_stream};
  auto put = [&](const HostSpans::Span& span) -> char* {
    if (!span.bytes) return nullptr;
    check(hipMemcpyAsync(device + span.offset, span.host, span.bytes, hipMemcpyHostToDevice, call.stream),
          "hipMemcpyAsync (host inputs)");
    return device + span.offset;
  };
  rpa_problem& p = call.problem;
  p.queries = put(spans.queries);
  p.k.data = put(spans.k);
  p.v.data = put(spans.v);
  p.sinks = put(spans.sinks);
  p.out = put(spans.out);
  p.lse = reinterpret_cast<float*>(put(spans.lse));
  return call;
}

void copy_out(const DeviceCall& call, const rpa_problem& host, const HostSpans& spans) {
  check(hipMemcpyAsync(host.out, call.problem.out, spans.out.bytes, hipMemcpyDeviceToHost, call.stream),
        "hipMemcpyAsync (out)");
  if (host.lse)
    check(hipMemcpyAsync(host.lse, call.problem.lse, spans.lse.bytes, hipMemcpyDeviceToHost, call.stream),
          "hipMemcpyAsync (lse)");
  check(hipStreamSynchronize(call.stream), "hipStreamSynchronize");
}

hipStream_t stream_of(const rpa_plugin_state& state, const rpa_problem& problem) {
  return problem.memory == RPA_MEMORY_HOST ? state.own_stream : static_cast<hipStream_t>(problem.stream);
}

// The K then V scale of every kv head (per-tensor scales repeated), as the kernels index them.
void put_scales(const float* k_scale, int64_t k_stride, const float* v_scale, int64_t v_stride, int64_t kv_heads,
                float* k_to, float* v_to) {
  for (int64_t h = 0; h < kv_heads; ++h) k_to[h] = k_scale[h * k_stride], v_to[h] = v_scale[h * v_stride];
}

}  // namespace rpa_gpu
