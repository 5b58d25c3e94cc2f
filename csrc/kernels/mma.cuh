// Two warp-wide tensor-core instructions as inline PTX (sm_80+), with their per-lane layouts
// spelled out, for kernels that build fragments themselves (depthwise_band.cuh builds its band
// matrix in registers, which the opaque nvcuda::wmma fragments cannot express). PTX ISA, "Warp
// Level Matrix Multiply-Accumulate Instructions": ldmatrix, and mma.m16n8k16 / .m16n8k8 for .f16 /
// .bf16.
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

// ldmatrix.sync.aligned.m8n8.x{2,4}.shared.b16 (ldmatrix<kMatrices>): kMatrices = 2 or 4 8x8
// matrices of 16-bit elements from shared memory. Lane l < 8 kMatrices passes the address of row
// l % 8 of matrix l / 8 (8 contiguous elements, 16-byte aligned; the other lanes' addresses are
// not read); it receives in fragment[i] row g, columns 2t and 2t + 1 of matrix i. For the A operand
// of mma_m16n8<16> at (row r0, column c0) of a row-major tile, lane l passes the address of element
// (r0 + l % 16, c0 + 8 * (l / 16)); with kMatrices = 2 the same addresses load its left half,
// fragment registers 0 and 1.
// mma.sync.aligned.m16n8k{16,8}.row.col.f32.T.T.f32 (mma_m16n8<kK, T>, kK = 16 or 8, T = __half or
// __nv_bfloat16): acc += A B, with
//   A [16, kK]: a[0] = (row g, cols 2t, 2t+1), a[1] = (row g+8, cols 2t, 2t+1), and for kK = 16
//               a[2] = (row g, cols 2t+8, 2t+9), a[3] = (row g+8, cols 2t+8, 2t+9);
//   B [kK, 8]:  b[0] = (rows 2t, 2t+1, col g), and for kK = 16 b[1] = (rows 2t+8, 2t+9, col g);
//   acc [16, 8] fp32: acc[0], acc[1] = (row g, cols 2t, 2t+1), acc[2], acc[3] = (row g+8, same).
// So the k8 form multiplies either half of a k16 A by the same half of its B: an A whose halves
// are ldmatrix matrices held in different register quads needs no copy into one quad (SASS takes
// a k16 A as 4 consecutive registers, a k8 A as 2).
#if defined(__CUDA_ARCH__)

template <int kMatrices>
__device__ __forceinline__ void ldmatrix(uint32_t (&fragment)[kMatrices], const void* row) {
  static_assert(kMatrices == 2 || kMatrices == 4, "ldmatrix .x2 or .x4");
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  if constexpr (kMatrices == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
                 : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(fragment[0]), "=r"(fragment[1])
                 : "r"(address));
  }
}

// mma_m16n8<kK, T>'s instruction for the operand type TYPE ("f16" or "bf16").
#define CONVMIXER_FAST_MMA_M16N8K16(TYPE)                                                          \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE ".f32 {%0, %1, %2, %3}, "   \
               "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"                                   \
               : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])                            \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
#define CONVMIXER_FAST_MMA_M16N8K8(TYPE)                                                           \
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32." TYPE "." TYPE ".f32 {%0, %1, %2, %3}, "    \
               "{%4, %5}, {%6}, {%0, %1, %2, %3};\n"                                               \
               : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])                            \
               : "r"(a[0]), "r"(a[1]), "r"(b[0]))

template <int kK, typename T>
__device__ __forceinline__ void mma_m16n8(float (&acc)[4], const uint32_t (&a)[kK / 4],
                                          const uint32_t (&b)[kK / 8]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "16-bit operands");
  static_assert(kK == 16 || kK == 8, "m16n8k16 or m16n8k8");
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (kK == 16) {
    if constexpr (kBf16) CONVMIXER_FAST_MMA_M16N8K16("bf16");
    else CONVMIXER_FAST_MMA_M16N8K16("f16");
  } else {
    if constexpr (kBf16) CONVMIXER_FAST_MMA_M16N8K8("bf16");
    else CONVMIXER_FAST_MMA_M16N8K8("f16");
  }
}

#undef CONVMIXER_FAST_MMA_M16N8K16
#undef CONVMIXER_FAST_MMA_M16N8K8

#else

template <int kMatrices>
__device__ void ldmatrix(uint32_t (&fragment)[kMatrices], const void* row);
template <int kK, typename T>
__device__ void mma_m16n8(float (&acc)[4], const uint32_t (&a)[kK / 4], const uint32_t (&b)[kK / 8]);

#endif

}  // namespace convmixer_fast
