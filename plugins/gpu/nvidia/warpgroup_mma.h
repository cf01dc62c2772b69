// WarpgroupMma: matrix_core_kernel's products on Hopper (sm_90a code only), per warpgroup: the block's 4
// warps issue wgmma.mma_async together, reading Q, K and V straight from shared memory (no ldmatrix) and
// P from registers, with f32 accumulators. Built into the sm_90a code only (RPA_GPU_WGMMA); anywhere else
// its body traps, and the host never launches it there.
#pragma once

#include "plugins/gpu/attention_kernels.h"

#if defined(RPA_GPU_CUDA)

namespace rpa_gpu {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define RPA_GPU_WGMMA_CODE 1
#endif

// Operand lists of wgmma: the accumulator fragment d[N/8][4] as N/2 registers.
#define RPA_D4(d, n) "+f"(d[n][0]), "+f"(d[n][1]), "+f"(d[n][2]), "+f"(d[n][3])
#define RPA_D16(d, n) RPA_D4(d, n), RPA_D4(d, n + 1), RPA_D4(d, n + 2), RPA_D4(d, n + 3)
#define RPA_REGS16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define RPA_REGS32                                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define RPA_REGS64                                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
// d (+)= A B, A and B from shared memory (descriptors), both K-major. REGS names d's operands (listed
// last), A, B and SCALE the operand numbers after them.
#define RPA_WGMMA_SS(N, TYPE, REGS, A, B, SCALE, ...)                                                       \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" SCALE ", 0;\n"                                          \
               "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." TYPE "." TYPE " " REGS ", %" A ", %" B \
               ", p, 1, 1, 0, 0;\n}\n"                                                                      \
               : __VA_ARGS__                                                                                \
               : "l"(a), "l"(b), "r"(accumulate))
// d += A B, A from registers (4 per thread), B from shared memory, N-major (transposed).
#define RPA_WGMMA_RS(N, TYPE, REGS, A, B, ...)                                                              \
  asm volatile("wgmma.mma_async.sync.aligned.m64n" N "k16.f32." TYPE "." TYPE " " REGS ", " A ", %" B   \
               ", 1, 1, 1, 1;\n"                                                                           \
               : __VA_ARGS__                                                                                \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b))

template <int N>
struct Wgmma;
template <>
struct Wgmma<32> {
  template <bool kBf16>
  __device__ static void shared_shared(float (&d)[4][4], uint64_t a, uint64_t b, int accumulate) {
#if defined(RPA_GPU_WGMMA_CODE)
    if constexpr (kBf16) RPA_WGMMA_SS("32", "bf16", RPA_REGS16, "16", "17", "18", RPA_D16(d, 0));
    else RPA_WGMMA_SS("32", "f16", RPA_REGS16, "16", "17", "18", RPA_D16(d, 0));
#else
    __trap();
#endif
  }
};
template <>
struct Wgmma<64> {
  template <bool kBf16>
  __device__ static void shared_shared(float (&d)[8][4], uint64_t a, uint64_t b, int accumulate) {
#if defined(RPA_GPU_WGMMA_CODE)
    if constexpr (kBf16) RPA_WGMMA_SS("64", "bf16", RPA_REGS32, "32", "33", "34", RPA_D16(d, 0), RPA_D16(d, 4));
    else RPA_WGMMA_SS("64", "f16", RPA_REGS32, "32", "33", "34", RPA_D16(d, 0), RPA_D16(d, 4));
#else
    __trap();
#endif
  }
  template <bool kBf16>
  __device__ static void register_shared(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b) {
#if defined(RPA_GPU_WGMMA_CODE)
    if constexpr (kBf16) RPA_WGMMA_RS("64", "bf16", RPA_REGS32, "{%32, %33, %34, %35}", "36", RPA_D16(d, 0), RPA_D16(d, 4));
    else RPA_WGMMA_RS("64", "f16", RPA_REGS32, "{%32, %33, %34, %35}", "36", RPA_D16(d, 0), RPA_D16(d, 4));
#else
    __trap();
#endif
  }
};
template <>
struct Wgmma<128> {
  template <bool kBf16>
  __device__ static void register_shared(float (&d)[16][4], const uint32_t (&a)[4], uint64_t b) {
#if defined(RPA_GPU_WGMMA_CODE)
    if constexpr (kBf16)
      RPA_WGMMA_RS("128", "bf16", RPA_REGS64, "{%64, %65, %66, %67}", "68",
                   RPA_D16(d, 0), RPA_D16(d, 4), RPA_D16(d, 8), RPA_D16(d, 12));
    else
      RPA_WGMMA_RS("128", "f16", RPA_REGS64, "{%64, %65, %66, %67}", "68",
                   RPA_D16(d, 0), RPA_D16(d, 4), RPA_D16(d, 8), RPA_D16(d, 12));
#else
    __trap();
#endif
  }
};

// wgmma reads its registers and shared memory asynchronously: fence orders the warpgroup's earlier register
// writes before the next wgmma, commit closes a group of them, wait<n> lets the registers of all but the n
// most recent groups be read again, and keep() stops the compiler from moving register accesses across
// either (it sees every register rewritten there).
__device__ inline void wgmma_fence() {
#if defined(RPA_GPU_WGMMA_CODE)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ inline void wgmma_commit() {
#if defined(RPA_GPU_WGMMA_CODE)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ inline void wgmma_wait() {
#if defined(RPA_GPU_WGMMA_CODE)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// (Two overloads rather than <type_traits>: the run-time compilers have no standard library.)
template <int R, int C>  // f32 accumulators
__device__ inline void keep(float (&x)[R][C]) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < C; ++c) asm volatile("" : "+f"(x[r][c])::"memory");
}
template <int R, int C>  // 32-bit fragments
__device__ inline void keep(uint32_t (&x)[R][C]) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < C; ++c) asm volatile("" : "+r"(x[r][c])::"memory");
}

template <bool kBf16, int D_MAX, int kKeys>
struct WarpgroupMma {
  static constexpr bool kWarpgroup = true;
  // wgmma's 128-byte swizzle: 1 KiB atoms of 8 rows x 64 dims (a row is 128 bytes), the 16-byte chunk c
  // of row r stored at chunk c ^ (r % 8), so the 8 rows of a column of chunks (what wgmma reads at once)
  // fall in 8 different bank groups. Atoms follow each other by row group, then by 64-dim half; a tile
  // starts 1 KiB-aligned.
  struct Layout {
    static constexpr int elements(int rows) { return rows * D_MAX; }
    __device__ static int at(int row, int dim, int rows) {
      return dim / 64 * rows * 64 + row / 8 * 512 + row % 8 * 64 + ((dim / 8 % 8) ^ (row % 8)) * 8 + dim % 8;
    }
  };
  static constexpr uint32_t kAtomBytes = 1024;

  // Matrix descriptor with the 128-byte swizzle: start address, then the byte distances between atoms
  // along the leading and the stride dimension (PTX ISA, "canonical layouts"), each in 16-byte units.
  __device__ static uint64_t descriptor(const uint16_t* start, uint32_t leading_bytes, uint32_t stride_bytes) {
    return uint64_t((shared_address(start) & 0x3ffff) >> 4) | uint64_t(leading_bytes >> 4) << 16 |
           uint64_t(stride_bytes >> 4) << 32 | uint64_t(1) << 62;
  }
  // The descriptor of the same tile from `elements` further on (the address field cannot carry over: shared
  // memory addresses stay below 256 KiB).
  __device__ static uint64_t advance(uint64_t descriptor, int elements) { return descriptor + uint64_t(elements * 2 / 16); }

  // Shared memory the threads wrote (cp.async, stores) is read next by wgmma, the async proxy.
  __device__ static void publish_shared() {
#if defined(RPA_GPU_WGMMA_CODE)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
  }

  // Issues s = Q K^T as one commit group for the 64 rows at q of a Q tile of q_tile_rows rows, 16 dims (32
  // bytes of each atom row) a step. Q [rows][dims] and K [keys][dims] are both K-major: atoms kAtomBytes
  // apart along the rows (the leading distance is unused).
  __device__ static void issue_scores(float (&s)[kKeys / 8][4], const uint16_t* q, int q_tile_rows, const uint16_t* k) {
    const uint64_t q_first = descriptor(q, 16, kAtomBytes), k_first = descriptor(k, 16, kAtomBytes);
    keep(s);
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < D_MAX / 16; ++step)
      Wgmma<kKeys>::template shared_shared<kBf16>(s, advance(q_first, Layout::at(0, step * 16, q_tile_rows)),
                                                  advance(k_first, Layout::at(0, step * 16, kKeys)), step > 0);
    wgmma_commit();
  }
  // s = Q K^T for this warpgroup's 64 rows of q's kMatrixRows.
  __device__ static void scores(float (&s)[kKeys / 8][4], const uint16_t* q, const uint16_t* k) {
    static_assert(kMatrixRows % 64 == 0, "warpgroups of 64 rows");
    issue_scores(s, q + Layout::at(threadIdx.x / 128 * 64, 0, kMatrixRows), kMatrixRows, k);
    wgmma_wait<0>();
    keep(s);
  }

  // Issues out += (hi + lo) V as one commit group, 16 keys a step. V [keys][dims] is N-major for this
  // product: atoms kKeys * 128 bytes apart along the dims (leading), kAtomBytes along the keys (stride).
  // With `zero`, v is a 1 KiB atom of zeros that stands for every atom of V (distances 0).
  __device__ static void issue_values(float (&out)[D_MAX / 8][4], uint32_t (&hi)[kKeys / 16][4],
                                      uint32_t (&lo)[kKeys / 16][4], const uint16_t* v, bool zero = false) {
    const uint64_t v_first = zero ? descriptor(v, 0, 0) : descriptor(v, kKeys * 128, kAtomBytes);
    keep(out), keep(hi), keep(lo);
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < kKeys / 16; ++step) {
      const uint64_t b = zero ? v_first : advance(v_first, Layout::at(step * 16, 0, kKeys));
      Wgmma<D_MAX>::template register_shared<kBf16>(out, hi[step], b);
      Wgmma<D_MAX>::template register_shared<kBf16>(out, lo[step], b);
    }
    wgmma_commit();
  }
  __device__ static void accumulate(float (&out)[D_MAX / 8][4], uint32_t (&hi)[kKeys / 16][4],
                                    uint32_t (&lo)[kKeys / 16][4], const uint16_t* v) {
    issue_values(out, hi, lo, v);
    wgmma_wait<0>();
    keep(out), keep(hi), keep(lo);
  }
};

#undef RPA_D4
#undef RPA_D16
#undef RPA_REGS16
#undef RPA_REGS32
#undef RPA_REGS64
#undef RPA_WGMMA_SS
#undef RPA_WGMMA_RS

}  // namespace rpa_gpu

#endif  // RPA_GPU_CUDA
