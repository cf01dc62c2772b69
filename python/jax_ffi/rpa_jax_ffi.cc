// XLA FFI handlers behind rpa.jax: rpa_attention as a custom call for JAX's CPU and CUDA platforms.
//
// Operands: queries, k, v (v empty when combined_kv: k is then kv_pages), metadata (int32, packed by
// rpa.jax: context_lens [S], query_start_loc [S+1], block_tables [S, W], with sequences from num_seqs on
// emptied), num_seqs [1] (int32), sinks [H_s, n] (empty when absent). Results: out, lse (lse has no
// elements unless asked for). XLA buffers are dense row-major, so every descriptor is contiguous.
//
// On CUDA the handler only enqueues work on XLA's stream, so XLA may capture it into a command buffer
// (CUDA graph): rpa.jax made, at trace time, a device-metadata plan per GPU for these shapes (over a
// metadata buffer of its own, which only the planning reads); each call runs it on the packed metadata
// where XLA put it this time (a run may point a device-metadata plan at other arrays: rpa_plan_run), so
// nothing is copied. The driver API is opened at run time, so building this needs no CUDA toolkit.
#include <dlfcn.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

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

// The CPU handler's context of a host backend, one per backend, kept for the life of the process like the
// handlers themselves (the CUDA handler runs the plans rpa.jax made on contexts of each GPU).
rpa_status host_context(rpa_backend backend, rpa_context** out) {
  static std::mutex mutex;
  static std::map<int, rpa_context*> contexts;
  std::lock_guard<std::mutex> lock(mutex);
  rpa_context*& context = contexts[static_cast<int>(backend)];
  if (!context) {
    rpa_context_options options;
    rpa_context_options_init(&options);
    options.backend = backend;
    if (rpa_status status = rpa_context_create(&options, &context); status != RPA_STATUS_OK) return status;
  }
  *out = context;
  return RPA_STATUS_OK;
}

struct Call {
  ffi::AnyBuffer queries, k, v, sinks;
  ffi::Result<ffi::AnyBuffer> out;
  ffi::Result<ffi::AnyBuffer> lse;
  double softmax_scale, logits_soft_cap;
  int32_t sliding_window, combined_kv;
};

// Fills the tensors and scalars of args (everything but the metadata) from a call.
ffi::Error describe_tensors(Call& c, rpa_attention_args* args) {
  ffi::Error e;
  if ((e = describe("queries", c.queries, false, &args->queries)).failure()) return e;
  if (c.combined_kv) {
    if ((e = describe("kv_pages", c.k, false, &args->kv_pages)).failure()) return e;
  } else {
    if ((e = describe("k_cache", c.k, false, &args->k_cache)).failure()) return e;
    if ((e = describe("v_cache", c.v, false, &args->v_cache)).failure()) return e;
  }
  if ((e = describe("softmax_aux", c.sinks, true, &args->softmax_aux)).failure()) return e;
  if ((e = describe("out", *c.out, false, &args->out)).failure()) return e;
  if ((e = describe("lse", *c.lse, true, &args->lse)).failure()) return e;
  args->softmax_scale = c.softmax_scale;
  args->logits_soft_cap = c.logits_soft_cap;
  args->sliding_window = c.sliding_window;
  return ffi::Error::Success();
}

// Views of the packed metadata (`seqs` sequences, tables `width` wide), read in place.
ffi::Error describe_metadata(ffi::AnyBuffer metadata, int64_t seqs, int64_t width, rpa_attention_args* args) {
  if (metadata.element_type() != ffi::DataType::S32 || metadata.element_count() != 2 * seqs + 1 + seqs * width)
    return ffi::Error::InvalidArgument("rpa: the packed metadata does not match its shapes");
  int32_t* packed = static_cast<int32_t*>(metadata.untyped_data());
  args->context_lens = rpa_tensor{packed, RPA_DTYPE_I32, 1, {seqs}, {}};
  args->query_start_loc = rpa_tensor{packed + seqs, RPA_DTYPE_I32, 1, {seqs + 1}, {}};
  args->block_tables = rpa_tensor{packed + 2 * seqs + 1, RPA_DTYPE_I32, 2, {seqs, width}, {}};
  return ffi::Error::Success();
}

ffi::Error cpu_impl(ffi::AnyBuffer queries, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer metadata,
                    ffi::AnyBuffer num_seqs, ffi::AnyBuffer sinks, ffi::Result<ffi::AnyBuffer> out,
                    ffi::Result<ffi::AnyBuffer> lse, double softmax_scale, double logits_soft_cap,
                    int32_t sliding_window, int32_t combined_kv, int32_t backend, int32_t seqs, int32_t table_width,
                    int64_t /*plans*/, int32_t /*plan_count*/, int32_t /*check_metadata*/) {
  Call c{queries, k, v, sinks, out, lse, softmax_scale, logits_soft_cap, sliding_window, combined_kv};
  rpa_attention_args args;
  rpa_attention_args_init(&args);
  if (ffi::Error e = describe_tensors(c, &args); e.failure()) return e;
  if (ffi::Error e = describe_metadata(metadata, seqs, table_width, &args); e.failure()) return e;
  if (num_seqs.element_type() != ffi::DataType::S32 || num_seqs.element_count() != 1)
    return ffi::Error::InvalidArgument("rpa: num_seqs is not one int32");
  args.num_seqs = *static_cast<const int32_t*>(num_seqs.untyped_data());
  // The CPU platform runs host memory on a host backend: "auto" means the simd backend here.
  if (backend != RPA_BACKEND_AUTO && backend != RPA_BACKEND_SIMD && backend != RPA_BACKEND_REFERENCE)
    return ffi::Error::InvalidArgument("rpa: arrays on the CPU platform run on the simd or reference backend, not " +
                                       std::string(rpa_backend_string(static_cast<rpa_backend>(backend))));
  const rpa_backend chosen = backend == RPA_BACKEND_AUTO ? RPA_BACKEND_SIMD : static_cast<rpa_backend>(backend);
  rpa_context* context = nullptr;
  if (rpa_status status = host_context(chosen, &context); status != RPA_STATUS_OK) return rpa_error(status);
  if (rpa_status status = rpa_attention(context, &args); status != RPA_STATUS_OK) return rpa_error(status);
  return ffi::Error::Success();
}

// The few CUDA driver entry points the handler needs, from the driver JAX already loaded.
struct CudaDriver {
  int (*stream_is_capturing)(void*, int*) = nullptr;
  int (*ctx_get_device)(int*) = nullptr;

  static const CudaDriver& get() {
    static const CudaDriver driver;
    return driver;
  }

 private:
  CudaDriver() {
    void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) return;
    stream_is_capturing = reinterpret_cast<decltype(stream_is_capturing)>(dlsym(handle, "cuStreamIsCapturing"));
    ctx_get_device = reinterpret_cast<decltype(ctx_get_device)>(dlsym(handle, "cuCtxGetDevice"));
  }
};

// The table rpa.jax passes (attribute `plans`, indexed by CUDA ordinal) holds device-metadata plans.
ffi::Error cuda_impl(void* stream, ffi::AnyBuffer queries, ffi::AnyBuffer k, ffi::AnyBuffer v,
                     ffi::AnyBuffer metadata, ffi::AnyBuffer /*num_seqs*/, ffi::AnyBuffer sinks,
                     ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> lse, double softmax_scale,
                     double logits_soft_cap, int32_t sliding_window, int32_t combined_kv, int32_t backend,
                     int32_t seqs, int32_t table_width, int64_t plans, int32_t plan_count,
                     int32_t check_metadata) {
  const CudaDriver& driver = CudaDriver::get();
  if (!driver.stream_is_capturing || !driver.ctx_get_device)
    return ffi::Error::Internal("rpa: the CUDA driver (libcuda.so.1) or one of its entry points is missing");
  if (backend != RPA_BACKEND_AUTO && backend != RPA_BACKEND_GPU)
    return ffi::Error::InvalidArgument("rpa: arrays on a GPU run on the gpu backend, not backend " +
                                       std::string(rpa_backend_string(static_cast<rpa_backend>(backend))));
  int ordinal = 0;
  if (driver.ctx_get_device(&ordinal) != 0) return ffi::Error::Internal("rpa: no current CUDA device");
  rpa_plan* const* table = reinterpret_cast<rpa_plan* const*>(static_cast<uintptr_t>(plans));
  if (!table || ordinal >= plan_count || !table[ordinal])
    return ffi::Error(ffi::ErrorCode::kUnavailable, "rpa: no plan for CUDA device " + std::to_string(ordinal) +
                                   " (rpa.jax plans at trace time for the GPUs rpa's gpu backend can run)");
  rpa_plan* plan = table[ordinal];
  Call c{queries, k, v, sinks, out, lse, softmax_scale, logits_soft_cap, sliding_window, combined_kv};
  rpa_attention_args args;
  rpa_attention_args_init(&args);
  if (ffi::Error e = describe_tensors(c, &args); e.failure()) return e;
  // The run reads the packed metadata where XLA put it this time (rpa_plan_run); num_seqs took effect there.
  if (ffi::Error e = describe_metadata(metadata, seqs, table_width, &args); e.failure()) return e;
  args.memory = args.metadata_memory = RPA_MEMORY_DEVICE;
  args.stream = stream;
  if (rpa_status status = rpa_plan_run(plan, &args); status != RPA_STATUS_OK) return rpa_error(status);
  // Checking waits for the stream, which a capture cannot: a captured call is checked when run eagerly.
  int capture = 0;
  if (check_metadata && driver.stream_is_capturing(stream, &capture) == 0 && capture == 0)
    if (rpa_status status = rpa_plan_get_error(plan); status != RPA_STATUS_OK) return rpa_error(status);
  return ffi::Error::Success();
}

}  // namespace

#define RPA_FFI_OPERANDS                                                                               \
  .Arg<ffi::AnyBuffer>()   /* queries */                                                               \
      .Arg<ffi::AnyBuffer>() /* k or kv_pages */                                                       \
      .Arg<ffi::AnyBuffer>() /* v */                                                                   \
      .Arg<ffi::AnyBuffer>() /* metadata, packed */                                                    \
      .Arg<ffi::AnyBuffer>() /* num_seqs */                                                            \
      .Arg<ffi::AnyBuffer>() /* sinks */                                                               \
      .Ret<ffi::AnyBuffer>() /* out */                                                                 \
      .Ret<ffi::AnyBuffer>() /* lse */                                                                 \
      .Attr<double>("softmax_scale")                                                                   \
      .Attr<double>("logits_soft_cap")                                                                 \
      .Attr<int32_t>("sliding_window")                                                                 \
      .Attr<int32_t>("combined_kv")                                                                    \
      .Attr<int32_t>("backend")                                                                        \
      .Attr<int32_t>("seqs")                                                                           \
      .Attr<int32_t>("table_width")                                                                    \
      .Attr<int64_t>("plans")                                                                          \
      .Attr<int32_t>("plan_count")                                                                     \
      .Attr<int32_t>("check_metadata")

XLA_FFI_DEFINE_HANDLER_SYMBOL(RpaAttentionCpu, cpu_impl, ffi::Ffi::Bind() RPA_FFI_OPERANDS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RpaAttentionCuda, cuda_impl,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<void*>>() RPA_FFI_OPERANDS,
                              {ffi::Traits::kCmdBufferCompatible});
