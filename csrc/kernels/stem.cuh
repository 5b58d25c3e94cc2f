// Stem (patch embedding) of DESIGN.md §2: patchify + GEMM + epilogue in one kernel, reading the
// image in place (its own dtype, any element strides: NCHW, channels_last or a view).
//
//   out[m, n] = scale[n] * act(sum_k A[m, k] * weight[n, k] + bias[n]) + shift[n]
//   m = (b, hp, wp) over M = B * Hp * Wp tokens (Hp = H / p, Wp = W / p, floored),
//   k = (ci, di, dj) over K = Cin * p * p, A[m, k] = image[b, ci, hp*p + di, wp*p + dj] rounded to
//   the model dtype T (as the reference does: patches.to(weight.dtype)), weight [N, K] row-major
//   (the conv weight [C, Cin, p, p]), out [M, N] row-major (= [B, Hp, Wp, C]).
//
// Tiling: one CTA of 8 warps computes a [kBlockM, kBlockN] = [128, 128] output tile, stepping over
// K in kBlockK = 16 slices (zero-filled past K in both operands, so any K works). Per slice, each
// thread loads 8 weight elements straight into shared memory and stores the 8 A elements it
// gathered (converted to T) during the previous slice's math; after the barrier it issues the
// gather of the next slice (register prefetch), then the math. Load mapping: lane -> k = lane % 16,
// tile row = 2 * warp + lane / 16 + 16 * i (i < 8); shared tiles are [rows, k] (k contiguous).
// The patchify is only address math: a token's patch origin offset (b, hp*p, wp*p) is
// computed once per CTA into shared memory, a lane's (ci, di, dj) offset once per slice.
//   - T = __half / __nv_bfloat16: tensor cores through WMMA m16n16k16 (fp32 accumulators); warps
//     2 (M) x 4 (N), each a [64, 32] warp tile = 4 x 2 fragments. Epilogue: each warp stages one
//     16x16 accumulator fragment at a time in shared memory (reusing the A/B tiles), then each
//     lane applies the epilogue to 8 consecutive channels of one row and stores them (one 16-byte
//     store when N % 8 == 0 and out is 16-byte aligned).
//   - T = float: CUDA-core FMA (exact fp32 math); 16 x 16 threads, each an [8, 8] register tile
//     (rows ty + 16*i, channels tx + 16*j: conflict-free shared reads, coalesced stores).
// Blocks run N-tile-fastest over a 1-D grid, so the CTAs sharing a token tile (and its image
// gather) run together and hit L2.
#pragma once

#include <mma.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace convmixer_fast {
namespace stem_detail {

constexpr int kBlockM = 128;  // tokens per CTA
constexpr int kBlockN = 128;  // output channels per CTA
constexpr int kBlockK = 16;   // reduction slice per main-loop step
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Slice loads: lane -> (k = lane % kBlockK, row = warp * kRowsPerWarp + lane / kBlockK); the
// CTA covers kRowsPerStep tile rows per step, so a thread loads rows row + kRowsPerStep * i.
constexpr int kRowsPerWarp = 32 / kBlockK;                    // 2 rows of 16 k per warp
constexpr int kRowsPerStep = kWarps * kRowsPerWarp;           // 16
constexpr int kRowsPerThread = kBlockM / kRowsPerStep;        // 8 (of A and of the weight)
static_assert(32 % kBlockK == 0 && kBlockK % 16 == 0, "a warp covers whole rows of a K slice");
static_assert(kBlockM == kBlockN, "A and weight tiles share the row mapping of the loads");

// Everything the kernel needs, by value. Element strides / offsets are int64.
struct StemParams {
  const void* image;  // [B, Cin, H, W] of TImage, element strides below
  int64_t stride_b, stride_c, stride_h, stride_w;
  const void* weight;  // [N, K] of T, row-major
  const float* bias;   // [N]
  const float* scale;  // [N]
  const float* shift;  // [N]
  void* out;           // [M, N] of T, row-major
  int64_t M;           // B * Hp * Wp
  int64_t tokens_per_image;  // Hp * Wp
  int Wp;
  int N;
  int K;           // Cin * p * p
  int patch;       // p
  int patch_area;  // p * p
  int tiles_n;     // ceil(N / kBlockN)
  bool vector_store;  // N % 8 == 0 and out 16-byte aligned (16-bit path: 8-channel stores)
};

// Shared-memory geometry of the A / B tiles for compute type T. Rows are k-contiguous.
template <typename T>
struct TileShape {
  static constexpr bool kTensorCores = !std::is_same_v<T, float>;
  // Row padding: 16-bit rows of 24 elements (48 B) keep WMMA's ldm a multiple of 8 elements and
  // its 8-row fragment loads conflict-free; fp32 rows of 17 floats (odd) make the FMA path's
  // strided row reads conflict-free.
  static constexpr int kLd = kBlockK + (kTensorCores ? 8 : 1);
  static constexpr int kATileBytes = kBlockM * kLd * int(sizeof(T));  // [kBlockM, kLd]
  static constexpr int kBTileBytes = kBlockN * kLd * int(sizeof(T));  // [kBlockN, kLd]
  static constexpr int kStageLd = 16 + 4;  // fp32 staging of one 16x16 fragment per warp
  static constexpr int kStageBytes = kTensorCores ? kWarps * 16 * kStageLd * 4 : 0;
  static constexpr int kSmemBytes = (kATileBytes + kBTileBytes > kStageBytes)
                                        ? kATileBytes + kBTileBytes
                                        : kStageBytes;
  static_assert(kATileBytes % 128 == 0, "the B tile must start 128-byte aligned");
};

// Bits of a 16-bit value, for packing 8 output channels into one 16-byte store.
__device__ __forceinline__ uint32_t bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// ---- fp16 / bf16: tensor cores (WMMA) --------------------------------------------------------
template <typename T>
struct WmmaMath {
  using Shape = TileShape<T>;
  static constexpr int kWarpsN = 4;                                // warps along N
  static constexpr int kWarpTileM = kBlockM / (kWarps / kWarpsN);  // 64
  static constexpr int kWarpTileN = kBlockN / kWarpsN;             // 32
  static constexpr int kFragsM = kWarpTileM / 16;                  // 4
  static constexpr int kFragsN = kWarpTileN / 16;                  // 2

  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[kFragsM][kFragsN];
  int warp_row;  // first tile row of this warp's [64, 32] tile
  int warp_col;  // first tile channel of this warp's tile

  __device__ __forceinline__ void init() {
    const int warp = threadIdx.x / 32;
    warp_row = (warp / kWarpsN) * kWarpTileM;
    warp_col = (warp % kWarpsN) * kWarpTileN;
#pragma unroll
    for (int i = 0; i < kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  // acc += A_tile[warp rows, :] @ B_tile[warp cols, :]^T over one kBlockK slice.
  __device__ __forceinline__ void mma(const T* a_tile, const T* b_tile) {
    using namespace nvcuda;
#pragma unroll
    for (int kk = 0; kk < kBlockK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b_frag[kFragsN];
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)  // B[k, n] = weight[n, k] at b_tile[n * kLd + k]
        wmma::load_matrix_sync(b_frag[j], b_tile + (warp_col + j * 16) * Shape::kLd + kk, Shape::kLd);
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {  // one A fragment live at a time (register pressure)
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
        // A[m, k] at a_tile[m * kLd + k]
        wmma::load_matrix_sync(a_frag, a_tile + (warp_row + i * 16) * Shape::kLd + kk, Shape::kLd);
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], a_frag, b_frag[j], acc[i][j]);
      }
    }
  }

  // Epilogue and store. smem: the CTA's shared buffer (free: the main loop ended with a barrier).
  template <Activation kAct>
  __device__ __forceinline__ void store(const StemParams& p, unsigned char* smem, int64_t m0, int n0) {
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    float* stage = reinterpret_cast<float*>(smem) + warp * 16 * Shape::kStageLd;  // [16, kStageLd]
    const int row_in_frag = lane / 2;         // 0..15
    const int col_in_frag = (lane % 2) * 8;   // 0 or 8: this lane's 8 consecutive channels
    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) {
      const int n_first = n0 + warp_col + j * 16 + col_in_frag;  // first of this lane's 8 channels
      float bias[8], scale[8], shift[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const bool ok = n_first + e < p.N;
        bias[e] = ok ? p.bias[n_first + e] : 0.0f;
        scale[e] = ok ? p.scale[n_first + e] : 0.0f;
        shift[e] = ok ? p.shift[n_first + e] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        nvcuda::wmma::store_matrix_sync(stage, acc[i][j], Shape::kStageLd, nvcuda::wmma::mem_row_major);
        __syncwarp();
        const int64_t m = m0 + warp_row + i * 16 + row_in_frag;
        if (m < p.M) {
          const float4* src = reinterpret_cast<const float4*>(stage + row_in_frag * Shape::kStageLd + col_in_frag);
          const float4 lo = src[0], hi = src[1];
          const float accs[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
          T vals[8];
#pragma unroll
          for (int e = 0; e < 8; ++e)
            vals[e] = from_float<T>(apply_epilogue<kAct>(accs[e], bias[e], scale[e], shift[e]));
          T* dst = out + m * p.N + n_first;
          if (p.vector_store && n_first + 8 <= p.N) {  // 16-byte aligned: N % 8 == 0, n_first % 8 == 0
            uint4 packed;
            packed.x = bits16(vals[0]) | (bits16(vals[1]) << 16);
            packed.y = bits16(vals[2]) | (bits16(vals[3]) << 16);
            packed.z = bits16(vals[4]) | (bits16(vals[5]) << 16);
            packed.w = bits16(vals[6]) | (bits16(vals[7]) << 16);
            *reinterpret_cast<uint4*>(dst) = packed;
          } else {
#pragma unroll
            for (int e = 0; e < 8; ++e)
              if (n_first + e < p.N) dst[e] = vals[e];
          }
        }
        __syncwarp();  // the stage is rewritten by the next fragment
      }
    }
  }
};

// ---- fp32: CUDA-core FMA register tiles ------------------------------------------------------
struct FmaMath {
  using Shape = TileShape<float>;
  static constexpr int kThreadsN = 16;                      // threads along N (tx)
  static constexpr int kThreadsM = kThreads / kThreadsN;    // 16 threads along M (ty)
  static constexpr int kRows = kBlockM / kThreadsM;         // 8 rows per thread: ty + 16*i
  static constexpr int kCols = kBlockN / kThreadsN;         // 8 channels per thread: tx + 16*j

  float acc[kRows][kCols];  // [8, 8]
  int ty, tx;

  __device__ __forceinline__ void init() {
    ty = threadIdx.x / kThreadsN;
    tx = threadIdx.x % kThreadsN;
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[i][j] = 0.0f;
  }

  __device__ __forceinline__ void mma(const float* a_tile, const float* b_tile) {
#pragma unroll 4
    for (int k = 0; k < kBlockK; ++k) {
      float a[kRows], b[kCols];
#pragma unroll
      for (int i = 0; i < kRows; ++i) a[i] = a_tile[(ty + kThreadsM * i) * Shape::kLd + k];
#pragma unroll
      for (int j = 0; j < kCols; ++j) b[j] = b_tile[(tx + kThreadsN * j) * Shape::kLd + k];
#pragma unroll
      for (int i = 0; i < kRows; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }

  template <Activation kAct>
  __device__ __forceinline__ void store(const StemParams& p, unsigned char*, int64_t m0, int n0) {
    float* out = static_cast<float*>(p.out);
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const int n = n0 + tx + kThreadsN * j;
      if (n >= p.N) continue;
      const float bias = p.bias[n], scale = p.scale[n], shift = p.shift[n];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int64_t m = m0 + ty + kThreadsM * i;
        if (m < p.M) out[m * p.N + n] = apply_epilogue<kAct>(acc[i][j], bias, scale, shift);
      }
    }
  }
};

template <typename T>
using StemMath = std::conditional_t<std::is_same_v<T, float>, FmaMath, WmmaMath<T>>;

// T: compute / weight / output dtype; TImage: image dtype; kAct: activation.
template <typename T, typename TImage, Activation kAct>
__global__ void __launch_bounds__(kThreads, 2) stem_kernel(const StemParams p) {
  using Shape = TileShape<T>;
  __shared__ alignas(128) unsigned char smem[Shape::kSmemBytes];
  __shared__ int64_t patch_origin[kBlockM];  // image offset of token m0 + r's patch, channel 0

  T* a_tile = reinterpret_cast<T*>(smem);                      // [kBlockM, kLd]: A[m, k]
  T* b_tile = reinterpret_cast<T*>(smem + Shape::kATileBytes);  // [kBlockN, kLd]: weight[n, k]

  const int tile_n = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.tiles_n));
  const int64_t tile_m = blockIdx.x / static_cast<unsigned>(p.tiles_n);
  const int64_t m0 = tile_m * kBlockM;
  const int n0 = tile_n * kBlockN;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  // token m -> (b, hp, wp) -> offset of image[b, 0, hp*p, wp*p]; rows past M are never read.
  for (int r = threadIdx.x; r < kBlockM; r += kThreads) {
    const int64_t m = m0 + r;
    int64_t origin = 0;
    if (m < p.M) {
      const int64_t b = m / p.tokens_per_image;
      const int64_t t = m - b * p.tokens_per_image;  // hp * Wp + wp
      const int64_t hp = t / p.Wp;
      const int64_t wp = t - hp * p.Wp;
      origin = b * p.stride_b + hp * p.patch * p.stride_h + wp * p.patch * p.stride_w;
    }
    patch_origin[r] = origin;
  }
  __syncthreads();

  const TImage* image = static_cast<const TImage*>(p.image);
  const T* weight = static_cast<const T*>(p.weight);
  const T zero = from_float<T>(0.0f);
  const int load_k = lane % kBlockK;                         // k within the slice
  const int load_row = warp * kRowsPerWarp + lane / kBlockK;  // first tile row this thread loads
  T a_regs[kRowsPerThread];  // A[load_row + 16*i, k0 + load_k] of the next slice

  // Gathers A[:, k0 + load_k] of the K slice at k0 into registers (0 past M or K).
  auto gather_a = [&](int k0) {
    const int k = k0 + load_k;
    const bool k_ok = k < p.K;
    int64_t k_offset = 0;  // offset of image[0, ci, di, dj] for k = (ci, di, dj)
    if (k_ok) {
      const int ci = k / p.patch_area;
      const int rem = k - ci * p.patch_area;
      const int di = rem / p.patch;
      const int dj = rem - di * p.patch;
      k_offset = ci * p.stride_c + di * p.stride_h + dj * p.stride_w;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int r = load_row + kRowsPerStep * i;  // tile row: token m0 + r
      a_regs[i] = (k_ok && m0 + r < p.M) ? from_float<T>(to_float(image[patch_origin[r] + k_offset])) : zero;
    }
  };

  StemMath<T> math;
  math.init();
  const int k_slices = (p.K + kBlockK - 1) / kBlockK;
  if (k_slices > 0) gather_a(0);
  for (int s = 0; s < k_slices; ++s) {
    // The weight slice goes straight to shared memory (its loads overlap the A gather still in
    // flight); the A registers gathered during the previous slice's math follow.
    const int k = s * kBlockK + load_k;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int r = load_row + kRowsPerStep * i;  // tile row: output channel n0 + r
      b_tile[r * Shape::kLd + load_k] =
          (k < p.K && n0 + r < p.N) ? weight[static_cast<int64_t>(n0 + r) * p.K + k] : zero;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i)
      a_tile[(load_row + kRowsPerStep * i) * Shape::kLd + load_k] = a_regs[i];
    __syncthreads();
    if (s + 1 < k_slices) gather_a((s + 1) * kBlockK);  // in flight during the math below
    math.mma(a_tile, b_tile);
    __syncthreads();  // tiles free for the next slice (and for the epilogue's staging)
  }
  math.template store<kAct>(p, smem, m0, n0);
}

// Launches stem_kernel<T, TImage, kAct> for the runtime image dtype and activation. Instantiated
// once per T in stem_<dtype>.cu.
template <typename T>
cudaError_t launch_stem(const StemParams& params, DType image_dtype, Activation act, int64_t blocks,
                        cudaStream_t stream) {
  return dispatch_dtype(image_dtype, [&](auto image_tag) {
    using TImage = decltype(image_tag);
    return dispatch_activation(act, [&](auto act_tag) {
      stem_kernel<T, TImage, decltype(act_tag)::value>
          <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(params);
      return cudaGetLastError();
    });
  });
}

extern template cudaError_t launch_stem<float>(const StemParams&, DType, Activation, int64_t, cudaStream_t);
extern template cudaError_t launch_stem<__half>(const StemParams&, DType, Activation, int64_t, cudaStream_t);
extern template cudaError_t launch_stem<__nv_bfloat16>(const StemParams&, DType, Activation, int64_t,
                                                        cudaStream_t);

}  // namespace stem_detail
}  // namespace convmixer_fast
