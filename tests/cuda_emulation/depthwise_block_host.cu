// Host emulation test of the depthwise-block CUDA kernel (csrc/kernels/depthwise_block.cuh), for
// machines without a GPU. tests/test_cuda_emulation.py builds and runs it; by hand, from the
// repository root:
//
//   nvcc -std=c++17 -I csrc/kernels tests/cuda_emulation/depthwise_block_host.cu -o dw_host
//   ./dw_host                                  # the fixed case list below
//   ./dw_host bf16,gelu,2,32,32,24,9 f32,relu,1,7,21,8,5,misaligned   # chosen cases
//   ./dw_host --random 200 7                   # 200 random cases from seed 7
//
// A case is DTYPE,ACT,B,H,W,C,K[,misaligned]: DTYPE f32 | f16 | bf16, ACT gelu | relu, NHWC tokens
// [B, H, W, C], a K x K kernel; "misaligned" offsets every tensor pointer by one element (which
// forces the element-wise path). Prints one line per case and a summary; exits 1 if any case fails,
// 2 on a bad command line.
//
// How it works. The real kernel header is compiled as host code: macros set before including it
// turn __global__ / __device__ functions into host functions, threadIdx into a thread-local
// variable, blockIdx into a global one, __syncthreads() into a barrier of the block's threads, and
// the kernel's `extern __shared__` array into a global array. A launch runs the grid's CTAs one
// after another; each CTA runs its CUDA threads as concurrent std::threads. The launch arguments
// mirror launch_kernel in the header (tile counts, Params, the vector-path condition). Checks:
//   - every output against an fp64 reference on the same (rounded) inputs, within a tolerance per
//     dtype: one unit in the last place of the output dtype at |y| (the single rounding at the
//     store), plus 1e-6 * (1 + |y|) for the fp32 epilogue, plus 1.2e-7 * k * sum|x * w| * |scale|
//     * 1.2 for the fp32 accumulation (about 2 units of fp32 roundoff per kernel row; the last
//     factor covers the GELU slope);
//   - outputs start as a NaN bit pattern of their own, so an output no CTA wrote is reported as
//     unwritten, not as a wrong value;
//   - shared memory is NaN before each CTA, so reading a value that was never staged poisons the
//     result; the tensors have NaN guard elements on both sides, so reads outside a tensor poison
//     the result and writes outside the output are reported;
//   - the grid runs twice, CTAs in increasing and in decreasing order, so an output written by two
//     CTAs (overlapping right-anchored strips) must be right whichever CTA writes it last;
//   - a __syncthreads() that some thread of the CTA never reaches (it returned) is reported and
//     ends the run instead of hanging.
// What this cannot see: anything the host does not model (warp scheduling and divergence, the GPU
// memory model, bank conflicts, alignment faults, register limits, performance).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

// ---- CUDA execution model on the host --------------------------------------------------------
thread_local uint3 emulated_thread_idx;  // threadIdx of the calling std::thread
uint3 emulated_block_idx;                // blockIdx of the CTA being run (one at a time)

// __syncthreads() for the CTA being run: all its threads meet here. A barrier that can no longer
// complete because some threads returned from the kernel is a kernel bug on a GPU (a hang or
// undefined behaviour): it is reported and the program exits.
class BlockBarrier {
 public:
  void start_block(int threads) {
    std::lock_guard<std::mutex> lock(mutex_);
    threads_ = threads;
    arrived_ = 0;
    exited_ = 0;
  }
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int generation = generation_;
    if (++arrived_ == threads_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    fail_if_stuck();
    cv_.wait(lock, [&] { return generation_ != generation; });
  }
  void thread_exited() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++exited_;
    fail_if_stuck();
  }

 private:
  void fail_if_stuck() const {
    if (arrived_ > 0 && arrived_ + exited_ == threads_) {
      std::printf("FAIL: __syncthreads() waits for %d threads of block (%u, %u) that returned\n",
                  exited_, emulated_block_idx.x, emulated_block_idx.y);
      std::fflush(stdout);
      std::_Exit(1);
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  int threads_ = 0, arrived_ = 0, exited_ = 0, generation_ = 0;
};
BlockBarrier block_barrier;

#undef __global__
#define __global__ __host__
#undef __device__
#define __device__ __host__
#undef __shared__
#define __shared__
#undef __launch_bounds__
#define __launch_bounds__(...)
#define threadIdx emulated_thread_idx
#define blockIdx emulated_block_idx
#define __syncthreads() block_barrier.arrive_and_wait()

#include "depthwise_block.cuh"

#undef threadIdx
#undef blockIdx
#undef __syncthreads

using namespace convmixer_fast;
using namespace convmixer_fast::depthwise_detail;

// The kernel's `extern __shared__ float4 smem[]`: twice what the largest CTA needs (99,936 bytes at
// runtime k = 31), so a read past a CTA's own allocation finds NaN too.
constexpr size_t kSharedMemoryBytes = 200 * 1024;
namespace convmixer_fast::depthwise_detail {
float4 smem[kSharedMemoryBytes / sizeof(float4)];
}

// ---- dtypes ----------------------------------------------------------------------------------
template <typename T>
struct DTypeInfo;
template <>
struct DTypeInfo<float> {
  static constexpr int kMantissaBits = 24;   // with the implicit bit
  static constexpr int kMinUlpExponent = -149;  // the smallest subnormal is 2^kMinUlpExponent
  using Bits = uint32_t;
  static constexpr Bits kUnwritten = 0x7fc0deadu;  // a quiet NaN no arithmetic produces here
};
template <>
struct DTypeInfo<__half> {
  static constexpr int kMantissaBits = 11;
  static constexpr int kMinUlpExponent = -24;
  using Bits = uint16_t;
  static constexpr Bits kUnwritten = 0x7eadu;
};
template <>
struct DTypeInfo<__nv_bfloat16> {
  static constexpr int kMantissaBits = 8;
  static constexpr int kMinUlpExponent = -133;
  using Bits = uint16_t;
  static constexpr Bits kUnwritten = 0x7fedu;
};

// printf into a std::string.
template <typename... Args>
std::string format(const char* pattern, Args... args) {
  char text[256];
  std::snprintf(text, sizeof(text), pattern, args...);
  return text;
}

template <typename T>
typename DTypeInfo<T>::Bits bits_of(T value) {
  typename DTypeInfo<T>::Bits bits;
  static_assert(sizeof(bits) == sizeof(T), "");
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(typename DTypeInfo<T>::Bits bits) {
  T value;
  std::memcpy(static_cast<void*>(&value), &bits, sizeof(T));
  return value;
}

// ---- test cases ------------------------------------------------------------------------------
enum class DTypeName { kF32, kF16, kBF16 };

struct Case {
  DTypeName dtype;
  Activation act;
  int batch, height, width, channels, k;
  bool misaligned;
};

std::string format_case(const Case& c) {
  static const char* const kDTypes[] = {"f32", "f16", "bf16"};
  return format("%s,%s,%d,%d,%d,%d,%d%s", kDTypes[static_cast<int>(c.dtype)],
                c.act == Activation::kGelu ? "gelu" : "relu", c.batch, c.height, c.width,
                c.channels, c.k, c.misaligned ? ",misaligned" : "");
}

// Parses DTYPE,ACT,B,H,W,C,K[,misaligned] (exactly as format_case writes it); false if malformed
// or out of the kernel's range.
bool parse_case(const char* text, Case& c) {
  char dtype[8] = {}, act[8] = {}, flag[16] = {};
  const int fields = std::sscanf(text, "%7[^,],%7[^,],%d,%d,%d,%d,%d,%15s", dtype, act, &c.batch,
                                 &c.height, &c.width, &c.channels, &c.k, flag);
  if (fields != 7 && !(fields == 8 && std::strcmp(flag, "misaligned") == 0)) return false;
  c.misaligned = fields == 8;
  if (std::strcmp(dtype, "f32") == 0) c.dtype = DTypeName::kF32;
  else if (std::strcmp(dtype, "f16") == 0) c.dtype = DTypeName::kF16;
  else if (std::strcmp(dtype, "bf16") == 0) c.dtype = DTypeName::kBF16;
  else return false;
  if (std::strcmp(act, "gelu") == 0) c.act = Activation::kGelu;
  else if (std::strcmp(act, "relu") == 0) c.act = Activation::kRelu;
  else return false;
  return c.batch >= 1 && c.height >= 1 && c.width >= 1 && c.channels >= 1 && c.k >= 1 &&
         c.k <= kMaxKernelSize && format_case(c) == text;
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
};

// ---- tensors with guards ---------------------------------------------------------------------
// A tensor of n elements between two guards of at least `guard` poison elements. data() is 16-byte
// aligned, or one element past that when misaligned.
template <typename T>
class GuardedBuffer {
 public:
  GuardedBuffer(int64_t n, int64_t guard, T poison, bool misaligned)
      : guard_((guard + 15) / 16 * 16),  // 16 elements are a multiple of 16 bytes for every T
        storage_(n + 2 * guard_ + 1, poison),
        offset_(guard_ + (misaligned ? 1 : 0)),
        n_(n) {}
  T* data() { return storage_.data() + offset_; }
  void fill(T value) { std::fill(storage_.begin(), storage_.end(), value); }
  // Whether every element outside [data(), data() + n) still holds `poison`.
  bool guards_hold(T poison) const {
    for (int64_t i = 0; i < static_cast<int64_t>(storage_.size()); ++i) {
      const bool outside = i < offset_ || i >= offset_ + n_;
      if (outside && std::memcmp(&storage_[i], &poison, sizeof(T)) != 0) return false;
    }
    return true;
  }

 private:
  int64_t guard_;
  std::vector<T> storage_;
  int64_t offset_, n_;
};

// ---- one emulated launch -----------------------------------------------------------------------
// Runs every CTA of the launch launch_kernel<T, kK, kAct> would make, in increasing or decreasing
// block order.
template <typename T, int kK, Activation kAct>
void run_grid(const Params<T>& params, int batch, int64_t blocks_per_image, bool reverse_order) {
  using Cfg = TileConfig<kK>;
  const size_t shared_bytes = smem_bytes(make_geometry<kK>(params.kernel_size));
  if (shared_bytes > kSharedMemoryBytes) {
    std::printf("FAIL: the kernel needs %zu bytes of shared memory, the emulation has %zu\n",
                shared_bytes, kSharedMemoryBytes);
    std::exit(1);
  }
  float* shared = reinterpret_cast<float*>(smem);
  for (int image = 0; image < batch; ++image) {
    for (int64_t i = 0; i < blocks_per_image; ++i) {
      const int64_t block = reverse_order ? blocks_per_image - 1 - i : i;
      std::fill(shared, shared + kSharedMemoryBytes / sizeof(float),
                std::numeric_limits<float>::quiet_NaN());
      emulated_block_idx =
          make_uint3(static_cast<unsigned>(block), static_cast<unsigned>(image), 0);
      block_barrier.start_block(Cfg::kThreads);
      std::vector<std::thread> threads;
      threads.reserve(Cfg::kThreads);
      for (int t = 0; t < Cfg::kThreads; ++t) {
        threads.emplace_back([&params, t] {
          emulated_thread_idx = make_uint3(static_cast<unsigned>(t), 0, 0);
          depthwise_block_kernel<T, kK, kAct>(params);
          block_barrier.thread_exited();
        });
      }
      for (std::thread& thread : threads) thread.join();
    }
  }
}

// ---- one case ----------------------------------------------------------------------------------
// The tensors of a case, random values between NaN guards.
template <typename T>
struct CaseTensors {
  GuardedBuffer<T> x, weight, out;
  GuardedBuffer<float> bias, scale, shift;
  CaseTensors(const Case& c, unsigned seed)
      : x(elements(c), image_row(c), input_poison(), c.misaligned),
        weight(taps(c), static_cast<int64_t>(c.k) * c.channels, input_poison(), c.misaligned),
        out(elements(c), image_row(c), unwritten(), c.misaligned),
        bias(c.channels, c.channels, NAN, false),
        scale(c.channels, c.channels, NAN, false),
        shift(c.channels, c.channels, NAN, false) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int64_t i = 0; i < elements(c); ++i) x.data()[i] = from_float<T>(uniform(rng));
    for (int64_t i = 0; i < taps(c); ++i) weight.data()[i] = from_float<T>(0.3f * uniform(rng));
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
  static T input_poison() { return from_float<T>(NAN); }
  static T unwritten() { return from_bits<T>(DTypeInfo<T>::kUnwritten); }
};

// The expected outputs (fp64 on the same rounded inputs) and the tolerance of each.
struct Expected {
  std::vector<double> value, tolerance;
};

template <typename T, Activation kAct>
Expected reference(const Case& c, CaseTensors<T>& t) {
  const int H = c.height, W = c.width, C = c.channels, k = c.k, pad = (k - 1) / 2;
  const T* x = t.x.data();
  const T* weight = t.weight.data();
  auto pixel = [&](int b, int h, int w) { return ((static_cast<int64_t>(b) * H + h) * W + w) * C; };
  Expected expected;
  expected.value.resize(CaseTensors<T>::elements(c));
  expected.tolerance.resize(CaseTensors<T>::elements(c));
  for (int b = 0; b < c.batch; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int w = 0; w < W; ++w) {
        for (int ch = 0; ch < C; ++ch) {
          double acc = 0, sum_abs = 0;
          for (int i = 0; i < k; ++i) {
            for (int j = 0; j < k; ++j) {
              const int ih = h + i - pad, iw = w + j - pad;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              const double term = static_cast<double>(to_float(x[pixel(b, ih, iw) + ch])) *
                                  to_float(weight[(static_cast<int64_t>(i) * k + j) * C + ch]);
              acc += term;
              sum_abs += std::fabs(term);
            }
          }
          const double v = acc + t.bias.data()[ch], scale = t.scale.data()[ch];
          const double activated = kAct == Activation::kGelu
                                       ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))
                                       : std::max(v, 0.0);
          const double y =
              to_float(x[pixel(b, h, w) + ch]) + scale * activated + t.shift.data()[ch];
          int exponent;
          std::frexp(y, &exponent);  // 2^(exponent - 1) <= |y| < 2^exponent
          const double ulp = std::ldexp(1.0, std::max(exponent - DTypeInfo<T>::kMantissaBits,
                                                      DTypeInfo<T>::kMinUlpExponent));
          const double accumulation = 1.2e-7 * k * sum_abs * std::fabs(scale) * 1.2;
          const int64_t index = pixel(b, h, w) + ch;
          expected.value[index] = y;
          expected.tolerance[index] = ulp + 1e-6 * (1.0 + std::fabs(y)) + accumulation;
        }
      }
    }
  }
  return expected;
}

// Runs one case (both block orders) and prints its line, then details of what went wrong.
template <typename T, int kK, Activation kAct>
bool run_case(const Case& c, unsigned seed) {
  using Cfg = TileConfig<kK>;
  const int H = c.height, W = c.width, C = c.channels;
  CaseTensors<T> t(c, seed);
  const Expected expected = reference<T, kAct>(c, t);

  // The launch arguments, as launch_kernel computes them.
  const Geometry g = make_geometry<kK>(c.k);
  const int64_t tiles_h = ceil_div(H, Cfg::kTileH), tiles_w = ceil_div(W, Cfg::kStripW);
  const int64_t channel_blocks = ceil_div(C, Cfg::kBlockC);
  Params<T> params;
  params.x = t.x.data();
  params.weight = t.weight.data();
  params.bias = t.bias.data();
  params.scale = t.scale.data();
  params.shift = t.shift.data();
  params.out = t.out.data();
  params.height = H;
  params.width = W;
  params.channels = C;
  params.kernel_size = g.k;
  params.tiles_w = static_cast<int>(tiles_w);
  params.channel_blocks = static_cast<int>(channel_blocks);
  params.vector_io = C % vector_width<T>() == 0 && aligned16(params.x) &&
                     aligned16(params.weight) && aligned16(params.out);

  const std::string name = format_case(c);
  if (params.vector_io != (C % vector_width<T>() == 0 && !c.misaligned)) {
    std::printf("FAIL  %-34s harness: buffers not 16-byte aligned as intended\n", name.c_str());
    return false;
  }

  bool ok = true;
  int64_t wrong = 0, unwritten = 0;
  double worst_ratio = 0;  // max over written outputs of |error| / tolerance
  std::string details;     // printed under the case's line
  for (const bool reverse_order : {false, true}) {
    const char* order = reverse_order ? "decreasing" : "increasing";
    t.out.fill(CaseTensors<T>::unwritten());
    run_grid<T, kK, kAct>(params, c.batch, tiles_h * tiles_w * channel_blocks, reverse_order);
    if (!t.out.guards_hold(CaseTensors<T>::unwritten())) {
      details += format("  writes outside the output tensor (%s block order)\n", order);
      ok = false;
    }
    for (int64_t index = 0; index < CaseTensors<T>::elements(c); ++index) {
      const T got = t.out.data()[index];
      const bool not_written = bits_of(got) == DTypeInfo<T>::kUnwritten;
      const double error = std::fabs(to_float(got) - expected.value[index]);
      if (!not_written) {
        const double ratio = std::isnan(error) ? INFINITY : error / expected.tolerance[index];
        worst_ratio = std::max(worst_ratio, ratio);
        if (ratio <= 1.0) continue;
      }
      ok = false;
      if (wrong + unwritten < 5) {
        const int64_t pixel = index / C;
        const std::string got_text =
            not_written ? "never written" : format("got %.6g", to_float(got));
        details += format("  b=%lld h=%lld w=%lld c=%lld: %s, want %.6g (tolerance %.2g; %s block "
                          "order)\n",
                          static_cast<long long>(pixel / (static_cast<int64_t>(H) * W)),
                          static_cast<long long>(pixel / W % H), static_cast<long long>(pixel % W),
                          static_cast<long long>(index % C), got_text.c_str(),
                          expected.value[index], expected.tolerance[index], order);
      }
      ++(not_written ? unwritten : wrong);
    }
  }
  const std::string counts =
      wrong + unwritten > 0
          ? format(", %lld wrong, %lld unwritten (of %lld in two block orders)",
                   static_cast<long long>(wrong), static_cast<long long>(unwritten),
                   static_cast<long long>(2 * CaseTensors<T>::elements(c)))
          : "";
  std::printf("%-4s  %-34s %-14s %-15s max error/tolerance %.2f%s\n%s", ok ? "ok" : "FAIL",
              name.c_str(), Cfg::kGeneric ? "runtime k" : "compile-time k",
              params.vector_io ? "16-byte io" : "element-wise io", worst_ratio, counts.c_str(),
              details.c_str());
  return ok;
}

// Dispatches a case to its kernel instantiation, as launch_depthwise_block does.
template <typename T, Activation kAct>
bool run_case_for_k(const Case& c, unsigned seed) {
  switch (c.k) {
    case 3: return run_case<T, 3, kAct>(c, seed);
    case 5: return run_case<T, 5, kAct>(c, seed);
    case 7: return run_case<T, 7, kAct>(c, seed);
    case 9: return run_case<T, 9, kAct>(c, seed);
    default: return run_case<T, 0, kAct>(c, seed);
  }
}

template <typename T>
bool run_case_for_act(const Case& c, unsigned seed) {
  return c.act == Activation::kGelu ? run_case_for_k<T, Activation::kGelu>(c, seed)
                                    : run_case_for_k<T, Activation::kRelu>(c, seed);
}

bool run_any_case(const Case& c, unsigned seed) {
  switch (c.dtype) {
    case DTypeName::kF32: return run_case_for_act<float>(c, seed);
    case DTypeName::kF16: return run_case_for_act<__half>(c, seed);
    case DTypeName::kBF16: return run_case_for_act<__nv_bfloat16>(c, seed);
  }
  return false;
}

// A random case: any k in 1..31, shapes up to 40 x 50 with W often near a multiple of 16.
Case random_case(std::mt19937& rng) {
  Case c;
  c.dtype = static_cast<DTypeName>(rng() % 3);
  c.act = rng() % 2 ? Activation::kRelu : Activation::kGelu;
  c.k = 1 + static_cast<int>(rng() % kMaxKernelSize);
  c.batch = 1 + static_cast<int>(rng() % 2);
  c.height = 1 + static_cast<int>(rng() % 40);
  if (rng() % 3 == 0) {  // 15 .. 49, next to a multiple of 16
    const int strips = 1 + static_cast<int>(rng() % 3);
    c.width = 16 * strips + static_cast<int>(rng() % 3) - 1;
  } else {
    c.width = 1 + static_cast<int>(rng() % 50);
  }
  if (rng() % 3 == 0) {  // a multiple of 8
    c.channels = 8 * (1 + static_cast<int>(rng() % 5));
  } else {
    c.channels = 1 + static_cast<int>(rng() % 40);
  }
  c.misaligned = rng() % 8 == 0;
  return c;
}

int usage(const char* program) {
  std::printf(
      "usage: %s                       run the fixed case list\n"
      "       %s CASE...               run these cases: DTYPE,ACT,B,H,W,C,K[,misaligned]\n"
      "                                (DTYPE f32|f16|bf16, ACT gelu|relu, 1 <= K <= %d)\n"
      "       %s --random COUNT [SEED] run COUNT random cases\n",
      program, program, kMaxKernelSize, program);
  return 2;
}

int main(int argc, char** argv) {
  std::vector<Case> cases;
  if (argc >= 2 && std::strcmp(argv[1], "--random") == 0) {
    if (argc < 3 || argc > 4) return usage(argv[0]);
    std::mt19937 rng(argc == 4 ? static_cast<unsigned>(std::strtoul(argv[3], nullptr, 10)) : 7u);
    const int count = std::atoi(argv[2]);
    for (int i = 0; i < count; ++i) cases.push_back(random_case(rng));
  } else if (argc >= 2) {
    for (int i = 1; i < argc; ++i) {
      Case c;
      if (!parse_case(argv[i], c)) {
        std::printf("bad case '%s'\n", argv[i]);
        return usage(argv[0]);
      }
      cases.push_back(c);
    }
  } else {
    for (const char* text : kFixedCases) {
      Case c;
      if (!parse_case(text, c)) {
        std::printf("bad fixed case '%s'\n", text);
        return 2;
      }
      cases.push_back(c);
    }
  }

  int failed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    // Inputs depend on the case alone (seeded by a hash of its text), so a case reproduces on its
    // own, from any list.
    const std::string text = format_case(cases[i]);
    uint32_t seed = 2166136261u;  // FNV-1a
    for (const char ch : text) seed = (seed ^ static_cast<unsigned char>(ch)) * 16777619u;
    if (!run_any_case(cases[i], seed)) ++failed;
    std::fflush(stdout);
  }
  std::printf("%s: %zu cases, %d failed\n", failed ? "FAILED" : "PASSED", cases.size(), failed);
  return failed ? 1 : 0;
}
