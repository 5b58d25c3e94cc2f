// Two warp-wide tensor-core instructions as inline PTX (sm_80+), with their per-lane layouts
// spelled out, for kernels that build fragments themselves (depthwise_band.cuh builds its band
// matrix in registers, which the opaque nvcuda::wmma fragments cannot express). PTX ISA, "Warp
// Level Matrix Multiply-Accumulate Instructions": ldmatrix, and mma.m16n8k16 for .f16 / .bf16.
//
// Lane l of the warp: g = l / 4 (its group), t = l % 4 (its place in the group). A fragment
// register holds two 16-bit elements, the lower column (or row, for B) in the low 16 bits.
//
// On the host (nvcc's host pass, which never calls them, and the host emulation of
// tests/cuda_emulation, whose emulation.h defines them as warp collectives) they are only declared.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace convmixer_fast {

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8x8 matrices of 16-bit elements from shared
// memory. Lane l passes the address of row l % 8 of matrix l / 8 (8 contiguous elements, 16-byte
// aligned); it receives in fragment[i] row g, columns 2t and 2t + 1 of matrix i. For the A operand
// of mma_m16n8k16 at (row r0, column c0) of a row-major tile, lane l passes the address of element
// (r0 + l % 16, c0 + 8 * (l / 16)).
// mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32 (T = __half or __nv_bfloat16): acc += A B, with
//   A [16, 16]: a[0] = (row g, cols 2t, 2t+1), a[1] = (row g+8, cols 2t, 2t+1),
//               a[2] = (row g, cols 2t+8, 2t+9), a[3] = (row g+8, cols 2t+8, 2t+9);
//   B [16, 8]:  b[0] = (rows 2t, 2t+1, col g), b[1] = (rows 2t+8, 2t+9, col g);
//   acc [16, 8] fp32: acc[0], acc[1] = (row g, cols 2t, 2t+1), acc[2], acc[3] = (row g+8, same).
#if defined(__CUDA_ARCH__)

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&fragment)[4], const void* row) {
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(address));
}

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "16-bit operands");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

#else

__device__ void ldmatrix_x4(uint32_t (&fragment)[4], const void* row);
template <typename T>
__device__ void mma_m16n8k16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

#endif

}  // namespace convmixer_fast
