// Host emulation test of the head CUDA kernels (csrc/kernels/head.cu): the global average pool
// (head_pool_kernel, 16-byte and element-wise loads) and the classifier (head_classifier_kernel,
// warp butterfly reductions with __shfl_xor_sync), for machines without a GPU.
// tests/test_cuda_emulation.py builds and runs it; by hand, from the repository root:
//
//   nvcc -std=c++17 -Xcompiler -fno-strict-aliasing -I csrc/kernels \
//       tests/cuda_emulation/head_host.cu -o head_host
//   ./head_host                          # the fixed case list below
//   ./head_host bf16,3,49,24,10 f32,2,7,5,3,misaligned   # chosen cases
//   ./head_host --random 100 7           # 100 random cases from seed 7
//
// A case is DTYPE,B,HW,C,N[,misaligned]: tokens x [B, HW, C] of DTYPE (f32 | f16 | bf16), a
// classifier weight [N, C] of DTYPE, fp32 bias [N]; "misaligned" offsets every tensor pointer by one
// element (which forces the element-wise pool). C may be 0 (the pool is not launched; out = bias).
//
// How it works: emulation.h compiles head.cu as host code (its launcher is not used: `<<<>>>` does
// not exist there) and runs each CTA's 256 threads as std::threads; __shfl_xor_sync is a collective
// of the warp's 32 lanes. The launches mirror launch_head: the vector-pool condition, the grids
// (B, cdiv(C, 64 | 32)) and (cdiv(B, 8), cdiv(N, 32)), pool then classifier. Checks, per case, with
// the CTAs of both kernels run in increasing, then in decreasing order:
//   - pooled [B, C] (fp32) against the fp64 mean of the same inputs, within one fp32 unit at |mean|
//     plus 1.2e-7 * HW * mean|x| (about 2 units of fp32 roundoff per token: any summation order);
//   - out [B, N] (DTYPE) against the fp64 dot product of the kernel's own pooled (so the classifier
//     is checked on its own) with the weight, plus bias, within one unit of DTYPE at |out| plus
//     1.2e-7 * (C + 1) * (sum_c |pooled * w| + |bias|);
//   - pooled and out start as a NaN bit pattern (unwritten outputs are reported); every tensor has
//     NaN guards, then inaccessible pages: a read just outside a tensor poisons a result, one
//     further faults and is reported even if it feeds no output (say, an unclamped row); writes
//     outside an output are reported; the pool's shared memory is poisoned before each CTA;
//   - a __syncthreads() or shuffle that some thread or lane of it does not reach is reported.
#include "emulation.h"

// head.cu is a translation unit, not a header: its launcher head() dispatches to launch_head, whose
// `kernel<<<...>>>` launches do not compile as host code. With dispatch_dtype (common.cuh) out of
// the way, head() compiles to a stub and launch_head is never instantiated; the kernels are intact.
#include "common.cuh"
#define dispatch_dtype(...) cudaErrorNotSupported
#include "head.cu"
#undef dispatch_dtype

using namespace convmixer_fast;
using namespace convmixer_fast::head_detail;
using namespace emulation;

struct Case {
  DTypeName dtype;
  int batch, hw, channels, classes;
  bool misaligned;
};

std::string format_case(const Case& c) {
  return format("%s,%d,%d,%d,%d%s", dtype_text(c.dtype), c.batch, c.hw, c.channels, c.classes,
                c.misaligned ? ",misaligned" : "");
}

bool parse_case(const std::vector<std::string>& f, Case& c) {
  c.misaligned = f.size() == 6 && f[5] == "misaligned";
  return (f.size() == 5 || c.misaligned) && parse_dtype(f[0], c.dtype) && parse_int(f[1], 1, c.batch) &&
         parse_int(f[2], 1, c.hw) && parse_int(f[3], 0, c.channels) && parse_int(f[4], 1, c.classes);
}

// The fixed list: every grid edge of both kernels, both pool paths in each dtype.
const char* const kFixedCases[] = {
    "f32,1,1,1,1",          // the smallest head
    "bf16,2,1024,64,10",    // the model's 32 x 32 tokens: 32 token rows per thread (16-byte pool)
    "f16,3,49,24,10",       // 16-byte pool, one channel block past C (24 of 64)
    "f32,5,7,36,33",        // fp32 16-byte pool; N = 33: a second class block with one class
    "bf16,17,5,13,70",      // element-wise pool (C % 8 != 0); 3 image blocks, the last with 1 image
    "f16,9,9,40,1,misaligned",   // element-wise pool (misaligned x), N = 1
    "f32,1,100,130,3",      // element-wise fp32 pool (C % 4 != 0), 5 channel blocks
    "bf16,2,33,136,5",      // 16-byte pool, 3 channel blocks, the last with 8 channels
    "f32,8,300,8,40",       // B = 8: exactly one image block; HW not a multiple of 32 or 8
    "f16,1,2,1000,7",       // 16 channel blocks, 2 tokens (most token rows are idle)
    "bf16,3,4,64,129",      // N = 129: 5 class blocks, warps of the last one past N return
    "f32,2,3,0,5",          // C = 0: no pool, out = bias
    "bf16,2,6,3,2,misaligned",  // element-wise pool of a 16-bit dtype, C < one warp's channels
};

// The tensors of a case, random values between guards.
template <typename T>
struct CaseTensors {
  GuardedBuffer<T> x, weight;
  OutputBuffer<T> out;
  GuardedBuffer<float> bias;
  OutputBuffer<float> pooled;
  CaseTensors(const Case& c, unsigned seed)
      : x("x", int64_t{c.batch} * c.hw * c.channels, c.channels + 8, nan_of<T>(), c.misaligned),
        weight("weight", int64_t{c.classes} * c.channels, c.channels + 8, nan_of<T>(), c.misaligned),
        out("out", int64_t{c.batch} * c.classes, c.classes + 8, c.misaligned),
        bias("bias", c.classes, c.classes, NAN, false),
        pooled("pooled", int64_t{c.batch} * c.channels, c.channels + 8, c.misaligned) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = round_to<T>(uniform(rng));
    for (int64_t i = 0; i < weight.size(); ++i) weight.data()[i] = round_to<T>(0.3f * uniform(rng));
    for (int i = 0; i < c.classes; ++i) bias.data()[i] = 0.5f * uniform(rng);
  }
};

// fp64 mean of the tokens of each (image, channel).
template <typename T>
Expected pooled_reference(const Case& c, const CaseTensors<T>& t) {
  Expected expected(int64_t{c.batch} * c.channels);
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int ch = 0; ch < c.channels; ++ch) {
      double sum = 0, sum_abs = 0;
      for (int token = 0; token < c.hw; ++token) {
        const double v = as_double(t.x.data()[(b * c.hw + token) * c.channels + ch]);
        sum += v;
        sum_abs += std::fabs(v);
      }
      const double mean = sum / c.hw;
      expected.value[b * c.channels + ch] = mean;
      expected.tolerance[b * c.channels + ch] = ulp<float>(mean) + fp32_sum_error(c.hw, sum_abs) / c.hw;
    }
  }
  return expected;
}

// fp64 logits from the kernel's pooled values (as it wrote them).
template <typename T>
Expected logits_reference(const Case& c, const CaseTensors<T>& t) {
  Expected expected(int64_t{c.batch} * c.classes);
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t n = 0; n < c.classes; ++n) {
      const double bias = t.bias.data()[n];
      double acc = bias, sum_abs = std::fabs(bias);
      for (int ch = 0; ch < c.channels; ++ch) {
        const double term = double{t.pooled.data()[b * c.channels + ch]} *
                            as_double(t.weight.data()[n * c.channels + ch]);
        acc += term;
        sum_abs += std::fabs(term);
      }
      expected.value[b * c.classes + n] = acc;
      expected.tolerance[b * c.classes + n] = ulp<T>(acc) + fp32_sum_error(c.channels + 1, sum_abs);
    }
  }
  return expected;
}

template <typename T, int kVec>
void run_pool(const Case& c, CaseTensors<T>& t, bool reverse_order) {
  const dim3 grid(static_cast<unsigned>(c.batch),
                  static_cast<unsigned>(ceil_div(c.channels, PoolShape<T, kVec>::kChannelsPerBlock)));
  const T* x = t.x.data();
  float* pooled = t.pooled.data();
  launch(grid, dim3(kPoolThreads), reverse_order,
         [&] { head_pool_kernel<T, kVec>(x, pooled, c.hw, c.channels); });
}

template <typename T>
bool run_case(const Case& c, unsigned seed) {
  CaseTensors<T> t(c, seed);
  const Expected pooled_expected = pooled_reference(c, t);
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  // As launch_head decides.
  const bool vector = c.channels % kVec == 0 && reinterpret_cast<uintptr_t>(t.x.data()) % 16 == 0;
  OutputCheck check;
  if (vector != (c.channels % kVec == 0 && !c.misaligned))
    check.problem("  harness: x not 16-byte aligned as intended\n", nullptr);
  for (const bool reverse_order : {false, true}) {
    const char* order = reverse_order ? "decreasing" : "increasing";
    t.pooled.fill(unwritten<float>());
    t.out.fill(unwritten<T>());
    if (c.channels > 0) {
      if (vector) run_pool<T, kVec>(c, t, reverse_order);
      else run_pool<T, 1>(c, t, reverse_order);
    }
    const dim3 grid(static_cast<unsigned>(ceil_div(c.batch, kImagesPerWarp)),
                    static_cast<unsigned>(ceil_div(c.classes, kClassesPerBlock)));
    const float* pooled = t.pooled.data();
    const T* weight = t.weight.data();
    const float* bias = t.bias.data();
    T* out = t.out.data();
    launch(grid, dim3(kClassifierWarps * 32), reverse_order, [&] {
      head_classifier_kernel<T>(pooled, weight, bias, out, c.batch, c.channels, c.classes);
    });
    auto where = [](int row_size) {
      return [row_size](int64_t i) {
        return format("b=%lld, %lld", static_cast<long long>(i / row_size), static_cast<long long>(i % row_size));
      };
    };
    check.compare(t.pooled, pooled_expected, order, where(c.channels));
    check.compare(t.out, logits_reference(c, t), order, where(c.classes));
  }
  return check.print(format_case(c), c.channels == 0 ? "no pool" : vector ? "16-byte pool" : "element-wise pool");
}

Case random_case(std::mt19937& rng) {
  Case c;
  c.dtype = static_cast<DTypeName>(rng() % 3);
  c.batch = 1 + static_cast<int>(rng() % 20);
  c.hw = 1 + static_cast<int>(rng() % (rng() % 4 == 0 ? 1100 : 70));
  c.channels = rng() % 2 ? 8 * static_cast<int>(rng() % 20) : static_cast<int>(rng() % 150);
  c.classes = 1 + static_cast<int>(rng() % 140);
  c.misaligned = rng() % 8 == 0;
  return c;
}

bool run_any_case(const Case& c, unsigned seed) {
  return with_dtype(c.dtype, [&](auto dtype) { return run_case<decltype(dtype)>(c, seed); });
}

int main(int argc, char** argv) {
  register_static_shared("convmixer_fast::head_detail::head_pool_kernel");
  return run_harness(argc, argv, "CASE: DTYPE,B,HW,C,N[,misaligned] (DTYPE f32|f16|bf16; B, HW, N >= 1; C >= 0)\n",
                     kFixedCases, parse_case, format_case, random_case, run_any_case);
}
