// The few CUDA driver entry points that capture rpa's planned runs in a CUDA graph and replay it, opened
// from libcuda.so.1 at run time so that nothing needs CUDA headers or links CUDA: used by `rpa bench`'s
// graph-replay column and by the graph tests (tests/plugins/test_gpu_graph.cpp). rpa's runs are captured
// from a stream the caller creates here and passes as rpa_attention_args.stream.
#pragma once

#include <dlfcn.h>

#include <type_traits>

namespace rpa::cuda_graph {

struct Driver {
  using Stream = void*;
  using Graph = void*;
  using GraphExec = void*;
  using Event = void*;
  static constexpr int kThreadLocalCapture = 1;  // CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
  static constexpr unsigned kNonBlocking = 1;    // CU_STREAM_NON_BLOCKING

  // CUDA 11.4+ names; every call returns a CUresult (0: success).
  int (*stream_create)(Stream*, unsigned) = nullptr;
  int (*stream_destroy)(Stream) = nullptr;
  int (*stream_synchronize)(Stream) = nullptr;
  int (*begin_capture)(Stream, int) = nullptr;
  int (*end_capture)(Stream, Graph*) = nullptr;
  int (*instantiate)(GraphExec*, Graph, unsigned long long) = nullptr;
  int (*launch)(GraphExec, Stream) = nullptr;
  int (*exec_destroy)(GraphExec) = nullptr;
  int (*graph_destroy)(Graph) = nullptr;
  int (*event_create)(Event*, unsigned) = nullptr;
  int (*event_record)(Event, Stream) = nullptr;
  int (*event_synchronize)(Event) = nullptr;
  int (*event_elapsed)(float*, Event, Event) = nullptr;
  int (*event_destroy)(Event) = nullptr;

  // False without an NVIDIA driver (or one older than CUDA 11.4).
  bool load() {
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!library) return false;
    const auto get = [&](auto& function, const char* name) {
      function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(dlsym(library, name));
      return function != nullptr;
    };
    return get(stream_create, "cuStreamCreate") && get(stream_destroy, "cuStreamDestroy_v2") &&
           get(stream_synchronize, "cuStreamSynchronize") && get(begin_capture, "cuStreamBeginCapture_v2") &&
           get(end_capture, "cuStreamEndCapture") && get(instantiate, "cuGraphInstantiateWithFlags") &&
           get(launch, "cuGraphLaunch") && get(exec_destroy, "cuGraphExecDestroy") &&
           get(graph_destroy, "cuGraphDestroy") && get(event_create, "cuEventCreate") &&
           get(event_record, "cuEventRecord") && get(event_synchronize, "cuEventSynchronize") &&
           get(event_elapsed, "cuEventElapsedTime") && get(event_destroy, "cuEventDestroy_v2");
  }
};

}  // namespace rpa::cuda_graph
