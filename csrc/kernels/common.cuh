// Device helpers shared by the kernels of csrc/kernels: the three storage dtypes as fp32, the
// activations and the per-channel epilogue of DESIGN.md §2, and dtype dispatch on the host.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "kernels.h"

namespace convmixer_fast {

// ---- storage dtype <-> fp32 -------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---- activation and epilogue (fp32) -----------------------------------------------------------
template <Activation kAct>
__device__ __forceinline__ float activate(float v) {
  if constexpr (kAct == Activation::kGelu) {
    return 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f));  // exact (erf) GELU
  } else {
    return fmaxf(v, 0.0f);
  }
}

// scale * act(acc + bias) + shift for one channel.
template <Activation kAct>
__device__ __forceinline__ float apply_epilogue(float acc, float bias, float scale, float shift) {
  return fmaf(scale, activate<kAct>(acc + bias), shift);
}

// ---- host-side dispatch -----------------------------------------------------------------------
// Calls f(T{}) with T the storage type of `dtype` (float, __half or __nv_bfloat16).
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Calls f(std::integral_constant<Activation, A>{}) for the runtime activation.
template <typename F>
cudaError_t dispatch_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::kGelu: return f(std::integral_constant<Activation, Activation::kGelu>{});
    case Activation::kRelu: return f(std::integral_constant<Activation, Activation::kRelu>{});
  }
  return cudaErrorInvalidValue;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace convmixer_fast
