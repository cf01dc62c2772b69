// Every kernel entry point of the plugin, as one list: X(name, bounds, body, parameters, arguments).
// kernel_entries.cpp defines `extern "C" __global__ void bounds name parameters { body arguments; }`
// from it, and the host makes its table of kernels from the same list, so one unmangled name finds a
// kernel in the plugin itself (NVIDIA's precompiled path), in an embedded AMD code object and in a
// module compiled at run time (hipRTC, NVRTC). The host only reads the names; the other fields are
// device code, expanded by kernel_entries.cpp alone. Order matters: kernel_set.h indexes the attention
// and decode entries arithmetically (dtype f32, f16, bf16, e4m3, e5m2, int8; head dim 64, 128, 256).
#pragma once

#define RPA_GPU_PARAMS (rpa_gpu::Params p)
#define RPA_GPU_ARGS (p)
#define RPA_GPU_BOUNDS __launch_bounds__(rpa_gpu::kThreads)

#define RPA_GPU_ATTENTION_ENTRY(X, kv, Kv, d, rows) \
  X(rpa_attention_##kv##_##d, RPA_GPU_BOUNDS, (rpa_gpu::attention_kernel<rpa_gpu::Kv, d>), RPA_GPU_PARAMS, RPA_GPU_ARGS)
// NVIDIA: 8-bit caches of head dims up to 128 decode on the tensor cores (nvidia/code_decode_kernel.h).
#if defined(RPA_GPU_CUDA)
#define RPA_GPU_DECODE_KERNEL NvidiaDecode, nvidia_decode_kernel
#else
#define RPA_GPU_DECODE_KERNEL DecodeGeometry, decode_kernel
#endif
#define RPA_GPU_DECODE_ENTRY_OF(X, kv, Kv, d, rows, Bounds, kernel)                                      \
  X(rpa_decode_##kv##_##d##_##rows, __launch_bounds__(rpa_gpu::kThreads, (rpa_gpu::Bounds<rpa_gpu::Kv, d, rows>::kMinBlocks)), \
    (rpa_gpu::kernel<rpa_gpu::Kv, d, rows>), RPA_GPU_PARAMS, RPA_GPU_ARGS)
#define RPA_GPU_DECODE_ENTRY_EXPAND(X, kv, Kv, d, rows, ...) RPA_GPU_DECODE_ENTRY_OF(X, kv, Kv, d, rows, __VA_ARGS__)
#define RPA_GPU_DECODE_ENTRY(X, kv, Kv, d, rows) RPA_GPU_DECODE_ENTRY_EXPAND(X, kv, Kv, d, rows, RPA_GPU_DECODE_KERNEL)
#define RPA_GPU_HEAD_DIMS(X, ENTRY, kv, Kv, rows) \
  ENTRY(X, kv, Kv, 64, rows) ENTRY(X, kv, Kv, 128, rows) ENTRY(X, kv, Kv, 256, rows)
// The 16/32-bit KV dtypes, then the quantised (8-bit) ones, in the order of kernel_set.h's dtype_index.
#define RPA_GPU_FLOAT_KV(X, ENTRY, rows)                                                                \
  RPA_GPU_HEAD_DIMS(X, ENTRY, f32, KvF32, rows) RPA_GPU_HEAD_DIMS(X, ENTRY, f16, KvF16, rows)          \
  RPA_GPU_HEAD_DIMS(X, ENTRY, bf16, KvBf16, rows)
#define RPA_GPU_CODE_KV(X, ENTRY, rows)                                                                 \
  RPA_GPU_HEAD_DIMS(X, ENTRY, e4m3, KvE4m3, rows) RPA_GPU_HEAD_DIMS(X, ENTRY, e5m2, KvE5m2, rows)      \
  RPA_GPU_HEAD_DIMS(X, ENTRY, int8, KvInt8, rows)

#define RPA_GPU_COMMON_KERNELS(X)                                                                          \
  X(rpa_zero_rows, RPA_GPU_BOUNDS, rpa_gpu::zero_rows_kernel,                                              \
    (rpa_gpu::Params p, int64_t row_begin, int64_t row_end), (p, row_begin, row_end))                      \
  X(rpa_merge, RPA_GPU_BOUNDS, rpa_gpu::merge_kernel, RPA_GPU_PARAMS, RPA_GPU_ARGS)                        \
  X(rpa_merge_states_kernel, RPA_GPU_BOUNDS, rpa_gpu::merge_states_kernel, (rpa_merge_problem p), (p))    \
  X(rpa_write_kv_kernel, RPA_GPU_BOUNDS, rpa_gpu::write_kv_kernel, (rpa_gpu::WriteParams w), (w))         \
  X(rpa_prepare_metadata, RPA_GPU_BOUNDS, rpa_gpu::prepare_metadata_kernel, RPA_GPU_PARAMS, RPA_GPU_ARGS) \
  RPA_GPU_FLOAT_KV(X, RPA_GPU_ATTENTION_ENTRY, 0) RPA_GPU_CODE_KV(X, RPA_GPU_ATTENTION_ENTRY, 0)          \
  RPA_GPU_FLOAT_KV(X, RPA_GPU_DECODE_ENTRY, 4) RPA_GPU_CODE_KV(X, RPA_GPU_DECODE_ENTRY, 4)                \
  RPA_GPU_FLOAT_KV(X, RPA_GPU_DECODE_ENTRY, 8) RPA_GPU_CODE_KV(X, RPA_GPU_DECODE_ENTRY, 8)

// NVIDIA only: the tensor-core variant of the attention kernel, for 16-bit inputs (or bf16 queries and an
// 8-bit cache) and head dims <= 128, per product policy (kv f16, bf16; head dim 64, 128), then the 8-bit
// caches per policy (kv e4m3, e5m2, int8; head dim 64, 128).
#define RPA_GPU_MATRIX_ENTRY(X, policy, Policy, kv, Kv, d)                                               \
  X(rpa_matrix_##policy##_##kv##_##d,                                                                    \
    __launch_bounds__(rpa_gpu::kMatrixThreads, 512 / rpa_gpu::kMatrixThreads),                           \
    (rpa_gpu::matrix_core_kernel<rpa_gpu::Kv, d, rpa_gpu::Policy>), RPA_GPU_PARAMS, RPA_GPU_ARGS)
#define RPA_GPU_MATRIX_POLICY(X, policy, Policy)                                                          \
  RPA_GPU_MATRIX_ENTRY(X, policy, Policy, f16, KvF16, 64) RPA_GPU_MATRIX_ENTRY(X, policy, Policy, f16, KvF16, 128) \
  RPA_GPU_MATRIX_ENTRY(X, policy, Policy, bf16, KvBf16, 64) RPA_GPU_MATRIX_ENTRY(X, policy, Policy, bf16, KvBf16, 128)
#define RPA_GPU_MATRIX_CODES(X, policy, Policy)                                                           \
  RPA_GPU_MATRIX_ENTRY(X, policy, Policy, e4m3, KvE4m3, 64) RPA_GPU_MATRIX_ENTRY(X, policy, Policy, e4m3, KvE4m3, 128) \
  RPA_GPU_MATRIX_ENTRY(X, policy, Policy, e5m2, KvE5m2, 64) RPA_GPU_MATRIX_ENTRY(X, policy, Policy, e5m2, KvE5m2, 128) \
  RPA_GPU_MATRIX_ENTRY(X, policy, Policy, int8, KvInt8, 64) RPA_GPU_MATRIX_ENTRY(X, policy, Policy, int8, KvInt8, 128)
// The warp-specialised Hopper kernel (nvidia/warp_specialized_kernel.h), one block per multiprocessor, for
// kv f16, bf16 and head dims 64, 128.
#define RPA_GPU_SPECIALISED_ENTRY(X, kv, Kv, d)                                                          \
  X(rpa_specialised_##kv##_##d, __launch_bounds__(rpa_gpu::kSpecialisedThreads, 1),                      \
    (rpa_gpu::specialised_kernel<rpa_gpu::Kv, d>), RPA_GPU_PARAMS, RPA_GPU_ARGS)
#define RPA_GPU_MATRIX_KERNELS(X)                                                                         \
  RPA_GPU_MATRIX_POLICY(X, mma, WarpMma) RPA_GPU_MATRIX_POLICY(X, wgmma, WarpgroupMma)                   \
  RPA_GPU_MATRIX_CODES(X, mma, WarpMma) RPA_GPU_MATRIX_CODES(X, wgmma, WarpgroupMma)                     \
  RPA_GPU_SPECIALISED_ENTRY(X, f16, KvF16, 64) RPA_GPU_SPECIALISED_ENTRY(X, f16, KvF16, 128)             \
  RPA_GPU_SPECIALISED_ENTRY(X, bf16, KvBf16, 64) RPA_GPU_SPECIALISED_ENTRY(X, bf16, KvBf16, 128)

#if defined(RPA_GPU_CUDA)
#define RPA_GPU_KERNELS(X) RPA_GPU_COMMON_KERNELS(X) RPA_GPU_MATRIX_KERNELS(X)
#else
#define RPA_GPU_KERNELS(X) RPA_GPU_COMMON_KERNELS(X)
#endif
