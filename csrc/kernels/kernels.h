// The torch-free interface of the CUDA kernel library: the four fused steps of DESIGN.md §2 as
// plain C++ launchers (device pointers, sizes, strides, a cudaStream_t). The torch glue
// (csrc/cuda_ops.cpp) validates tensors and calls these; nothing here includes a torch header, so
// CMakeLists.txt compile-checks every .cu on a machine whose torch has no CUDA headers.
//
// Conventions shared by every launcher:
//   - Pointers are device pointers. Tokens are NHWC and contiguous: [B, H, W, C] = [B*H*W, C].
//   - "dtype" is the model dtype of activations and weights; bias/scale/shift are fp32 [C].
//   - Accumulation and the epilogue are in fp32; the result is rounded once at the store.
//   - Each launcher enqueues its work on `stream` and returns cudaGetLastError() after the launch,
//     or cudaErrorInvalidValue (launching nothing) for arguments outside what it supports (the glue
//     checks those first and names them). Nothing here synchronizes or allocates device memory.
//   - Empty problems (a zero size) launch nothing and return cudaSuccess.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace convmixer_fast {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class Activation : int { kGelu = 0, kRelu = 1 };  // kGelu: exact erf GELU

// The per-channel epilogue every step applies to its accumulator `acc` of channel c:
//   scale[c] * act(acc + bias[c]) + shift[c]      (all fp32, [channels])
struct Epilogue {
  const float* bias;
  const float* scale;
  const float* shift;
  Activation act;
};

// Stem: patchify + GEMM + epilogue, reading the NCHW image in place.
//   out[b, i, j, c] = epi(sum_{ci, di, dj} image[b, ci, i*p + di, j*p + dj] * weight[c, ci, di, dj])
//   image: [B, Cin, H, W] of image_dtype with element strides image_strides (any, e.g. NCHW or
//   channels_last); weight: [C, Cin, p, p] contiguous, dtype; out: [B, H/p, W/p, C] contiguous,
//   dtype (H/p, W/p floored). Requires H >= p and W >= p.
cudaError_t stem(const void* image, DType image_dtype, const int64_t image_strides[4],
                 const void* weight, Epilogue epilogue, void* out, int64_t batch, int in_channels,
                 int height, int width, int channels, int patch, DType dtype, cudaStream_t stream);

// Which kernel depthwise_block() runs:
//   kDirect: depthwise_block.cuh, fp32 FMAs on a shared-memory halo; every dtype and k;
//   kBand:   depthwise_band.cuh, the band (Toeplitz) matrix form on tensor cores; only where
//            depthwise_band_supported() (else depthwise_block() returns cudaErrorInvalidValue);
//   kAuto:   kBand where it is supported, else kDirect.
enum class DepthwiseAlgorithm : int { kAuto = 0, kDirect = 1, kBand = 2 };

// Depthwise block: out = x + epi(dwconv_k(x)), "same" zero padding (odd k: k/2 each side; even k:
// (k-1)/2 before, k/2 after), stride 1.
//   x, out: [B, H, W, C] contiguous, dtype, not overlapping; weight: [k, k, C] contiguous, dtype.
//   Supports 1 <= kernel_size <= 31, any B, H, W, C (kBand: see depthwise_band_supported).
cudaError_t depthwise_block(const void* x, const void* weight, Epilogue epilogue, void* out,
                            int64_t batch, int height, int width, int channels, int kernel_size,
                            DType dtype, DepthwiseAlgorithm algorithm, cudaStream_t stream);

// Whether the kBand kernel runs these arguments: float16 / bfloat16, kernel_size <= 9, channels a
// multiple of 8, x / weight / out 16-byte aligned (on a device of compute capability >= 8.0, which
// the caller ensures). No CUDA call.
bool depthwise_band_supported(const void* x, const void* weight, const void* out, int channels,
                              int kernel_size, DType dtype);

// Pointwise GEMM: out[m, n] = epi(sum_k y[m, k] * weight[n, k]).
//   y: [M, K], weight: [N, K], out: [M, N], all contiguous, dtype.
// Which kernel runs depends on the current device: sm_90 (CUTLASS 3.x TMA + wgmma) or sm_80..sm_89
// (CUTLASS tensor-core kernel). Use pointwise_supported() before calling.
cudaError_t pointwise(const void* y, const void* weight, Epilogue epilogue, void* out, int64_t M,
                      int N, int K, DType dtype, cudaStream_t stream);

// Whether pointwise() has a kernel for this dtype, N, K on a device of compute capability
// major.minor (no CUDA call; pure function of its arguments).
bool pointwise_supported(DType dtype, int N, int K, int cc_major, int cc_minor);

// Head: pooled[b, c] = mean_{hw} x[b, hw, c] (fp32 workspace, written), then
//   out[b, n] = sum_c pooled[b, c] * weight[n, c] + bias[n]  (no activation, no affine).
//   x: [B, HW, C] contiguous, dtype; weight: [N, C] contiguous, dtype; bias: fp32 [N];
//   pooled: fp32 [B, C]; out: [B, N], dtype. Requires HW >= 1.
cudaError_t head(const void* x, const void* weight, const float* bias, float* pooled, void* out,
                 int64_t batch, int hw, int channels, int classes, DType dtype, cudaStream_t stream);

}  // namespace convmixer_fast
