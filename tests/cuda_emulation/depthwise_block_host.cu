// Host emulation test of the depthwise-block CUDA kernels, for machines without a GPU: the direct
// kernel (csrc/kernels/depthwise_block.cuh) and the band kernel on tensor cores
// (csrc/kernels/depthwise_band.cuh). tests/test_cuda_emulation.py builds and runs it; by hand, from
// the repository root:
//
//   nvcc -std=c++17 -Xcompiler -fno-strict-aliasing -I csrc/kernels \
//       tests/cuda_emulation/depthwise_block_host.cu -o dw_host
//   ./dw_host                                  # the fixed case list below
//   ./dw_host bf16,gelu,2,32,32,24,9 f32,relu,1,7,21,8,5,misaligned   # chosen cases
//   ./dw_host f16,relu,1,17,33,16,9,band       # a case on the band kernel
//   ./dw_host --random 200 7                   # 200 random cases from seed 7
//
// A case is DTYPE,ACT,B,H,W,C,K[,misaligned][,band]: DTYPE f32 | f16 | bf16, ACT gelu | relu, NHWC
// tokens [B, H, W, C], a K x K kernel; "misaligned" offsets every tensor pointer by one element
// (which forces the direct kernel's element-wise path); "band" runs the band kernel, which takes
// only what band_supported() accepts (f16 / bf16, K <= 9, C % 8 == 0, aligned pointers: other band
// cases are refused as bad cases). Prints one line per case and a summary; exits 1 if any case
// fails, 2 on a bad command line.
//
// How it works: emulation.h (the CUDA execution model on the host) compiles the real kernel headers
// as host code and runs each CTA's threads as std::threads; the band kernel's ldmatrix / mma.sync
// are emulation.h's warp collectives with the PTX ISA's per-lane fragment layouts. The kernels'
// `extern __shared__` array is an array of this file, poisoned (NaN) before each CTA. The direct
// kernel's Params come from its launcher's helpers (make_params, vector_io_possible) and its grid
// mirrors launch_kernel's tile counts; the band kernel's come from its launcher's helpers
// (band_params, band_blocks_per_image, band_smem_bytes, band_supported), and only its tile choice
// by image size (launch_depthwise_band) is mirrored here. Checks:
//   - every output against an fp64 reference on the same (rounded) inputs, within a tolerance per
//     dtype: one unit in the last place of the output dtype at |y| (the single rounding at the
//     store), plus 1e-6 * (1 + |y|) for the fp32 epilogue, plus 1.2e-7 * k * sum|x * w| * |scale|
//     * 1.2 for the fp32 accumulation (about 2 units of fp32 roundoff per kernel row; the last
//     factor covers the GELU slope). The band kernel gets the same bound: its fp32 sums (one mma
//     per kernel row) run in another order, and the extra products of its band matrix are exact
//     zeros;
//   - outputs start as a NaN bit pattern of their own, so an output no CTA wrote is reported as
//     unwritten, not as a wrong value;
//   - shared memory is NaN before each CTA, so reading a value that was never staged poisons the
//     result; the tensors have NaN guard elements on both sides, then inaccessible pages, so reads
//     just outside a tensor poison the result, reads further out fault (reported), and writes
//     outside the output are reported;
//   - the grid runs twice, CTAs in increasing and in decreasing order, so an output written by two
//     CTAs (overlapping right-anchored strips) must be right whichever CTA writes it last;
//   - a __syncthreads() that some thread of the CTA never reaches (it returned, or waits at another
//     one), or a warp collective (__syncwarp, ldmatrix, mma) that some lane of the warp never
//     reaches, is reported and ends the run instead of hanging; so is an ldmatrix row address that
//     is not 16-byte aligned or not in shared memory.
// What this cannot see: anything the host does not model (warp scheduling and divergence costs, the
// GPU memory model, bank conflicts, alignment faults of other accesses, the tensor cores' own
// rounding, register limits, performance).
#include "emulation.h"

// The kernels' only shared memory is `extern __shared__ float4 smem[]`, defined below: the shared
// qualifier must vanish (emulation.h's `static` would not parse after `extern`).
#undef __shared__
#define __shared__

#include "depthwise_band.cuh"  // the band kernel; it includes depthwise_block.cuh

using namespace convmixer_fast;
using namespace convmixer_fast::depthwise_detail;
using namespace emulation;

// The kernels' `extern __shared__ float4 smem[]`: twice what the largest CTA needs (99,936 bytes at
// runtime k = 31; the band kernel's at most 65,152), so a read past a CTA's own allocation finds NaN
// too.
constexpr size_t kSharedMemoryBytes = 200 * 1024;
namespace convmixer_fast::depthwise_detail {
float4 smem[kSharedMemoryBytes / sizeof(float4)];
}

// ---- test cases ------------------------------------------------------------------------------
struct Case {
  DTypeName dtype;
  Activation act;
  int batch, height, width, channels, k;
  bool misaligned;
  bool band;  // the band kernel (depthwise_band.cuh) instead of the direct one
};

std::string format_case(const Case& c) {
  return format("%s,%s,%d,%d,%d,%d,%d%s%s", dtype_text(c.dtype), activation_text(c.act), c.batch,
                c.height, c.width, c.channels, c.k, c.misaligned ? ",misaligned" : "", c.band ? ",band" : "");
}

DType model_dtype(DTypeName dtype) {
  switch (dtype) {
    case DTypeName::kF16: return DType::kFloat16;
    case DTypeName::kBF16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

// The case as the launchers' Problem (no tensors: pointers null; band_supported then judges only
// dtype, k and C).
Problem problem_of(const Case& c) {
  return Problem{nullptr, nullptr, Epilogue{}, nullptr, c.batch, c.height, c.width, c.channels, c.k};
}

// Parses DTYPE,ACT,B,H,W,C,K[,misaligned][,band]; false if malformed or out of the kernel's range.
bool parse_case(const std::vector<std::string>& f, Case& c) {
  size_t n = f.size();
  c.band = n >= 8 && f[n - 1] == "band";
  n -= c.band ? 1 : 0;
  c.misaligned = n == 8 && f[7] == "misaligned";
  const bool ok = (n == 7 || c.misaligned) && parse_dtype(f[0], c.dtype) && parse_activation(f[1], c.act) &&
                  parse_int(f[2], 1, c.batch) && parse_int(f[3], 1, c.height) && parse_int(f[4], 1, c.width) &&
                  parse_int(f[5], 1, c.channels) && parse_int(f[6], 1, c.k) && c.k <= kMaxKernelSize;
  if (ok && c.band && (c.misaligned || !band_supported(problem_of(c), model_dtype(c.dtype)))) {
    std::printf("the band kernel runs only f16 / bf16, K <= %d, C %% 8 == 0, 16-byte aligned pointers "
                "(band_supported); not this case:\n", kMaxBandKernelSize);
    return false;
  }
  return ok;
}

// The fixed list: small shapes (every CUDA thread is a std::thread) that reach every code path.
const char* const kFixedCases[] = {
    // The model's block shape (32 x 32, k = 9) at C = 24: two channel blocks, the second one
    // half past C; all strips are edge strips (W = 2 x 16). Vector path in each dtype.
    "bf16,gelu,2,32,32,24,9",
    "f16,relu,1,32,32,24,9",
    "f32,gelu,1,32,32,24,9",
    // Each compile-time k (3, 5, 7, 9), W not a multiple of 16 (the last strip is right-anchored
    // and overlaps its neighbour), H not a multiple of 16 (a tile with rows and warps past H).
    "bf16,relu,1,18,40,8,3",
    "f32,gelu,1,17,17,12,5",
    "f32,relu,1,20,33,20,7",
    "bf16,gelu,1,9,18,13,9",  // W = 18: right strip at w0 = 2; C = 13: element-wise path
    "f16,gelu,1,21,47,16,9",
    "f16,relu,1,16,16,32,9",  // one strip that is both edges
    // Images smaller than the kernel (H, W < k) and narrower than a strip (W < 16).
    "bf16,gelu,1,2,2,16,9",
    "bf16,gelu,1,5,7,24,9",
    "f16,relu,1,3,2,10,13",
    "f32,gelu,2,4,3,7,6",
    "f32,relu,1,1,1,4,3",
    // Element-wise path: C not a multiple of the 16-byte vector, or misaligned pointers.
    "f16,gelu,1,9,19,5,7",
    "f32,relu,1,11,23,3,5",
    "bf16,relu,1,6,35,1,3",
    "f32,gelu,1,7,21,8,9,misaligned",
    "bf16,relu,2,9,17,16,5,misaligned",
    "f16,gelu,1,5,33,24,11,misaligned",
    // Runtime-k path (any k but 3, 5, 7, 9), odd and even k: chunks of 8 taps plus a remainder.
    "f32,gelu,1,6,7,3,1",
    "bf16,relu,3,10,11,8,2",
    "f32,gelu,1,3,5,3,4",
    "f16,gelu,1,9,20,16,8",
    "f32,relu,1,21,19,9,11",
    "bf16,gelu,1,33,35,16,16",
    "f32,gelu,1,5,40,4,31",
    "bf16,gelu,1,31,31,8,31",
    "f16,relu,2,18,18,12,31",
    // Runtime k where W + pad - w0 falls on a chunk boundary (a chunk skipped, or run for one tap).
    "f32,gelu,1,3,2,4,16",
    "f32,relu,1,4,1,4,17",
    "f32,gelu,1,20,25,4,18",
    "f16,gelu,1,2,10,8,29",
    "f16,gelu,1,2,11,8,29",
    // Band kernel (tensor cores: ldmatrix + mma). The model shapes, k = 9: 32 x 32 and 16 x 16
    // images (one tile each), C = 24 (the second channel block half past C), 16 and 32.
    "bf16,gelu,1,32,32,24,9,band",
    "f16,relu,1,32,32,16,9,band",
    "bf16,relu,1,16,16,32,9,band",
    "f16,gelu,2,16,16,24,9,band",
    // Every k in 1..9, odd and even (even: one more padding column after than before), on each
    // tile shape, H and W not multiples of 16 or 32 (tiles past the image, several tiles a side).
    "f16,gelu,1,17,9,8,1,band",
    "bf16,relu,1,5,7,8,2,band",
    "bf16,gelu,1,33,17,8,3,band",
    "f16,relu,1,17,33,8,4,band",
    "bf16,gelu,1,47,12,8,5,band",
    "f16,gelu,1,12,47,16,6,band",
    "bf16,relu,1,20,20,8,7,band",
    "f16,relu,1,9,18,8,8,band",
    "bf16,gelu,1,17,47,8,9,band",
    // Images smaller than the kernel, batch > 1.
    "bf16,gelu,1,2,2,8,9,band",
    "f16,relu,1,5,7,16,9,band",
    "bf16,relu,1,3,1,8,8,band",
    "bf16,relu,3,7,9,8,5,band",
};

// ---- one case ----------------------------------------------------------------------------------
// The tensors of a case, random values between guards.
template <typename T>
struct CaseTensors {
  GuardedBuffer<T> x, weight;
  OutputBuffer<T> out;
  GuardedBuffer<float> bias, scale, shift;
  CaseTensors(const Case& c, unsigned seed)
      : x("x", elements(c), image_row(c), nan_of<T>(), c.misaligned),
        weight("weight", taps(c), static_cast<int64_t>(c.k) * c.channels, nan_of<T>(), c.misaligned),
        out("out", elements(c), image_row(c), c.misaligned),
        bias("bias", c.channels, c.channels, NAN, false),
        scale("scale", c.channels, c.channels, NAN, false),
        shift("shift", c.channels, c.channels, NAN, false) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int64_t i = 0; i < elements(c); ++i) x.data()[i] = round_to<T>(uniform(rng));
    for (int64_t i = 0; i < taps(c); ++i) weight.data()[i] = round_to<T>(0.3f * uniform(rng));
    for (int i = 0; i < c.channels; ++i) {
      bias.data()[i] = 0.1f * uniform(rng);
      scale.data()[i] = 1.0f + 0.5f * uniform(rng);
      shift.data()[i] = 0.1f * uniform(rng);
    }
  }
  static int64_t elements(const Case& c) {
    return static_cast<int64_t>(c.batch) * c.height * c.width * c.channels;
  }
  static int64_t taps(const Case& c) { return static_cast<int64_t>(c.k) * c.k * c.channels; }
  static int64_t image_row(const Case& c) { return static_cast<int64_t>(c.width) * c.channels; }
};

// The expected outputs (fp64 on the same rounded inputs) and the tolerance of each.
template <typename T>
Expected reference(const Case& c, const CaseTensors<T>& t) {
  const int H = c.height, W = c.width, C = c.channels, k = c.k, pad = (k - 1) / 2;
  const T* x = t.x.data();
  const T* weight = t.weight.data();
  auto pixel = [&](int b, int h, int w) { return ((static_cast<int64_t>(b) * H + h) * W + w) * C; };
  Expected expected(CaseTensors<T>::elements(c));
  for (int b = 0; b < c.batch; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int w = 0; w < W; ++w) {
        for (int ch = 0; ch < C; ++ch) {
          double acc = 0, sum_abs = 0;
          for (int i = 0; i < k; ++i) {
            for (int j = 0; j < k; ++j) {
              const int ih = h + i - pad, iw = w + j - pad;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              const double term = as_double(x[pixel(b, ih, iw) + ch]) *
                                  as_double(weight[(static_cast<int64_t>(i) * k + j) * C + ch]);
              acc += term;
              sum_abs += std::fabs(term);
            }
          }
          const double scale = t.scale.data()[ch];
          const double y = as_double(x[pixel(b, h, w) + ch]) +
                           scale * activation_reference(c.act, acc + t.bias.data()[ch]) + t.shift.data()[ch];
          const int64_t index = pixel(b, h, w) + ch;
          expected.value[index] = y;
          expected.tolerance[index] = epilogue_tolerance<T>(y, fp32_sum_error(k, sum_abs), scale);
        }
      }
    }
  }
  return expected;
}

// Runs the grid in both CTA orders (run_grid(reverse_order) launches it once) and checks the outputs
// after each.
template <typename T, typename RunGrid>
void run_both_orders(const Case& c, CaseTensors<T>& t, const Expected& expected, OutputCheck& check,
                     RunGrid&& run_grid) {
  const int H = c.height, W = c.width, C = c.channels;
  for (const bool reverse_order : {false, true}) {
    t.out.fill(unwritten<T>());
    run_grid(reverse_order);
    check.compare(t.out, expected, reverse_order ? "decreasing" : "increasing", [&](int64_t i) {
      const int64_t pixel = i / C;
      return format("b=%lld h=%lld w=%lld c=%lld", static_cast<long long>(pixel / (int64_t{H} * W)),
                    static_cast<long long>(pixel / W % H), static_cast<long long>(pixel % W),
                    static_cast<long long>(i % C));
    });
  }
}

// The case as the launchers' Problem, on its tensors.
template <typename T>
Problem problem_on(const Case& c, CaseTensors<T>& t) {
  Problem problem = problem_of(c);
  problem.x = t.x.data();
  problem.weight = t.weight.data();
  problem.out = t.out.data();
  problem.epilogue = Epilogue{t.bias.data(), t.scale.data(), t.shift.data(), c.act};
  return problem;
}

// Runs one case on the direct kernel (both block orders) and prints its line, then details of what
// went wrong.
template <typename T, int kK, Activation kAct>
bool run_case(const Case& c, unsigned seed) {
  using Cfg = TileConfig<kK>;
  const int H = c.height, W = c.width, C = c.channels;
  CaseTensors<T> t(c, seed);
  const Expected expected = reference<T>(c, t);
  const Problem problem = problem_on(c, t);

  // The grid and shared memory, as launch_kernel computes them.
  const Geometry g = make_geometry<kK>(c.k);
  if (smem_bytes(g) > kSharedMemoryBytes) {
    std::printf("FAIL: the kernel needs %zu bytes of shared memory, the emulation has %zu\n",
                smem_bytes(g), kSharedMemoryBytes);
    std::exit(1);
  }
  const int64_t tiles_h = ceil_div(H, Cfg::kTileH), tiles_w = ceil_div(W, Cfg::kStripW);
  const int64_t channel_blocks = ceil_div(C, Cfg::kBlockC);
  const Params<T> params =
      make_params<T>(problem, Cfg::kStripW, Cfg::kBlockC, vector_io_possible(problem, sizeof(T)));

  OutputCheck check;
  if (params.vector_io != (C % vector_width<T>() == 0 && !c.misaligned))
    check.problem("  harness: buffers not 16-byte aligned as intended\n", nullptr);
  const dim3 grid(static_cast<unsigned>(tiles_h * tiles_w * channel_blocks), static_cast<unsigned>(c.batch));
  run_both_orders(c, t, expected, check, [&](bool reverse_order) {
    launch(grid, dim3(Cfg::kThreads), reverse_order, [&params] { depthwise_block_kernel<T, kK, kAct>(params); });
  });
  return check.print(format_case(c), format("%-14s %-15s", Cfg::kGeneric ? "runtime k" : "compile-time k",
                                            params.vector_io ? "16-byte io" : "element-wise io"));
}

// Runs one case on the band kernel with tile Cfg: Params, grid and shared memory from the band
// launcher's helpers (band_params, band_blocks_per_image, band_smem_bytes).
template <typename T, typename Cfg, Activation kAct>
bool run_band_case(const Case& c, unsigned seed) {
  static_assert(band_smem_bytes<Cfg, T>() <= kSharedMemoryBytes, "the emulation's smem is too small");
  CaseTensors<T> t(c, seed);
  const Expected expected = reference<T>(c, t);
  const Problem problem = problem_on(c, t);

  OutputCheck check;
  if (!band_supported(problem, model_dtype(c.dtype)))
    check.problem("  harness: band_supported refuses the case's buffers\n", nullptr);
  const Params<T> params = band_params<T, Cfg>(problem);
  const dim3 grid(static_cast<unsigned>(band_blocks_per_image<Cfg>(problem)), static_cast<unsigned>(c.batch));
  run_both_orders(c, t, expected, check, [&](bool reverse_order) {
    launch(grid, dim3(Cfg::kThreads), reverse_order, [&params] { band_kernel<T, Cfg, kAct>(params); });
  });
  return check.print(format_case(c), format("band %2d x %-5d %-15s", Cfg::kTileH, Cfg::kTileW, "16-byte io"));
}

// Dispatches a case to its kernel instantiation, as depthwise_block() does: the direct kernel by k
// (with_compile_time_k), or the band kernel by image size (with_band_tile).
bool run_any_case(const Case& c, unsigned seed) {
  return with_dtype(c.dtype, [&](auto dtype) {
    using T = decltype(dtype);
    return with_activation(c.act, [&](auto act) {
      constexpr Activation kAct = decltype(act)::value;
      if constexpr (sizeof(T) == 2) {
        if (c.band) {
          return with_band_tile(c.height, c.width, [&](auto tile) {
            return run_band_case<T, decltype(tile), kAct>(c, seed);
          });
        }
      }
      return with_compile_time_k(c.k, [&](auto kk) { return run_case<T, decltype(kk)::value, kAct>(c, seed); });
    });
  });
}

// A random case: shapes up to 40 x 50 with W often near a multiple of 16. A quarter are band cases
// (f16 / bf16, k in 1..9, C a multiple of 8, aligned); the others take any dtype, k in 1..31 and C,
// and run on the band kernel half of the time where it applies.
Case random_case(std::mt19937& rng) {
  Case c;
  const bool band = rng() % 4 == 0;
  c.dtype = band ? (rng() % 2 ? DTypeName::kF16 : DTypeName::kBF16) : static_cast<DTypeName>(rng() % 3);
  c.act = rng() % 2 ? Activation::kRelu : Activation::kGelu;
  c.k = 1 + static_cast<int>(rng() % (band ? kMaxBandKernelSize : kMaxKernelSize));
  c.batch = 1 + static_cast<int>(rng() % 2);
  c.height = 1 + static_cast<int>(rng() % 40);
  if (rng() % 3 == 0) {  // 15 .. 49, next to a multiple of 16
    const int strips = 1 + static_cast<int>(rng() % 3);
    c.width = 16 * strips + static_cast<int>(rng() % 3) - 1;
  } else {
    c.width = 1 + static_cast<int>(rng() % 50);
  }
  if (band || rng() % 3 == 0) {  // a multiple of 8
    c.channels = 8 * (1 + static_cast<int>(rng() % 5));
  } else {
    c.channels = 1 + static_cast<int>(rng() % 40);
  }
  c.misaligned = !band && rng() % 8 == 0;
  c.band = band || (!c.misaligned && band_supported(problem_of(c), model_dtype(c.dtype)) && rng() % 2 == 0);
  return c;
}

int main(int argc, char** argv) {
  register_shared(smem, sizeof(smem), "depthwise smem");
  return run_harness(argc, argv,
                     "CASE: DTYPE,ACT,B,H,W,C,K[,misaligned][,band] (DTYPE f32|f16|bf16, ACT gelu|relu, "
                     "1 <= K <= 31;\n      band: the band kernel, f16|bf16, K <= 9, C % 8 == 0, not misaligned)\n",
                     kFixedCases, parse_case, format_case, random_case, run_any_case);
}
