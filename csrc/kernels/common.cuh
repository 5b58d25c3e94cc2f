// Device helpers shared by the kernels of csrc/kernels: the three storage dtypes as fp32, the
// activations and the per-channel epilogue of DESIGN.md §2, and dtype dispatch on the host.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
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

// Two 16-bit values as one 32-bit word (a fragment register, a shared-memory pair), `low` in the
// low half (at the lower address); from / to fp32 (nvcc packs the two roundings into one F2FP).
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(T low, T high) {
  static_assert(sizeof(T) == 2, "16-bit values");
  const T pair[2] = {low, high};
  uint32_t word;
  memcpy(&word, pair, sizeof(word));
  return word;
}

template <typename T>
__device__ __forceinline__ float2 to_float2(uint32_t word) {
  static_assert(sizeof(T) == 2, "16-bit values");
  T pair[2];
  memcpy(pair, &word, sizeof(pair));
  return make_float2(to_float(pair[0]), to_float(pair[1]));
}

template <typename T>
__device__ __forceinline__ uint32_t from_float2(float low, float high) {
  return pack_pair(from_float<T>(low), from_float<T>(high));
}

// ---- activation and epilogue (fp32) -----------------------------------------------------------
// 2^x by the SFU (ex2.approx.ftz.f32: 2 ulp, subnormal results flushed to zero); exp2f on the host
// (the emulation harnesses of tests/cuda_emulation).
__device__ __forceinline__ float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

// GELU: the exact (erf) form z Phi(z), Phi the standard normal CDF, in 8 instructions (one on
// the SFU) instead of the ~24 of 0.5 z (1 + erff(z / sqrt 2)). The method, its error bound and how
// it was checked: convmixer_fast/ops/gelu.py (tests/test_gelu.py holds these coefficients equal to
// the ones there, which the Triton kernels use).
__device__ __forceinline__ float gelu(float z) {
  constexpr int kDegree = 5;
  constexpr float kLog2PhiCoefficients[kDegree + 1] = {  // P(t) = sum_i c_i t^i ~= log2 Phi(-t)
      -1.00000083f, -1.15108311f, -0.459276885f, -0.0525376946f, 0.00738701085f, -0.000518822053f};
  const float t = fabsf(z);
  float log2_q = kLog2PhiCoefficients[kDegree];
#pragma unroll
  for (int i = kDegree - 1; i >= 0; --i) log2_q = fmaf(log2_q, t, kLog2PhiCoefficients[i]);
  return fmaf(-t, exp2_approx(log2_q), fmaxf(z, 0.0f));  // z (1 - q) for z >= 0, z q below
}

// ReLU as torch's: NaN stays NaN (fmaxf, like PTX max.f32, returns the other operand, 0, so a NaN
// pre-activation would come out as a finite value), -0 stays -0. GELU propagates NaN through |v|.
template <Activation kAct>
__device__ __forceinline__ float activate(float v) {
  if constexpr (kAct == Activation::kGelu) {
    return gelu(v);
  } else {
    return v < 0.0f ? 0.0f : v;
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

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace convmixer_fast
