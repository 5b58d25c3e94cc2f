// Depthwise block of DESIGN.md §2 (row "dw"), one kernel:
//
//   out[b, h, w, c] = x[b, h, w, c] + scale[c] * act(bias[c] + sum_{i, j} xpad[b, h + i, w + j, c]
//                                                                   * weight[i, j, c]) + shift[c]
//
// on NHWC tokens x, out [B, H, W, C] (T = float / __half / __nv_bfloat16), weight [k, k, C] (T),
// bias / scale / shift fp32 [C]; xpad is x with torch's "same" zero padding: pad = (k-1)/2 rows and
// columns before, k/2 after (odd and even k), stride 1. fp32 accumulation and epilogue, one rounding
// at the store.
//
// Tiling (one CTA = one tile of kTileH output rows x kStripW output columns x kBlockC channels of
// one image):
//   1. Staging. The CTA copies the input halo of its tile, [kTileH + k - 1, kStripW + k - 1,
//      kBlockC], and the taps of its channels, [k, k, kBlockC], into shared memory as fp32 (each
//      value converted once). Global loads are 16 bytes along channels (8 x 16-bit or 4 x fp32)
//      when C and the pointers allow it, else one element at a time; 8 loads per thread are in
//      flight before their conversion and store. Pixels in the zero padding and channels >= C are
//      stored as zeros. The pixel pitch of the halo rows is odd, so the quarter-warp reads below are
//      conflict-free.
//   2. Math. Each thread owns one output row strip: kStripW = 16 consecutive output columns of one
//      row, 4 channels (one float4 of shared memory) -> 16 x 4 fp32 accumulators in registers. For
//      each kernel row i it loads the k taps of row i (k float4, kept in registers) and slides over
//      the kStripW + k - 1 input columns of its input row: each input float4 is read from shared
//      memory once and feeds every output of the strip it touches (cx - ox = tap j), fully unrolled
//      at compile time, so the window is register renaming: per kernel row, 16 + k - 1 + k LDS.128
//      for 16 * k * 4 FFMA (k = 9: 33 loads for 576 FMAs).
//      A warp covers 32 / (kBlockC / 4) consecutive rows of the strip; lanes run channels fastest,
//      so a quarter warp reads whole 64/128-byte runs (and the taps are broadcast).
//   3. Epilogue. The residual x is read back from the centre of the staged halo (exact), then
//      out = x + scale * act(acc + bias) + shift (common.cuh apply_epilogue), rounded once and
//      stored 8 or 16 bytes per thread per output pixel (vector path) or per element.
//
// Zero padding. Columns: input columns left of column 0 (strip at the left edge, w0 == 0) or right
// of column W - 1 (strip ending at the right edge, w0 + kStripW == W) are removed from the unrolled
// window by compile-time variants chosen per CTA (skipped, not multiplied by zero). Strips are
// right-anchored: the last strip of a row starts at W - kStripW when W >= kStripW, overlapping its
// neighbour when W % kStripW != 0 (both CTAs add the same nonzero products in the same order, and a
// skipped tap or a tap times a staged zero leaves acc bit-identical since acc is never -0, so the
// overlapped outputs are written twice with the same value). So at W = 16 and 32 every strip is an
// edge variant and no padding column is computed; narrower images (W < kStripW) and strips near but
// not at an edge multiply their out-of-image columns by the staged zeros.
// Rows: a runtime loop bounded per warp (its lanes share the loop) to the kernel rows that reach
// the image for some live row of the warp. With 8 consecutive rows per warp this skips whole kernel
// rows only when all 8 rows of a warp miss them (short images, large k, warps past the bottom,
// which exit); at 32 x 32, k = 9 every warp needs all 9 kernel rows, and the lanes whose input row
// is padding multiply staged zero rows (6.9% of the taps there; the 4-rows-per-warp alternative,
// kBlockC = 32, would skip a third of those at twice the shared memory).
//
// Configurations (TileConfig):
//   - k = 3, 5, 7, 9 (compile-time k): 16 x 16 x 16 channels, 64 threads (2 warps of 8 rows x 4
//     channel quads); k = 9 shared memory 24 x 25 x 16 x 4 + 81 x 16 x 4 = 43,584 bytes (< 48 KB:
//     5 CTAs / 10 warps per H100 SM), no opt-in needed.
//   - any other k in 1..31 (runtime k): the same strip, 8 channels, 32 threads (1 warp of 16 rows
//     x 2 quads); each kernel row runs as chunks of 8 taps (the unrolled window of a k = 8 kernel)
//     and one chunk of the k % 8 left (a compile-time window of that size, picked at run time), so
//     no tap is padded; chunks whose taps only see columns >= W are skipped. Padding columns
//     inside a chunk are multiplied by the staged zeros. Shared memory up to 99,936 bytes at
//     k = 31 (46 x 47 x 8 x 4 + 31 x 31 x 8 x 4; the opt-in is set once per device).
// Grid: x = (tile row, tile column, channel block) with channel blocks fastest (the CTAs of one
// tile run together and share its pixels' cache lines), y = image (launched in chunks of 65535).
#pragma once

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.cuh"

namespace convmixer_fast {
namespace depthwise_detail {

constexpr int kMaxKernelSize = 31;
constexpr int kMaxGridY = 65535;

// Tile shape for a compile-time kernel size kK (3, 5, 7, 9), or the runtime-k path (kK == 0).
template <int kK>
struct TileConfig {
  static constexpr bool kGeneric = (kK == 0);
  static constexpr int kTileH = 16;                  // output rows per CTA
  static constexpr int kStripW = 16;                 // output columns per CTA (= per thread)
  static constexpr int kBlockC = kGeneric ? 8 : 16;  // channels per CTA
  static constexpr int kChunk = kGeneric ? 8 : kK;   // taps per unrolled window (generic: + k % 8)
  static constexpr int kQuads = kBlockC / 4;         // threads per row strip (4 channels each)
  static constexpr int kThreads = kTileH * kQuads;
  static constexpr int kRowsPerWarp = 32 / kQuads;
  static_assert(kBlockC % 8 == 0, "a 16-byte vector of 16-bit values must not straddle CTAs");
  static_assert(kThreads % 32 == 0 && kTileH % kRowsPerWarp == 0, "warps cover whole rows");
};

// Shared-memory geometry of a CTA (host and device compute it the same way).
struct Geometry {
  int k;          // kernel size
  int pad;        // zero rows / columns before the image: (k - 1) / 2
  int halo_h;     // staged input rows: kTileH + k - 1
  int halo_w;     // staged input columns: kStripW + k - 1
  int pitch;      // pixels per staged row: halo_w rounded up to odd (bank-conflict free)
  int in_floats;  // [halo_h, pitch, kBlockC]
  int w_floats;   // [k, k, kBlockC]
};

template <int kK>
__host__ __device__ __forceinline__ Geometry make_geometry(int runtime_k) {
  using Cfg = TileConfig<kK>;
  Geometry g;
  g.k = Cfg::kGeneric ? runtime_k : kK;
  g.pad = (g.k - 1) / 2;
  g.halo_h = Cfg::kTileH + g.k - 1;
  g.halo_w = Cfg::kStripW + g.k - 1;
  g.pitch = g.halo_w | 1;
  g.in_floats = g.halo_h * g.pitch * Cfg::kBlockC;
  g.w_floats = g.k * g.k * Cfg::kBlockC;
  return g;
}

inline size_t smem_bytes(const Geometry& g) {
  return sizeof(float) * static_cast<size_t>(g.in_floats + g.w_floats);
}

// Everything the kernel needs, by value. x / out point at the first image of the launch.
template <typename T>
struct Params {
  const T* x;          // [B, H, W, C]
  const T* weight;     // [k, k, C]
  const float* bias;   // [C]
  const float* scale;  // [C]
  const float* shift;  // [C]
  T* out;              // [B, H, W, C]
  int height, width, channels, kernel_size;
  int tiles_w;         // strips per row: ceil(W / kStripW)
  int channel_blocks;  // ceil(C / kBlockC)
  bool vector_io;      // 16-byte global loads / vector stores (C and pointers allow it)
};

// ---- small helpers ------------------------------------------------------------------------------
template <int kBytes> struct RawBits;  // an unsigned type of kBytes bytes
template <> struct RawBits<2> { using type = unsigned short; };
template <> struct RawBits<4> { using type = unsigned int; };
template <> struct RawBits<8> { using type = uint2; };
template <> struct RawBits<16> { using type = uint4; };

// Elements per 16-byte vector.
template <typename T>
constexpr int vector_width() { return static_cast<int>(16 / sizeof(T)); }

// Copies a [pixels, kBlockC] fp32 tile into shared memory from global memory, kVec elements of T
// per load (kVec = 16 / sizeof(T) or 1). locate(pixel, channel_in_block, &dst_pixel) returns the
// element's global address, or nullptr where the tile holds a zero (padding, channel >= C), and the
// pixel's index in dst ([dst_pixel, kBlockC] floats).
template <typename T, int kVec, int kBlockC, int kThreads, typename Locate>
__device__ __forceinline__ void stage_tile(float* __restrict__ dst, int pixels, Locate locate) {
  using Raw = typename RawBits<static_cast<int>(sizeof(T)) * kVec>::type;
  constexpr int kVecsPerPixel = kBlockC / kVec;
  constexpr int kBatch = 8;  // loads in flight per thread
  const int total = pixels * kVecsPerPixel;
  for (int base = 0; base < total; base += kThreads * kBatch) {
    Raw raw[kBatch];
    int dst_offset[kBatch];  // float offset in dst, -1 past the end
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int index = base + u * kThreads + static_cast<int>(threadIdx.x);
      raw[u] = Raw{};
      dst_offset[u] = -1;
      if (index < total) {
        const int pixel = index / kVecsPerPixel;
        const int channel = (index % kVecsPerPixel) * kVec;
        int dst_pixel;
        const T* src = locate(pixel, channel, dst_pixel);
        dst_offset[u] = dst_pixel * kBlockC + channel;
        if (src != nullptr) raw[u] = *reinterpret_cast<const Raw*>(src);
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (dst_offset[u] < 0) continue;
      T values[kVec];  // the loaded bits as T (memcpy: reading raw through a T* breaks strict aliasing)
      memcpy(values, &raw[u], sizeof(values));
      if constexpr (kVec % 4 == 0) {
#pragma unroll
        for (int q = 0; q < kVec / 4; ++q) {
          *reinterpret_cast<float4*>(dst + dst_offset[u] + 4 * q) =
              make_float4(to_float(values[4 * q]), to_float(values[4 * q + 1]),
                          to_float(values[4 * q + 2]), to_float(values[4 * q + 3]));
        }
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) dst[dst_offset[u] + e] = to_float(values[e]);
      }
    }
  }
}

// The input halo [halo_h, pitch, kBlockC] and the taps [k, k, kBlockC] of a CTA.
template <typename T, int kVec, typename Cfg>
__device__ __forceinline__ void stage_inputs(const Params<T>& p, const T* __restrict__ x_image,
                                             const Geometry& g, int h0, int w0, int c0,
                                             float* __restrict__ s_in, float* __restrict__ s_w) {
  const int H = p.height, W = p.width, C = p.channels;
  stage_tile<T, kVec, Cfg::kBlockC, Cfg::kThreads>(
      s_in, g.halo_h * g.halo_w, [&](int pixel, int channel, int& dst_pixel) -> const T* {
        const int hr = pixel / g.halo_w;
        const int hc = pixel - hr * g.halo_w;
        dst_pixel = hr * g.pitch + hc;
        const int ih = h0 - g.pad + hr;  // image row / column of the halo pixel
        const int iw = w0 - g.pad + hc;
        const int c = c0 + channel;
        const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W && c < C;
        return inside ? x_image + ((static_cast<int64_t>(ih) * W + iw) * C + c) : nullptr;
      });
  stage_tile<T, kVec, Cfg::kBlockC, Cfg::kThreads>(
      s_w, g.k * g.k, [&](int tap, int channel, int& dst_pixel) -> const T* {
        dst_pixel = tap;  // tap = i * k + j
        const int c = c0 + channel;
        return c < C ? p.weight + (static_cast<int64_t>(tap) * C + c) : nullptr;
      });
}

// One kernel row (or one chunk of kTaps taps of it) for one thread: slides over the
// kStripW + kTaps - 1 input columns of in_row, skipping the first kSkipLeft and last kSkipRight
// (zero padding). in_row / taps point at the thread's float4 of column / tap 0; consecutive columns
// and taps are kStride float4 apart.
//   acc[ox] += in_row[ox + j] * taps[j] for 0 <= ox < kStripW, 0 <= j < kTaps, in increasing j.
template <int kTaps, int kStripW, int kStride, int kSkipLeft, int kSkipRight>
__device__ __forceinline__ void accumulate_row(const float4* __restrict__ in_row,
                                               const float4* __restrict__ taps,
                                               float (&acc)[kStripW][4]) {
  float4 tap[kTaps];  // [kTaps] x 4 channels
#pragma unroll
  for (int j = 0; j < kTaps; ++j) tap[j] = taps[j * kStride];
#pragma unroll
  for (int cx = kSkipLeft; cx < kStripW + kTaps - 1 - kSkipRight; ++cx) {
    const float4 v = in_row[cx * kStride];  // input column cx, 4 channels
#pragma unroll
    for (int j = 0; j < kTaps; ++j) {
      const int ox = cx - j;  // the output this (column, tap) pair feeds
      if (ox >= 0 && ox < kStripW) {
        acc[ox][0] = fmaf(v.x, tap[j].x, acc[ox][0]);
        acc[ox][1] = fmaf(v.y, tap[j].y, acc[ox][1]);
        acc[ox][2] = fmaf(v.z, tap[j].z, acc[ox][2]);
        acc[ox][3] = fmaf(v.w, tap[j].w, acc[ox][3]);
      }
    }
  }
}

// All kernel rows [i_begin, i_end) of a compile-time k, padding columns compiled out.
template <int kK, int kSkipLeft, int kSkipRight, typename Cfg>
__device__ __forceinline__ void accumulate_rows(const float4* in_base, const float4* w_base,
                                                int row_stride, int i_begin, int i_end,
                                                float (&acc)[Cfg::kStripW][4]) {
  constexpr int kStride = Cfg::kBlockC / 4;
#pragma unroll 1
  for (int i = i_begin; i < i_end; ++i) {
    accumulate_row<kK, Cfg::kStripW, kStride, kSkipLeft, kSkipRight>(
        in_base + i * row_stride, w_base + i * kK * kStride, acc);
  }
}

// The last kernel-row chunk of the runtime-k path: `taps` = k % kChunk taps (1 .. kChunk - 1).
template <typename Cfg, int kTaps = Cfg::kChunk - 1>
__device__ __forceinline__ void accumulate_remainder(int taps, const float4* in_row,
                                                     const float4* w_row,
                                                     float (&acc)[Cfg::kStripW][4]) {
  if constexpr (kTaps >= 1) {
    if (taps == kTaps) {
      accumulate_row<kTaps, Cfg::kStripW, Cfg::kBlockC / 4, 0, 0>(in_row, w_row, acc);
    } else {
      accumulate_remainder<Cfg, kTaps - 1>(taps, in_row, w_row, acc);
    }
  }
}

// ---- the kernel -----------------------------------------------------------------------------------
template <typename T, int kK, Activation kAct>
__global__ void __launch_bounds__(TileConfig<kK>::kThreads)
    depthwise_block_kernel(const Params<T> p) {
  using Cfg = TileConfig<kK>;
  constexpr int kStride = Cfg::kBlockC / 4;  // float4 per staged pixel
  extern __shared__ float4 smem[];
  const Geometry g = make_geometry<kK>(p.kernel_size);
  float* s_in = reinterpret_cast<float*>(smem);  // [halo_h, pitch, kBlockC]
  float* s_w = s_in + g.in_floats;               // [k, k, kBlockC]

  const int H = p.height, W = p.width, C = p.channels;
  const int channel_block = static_cast<int>(blockIdx.x) % p.channel_blocks;
  const int tile = static_cast<int>(blockIdx.x) / p.channel_blocks;
  const int h0 = (tile / p.tiles_w) * Cfg::kTileH;  // first output row of the tile
  // First output column: strips are right-anchored (see the top comment).
  const int w0 = W >= Cfg::kStripW ? min((tile % p.tiles_w) * Cfg::kStripW, W - Cfg::kStripW) : 0;
  const int c0 = channel_block * Cfg::kBlockC;
  const int64_t image_offset = static_cast<int64_t>(blockIdx.y) * H * W * C;
  const T* x_image = p.x + image_offset;
  T* out_image = p.out + image_offset;

  if (p.vector_io) {
    stage_inputs<T, vector_width<T>(), Cfg>(p, x_image, g, h0, w0, c0, s_in, s_w);
  } else {
    stage_inputs<T, 1, Cfg>(p, x_image, g, h0, w0, c0, s_in, s_w);
  }
  __syncthreads();

  const int quad = static_cast<int>(threadIdx.x) % Cfg::kQuads;  // channels c0 + 4 quad + [0, 4)
  const int row = static_cast<int>(threadIdx.x) / Cfg::kQuads;   // output row h0 + row
  const int warp_h0 = h0 + (static_cast<int>(threadIdx.x) / 32) * Cfg::kRowsPerWarp;
  if (warp_h0 >= H) return;  // the warp's rows are all below the image (no barrier follows)
  const int warp_h_last = min(warp_h0 + Cfg::kRowsPerWarp, H) - 1;  // last live row of the warp
  // Kernel rows i whose input row (h + i - pad) lies in the image for some live row h of the warp.
  const int i_begin = max(0, g.pad - warp_h_last);
  const int i_end = min(g.k, H + g.pad - warp_h0);

  const float4* s_in4 = reinterpret_cast<const float4*>(s_in);
  const float4* s_w4 = reinterpret_cast<const float4*>(s_w);
  const int row_stride = g.pitch * kStride;          // float4 per staged row
  const float4* in_base = s_in4 + row * row_stride + quad;  // halo row `row` = kernel row 0
  const float4* w_base = s_w4 + quad;

  float acc[Cfg::kStripW][4];  // [kStripW outputs, 4 channels]
#pragma unroll
  for (int ox = 0; ox < Cfg::kStripW; ++ox) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[ox][e] = 0.0f;
  }

  if constexpr (Cfg::kGeneric) {
    // Each kernel row in chunks of kChunk taps, then one chunk of the k % kChunk left; a chunk
    // runs only if its first tap j0 reaches an input column < W for some output of the strip
    // (column w0 + ox + j0 - pad with ox = 0). (Taps left of column 0 are never a whole chunk:
    // pad <= 15 = kStripW - 1.)
    const int j_end = min(g.k, W + g.pad - w0);         // taps [j_end, k) only see columns >= W
    const int full_end = g.k - g.k % Cfg::kChunk;       // taps [0, full_end): whole chunks
    const int full_stop = min(full_end, j_end);
#pragma unroll 1
    for (int i = i_begin; i < i_end; ++i) {
      const float4* in_row = in_base + i * row_stride;  // halo row `row + i`
      const float4* w_row = w_base + i * g.k * kStride;  // taps (i, 0..k-1)
#pragma unroll 1
      for (int j0 = 0; j0 < full_stop; j0 += Cfg::kChunk) {
        accumulate_row<Cfg::kChunk, Cfg::kStripW, kStride, 0, 0>(in_row + j0 * kStride,
                                                                  w_row + j0 * kStride, acc);
      }
      if (full_end < j_end) {
        accumulate_remainder<Cfg>(g.k - full_end, in_row + full_end * kStride,
                                  w_row + full_end * kStride, acc);
      }
    }
  } else {
    constexpr int kPadLeft = (kK - 1) / 2;    // input columns before the image at w0 == 0
    constexpr int kPadRight = kK - 1 - kPadLeft;  // after it at w0 + kStripW == W
    const bool left_edge = (w0 == 0);
    const bool right_edge = (w0 + Cfg::kStripW == W);
    if (left_edge && right_edge) {
      accumulate_rows<kK, kPadLeft, kPadRight, Cfg>(in_base, w_base, row_stride, i_begin, i_end, acc);
    } else if (left_edge) {
      accumulate_rows<kK, kPadLeft, 0, Cfg>(in_base, w_base, row_stride, i_begin, i_end, acc);
    } else if (right_edge) {
      accumulate_rows<kK, 0, kPadRight, Cfg>(in_base, w_base, row_stride, i_begin, i_end, acc);
    } else {
      accumulate_rows<kK, 0, 0, Cfg>(in_base, w_base, row_stride, i_begin, i_end, acc);
    }
  }

  // Epilogue: out = x + scale * act(acc + bias) + shift for the thread's strip.
  const int oh = h0 + row;
  const int c = c0 + 4 * quad;
  if (oh >= H || c >= C) return;
  float bias[4], scale[4], shift[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const bool live = c + e < C;
    bias[e] = live ? p.bias[c + e] : 0.0f;
    scale[e] = live ? p.scale[c + e] : 0.0f;
    shift[e] = live ? p.shift[c + e] : 0.0f;
  }
  // The residual x at output (oh, w0 + ox) is halo pixel (row + pad, ox + pad).
  const float4* residual = s_in4 + (row + g.pad) * row_stride + g.pad * kStride + quad;
  T* out_row = out_image + (static_cast<int64_t>(oh) * W + w0) * C + c;
#pragma unroll
  for (int ox = 0; ox < Cfg::kStripW; ++ox) {
    if (w0 + ox >= W) break;
    const float4 r = residual[ox * kStride];
    const float res[4] = {r.x, r.y, r.z, r.w};
    alignas(4 * sizeof(T)) T y[4];  // 4 channels, one vector store
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      y[e] = from_float<T>(res[e] + apply_epilogue<kAct>(acc[ox][e], bias[e], scale[e], shift[e]));
    }
    T* dst = out_row + static_cast<int64_t>(ox) * C;
    if (p.vector_io) {  // C % (16 / sizeof(T)) == 0: all 4 channels live, 4 * sizeof(T) aligned
      using Raw = typename RawBits<4 * static_cast<int>(sizeof(T))>::type;
      *reinterpret_cast<Raw*>(dst) = *reinterpret_cast<const Raw*>(y);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (c + e < C) dst[e] = y[e];
      }
    }
  }
}

// ---- host launch ----------------------------------------------------------------------------------
struct Problem {
  const void* x;
  const void* weight;
  Epilogue epilogue;
  void* out;
  int64_t batch;
  int height, width, channels, kernel_size;
};

// Lets `kernel` use `bytes` of dynamic shared memory on the current device (once per device).
template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, size_t bytes, std::atomic<unsigned long long>& done) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const unsigned long long bit = device < 64 ? 1ull << device : 0ull;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess && bit != 0) done.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

// Whether x, weight and out can be read and written in 16-byte vectors of 16 / element_bytes
// channels: C a multiple of that, every pointer 16-byte aligned.
inline bool vector_io_possible(const Problem& pr, int element_bytes) {
  return pr.channels % (16 / element_bytes) == 0 && aligned16(pr.x) && aligned16(pr.weight) && aligned16(pr.out);
}

// The kernel arguments of a problem for tiles `tile_w` columns wide and `block_c` channels deep.
template <typename T>
Params<T> make_params(const Problem& pr, int tile_w, int block_c, bool vector_io) {
  Params<T> p;
  p.x = static_cast<const T*>(pr.x);
  p.weight = static_cast<const T*>(pr.weight);
  p.bias = pr.epilogue.bias;
  p.scale = pr.epilogue.scale;
  p.shift = pr.epilogue.shift;
  p.out = static_cast<T*>(pr.out);
  p.height = pr.height;
  p.width = pr.width;
  p.channels = pr.channels;
  p.kernel_size = pr.kernel_size;
  p.tiles_w = static_cast<int>(ceil_div(pr.width, tile_w));
  p.channel_blocks = static_cast<int>(ceil_div(pr.channels, block_c));
  p.vector_io = vector_io;
  return p;
}

// Launches `kernel` (of either depthwise algorithm) on grid (blocks_per_image, images), the images
// in chunks of kMaxGridY, each chunk's x / out advanced to its first image (image_elements *
// sizeof(T) is a multiple of 16 wherever 16-byte accesses are used: C is then a multiple of 8).
template <typename T, typename Kernel>
cudaError_t launch_per_images(Kernel kernel, const Params<T>& p, const Problem& pr, int64_t blocks_per_image,
                              int threads, size_t smem, cudaStream_t stream) {
  const int64_t image_elements = static_cast<int64_t>(pr.height) * pr.width * pr.channels;
  for (int64_t b0 = 0; b0 < pr.batch; b0 += kMaxGridY) {
    const int64_t images = pr.batch - b0 < kMaxGridY ? pr.batch - b0 : kMaxGridY;
    Params<T> chunk = p;
    chunk.x = p.x + b0 * image_elements;
    chunk.out = p.out + b0 * image_elements;
    const dim3 grid(static_cast<unsigned>(blocks_per_image), static_cast<unsigned>(images));
    kernel<<<grid, threads, smem, stream>>>(chunk);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// Launches the kernel for a compile-time k (kK) or the runtime-k path (kK == 0).
template <typename T, int kK, Activation kAct>
cudaError_t launch_kernel(const Problem& pr, cudaStream_t stream) {
  using Cfg = TileConfig<kK>;
  const Geometry g = make_geometry<kK>(pr.kernel_size);
  const size_t smem = smem_bytes(g);
  const int64_t tiles_h = ceil_div(pr.height, Cfg::kTileH);
  const int64_t tiles_w = ceil_div(pr.width, Cfg::kStripW);
  const int64_t channel_blocks = ceil_div(pr.channels, Cfg::kBlockC);
  const int64_t blocks_per_image = tiles_h * tiles_w * channel_blocks;
  if (blocks_per_image > INT_MAX) return cudaErrorInvalidValue;

  auto kernel = depthwise_block_kernel<T, kK, kAct>;
  static std::atomic<unsigned long long> smem_allowed{0};  // devices with the attribute set
  const size_t max_smem = smem_bytes(make_geometry<kK>(kMaxKernelSize));
  const cudaError_t err = allow_shared_memory(kernel, max_smem, smem_allowed);
  if (err != cudaSuccess) return err;

  const Params<T> p = make_params<T>(pr, Cfg::kStripW, Cfg::kBlockC, vector_io_possible(pr, sizeof(T)));
  return launch_per_images(kernel, p, pr, blocks_per_image, Cfg::kThreads, smem, stream);
}

// Calls f(std::integral_constant<int, kK>{}) with the compile-time kernel size of k (3, 5, 7, 9),
// or kK = 0 (the runtime-k path) for any other k.
template <typename F>
auto with_compile_time_k(int k, F&& f) {
  switch (k) {
    case 3: return f(std::integral_constant<int, 3>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 9: return f(std::integral_constant<int, 9>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

// All kernels of one dtype: dispatches on the activation and the kernel size. Instantiated in
// depthwise_block_{f32,f16,bf16}.cu.
template <typename T>
cudaError_t launch_depthwise_block(const Problem& pr, cudaStream_t stream) {
  return dispatch_activation(pr.epilogue.act, [&](auto act) -> cudaError_t {
    constexpr Activation kAct = decltype(act)::value;
    return with_compile_time_k(pr.kernel_size, [&](auto kk) -> cudaError_t {
      return launch_kernel<T, decltype(kk)::value, kAct>(pr, stream);
    });
  });
}

extern template cudaError_t launch_depthwise_block<float>(const Problem&, cudaStream_t);
extern template cudaError_t launch_depthwise_block<__half>(const Problem&, cudaStream_t);
extern template cudaError_t launch_depthwise_block<__nv_bfloat16>(const Problem&, cudaStream_t);

}  // namespace depthwise_detail
}  // namespace convmixer_fast
