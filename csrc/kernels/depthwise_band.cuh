// The depthwise block of DESIGN.md §2 on tensor cores: the band (Toeplitz) matrix form.
//
//   out[b, h, w, c] = x[b, h, w, c] + scale[c] * act(bias[c] + sum_{i, j} xpad[b, h + i, w + j, c]
//                                                                   * weight[i, j, c]) + shift[c]
//
// for fp16 / bf16 tokens and k <= 9 (depthwise_block.cuh has the general kernel and the notation).
// For one channel and kernel row i, the output rows are a matrix product: with X_i the input rows
// shifted by i (columns w0 - pad ... ) and T_i the band matrix of the taps of row i,
//   out[h, w0 + 8 n + q] += sum_p X_i[h, 8 n + p] * T_i[p, q],   T_i[p, q] = weight[i, p - q] if
//                                                                0 <= p - q < k, else 0,
// one mma.m16n8k16 per 16 output rows x 8 output columns x kernel row: A = 16 rows x 16 input columns
// (the 8 + k - 1 <= 16 columns that reach those 8 outputs, the rest multiplied by T's zeros),
// B = T_i [16, 8], the same for every column group, read once per channel into registers (each lane
// holds 4 of its elements per kernel row, taps p - q in mma.cuh's B layout: two 4-byte words). The
// tensor core does 16 multiply-adds per output per kernel row where the direct form needs k: 1.78x
// the direct FLOPs at k = 9, at tensor-core rather than fp32-FMA rates. Operands are the model's
// 16-bit values, exact; products and sums are fp32 (the tensor core's accumulation), the epilogue
// fp32, one rounding at the store, as in the direct kernel (the order of the sums differs).
//
// One CTA = kTileH x kTileW output pixels (16 or 32 each, picked per image size) x kBlockC = 16
// channels of one image, 8 warps:
//   1. Staging: the input halo, rows h0 - pad ... h0 + kTileH + k - 2 and columns w0 - pad ...
//      w0 + kTileW + 7, goes to shared memory transposed, one plane [kHaloH, kPitch] per channel
//      (16-byte global loads of 8 channels of two neighbouring pixels, stored as 8 4-byte pairs;
//      each thread one column pair and vector walking down the rows; zeros outside the image; the
//      second 8 planes start 16 banks further, so the two vectors' stores do not collide), and
//      the taps, one zero-padded row per channel and kernel row, twice (the second copy one
//      element to the right), so that a lane reads its 4 elements of each B as two aligned 4-byte
//      words, without tests. The plane pitch (kTileW + 8 elements) is an odd multiple of 16
//      bytes, so the 8 rows of an ldmatrix land in distinct bank groups.
//   2. Math: warp w takes channels w and w + 8: for each kernel row and 16-row block, A straight
//      from the plane (rows r + i, columns 8 n ... 8 n + 15 for column group n), the kColGroups + 1
//      8-column blocks loaded once for all groups (ldmatrix .x4 and .x2), then per column group one
//      mma (k16; two k8 where its A spans two ldmatrix results).
//   3. Epilogue: each lane turns its accumulators (which start at the bias) into out values (the
//      residual read from the plane's centre; two neighbouring columns as one 4-byte word where pad
//      is even) and writes them back into the plane in place (the warp alone reads its channels'
//      planes, and all its reads are done), then the CTA stores the tile 16 bytes per pixel and 8
//      channels (again a column and vector per thread, down the rows), skipping pixels outside the
//      image and channels >= C.
// Padding taps are multiplied by staged zeros (an mma covers 16 rows; rows cannot be skipped).
// Inputs outside an output's k x k window but inside its A tile are multiplied by T's zeros: an
// infinite input there gives NaN where the direct kernel would not (finite inputs are exact).
//
// Requirements (band_supported): f16 / bf16, k <= 9, C % 8 == 0, x / weight / out 16-byte aligned
// (depthwise_block.cu runs the direct kernel otherwise), sm_80+ (ldmatrix, bf16 mma).
// Shared memory: kBlockC planes of kHaloH x kPitch 16-bit values plus the two copies of the
// zero-padded taps: 65,152 bytes at 32 x 32, 32,384 bytes at 16 x 16; with 80 registers per thread
// (sm_90a, 32 x 32) 3 CTAs, 24 warps, fit an H100 SM.
#pragma once

#include "depthwise_block.cuh"
#include "mma.cuh"

namespace convmixer_fast {
namespace depthwise_detail {

constexpr int kMaxBandKernelSize = 9;  // 8 output columns + k - 1 inputs fit the mma's K = 16
// The taps of one kernel row as a lane reads them for its B fragment: tap j = p - q for p in
// [0, 16), q in [0, 8) lies in [-7, 15]; copy s (0 or 1) of a zero-padded row holds it at
// j + kTapOffset + s. Lane (g, t) reads the pairs p = 2 t, 2 t + 1 and 2 t + 8, 2 t + 9 of column
// q = g, which start at an even element (a 4-byte word) in copy 1 - g % 2.
constexpr int kTapOffset = 7;
constexpr int kTapCopies = 2;
constexpr int kTapPitch = 24;
static_assert(kTapPitch >= 16 + kTapOffset + 1 && kTapPitch % 2 == 0 && kTapOffset % 2 == 1,
              "a lane's reads stay in its row (up to column 16 + kTapOffset of copy 1), pairs at words");

// Tile of kTileH x kTileW outputs (each 16 or 32) x kBlockC channels.
template <int kTileH_, int kTileW_>
struct BandConfig {
  static constexpr int kTileH = kTileH_;
  static constexpr int kTileW = kTileW_;
  static constexpr int kBlockC = 16;
  static constexpr int kWarps = 8;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowBlocks = kTileH / 16;  // mma M = 16
  static constexpr int kColGroups = kTileW / 8;   // mma N = 8
  static constexpr int kHaloH = kTileH + kMaxBandKernelSize - 1;
  static constexpr int kPitch = kTileW + 8;  // columns per plane row: 8 n + 15 < kPitch
  static constexpr int kPlane = kHaloH * kPitch;
  static constexpr int kChannelsPerWarp = kBlockC / kWarps;
  // The planes come in groups of kVec (the channels of one 16-byte vector), each group kGroupSkew
  // elements (64 bytes, 16 banks) past the end of the previous one. Staging and the tile store
  // give neighbouring lanes the two vectors of a pixel, planes e and kVec + e: kVec whole planes
  // apart, a multiple of 32 banks, so without the skew those lanes' accesses would share banks.
  static constexpr int kVec = 8;
  static constexpr int kGroupSkew = 32;
  static constexpr int plane_start(int channel) { return channel * kPlane + channel / kVec * kGroupSkew; }
  static_assert(kTileH % 16 == 0 && kTileW % 16 == 0, "whole mma tiles, an even number of column groups");
  static_assert((kPitch / 8) % 2 == 1, "an odd number of 16-byte units per plane row");
  static_assert(kBlockC % kWarps == 0 && kBlockC % kVec == 0, "whole channels per warp, whole vectors");
  static_assert(kVec * kPlane % 64 == 0 && kGroupSkew % 64 == 32,
                "plane e + kVec is 16 banks (mod 32) from plane e, and group starts stay 16-byte aligned");
};

template <typename Cfg, typename T>
constexpr size_t band_smem_bytes() {
  return sizeof(T) * (static_cast<size_t>(Cfg::plane_start(Cfg::kBlockC)) +
                      static_cast<size_t>(Cfg::kBlockC) * kTapCopies * kMaxBandKernelSize * kTapPitch);
}

// The band kernel's launch: its Params (tiles_w and channel_blocks count BandConfig tiles; its
// loads and stores are always 16-byte vectors) and its grid (blocks per image; y = images, launched
// in chunks of kMaxGridY).
template <typename T, typename Cfg>
Params<T> band_params(const Problem& pr) {
  return make_params<T>(pr, Cfg::kTileW, Cfg::kBlockC, true);
}

template <typename Cfg>
int64_t band_blocks_per_image(const Problem& pr) {
  return ceil_div(pr.height, Cfg::kTileH) * ceil_div(pr.width, Cfg::kTileW) *
         ceil_div(pr.channels, Cfg::kBlockC);
}

template <typename T, typename Cfg, Activation kAct>
__global__ void __launch_bounds__(Cfg::kThreads) band_kernel(const Params<T> p) {
  static_assert(sizeof(T) == 2, "16-bit tokens");
  constexpr int kVec = Cfg::kVec;  // channels per 16-byte vector
  constexpr int kVecsPerPixel = Cfg::kBlockC / kVec;
  extern __shared__ float4 smem[];
  T* s_planes = reinterpret_cast<T*>(smem);               // kBlockC x [kHaloH, kPitch], at plane_start
  T* s_taps = s_planes + Cfg::plane_start(Cfg::kBlockC);  // [kBlockC, kTapCopies, 9, kTapPitch], zero-padded

  const int H = p.height, W = p.width, C = p.channels, k = p.kernel_size;
  const int pad = (k - 1) / 2;
  const int channel_block = static_cast<int>(blockIdx.x) % p.channel_blocks;
  const int tile = static_cast<int>(blockIdx.x) / p.channel_blocks;
  const int h0 = (tile / p.tiles_w) * Cfg::kTileH;
  const int w0 = (tile % p.tiles_w) * Cfg::kTileW;
  const int c0 = channel_block * Cfg::kBlockC;
  const int64_t image_offset = static_cast<int64_t>(blockIdx.y) * H * W * C;
  const T* x_image = p.x + image_offset;
  T* out_image = p.out + image_offset;

  // ---- 1. staging: halo planes and taps ----------------------------------------------------------
  constexpr int kTapRows = Cfg::kBlockC * kTapCopies * kMaxBandKernelSize;
  constexpr int kTapVectors = static_cast<int>(kTapRows * kTapPitch * sizeof(T) / 16);
  static_assert(kTapRows * kTapPitch * sizeof(T) % 16 == 0 &&
                    Cfg::plane_start(Cfg::kBlockC) * sizeof(T) % 16 == 0, "s_taps is whole, aligned vectors");
  for (int index = static_cast<int>(threadIdx.x); index < kTapVectors; index += Cfg::kThreads) {
    reinterpret_cast<uint4*>(s_taps)[index] = make_uint4(0, 0, 0, 0);
  }
  __syncthreads();  // the zeros land before the taps do
  // Each thread keeps one (pair of halo columns, 8-channel vector) of a halo row and walks down
  // the rows, kRowsPerPass apart: its columns, channel and plane offsets are fixed, no index is
  // divided. Two 16-byte loads (8 channels of 2 neighbouring pixels) become 8 4-byte stores, one
  // per channel plane (the pair's first plane column is even: 4-byte aligned).
  constexpr int kRowSlots = Cfg::kPitch / 2 * kVecsPerPixel;  // (column pair, vector)s per halo row
  constexpr int kRowsPerPass = Cfg::kThreads / kRowSlots;     // (the last threads may idle)
  constexpr int kBatch = 2;                                   // rows in flight per thread (2 loads each)
  static_assert(Cfg::kPitch % 2 == 0 && kRowsPerPass >= 1, "whole column pairs; a pass covers a row");
  const int halo_rows = Cfg::kTileH + k - 1;
  {
    const int slot = static_cast<int>(threadIdx.x) % kRowSlots;
    const int first_row = static_cast<int>(threadIdx.x) / kRowSlots;
    const int halo_col = 2 * (slot / kVecsPerPixel), vec = slot % kVecsPerPixel;
    const int iw = w0 - pad + halo_col, c = c0 + vec * kVec;  // the pair's image columns: iw, iw + 1
    const bool thread_works = first_row < kRowsPerPass && c < C;
    const bool column_inside[2] = {thread_works && iw >= 0 && iw < W,
                                   thread_works && iw + 1 >= 0 && iw + 1 < W};
    // [plane, row, column pair] from this thread's first plane and pair
    uint32_t* dst = reinterpret_cast<uint32_t*>(s_planes + Cfg::plane_start(vec * kVec) + halo_col);
    const int row_end = thread_works ? halo_rows : 0;
    const int64_t row_step = static_cast<int64_t>(W) * C;  // elements from one image row to the next
    // Element offset of (image row h0 - pad + row0, column iw, channel c); negative above the image.
    int64_t offset = (static_cast<int64_t>(h0 - pad + first_row) * W + iw) * C + c;
    for (int row0 = first_row; row0 < row_end; row0 += kRowsPerPass * kBatch) {
      uint4 raw[kBatch][2];  // [row, column of the pair]
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int ih = h0 - pad + row0 + u * kRowsPerPass;
        const bool row_inside = row0 + u * kRowsPerPass < halo_rows && ih >= 0 && ih < H;
#pragma unroll
        for (int col = 0; col < 2; ++col) {
          const T* src = x_image + offset + u * kRowsPerPass * row_step + col * C;
          raw[u][col] = row_inside && column_inside[col] ? *reinterpret_cast<const uint4*>(src)
                                                         : make_uint4(0, 0, 0, 0);
        }
      }
      offset += kRowsPerPass * kBatch * row_step;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int row = row0 + u * kRowsPerPass;
        if (row >= halo_rows) break;
        T left[kVec], right[kVec];  // (memcpy: reading the raw bits through a T* breaks strict aliasing)
        memcpy(left, &raw[u][0], sizeof(left));
        memcpy(right, &raw[u][1], sizeof(right));
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          dst[e * (Cfg::kPlane / 2) + row * (Cfg::kPitch / 2)] = pack_pair(left[e], right[e]);
        }
      }
    }
  }
  // Taps: 16-byte loads of 8 channels of tap (i, j), scattered to s_taps[channel, s, i, j + kTapOffset
  // + s] for both copies s (the rest of s_taps was zeroed before the barrier at the start). The
  // (i, j, vector) slots span the largest kernel, so that no index is divided by k.
  constexpr int kTapSlots = kMaxBandKernelSize * kMaxBandKernelSize * kVecsPerPixel;
  for (int index = static_cast<int>(threadIdx.x); index < kTapSlots; index += Cfg::kThreads) {
    const int i = index / (kMaxBandKernelSize * kVecsPerPixel);
    const int j = index / kVecsPerPixel % kMaxBandKernelSize;
    const int vec = index % kVecsPerPixel, c = c0 + vec * kVec;
    if (i >= k || j >= k || c >= C) continue;
    const uint4 raw = *reinterpret_cast<const uint4*>(p.weight + static_cast<int64_t>(i * k + j) * C + c);
    T values[kVec];
    memcpy(values, &raw, sizeof(values));
    T* dst = s_taps + (vec * kVec * kTapCopies * kMaxBandKernelSize + i) * kTapPitch + j + kTapOffset;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
#pragma unroll
      for (int copy = 0; copy < kTapCopies; ++copy) {
        dst[(e * kTapCopies + copy) * kMaxBandKernelSize * kTapPitch + copy] = values[e];
      }
    }
  }
  __syncthreads();

  // ---- 2. math: per channel, kernel row, 16-row block and 8-column group one mma ------------------
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int g = lane / 4, t = lane % 4;  // mma.cuh's lane roles
#pragma unroll 1
  for (int cw = 0; cw < Cfg::kChannelsPerWarp; ++cw) {
    const int ch = warp + cw * Cfg::kWarps;  // channel in the block
    T* plane = s_planes + Cfg::plane_start(ch);

    // B of kernel row i: T_i[p, q] = tap (i, p - q); this lane holds p = 2t, 2t+1, 2t+8, 2t+9, q = g,
    // the words at columns 2 t - g + kTapOffset + copy and 8 further of its copy (the zero padding of
    // s_taps supplies the taps outside [0, k), and the rows i >= k, which the math skips).
    uint32_t band[kMaxBandKernelSize][2];
    const int copy = 1 - g % 2;
    const uint32_t* lane_taps = reinterpret_cast<const uint32_t*>(
        s_taps + (ch * kTapCopies + copy) * kMaxBandKernelSize * kTapPitch + 2 * t - g + kTapOffset + copy);
#pragma unroll
    for (int i = 0; i < kMaxBandKernelSize; ++i) {
      band[i][0] = lane_taps[i * kTapPitch / 2];
      band[i][1] = lane_taps[i * kTapPitch / 2 + 4];
    }

    // The accumulators start at the bias: the epilogue then needs no add of its own.
    const int c = c0 + ch;
    const bool live = c < C;
    const float bias = live ? p.bias[c] : 0.0f;
    float acc[Cfg::kRowBlocks][Cfg::kColGroups][4];  // [16-row block, 8-column group, mma C]
#pragma unroll
    for (int rb = 0; rb < Cfg::kRowBlocks; ++rb)
#pragma unroll
      for (int n = 0; n < Cfg::kColGroups; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[rb][n][e] = bias;

    // Lane l's ldmatrix row: A row l % 16, columns 8 (l / 16) ... of the 16 x 16 A tile.
    const T* a_lane = plane + (lane % 16) * Cfg::kPitch + (lane / 16) * 8;
#pragma unroll
    for (int i = 0; i < kMaxBandKernelSize; ++i) {
      if (i == 0 || i < k) {  // (k >= 1: row 0's mmas take the bias as their C operand, no copies)
#pragma unroll
        for (int rb = 0; rb < Cfg::kRowBlocks; ++rb) {
          // The A of column group n is two columns of 8 x 8 blocks, columns 8 n ... and 8 n + 8 ...
          // (of rows 0-7 and 8-15 each): neighbouring groups share one, so the 16 rows' kColGroups + 1
          // block columns are loaded once, kColGroups / 2 ldmatrix.x4 and one .x2 (10 matrices at
          // kTileW = 32 where one .x4 per group would load 16). An even group's A is the quad of an
          // .x4 (one k16 mma); an odd group's halves lie in two quads, so it takes two k8 mmas, one
          // per half of A and of the band B (copying them into one quad would cost 4 moves).
          const T* a_rows = a_lane + (16 * rb + i) * Cfg::kPitch;  // plane rows 16 rb + i ...
          uint32_t blocks[Cfg::kColGroups + 1][2];  // block column m: rows 0-7, rows 8-15
#pragma unroll
          for (int m = 0; m < Cfg::kColGroups; m += 2) {
            uint32_t quad[4];
            ldmatrix<4>(quad, a_rows + 8 * m);
            blocks[m][0] = quad[0], blocks[m][1] = quad[1];
            blocks[m + 1][0] = quad[2], blocks[m + 1][1] = quad[3];
          }
          ldmatrix<2>(blocks[Cfg::kColGroups], a_rows + 8 * Cfg::kColGroups);
#pragma unroll
          for (int n = 0; n < Cfg::kColGroups; ++n) {
            if (n % 2 == 0) {
              const uint32_t a[4] = {blocks[n][0], blocks[n][1], blocks[n + 1][0], blocks[n + 1][1]};
              mma_m16n8<16, T>(acc[rb][n], a, band[i]);
            } else {
              const uint32_t b_low[1] = {band[i][0]}, b_high[1] = {band[i][1]};
              mma_m16n8<8, T>(acc[rb][n], blocks[n], b_low);
              mma_m16n8<8, T>(acc[rb][n], blocks[n + 1], b_high);
            }
          }
        }
      }
    }
    __syncwarp();  // every lane's ldmatrix reads of `plane` are done before it is overwritten

    // ---- 3a. epilogue into the plane: output (r, w) of the tile is plane (r + pad, w + pad) -------
    // A lane's accumulators e = 2 h, 2 h + 1 are the outputs (16 rb + g + 8 h, 8 n + 2 t + {0, 1}):
    // one 4-byte word of the plane where pad is even (k = 1, 5, 9), two 16-bit cells where not.
    const float scale = live ? p.scale[c] : 0.0f;
    const float shift = live ? p.shift[c] : 0.0f;
    auto epilogue_into_plane = [&](auto word_aligned) {
#pragma unroll
      for (int rb = 0; rb < Cfg::kRowBlocks; ++rb) {
#pragma unroll
        for (int n = 0; n < Cfg::kColGroups; ++n) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            T* cells = plane + (16 * rb + g + 8 * h + pad) * Cfg::kPitch + 8 * n + 2 * t + pad;
            const float y0 = fmaf(scale, activate<kAct>(acc[rb][n][2 * h]), shift);
            const float y1 = fmaf(scale, activate<kAct>(acc[rb][n][2 * h + 1]), shift);
            if constexpr (decltype(word_aligned)::value) {
              uint32_t& word = *reinterpret_cast<uint32_t*>(cells);
              const float2 residual = to_float2<T>(word);
              word = from_float2<T>(residual.x + y0, residual.y + y1);
            } else {
              cells[0] = from_float<T>(to_float(cells[0]) + y0);
              cells[1] = from_float<T>(to_float(cells[1]) + y1);
            }
          }
        }
      }
    };
    if (pad % 2 == 0) {
      epilogue_into_plane(std::true_type{});
    } else {
      epilogue_into_plane(std::false_type{});
    }
  }
  __syncthreads();

  // ---- 3b. store: 16 bytes (8 channels) per pixel and vector ----------------------------------------
  // As the staging: each thread one (output column, vector) of a row, walking down the rows.
  constexpr int kOutRowVectors = Cfg::kTileW * kVecsPerPixel;
  constexpr int kOutRowsPerPass = Cfg::kThreads / kOutRowVectors;
  static_assert(Cfg::kThreads % kOutRowVectors == 0, "every thread stores");
  const int slot = static_cast<int>(threadIdx.x) % kOutRowVectors;
  const int w = slot / kVecsPerPixel, vec = slot % kVecsPerPixel;
  const int c = c0 + vec * kVec;
  if (w0 + w >= W || c >= C) return;
  const int rows = min(Cfg::kTileH, H - h0);
  const T* src = s_planes + Cfg::plane_start(vec * kVec) + pad * Cfg::kPitch + w + pad;  // + r * kPitch
  T* dst = out_image + (static_cast<int64_t>(h0) * W + w0 + w) * C + c;                  // + r * W * C
#pragma unroll 1  // (unrolled, its gathers outgrow the math's registers and spill)
  for (int r = static_cast<int>(threadIdx.x) / kOutRowVectors; r < rows; r += kOutRowsPerPass) {
    T values[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) values[e] = src[e * Cfg::kPlane + r * Cfg::kPitch];
    uint4 raw;
    memcpy(&raw, values, sizeof(raw));
    *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * W * C) = raw;
  }
}

// Whether band_kernel runs a problem (a device of compute capability 8.0 or more assumed).
inline bool band_supported(const Problem& pr, DType dtype) {
  return (dtype == DType::kFloat16 || dtype == DType::kBFloat16) && pr.kernel_size <= kMaxBandKernelSize &&
         vector_io_possible(pr, 2);
}

template <typename T, typename Cfg, Activation kAct>
cudaError_t launch_band_tile(const Problem& pr, cudaStream_t stream) {
  const int64_t blocks_per_image = band_blocks_per_image<Cfg>(pr);
  if (blocks_per_image > INT_MAX) return cudaErrorInvalidValue;
  auto kernel = band_kernel<T, Cfg, kAct>;
  constexpr size_t smem = band_smem_bytes<Cfg, T>();
  static std::atomic<unsigned long long> smem_allowed{0};
  const cudaError_t err = allow_shared_memory(kernel, smem, smem_allowed);
  if (err != cudaSuccess) return err;
  return launch_per_images(kernel, band_params<T, Cfg>(pr), pr, blocks_per_image, Cfg::kThreads, smem, stream);
}

// Calls f(Cfg{}) with the tile of an image of height x width: 16 rows / columns where the image has
// at most 16, else 32.
template <typename F>
auto with_band_tile(int height, int width, F&& f) {
  const bool short_image = height <= 16, narrow_image = width <= 16;
  if (short_image && narrow_image) return f(BandConfig<16, 16>{});
  if (short_image) return f(BandConfig<16, 32>{});
  if (narrow_image) return f(BandConfig<32, 16>{});
  return f(BandConfig<32, 32>{});
}

// The band kernels of one 16-bit dtype: the tile per image size and the activation. Instantiated in
// depthwise_band_{f16,bf16}.cu.
template <typename T>
cudaError_t launch_depthwise_band(const Problem& pr, cudaStream_t stream) {
  return dispatch_activation(pr.epilogue.act, [&](auto act) -> cudaError_t {
    constexpr Activation kAct = decltype(act)::value;
    return with_band_tile(pr.height, pr.width, [&](auto tile) -> cudaError_t {
      return launch_band_tile<T, decltype(tile), kAct>(pr, stream);
    });
  });
}

extern template cudaError_t launch_depthwise_band<__half>(const Problem&, cudaStream_t);
extern template cudaError_t launch_depthwise_band<__nv_bfloat16>(const Problem&, cudaStream_t);

}  // namespace depthwise_detail
}  // namespace convmixer_fast
