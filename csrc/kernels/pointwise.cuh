// Pointwise GEMM (DESIGN.md §2, the 1x1 conv of every block): the interface between the
// runtime launcher (pointwise.cu) and the per-architecture CUTLASS kernels.
//
//   out[m, n] = scale[n] * act(sum_k y[m, k] * weight[n, k] + bias[n]) + shift[n]
//   y [M, K] row-major, weight [N, K] row-major (a "TN" GEMM: both operands K-contiguous),
//   out [M, N] row-major; fp16 / bf16 operands, fp32 accumulation and epilogue.
//
// Kernels (each instantiated per dtype x activation in its own pointwise_sm*_*.cu):
//   pointwise_sm90  CUTLASS 3.x, TMA + wgmma, warp-specialized ping-pong, epilogue visitor tree
//                   (pointwise_sm90.cuh).
//   pointwise_sm80  CUTLASS 2.x, cp.async + mma.sync, epilogue visitor tree (pointwise_sm80.cuh).
// This header includes no CUTLASS, so the launcher compiles quickly.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels.h"

namespace convmixer_fast {

// One pointwise GEMM, as validated by pointwise() (shapes supported, pointers 16-byte aligned).
struct PointwiseProblem {
  const void* y;       // [M, K] dtype
  const void* weight;  // [N, K] dtype
  const float* bias;   // [N]
  const float* scale;  // [N]
  const float* shift;  // [N]
  void* out;           // [M, N] dtype
  int M, N, K;         // all > 0; N % 8 == 0, K % 8 == 0
  int device;          // current device ordinal
  int sm_count;        // its multiprocessor count
};

// Enqueue the kernel on `stream`; return cudaErrorInvalidValue if CUTLASS rejects the problem,
// else the launch's error. Defined in pointwise_sm90.cuh / pointwise_sm80.cuh, explicitly
// instantiated for kDType in {kFloat16, kBFloat16} and both activations.
template <DType kDType, Activation kAct>
cudaError_t pointwise_sm90(const PointwiseProblem& problem, cudaStream_t stream);

template <DType kDType, Activation kAct>
cudaError_t pointwise_sm80(const PointwiseProblem& problem, cudaStream_t stream);

}  // namespace convmixer_fast
