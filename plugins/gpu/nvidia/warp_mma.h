// WarpMma: matrix_core_kernel's products on NVIDIA sm_80 and later, per warp: ldmatrix fragments from
// padded rows and mma.sync m16n8k16 with f32 accumulators. Each warp owns 16 tile rows.
#pragma once

#include "plugins/gpu/attention_kernels.h"

#if defined(RPA_GPU_CUDA)

namespace rpa_gpu {

// Four 8x8 16-bit matrices; lanes 8m..8m+7 give the row addresses of matrix m.
__device__ inline void load_matrices(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}
__device__ inline void load_matrices_transposed(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}

// d += a b for a 16x16 A (row major) and a 16x8 B (column major) fragment.
template <bool kBf16>
__device__ inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBf16)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <bool kBf16, int D_MAX, int kKeys>
struct WarpMma {
  static constexpr bool kWarpgroup = false;
  // Row-major rows padded by 16 bytes: the 8 rows of an ldmatrix (or of a column of 16-byte chunks) fall
  // in 8 different bank groups.
  struct Layout {
    static constexpr int kStride = D_MAX + 8;
    static constexpr int elements(int rows) { return rows * kStride; }
    __device__ static int at(int row, int dim, int /*rows*/) { return row * kStride + dim; }
  };

  __device__ static void publish_shared() {}  // ldmatrix reads what plain stores wrote

  // s = Q K^T for this warp's 16 rows: q holds the block's rows, k the tile's keys.
  __device__ static void scores(float (&s)[kKeys / 8][4], const uint16_t* q, const uint16_t* k) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    const uint16_t* q_row = q + Layout::at(warp * 16 + lane / 8 % 2 * 8 + lane % 8, lane / 16 * 8, 0);
#pragma unroll
    for (int kk = 0; kk < D_MAX / 32; ++kk) {  // two 16-dim steps; independent accumulators back to back
      uint32_t a[2][4], b[kKeys / 8][4];  // b: keys n*8.., dims kk*32 + 8m
      load_matrices(a[0], q_row + kk * 32);
      load_matrices(a[1], q_row + kk * 32 + 16);
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) load_matrices(b[n], k + Layout::at(n * 8 + lane % 8, kk * 32 + lane / 8 * 8, 0));
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) mma16816<kBf16>(s[n], a[0], b[n][0], b[n][1]);
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) mma16816<kBf16>(s[n], a[1], b[n][2], b[n][3]);
    }
  }

  // out += (hi + lo) V, with the probabilities of key step k (16 keys) as A fragments hi[k], lo[k].
  __device__ static void accumulate(float (&out)[D_MAX / 8][4], uint32_t (&hi)[kKeys / 16][4],
                                    uint32_t (&lo)[kKeys / 16][4], const uint16_t* v) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int k = 0; k < kKeys / 16; ++k) {
      uint32_t b[D_MAX / 16][4];  // keys k*16 + 8(m%2).., dims 16n + 8(m/2): dim tiles 2n and 2n + 1
#pragma unroll
      for (int n = 0; n < D_MAX / 16; ++n)
        load_matrices_transposed(b[n], v + Layout::at(k * 16 + lane / 8 % 2 * 8 + lane % 8, n * 16 + lane / 16 * 8, 0));
#pragma unroll
      for (int n = 0; n < D_MAX / 16; ++n)
        mma16816<kBf16>(out[2 * n], hi[k], b[n][0], b[n][1]), mma16816<kBf16>(out[2 * n + 1], hi[k], b[n][2], b[n][3]);
#pragma unroll
      for (int n = 0; n < D_MAX / 16; ++n)
        mma16816<kBf16>(out[2 * n], lo[k], b[n][0], b[n][1]), mma16816<kBf16>(out[2 * n + 1], lo[k], b[n][2], b[n][3]);
    }
  }
};

}  // namespace rpa_gpu

#endif  // RPA_GPU_CUDA
