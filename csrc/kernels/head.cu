// Head of DESIGN.md §2 (convmixer_fast::head in kernels.h): global average pool of the NHWC tokens,
// then the classifier, as two small kernels launched back to back on one stream.
//
// 1. head_pool_kernel<T, kVec>: pooled[b, c] = sum_hw x[b, hw, c] / HW in fp32 (the workspace).
//    Grid (B, cdiv(C, kChannelsPerBlock)); 256 threads = kLanesC channel lanes x kRowsHW token
//    rows. Each thread owns kVec consecutive channels (one 16-byte vector load per token when
//    C % kVec == 0 and x is 16-byte aligned, else kVec = 1) and sums tokens row, row + kRowsHW, ...;
//    the kRowsHW partial sums of a channel are then added in shared memory in a fixed order
//    (deterministic, no atomics). Vector path: 8 lanes x 16 B = 128 B of one token row per
//    quarter warp, 32 token rows per step; scalar path: 32 lanes x 8 rows.
// 2. head_classifier_kernel<T>: out[b, n] = sum_c pooled[b, c] * weight[n, c] + bias[n] in fp32,
//    rounded once to T. Grid (cdiv(B, 8), cdiv(N, 32)); each warp owns a [kImagesPerWarp = 8,
//    kClassesPerWarp = 4] output tile: lanes stride over c (weight rows and pooled rows read
//    coalesced along c), 32 fp32 partial sums per lane, then a butterfly reduction over the warp;
//    lane l stores output (image l % 8, class l / 8).
#include <climits>
#include <cstdint>

#include "common.cuh"

namespace convmixer_fast {
namespace head_detail {

constexpr int kPoolThreads = 256;

template <typename T, int kVec>
struct PoolShape {
  static constexpr int kLanesC = kVec > 1 ? 8 : 32;                  // channel lanes
  static constexpr int kRowsHW = kPoolThreads / kLanesC;            // token rows per step
  static constexpr int kChannelsPerBlock = kLanesC * kVec;           // 64 (16-bit), 32 (fp32, scalar)
  static_assert(kVec == 1 || kVec * sizeof(T) == 16, "vector loads are 16 bytes");
};

// sums[e] += element e of a 16-byte vector of T (16 / sizeof(T) elements), in fp32.
__device__ __forceinline__ void add_vector(const uint4& v, float (&sums)[4]) {  // 4 x fp32
  sums[0] += __uint_as_float(v.x);
  sums[1] += __uint_as_float(v.y);
  sums[2] += __uint_as_float(v.z);
  sums[3] += __uint_as_float(v.w);
}
__device__ __forceinline__ float low_half_to_float(uint32_t w, __half) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
}
__device__ __forceinline__ float high_half_to_float(uint32_t w, __half) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
}
__device__ __forceinline__ float low_half_to_float(uint32_t w, __nv_bfloat16) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(w & 0xffffu)));
}
__device__ __forceinline__ float high_half_to_float(uint32_t w, __nv_bfloat16) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(w >> 16)));
}
template <typename T>  // 8 x fp16 / bf16
__device__ __forceinline__ void add_vector(const uint4& v, float (&sums)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    sums[2 * w] += low_half_to_float(words[w], T{});
    sums[2 * w + 1] += high_half_to_float(words[w], T{});
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kPoolThreads) head_pool_kernel(const T* __restrict__ x,
                                                                 float* __restrict__ pooled, int hw,
                                                                 int channels) {
  using Shape = PoolShape<T, kVec>;
  __shared__ float partial[Shape::kRowsHW][Shape::kChannelsPerBlock];  // [kRowsHW, channels of block]

  const int64_t image = blockIdx.x;
  const int lane_c = threadIdx.x % Shape::kLanesC;  // which kVec-channel group
  const int row = threadIdx.x / Shape::kLanesC;     // first token this thread sums
  const int c_block = blockIdx.y * Shape::kChannelsPerBlock;
  const int c_first = c_block + lane_c * kVec;       // this thread's first channel
  const T* x_image = x + image * hw * channels;       // int64: B * HW * C may pass 2^31

  float sums[kVec];
#pragma unroll
  for (int v = 0; v < kVec; ++v) sums[v] = 0.0f;
  // kVec > 1 only when C % kVec == 0, so c_first < C means the whole vector is in range.
  if (c_first < channels) {
#pragma unroll 4
    for (int t = row; t < hw; t += Shape::kRowsHW) {
      const T* src = x_image + static_cast<int64_t>(t) * channels + c_first;
      if constexpr (kVec > 1) {
        const uint4 v = *reinterpret_cast<const uint4*>(src);
        if constexpr (kVec == 4) {
          add_vector(v, sums);
        } else {
          add_vector<T>(v, sums);
        }
      } else {
        sums[0] += to_float(*src);
      }
    }
  }
#pragma unroll
  for (int v = 0; v < kVec; ++v) partial[row][lane_c * kVec + v] = sums[v];
  __syncthreads();

  for (int col = threadIdx.x; col < Shape::kChannelsPerBlock; col += kPoolThreads) {
    const int c = c_block + col;
    if (c >= channels) continue;
    float total = 0.0f;
#pragma unroll 8
    for (int r = 0; r < Shape::kRowsHW; ++r) total += partial[r][col];
    pooled[image * channels + c] = total / static_cast<float>(hw);
  }
}

constexpr int kClassifierWarps = 8;
constexpr int kImagesPerWarp = 8;
constexpr int kClassesPerWarp = 4;
static_assert(kImagesPerWarp * kClassesPerWarp == 32, "one output per lane after the reduction");
constexpr int kClassesPerBlock = kClassifierWarps * kClassesPerWarp;  // 32

template <typename T>
__global__ void __launch_bounds__(kClassifierWarps * 32)
    head_classifier_kernel(const float* __restrict__ pooled, const T* __restrict__ weight,
                           const float* __restrict__ bias, T* __restrict__ out, int64_t batch,
                           int channels, int classes) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kImagesPerWarp;
  const int n0 = blockIdx.y * kClassesPerBlock + warp * kClassesPerWarp;
  if (n0 >= classes) return;  // no barrier in this kernel: whole warps may leave

  // Rows past B / N are clamped to the last one for the loads (always in bounds) and not stored.
  const T* weight_rows[kClassesPerWarp];
#pragma unroll
  for (int i = 0; i < kClassesPerWarp; ++i)
    weight_rows[i] = weight + static_cast<int64_t>(min(n0 + i, classes - 1)) * channels;
  const float* pooled_rows[kImagesPerWarp];
#pragma unroll
  for (int j = 0; j < kImagesPerWarp; ++j) {
    const int64_t b = b0 + j < batch ? b0 + j : batch - 1;
    pooled_rows[j] = pooled + b * channels;
  }

  float acc[kClassesPerWarp][kImagesPerWarp];  // [4, 8] partial dot products over this lane's c
#pragma unroll
  for (int i = 0; i < kClassesPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < kImagesPerWarp; ++j) acc[i][j] = 0.0f;

#pragma unroll 2
  for (int c = lane; c < channels; c += 32) {
    float w[kClassesPerWarp];
#pragma unroll
    for (int i = 0; i < kClassesPerWarp; ++i) w[i] = to_float(weight_rows[i][c]);
#pragma unroll
    for (int j = 0; j < kImagesPerWarp; ++j) {
      const float pj = pooled_rows[j][c];
#pragma unroll
      for (int i = 0; i < kClassesPerWarp; ++i) acc[i][j] = fmaf(w[i], pj, acc[i][j]);
    }
  }

  // Butterfly sums over the warp; lane l keeps output l = (class l / 8, image l % 8).
  float mine = 0.0f;
#pragma unroll
  for (int i = 0; i < kClassesPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < kImagesPerWarp; ++j) {
      float v = acc[i][j];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == i * kImagesPerWarp + j) mine = v;
    }
  const int n = n0 + lane / kImagesPerWarp;
  const int64_t b = b0 + lane % kImagesPerWarp;
  if (n < classes && b < batch) out[b * classes + n] = from_float<T>(mine + bias[n]);
}

template <typename T>
cudaError_t launch_head(const void* x, const void* weight, const float* bias, float* pooled,
                        void* out, int64_t batch, int hw, int channels, int classes,
                        cudaStream_t stream) {
  if (channels > 0) {
    const bool vector = channels % (16 / sizeof(T)) == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    auto launch_pool = [&](auto vec_tag) {
      constexpr int kVec = decltype(vec_tag)::value;
      const int64_t channel_blocks = ceil_div(channels, PoolShape<T, kVec>::kChannelsPerBlock);
      if (channel_blocks > 65535) return cudaErrorInvalidValue;  // gridDim.y
      const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(channel_blocks));
      head_pool_kernel<T, kVec>
          <<<grid, kPoolThreads, 0, stream>>>(static_cast<const T*>(x), pooled, hw, channels);
      return cudaGetLastError();
    };
    const cudaError_t err =
        vector ? launch_pool(std::integral_constant<int, static_cast<int>(16 / sizeof(T))>{})
               : launch_pool(std::integral_constant<int, 1>{});
    if (err != cudaSuccess) return err;
  }
  if (classes > 0) {
    const int64_t image_blocks = ceil_div(batch, kImagesPerWarp);
    const int64_t class_blocks = ceil_div(classes, kClassesPerBlock);
    if (image_blocks > INT_MAX || class_blocks > 65535) return cudaErrorInvalidValue;
    const dim3 grid(static_cast<unsigned>(image_blocks), static_cast<unsigned>(class_blocks));
    head_classifier_kernel<T><<<grid, kClassifierWarps * 32, 0, stream>>>(
        pooled, static_cast<const T*>(weight), bias, static_cast<T*>(out), batch, channels, classes);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace head_detail

cudaError_t head(const void* x, const void* weight, const float* bias, float* pooled, void* out,
                 int64_t batch, int hw, int channels, int classes, DType dtype,
                 cudaStream_t stream) {
  if (batch < 0 || hw < 0 || channels < 0 || classes < 0) return cudaErrorInvalidValue;
  if (batch == 0) return cudaSuccess;  // nothing to pool or classify
  if (hw < 1 || batch > INT_MAX) return cudaErrorInvalidValue;  // mean of no tokens; gridDim.x
  if (channels == 0 && classes == 0) return cudaSuccess;
  if ((channels > 0 && (x == nullptr || pooled == nullptr)) ||
      (classes > 0 && (out == nullptr || bias == nullptr || (channels > 0 && weight == nullptr))))
    return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    return head_detail::launch_head<decltype(tag)>(x, weight, bias, pooled, out, batch, hw,
                                                   channels, classes, stream);
  });
}

}  // namespace convmixer_fast
