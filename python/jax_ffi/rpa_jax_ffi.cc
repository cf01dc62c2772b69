// XLA FFI handlers behind rpa.jax: rpa_attention as a custom call for JAX's CPU and CUDA platforms.
//
// Operands: queries, k, v (v empty when combined_kv: k is then kv_pages), context_lens, block_tables,
// query_start_loc, num_seqs [1] (int32), sinks [H_s, n] (empty when absent). Results: out, lse (lse has
// no elements unless asked for). XLA buffers are dense row-major, so every descriptor is contiguous.
//
// On CUDA the metadata arrive in device memory while rpa_attention reads them on the host (until the C
// ABI takes device metadata), so the handler copies them (a few KiB) to the host on XLA's stream and
// waits for that stream once per call; queries, KV and outputs stay in device memory, untouched by any
// copy. The driver API is opened at run time, so building this needs no CUDA toolkit.
#include <dlfcn.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <rpa/rpa.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error rpa_error(rpa_status status) {
  const ffi::ErrorCode code = status == RPA_STATUS_INVALID_ARGUMENT ? ffi::ErrorCode::kInvalidArgument
                              : status == RPA_STATUS_UNSUPPORTED    ? ffi::ErrorCode::kUnimplemented
                              : status == RPA_STATUS_UNAVAILABLE    ? ffi::ErrorCode::kUnavailable
                              : status == RPA_STATUS_OUT_OF_MEMORY  ? ffi::ErrorCode::kResourceExhausted
                                                                    : ffi::ErrorCode::kInternal;
  return ffi::Error(code, std::string("rpa: ") + rpa_status_string(status) + ": " + rpa_last_error());
}

// A buffer as a contiguous descriptor; an empty buffer is an absent tensor when `optional`.
ffi::Error describe(const char* name, const ffi::AnyBuffer& buffer, bool optional, rpa_tensor* t) {
  *t = rpa_tensor{};
  if (optional && buffer.element_count() == 0) return ffi::Error::Success();
  switch (buffer.element_type()) {
    case ffi::DataType::F32: t->dtype = RPA_DTYPE_F32; break;
    case ffi::DataType::F16: t->dtype = RPA_DTYPE_F16; break;
    case ffi::DataType::BF16: t->dtype = RPA_DTYPE_BF16; break;
    case ffi::DataType::S32: t->dtype = RPA_DTYPE_I32; break;
    default: return ffi::Error::InvalidArgument(std::string(name) + ": dtype is not float32, float16 or bfloat16");
  }
  const auto dims = buffer.dimensions();
  if (dims.size() > RPA_MAX_DIMS) return ffi::Error::InvalidArgument(std::string(name) + ": more than 4 dimensions");
  t->data = buffer.untyped_data();
  t->ndim = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) t->shape[i] = dims[i];
  return ffi::Error::Success();
}

// One context per (backend, GPU ordinal), kept for the life of the process like the handlers themselves.
rpa_status context_for(rpa_backend backend, int32_t ordinal, rpa_context** out) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, rpa_context*> contexts;
  std::lock_guard<std::mutex> lock(mutex);
  rpa_context*& context = contexts[{static_cast<int>(backend), ordinal}];
  if (!context) {
    rpa_context_options options;
    rpa_context_options_init(&options);
    options.backend = backend;
    options.device_ordinal = ordinal;
    if (rpa_status status = rpa_context_create(&options, &context); status != RPA_STATUS_OK) return status;
  }
  *out = context;
  return RPA_STATUS_OK;
}

struct Call {
  ffi::AnyBuffer queries, k, v;
  ffi::AnyBuffer context_lens, block_tables, query_start_loc, num_seqs, sinks;
  ffi::Result<ffi::AnyBuffer> out;
  ffi::Result<ffi::AnyBuffer> lse;
  double softmax_scale, logits_soft_cap;
  int32_t sliding_window, combined_kv;
};

// Fills args from a call whose metadata the host can read at the given pointers.
ffi::Error run(Call& c, rpa_backend backend, int32_t ordinal, rpa_memory_kind memory, void* stream,
               const int32_t* const host_metadata[4]) {
  rpa_attention_args args;
  rpa_attention_args_init(&args);
  ffi::Error e;
  if ((e = describe("queries", c.queries, false, &args.queries)).failure()) return e;
  if (c.combined_kv) {
    if ((e = describe("kv_pages", c.k, false, &args.kv_pages)).failure()) return e;
  } else {
    if ((e = describe("k_cache", c.k, false, &args.k_cache)).failure()) return e;
    if ((e = describe("v_cache", c.v, false, &args.v_cache)).failure()) return e;
  }
  const char* names[3] = {"context_lens", "block_tables", "query_start_loc"};
  rpa_tensor* metadata[3] = {&args.context_lens, &args.block_tables, &args.query_start_loc};
  const ffi::AnyBuffer* buffers[3] = {&c.context_lens, &c.block_tables, &c.query_start_loc};
  for (int i = 0; i < 3; ++i) {
    if ((e = describe(names[i], *buffers[i], false, metadata[i])).failure()) return e;
    metadata[i]->data = const_cast<int32_t*>(host_metadata[i]);
  }
  args.num_seqs = *host_metadata[3];
  if ((e = describe("softmax_aux", c.sinks, true, &args.softmax_aux)).failure()) return e;
  if ((e = describe("out", *c.out, false, &args.out)).failure()) return e;
  if ((e = describe("lse", *c.lse, true, &args.lse)).failure()) return e;
  args.softmax_scale = c.softmax_scale;
  args.logits_soft_cap = c.logits_soft_cap;
  args.sliding_window = c.sliding_window;
  args.memory = memory;
  args.stream = stream;
  rpa_context* context = nullptr;
  if (rpa_status status = context_for(backend, ordinal, &context); status != RPA_STATUS_OK) return rpa_error(status);
  if (rpa_status status = rpa_attention(context, &args); status != RPA_STATUS_OK) return rpa_error(status);
  return ffi::Error::Success();
}

ffi::Error cpu_impl(ffi::AnyBuffer queries, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer context_lens,
                    ffi::AnyBuffer block_tables, ffi::AnyBuffer query_start_loc, ffi::AnyBuffer num_seqs,
                    ffi::AnyBuffer sinks, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> lse,
                    double softmax_scale, double logits_soft_cap, int32_t sliding_window, int32_t combined_kv,
                    int32_t backend) {
  Call c{queries, k, v, context_lens, block_tables, query_start_loc, num_seqs, sinks, out, lse,
               softmax_scale, logits_soft_cap, sliding_window, combined_kv};
  const int32_t* const host[4] = {static_cast<const int32_t*>(context_lens.untyped_data()),
                                  static_cast<const int32_t*>(block_tables.untyped_data()),
                                  static_cast<const int32_t*>(query_start_loc.untyped_data()),
                                  static_cast<const int32_t*>(num_seqs.untyped_data())};
  // The CPU platform runs host memory: "auto" means the simd backend here.
  const rpa_backend chosen = backend == RPA_BACKEND_AUTO ? RPA_BACKEND_SIMD : static_cast<rpa_backend>(backend);
  return run(c, chosen, 0, RPA_MEMORY_HOST, nullptr, host);
}

// The few CUDA driver entry points the metadata read-back needs, from the driver JAX already loaded.
struct CudaDriver {
  int (*memcpy_dtoh_async)(void*, unsigned long long, size_t, void*) = nullptr;
  int (*stream_synchronize)(void*) = nullptr;
  int (*ctx_get_device)(int*) = nullptr;

  static const CudaDriver& get() {
    static const CudaDriver driver;
    return driver;
  }

 private:
  CudaDriver() {
    void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) return;
    memcpy_dtoh_async = reinterpret_cast<decltype(memcpy_dtoh_async)>(dlsym(handle, "cuMemcpyDtoHAsync_v2"));
    stream_synchronize = reinterpret_cast<decltype(stream_synchronize)>(dlsym(handle, "cuStreamSynchronize"));
    ctx_get_device = reinterpret_cast<decltype(ctx_get_device)>(dlsym(handle, "cuCtxGetDevice"));
  }
};

ffi::Error cuda_impl(void* stream, ffi::AnyBuffer queries, ffi::AnyBuffer k, ffi::AnyBuffer v,
                     ffi::AnyBuffer context_lens, ffi::AnyBuffer block_tables, ffi::AnyBuffer query_start_loc,
                     ffi::AnyBuffer num_seqs, ffi::AnyBuffer sinks, ffi::Result<ffi::AnyBuffer> out,
                     ffi::Result<ffi::AnyBuffer> lse, double softmax_scale, double logits_soft_cap,
                     int32_t sliding_window, int32_t combined_kv, int32_t backend) {
  const CudaDriver& driver = CudaDriver::get();
  if (!driver.memcpy_dtoh_async || !driver.stream_synchronize || !driver.ctx_get_device)
    return ffi::Error::Internal("rpa: the CUDA driver (libcuda.so.1) or one of its entry points is missing");
  if (backend != RPA_BACKEND_AUTO && backend != RPA_BACKEND_GPU)
    return ffi::Error::InvalidArgument("rpa: arrays on a GPU run on the gpu backend, not backend " +
                                       std::string(rpa_backend_string(static_cast<rpa_backend>(backend))));
  Call c{queries, k, v, context_lens, block_tables, query_start_loc, num_seqs, sinks, out, lse,
               softmax_scale, logits_soft_cap, sliding_window, combined_kv};
  const ffi::AnyBuffer* device[4] = {&context_lens, &block_tables, &query_start_loc, &num_seqs};
  thread_local std::vector<int32_t> host[4];
  const int32_t* host_pointers[4];
  for (int i = 0; i < 4; ++i) {
    if (device[i]->element_type() != ffi::DataType::S32)
      return ffi::Error::InvalidArgument("rpa: metadata must be int32");
    host[i].resize(device[i]->element_count() ? device[i]->element_count() : 1);
    if (device[i]->element_count() &&
        driver.memcpy_dtoh_async(host[i].data(), reinterpret_cast<uintptr_t>(device[i]->untyped_data()),
                                 device[i]->size_bytes(), stream) != 0)
      return ffi::Error::Internal("rpa: reading the metadata back from the GPU failed");
    host_pointers[i] = host[i].data();
  }
  int ordinal = 0;
  if (driver.stream_synchronize(stream) != 0 || driver.ctx_get_device(&ordinal) != 0)
    return ffi::Error::Internal("rpa: waiting for XLA's stream failed");
  if (num_seqs.element_count() != 1) return ffi::Error::InvalidArgument("rpa: num_seqs must have one element");
  return run(c, RPA_BACKEND_GPU, ordinal, RPA_MEMORY_DEVICE, stream, host_pointers);
}

}  // namespace

#define RPA_FFI_OPERANDS                                                                               \
  .Arg<ffi::AnyBuffer>()   /* queries */                                                               \
      .Arg<ffi::AnyBuffer>() /* k or kv_pages */                                                       \
      .Arg<ffi::AnyBuffer>() /* v */                                                                   \
      .Arg<ffi::AnyBuffer>() /* context_lens */                                                        \
      .Arg<ffi::AnyBuffer>() /* block_tables */                                                        \
      .Arg<ffi::AnyBuffer>() /* query_start_loc */                                                     \
      .Arg<ffi::AnyBuffer>() /* num_seqs */                                                            \
      .Arg<ffi::AnyBuffer>() /* sinks */                                                               \
      .Ret<ffi::AnyBuffer>() /* out */                                                                 \
      .Ret<ffi::AnyBuffer>() /* lse */                                                                 \
      .Attr<double>("softmax_scale")                                                                   \
      .Attr<double>("logits_soft_cap")                                                                 \
      .Attr<int32_t>("sliding_window")                                                                 \
      .Attr<int32_t>("combined_kv")                                                                    \
      .Attr<int32_t>("backend")

XLA_FFI_DEFINE_HANDLER_SYMBOL(RpaAttentionCpu, cpu_impl, ffi::Ffi::Bind() RPA_FFI_OPERANDS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RpaAttentionCuda, cuda_impl,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<void*>>() RPA_FFI_OPERANDS);
