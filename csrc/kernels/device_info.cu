// current_device_info (common.cuh): the current device's compute capability and SM count, asked by
// the launchers on every call and cached per device after the first.
#include <atomic>

#include "common.cuh"

namespace convmixer_fast {
namespace {

// Per-device cache of the compute capability and SM count, filled on first use (the attribute
// queries are cheap, but this runs on every launch). 0 = not yet known.
constexpr int kCachedDevices = 64;
std::atomic<int> g_packed_cc[kCachedDevices];  // cc_major * 100 + cc_minor, or 0
std::atomic<int> g_sm_count[kCachedDevices];

}  // namespace

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

}  // namespace convmixer_fast
