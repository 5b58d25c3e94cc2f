// Pointwise GEMM launcher (kernels.h): validates the arguments, picks the kernel for the current
// device's compute capability and dispatches dtype x activation to an explicit instantiation.
//
//   out[m, n] = scale[n] * act(sum_k y[m, k] * weight[n, k] + bias[n]) + shift[n]
//
//   compute capability 9.0  -> pointwise_sm90 (CUTLASS 3.x TMA + wgmma, pointwise_sm90.cuh)
//   compute capability 8.x  -> pointwise_sm80 (CUTLASS 2.x mma.sync,   pointwise_sm80.cuh)
//   anything else, fp32     -> unsupported (cudaErrorInvalidValue; the Triton backend covers it)
// Shape rules (TMA / 16-byte vector accesses of 16-bit data): N % 8 == 0, K % 8 == 0; every
// pointer 16-byte aligned (bias / scale / shift included).
#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "pointwise.cuh"

namespace convmixer_fast {
namespace {

struct DeviceInfo {
  int cc_major;
  int cc_minor;
  int sm_count;
};

// Per-device cache of the compute capability and SM count, filled on first use (the attribute
// queries are cheap, but this runs on every launch). 0 = not yet known.
constexpr int kCachedDevices = 64;
std::atomic<int> g_packed_cc[kCachedDevices];  // cc_major * 100 + cc_minor, or 0
std::atomic<int> g_sm_count[kCachedDevices];

cudaError_t current_device_info(int* device, DeviceInfo* info) {
  cudaError_t err = cudaGetDevice(device);
  if (err != cudaSuccess) return err;
  const int dev = *device;
  const bool cacheable = dev >= 0 && dev < kCachedDevices;
  if (cacheable) {
    const int packed = g_packed_cc[dev].load(std::memory_order_acquire);
    if (packed != 0) {
      *info = {packed / 100, packed % 100, g_sm_count[dev].load(std::memory_order_relaxed)};
      return cudaSuccess;
    }
  }
  int major = 0, minor = 0, sm_count = 0;
  const struct {
    int* value;
    cudaDeviceAttr attribute;
  } queries[] = {{&major, cudaDevAttrComputeCapabilityMajor},
                 {&minor, cudaDevAttrComputeCapabilityMinor},
                 {&sm_count, cudaDevAttrMultiProcessorCount}};
  for (const auto& query : queries) {
    err = cudaDeviceGetAttribute(query.value, query.attribute, dev);
    if (err != cudaSuccess) return err;
  }
  if (cacheable) {
    g_sm_count[dev].store(sm_count, std::memory_order_relaxed);
    g_packed_cc[dev].store(major * 100 + minor, std::memory_order_release);
  }
  *info = {major, minor, sm_count};
  return cudaSuccess;
}

}  // namespace

bool pointwise_supported(DType dtype, int N, int K, int cc_major, int cc_minor) {
  const bool dtype_ok = dtype == DType::kFloat16 || dtype == DType::kBFloat16;
  const bool shape_ok = N >= 0 && K >= 0 && N % 8 == 0 && K % 8 == 0;
  const bool arch_ok = (cc_major == 9 && cc_minor == 0) || cc_major == 8;
  return dtype_ok && shape_ok && arch_ok;
}

cudaError_t pointwise(const void* y, const void* weight, Epilogue epilogue, void* out, int64_t M,
                      int N, int K, DType dtype, cudaStream_t stream) {
  if (M < 0 || N < 0 || K < 0) return cudaErrorInvalidValue;
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) return cudaErrorInvalidValue;
  if (N % 8 != 0 || K % 8 != 0) return cudaErrorInvalidValue;
  if (M == 0 || N == 0 || K == 0) return cudaSuccess;
  if (M > INT_MAX) return cudaErrorInvalidValue;  // CUTLASS problem shapes are int
  const void* const pointers[] = {y, weight, out, epilogue.bias, epilogue.scale, epilogue.shift};
  for (const void* pointer : pointers) {
    if (pointer == nullptr || !aligned16(pointer)) return cudaErrorInvalidValue;
  }

  int device = 0;
  DeviceInfo info{};
  const cudaError_t err = current_device_info(&device, &info);
  if (err != cudaSuccess) return err;
  if (!pointwise_supported(dtype, N, K, info.cc_major, info.cc_minor)) return cudaErrorInvalidValue;
  const bool hopper = info.cc_major == 9;

  const PointwiseProblem problem{y,   weight, epilogue.bias, epilogue.scale, epilogue.shift,
                                 out, static_cast<int>(M), N, K, device, info.sm_count};
  return dispatch_dtype(dtype, [&](auto storage) -> cudaError_t {
    using T = decltype(storage);
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorInvalidValue;  // unreachable: rejected above
    } else {
      constexpr DType kDType = std::is_same_v<T, __half> ? DType::kFloat16 : DType::kBFloat16;
      return dispatch_activation(epilogue.act, [&](auto activation) -> cudaError_t {
        constexpr Activation kAct = decltype(activation)::value;
        return hopper ? pointwise_sm90<kDType, kAct>(problem, stream)
                      : pointwise_sm80<kDType, kAct>(problem, stream);
      });
    }
  });
}

}  // namespace convmixer_fast
