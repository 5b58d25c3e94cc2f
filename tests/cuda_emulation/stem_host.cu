// Host emulation test of the stem CUDA kernel (csrc/kernels/stem.cuh: patchify + GEMM + epilogue,
// reading the image through 4 strides), for machines without a GPU: the fp32 path (register-blocked
// FMA) and the fp16 / bf16 path (tensor cores through WMMA, emulated below).
// tests/test_cuda_emulation.py builds and runs it; by hand, from the repository root:
//
//   nvcc -std=c++17 -Xcompiler -fno-strict-aliasing -I csrc/kernels \
//       tests/cuda_emulation/stem_host.cu -o stem_host
//   ./stem_host                                       # the fixed case list below
//   ./stem_host bf16,f32,gelu,2,3,28,28,136,4,nhwc    # chosen cases
//   ./stem_host --random 50 7                         # 50 random cases from seed 7
//
// A case is DTYPE,IMAGE,ACT,B,CIN,H,W,C,P,LAYOUT[,misaligned]: model dtype DTYPE (weight, out) and
// image dtype IMAGE (f32 | f16 | bf16), ACT gelu | relu, image [B, CIN, H, W], weight [C, CIN, P, P],
// out [B, H/P, W/P, C]. LAYOUT is how the image lies in memory (its 4 strides):
//   nchw   contiguous;                       nhwc  channels_last;
//   view   image[:, 1:, 1:H+1, 2:W+2] of an NCHW [B, CIN+1, H+1, W+2] tensor whose other elements
//          are NaN (reading outside the view poisons the result);
//   bcast  one image expanded over the batch (batch stride 0).
// "misaligned" offsets the image, weight and out pointers by one element (out misaligned forces
// the element-wise stores of the 16-bit path).
//
// How it works: emulation.h compiles stem.cuh as host code; each CTA's 256 threads are std::threads.
// The launch mirrors convmixer_fast::stem (stem.cu): StemParams, the 1-D grid of
// cdiv(M, 128) * cdiv(C, 128) CTAs, the vector-store condition. Checks, with the CTAs in increasing
// and then decreasing order:
//   - out against an fp64 reference on the same inputs (the image rounded to DTYPE, as the kernel
//     and the reference op do), within one unit of DTYPE at |y| plus 1e-6 * (1 + |y|) (fp32
//     epilogue) plus 1.2e-7 * K * sum_k |A * w| * |scale| * 1.2 (fp32 accumulation over
//     K = CIN * P * P, about 2 units of fp32 roundoff per term, whatever the order: it also covers
//     tensor-core accumulation);
//   - out starts as a NaN bit pattern (unwritten outputs are reported); every tensor has NaN
//     guards, then inaccessible pages (a read just outside poisons a result, one further faults
//     and is reported, writes outside out are reported); the kernel's shared memory (tiles,
//     staging, patch origins) is poisoned before each CTA;
//   - every __syncthreads() / __syncwarp() / WMMA call is reached by all the threads / lanes it
//     needs, at the same call (else FAIL).
//
// WMMA on the host. stem.cuh touches fragments only through the API (fill_fragment,
// load_matrix_sync, mma_sync, store_matrix_sync; never frag.x[i] or num_elements), so the results
// do not depend on how a fragment's elements are spread over the lanes (the WMMA layout is
// unspecified anyway). Here every lane holds the whole 16 x 16 tile (the `tile` member: a kernel
// that indexes fragment elements does not compile), and every *_sync call is a collective of the
// warp's 32 lanes: the last lane to arrive checks that all lanes passed the same pointer, ldm and
// layout (and, for mma / store, hold the same fragments), that the pointer is 256-bit aligned and
// ldm a multiple of 16 bytes. Then mma_sync computes the product once for the warp (fp32 FMAs in k
// order; tensor cores accumulate in another order and precision, within the tolerance above);
// load_matrix_sync has each lane read the tile on its own, and store_matrix_sync each lane write
// its share of it (every 32nd element), as lanes do on a GPU, so a lane that reads the others'
// elements without a __syncwarp() in between can find stale values. Not checked: the real
// per-lane layout (only code that indexes fragments needs it).
#include "emulation.h"

// ---- nvcuda::wmma on the host (the API subset stem.cuh uses, m16n16k16) -------------------------
#define __CUDA_MMA_H__  // keeps the device-only <mma.h> out: stem.cuh gets the emulation below

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr bool kColMajor = std::is_same_v<Layout, col_major>;
  T tile[kRows * kCols];  // the whole tile, row-major: [kRows, kCols]
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const T& value) {
  std::fill(std::begin(f.tile), std::end(f.tile), value);
}

// The checks every matrix access of a collective makes, once for the warp.
template <typename Slot>
void check_matrix_access(void** payload, const char* what, const emulation::Site& site, size_t element_bytes) {
  const Slot& first = *static_cast<const Slot*>(payload[0]);
  const std::string where = emulation::format("%s at %s", what, site.text().c_str());
  for (int lane = 1; lane < 32; ++lane) {
    const Slot& slot = *static_cast<const Slot*>(payload[lane]);
    if (slot.pointer != first.pointer || slot.ldm != first.ldm || slot.col_major != first.col_major)
      emulation::fail(where + emulation::format(": lane %d passes another pointer / ldm / layout than lane 0", lane));
  }
  if (reinterpret_cast<uintptr_t>(first.pointer) % 32 != 0)
    emulation::fail(where + emulation::format(": pointer %p is not 256-bit aligned", first.pointer));
  if (first.ldm * element_bytes % 16 != 0)
    emulation::fail(where + emulation::format(": ldm %u is not a multiple of 16 bytes", first.ldm));
}

// Whether every lane holds the same fragment (the only state API-only code can give them):
// `fragment` is the member of the collective's Slot that points at the lane's fragment.
template <typename Slot, typename Member>
void check_same_fragments(void** payload, Member Slot::*fragment, const char* what, const emulation::Site& site) {
  const auto* first = static_cast<const Slot*>(payload[0])->*fragment;
  for (int lane = 1; lane < 32; ++lane)
    if (std::memcmp((static_cast<const Slot*>(payload[lane])->*fragment)->tile, first->tile, sizeof(first->tile)) != 0)
      emulation::fail(emulation::format("%s at %s: lane %d holds another fragment than lane 0", what,
                                        site.text().c_str(), lane));
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync_at(emulation::Site site, fragment<Use, M, N, K, T, Layout>& f, const T* pointer,
                         unsigned ldm) {
  using Fragment = fragment<Use, M, N, K, T, Layout>;
  struct Slot {
    Fragment* fragment;
    const void* pointer;
    unsigned ldm;
    bool col_major;
  } mine{&f, pointer, ldm, Fragment::kColMajor};
  const char* what = "wmma::load_matrix_sync";
  emulation::cta.warp_collective(what, site, 0xffffffffu, &mine, [&](void** payload, unsigned) {
    check_matrix_access<Slot>(payload, what, site, sizeof(T));
  });
  // Each lane reads the tile when it goes on (as each lane of a GPU loads its own elements).
  for (int r = 0; r < Fragment::kRows; ++r)
    for (int c = 0; c < Fragment::kCols; ++c)
      f.tile[r * Fragment::kCols + c] = Fragment::kColMajor ? pointer[c * ldm + r] : pointer[r * ldm + c];
}

template <typename T>
void mma_sync_at(emulation::Site site, fragment<accumulator, 16, 16, 16, float>& d,
                 const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
                 const fragment<matrix_b, 16, 16, 16, T, col_major>& b,
                 const fragment<accumulator, 16, 16, 16, float>& c) {
  using Accumulator = fragment<accumulator, 16, 16, 16, float>;
  struct Slot {
    Accumulator* d;
    const fragment<matrix_a, 16, 16, 16, T, row_major>* a;
    const fragment<matrix_b, 16, 16, 16, T, col_major>* b;
    const Accumulator* c;
  } mine{&d, &a, &b, &c};
  const char* what = "wmma::mma_sync";
  emulation::cta.warp_collective(what, site, 0xffffffffu, &mine, [&](void** payload, unsigned) {
    check_same_fragments(payload, &Slot::a, what, site);
    check_same_fragments(payload, &Slot::b, what, site);
    check_same_fragments(payload, &Slot::c, what, site);
    Accumulator result;  // D = A B + C, fp32 FMAs in k order
    for (int i = 0; i < 16; ++i) {
      for (int j = 0; j < 16; ++j) {
        float acc = c.tile[i * 16 + j];
        for (int k = 0; k < 16; ++k)
          acc = fmaf(static_cast<float>(a.tile[i * 16 + k]), static_cast<float>(b.tile[k * 16 + j]), acc);
        result.tile[i * 16 + j] = acc;
      }
    }
    for (int lane = 0; lane < 32; ++lane) *static_cast<Slot*>(payload[lane])->d = result;
  });
}

inline void store_matrix_sync_at(emulation::Site site, float* pointer,
                                 const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                                 layout_t layout) {
  using Accumulator = fragment<accumulator, 16, 16, 16, float>;
  struct Slot {
    const Accumulator* fragment;
    const void* pointer;
    unsigned ldm;
    bool col_major;
  } mine{&f, pointer, ldm, layout == mem_col_major};
  const char* what = "wmma::store_matrix_sync";
  emulation::cta.warp_collective(what, site, 0xffffffffu, &mine, [&](void** payload, unsigned) {
    check_matrix_access<Slot>(payload, what, site, sizeof(float));
    check_same_fragments(payload, &Slot::fragment, what, site);
  });
  // Each lane writes its share of the tile (elements e with e % 32 == lane) when it goes on, as
  // lanes of a GPU do: a lane that reads the others' elements before a __syncwarp() may find
  // values they have not written yet.
  const int lane = emulated_linear_thread % 32;
  for (int e = lane; e < 256; e += 32) {
    const int r = e / 16, c = e % 16;
    (mine.col_major ? pointer[c * ldm + r] : pointer[r * ldm + c]) = f.tile[e];
  }
}

}  // namespace wmma
}  // namespace nvcuda

// The *_sync calls carry their call site (the collective pairs the lanes' calls by it).
#define load_matrix_sync(...) load_matrix_sync_at(EMULATION_SITE, __VA_ARGS__)
#define mma_sync(...) mma_sync_at(EMULATION_SITE, __VA_ARGS__)
#define store_matrix_sync(...) store_matrix_sync_at(EMULATION_SITE, __VA_ARGS__)

#include "stem.cuh"

using namespace convmixer_fast;
using namespace convmixer_fast::stem_detail;
using namespace emulation;

// ---- test cases --------------------------------------------------------------------------------
enum class Layout { kNchw, kNhwc, kView, kBcast };
const char* const kLayoutNames[] = {"nchw", "nhwc", "view", "bcast"};

struct Case {
  DTypeName dtype, image_dtype;
  Activation act;
  int batch, in_channels, height, width, channels, patch;
  Layout layout;
  bool misaligned;
};

std::string format_case(const Case& c) {
  return format("%s,%s,%s,%d,%d,%d,%d,%d,%d,%s%s", dtype_text(c.dtype), dtype_text(c.image_dtype),
                activation_text(c.act), c.batch, c.in_channels, c.height, c.width, c.channels, c.patch,
                kLayoutNames[static_cast<int>(c.layout)], c.misaligned ? ",misaligned" : "");
}

bool parse_case(const std::vector<std::string>& f, Case& c) {
  c.misaligned = f.size() == 11 && f[10] == "misaligned";
  if ((f.size() != 10 && !c.misaligned) || !parse_dtype(f[0], c.dtype) || !parse_dtype(f[1], c.image_dtype) ||
      !parse_activation(f[2], c.act))
    return false;
  int* const sizes[] = {&c.batch, &c.in_channels, &c.height, &c.width, &c.channels, &c.patch};
  for (int i = 0; i < 6; ++i)
    if (!parse_int(f[3 + i], 1, *sizes[i])) return false;
  const auto layout = std::find(std::begin(kLayoutNames), std::end(kLayoutNames), f[9]);
  c.layout = static_cast<Layout>(layout - std::begin(kLayoutNames));
  return layout != std::end(kLayoutNames) && c.height >= c.patch && c.width >= c.patch;
}

// The fixed list: both math paths, every image dtype and layout, partial M / N / K tiles.
const char* const kFixedCases[] = {
    // fp32 FMA path. M = 98 (one partial M tile), N = 136 (two N tiles), K = 48 (3 slices).
    "f32,f32,gelu,2,3,28,28,136,4,nchw",
    // M = 128 exactly; then M = 432: 4 M tiles, the last one 48 rows; K = 12 (a partial slice).
    "f32,f32,relu,2,3,32,32,16,4,nhwc",
    "f32,f16,gelu,3,3,24,24,40,2,nhwc",
    "f32,bf16,relu,1,1,5,5,1,1,nchw",            // p = 1, K = 1, N = 1
    "f32,f16,relu,1,4,17,16,130,2,view",         // N = 130: the second N tile has 2 channels; K = 16
    "f32,f32,gelu,2,2,9,10,24,4,bcast,misaligned",
    // fp16 / bf16 WMMA path. M = 147 (2 M tiles) x N = 136 (2 N tiles), 16-byte stores.
    "bf16,f32,relu,3,3,28,28,136,4,nhwc",
    "f16,f16,gelu,1,3,30,29,20,3,view",          // H, W not multiples of p; N % 8 != 0; K = 27
    "bf16,bf16,gelu,2,3,14,14,64,7,nchw",        // p = 7: K = 147 (10 slices, the last partial)
    "f16,f32,relu,2,2,9,10,24,4,bcast",
    "bf16,f16,gelu,1,3,12,12,136,4,nchw,misaligned",  // N % 8 == 0 but out misaligned: element stores
    "f16,bf16,relu,5,3,16,16,8,8,nhwc",          // K = 192 (12 slices), N = 8
    "bf16,f32,gelu,1,3,7,9,16,7,view",           // one token (Hp = Wp = 1)
};

// ---- tensors ---------------------------------------------------------------------------------------
// Element strides, the storage size and the offset of image[0, 0, 0, 0] for a case's layout.
struct ImageLayout {
  int64_t strides[4];
  int64_t storage;
  int64_t offset;
};

ImageLayout image_layout(const Case& c) {
  const int64_t B = c.batch, Cin = c.in_channels, H = c.height, W = c.width;
  switch (c.layout) {
    case Layout::kNhwc: return {{H * W * Cin, 1, W * Cin, Cin}, B * Cin * H * W, 0};
    case Layout::kView: {
      const int64_t Hs = H + 1, Ws = W + 2;  // storage [B, Cin + 1, H + 1, W + 2]
      return {{(Cin + 1) * Hs * Ws, Hs * Ws, Ws, 1}, B * (Cin + 1) * Hs * Ws, Hs * Ws + Ws + 2};
    }
    case Layout::kBcast: return {{0, H * W, W, 1}, Cin * H * W, 0};
    default: return {{Cin * H * W, H * W, W, 1}, B * Cin * H * W, 0};
  }
}

// The tensors of a case, random values between guards.
template <typename T, typename TImage>
struct CaseTensors {
  ImageLayout layout;
  GuardedBuffer<TImage> image;  // the storage; the image starts at layout.offset
  GuardedBuffer<T> weight;
  OutputBuffer<T> out;
  GuardedBuffer<float> bias, scale, shift;
  int64_t M, K;
  CaseTensors(const Case& c, unsigned seed)
      : layout(image_layout(c)),
        image("image", layout.storage, 64, nan_of<TImage>(), c.misaligned),
        weight("weight", int64_t{c.channels} * c.in_channels * c.patch * c.patch, 64, nan_of<T>(), c.misaligned),
        out("out", int64_t{c.batch} * (c.height / c.patch) * (c.width / c.patch) * c.channels, c.channels + 8,
            c.misaligned),
        bias("bias", c.channels, 16, NAN, false),
        scale("scale", c.channels, 16, NAN, false),
        shift("shift", c.channels, 16, NAN, false),
        M(int64_t{c.batch} * (c.height / c.patch) * (c.width / c.patch)),
        K(int64_t{c.in_channels} * c.patch * c.patch) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    const int batches = c.layout == Layout::kBcast ? 1 : c.batch;
    for (int b = 0; b < batches; ++b)  // the view's holes stay NaN
      for (int ci = 0; ci < c.in_channels; ++ci)
        for (int h = 0; h < c.height; ++h)
          for (int w = 0; w < c.width; ++w) image.data()[at(b, ci, h, w)] = round_to<TImage>(uniform(rng));
    const float weight_scale = 1.0f / std::sqrt(static_cast<float>(K));
    for (int64_t i = 0; i < weight.size(); ++i) weight.data()[i] = round_to<T>(weight_scale * uniform(rng));
    for (int i = 0; i < c.channels; ++i) {
      bias.data()[i] = 0.1f * uniform(rng);
      scale.data()[i] = 1.0f + 0.5f * uniform(rng);
      shift.data()[i] = 0.1f * uniform(rng);
    }
  }
  // Storage index of image[b, ci, h, w].
  int64_t at(int64_t b, int64_t ci, int64_t h, int64_t w) const {
    return layout.offset + b * layout.strides[0] + ci * layout.strides[1] + h * layout.strides[2] +
           w * layout.strides[3];
  }
};

// fp64 reference on the image rounded to T (patches.to(weight.dtype) in the reference op).
template <typename T, typename TImage>
Expected reference(const Case& c, const CaseTensors<T, TImage>& t) {
  const int p = c.patch, Hp = c.height / p, Wp = c.width / p, N = c.channels;
  Expected expected(t.M * N);
  std::vector<double> patch(t.K);
  for (int64_t m = 0; m < t.M; ++m) {
    const int64_t b = m / (int64_t{Hp} * Wp), hp = m / Wp % Hp, wp = m % Wp;
    for (int ci = 0; ci < c.in_channels; ++ci)
      for (int di = 0; di < p; ++di)
        for (int dj = 0; dj < p; ++dj)
          patch[(ci * p + di) * p + dj] =
              as_double(round_to<T>(as_double(t.image.data()[t.at(b, ci, hp * p + di, wp * p + dj)])));
    for (int n = 0; n < N; ++n) {
      double acc = 0, sum_abs = 0;
      for (int64_t k = 0; k < t.K; ++k) {
        const double term = patch[k] * as_double(t.weight.data()[n * t.K + k]);
        acc += term;
        sum_abs += std::fabs(term);
      }
      const double scale = t.scale.data()[n];
      const double y = scale * activation_reference(c.act, acc + t.bias.data()[n]) + t.shift.data()[n];
      expected.value[m * N + n] = y;
      expected.tolerance[m * N + n] = epilogue_tolerance<T>(y, fp32_sum_error(t.K, sum_abs), scale);
    }
  }
  return expected;
}

// ---- one case ----------------------------------------------------------------------------------------
template <typename T, typename TImage, Activation kAct>
bool run_case(const Case& c, unsigned seed) {
  CaseTensors<T, TImage> t(c, seed);
  const Expected expected = reference(c, t);

  // The launch arguments, as convmixer_fast::stem computes them.
  const int Hp = c.height / c.patch, Wp = c.width / c.patch;
  StemParams params;
  params.image = t.image.data() + t.layout.offset;
  params.stride_b = t.layout.strides[0];
  params.stride_c = t.layout.strides[1];
  params.stride_h = t.layout.strides[2];
  params.stride_w = t.layout.strides[3];
  params.weight = t.weight.data();
  params.bias = t.bias.data();
  params.scale = t.scale.data();
  params.shift = t.shift.data();
  params.out = t.out.data();
  params.tokens_per_image = int64_t{Hp} * Wp;
  params.M = t.M;
  params.Wp = Wp;
  params.N = c.channels;
  params.K = static_cast<int>(t.K);
  params.patch = c.patch;
  params.patch_area = c.patch * c.patch;
  params.tiles_n = static_cast<int>(ceil_div(c.channels, kBlockN));
  params.vector_store = c.channels % 8 == 0 && reinterpret_cast<uintptr_t>(t.out.data()) % 16 == 0;
  const int64_t blocks = ceil_div(params.M, kBlockM) * params.tiles_n;

  OutputCheck check;
  if (params.vector_store != (c.channels % 8 == 0 && !c.misaligned))
    check.problem("  harness: out not 16-byte aligned as intended\n", nullptr);
  for (const bool reverse_order : {false, true}) {
    t.out.fill(unwritten<T>());
    launch(dim3(static_cast<unsigned>(blocks)), dim3(kThreads), reverse_order,
           [&params] { stem_kernel<T, TImage, kAct>(params); });
    check.compare(t.out, expected, reverse_order ? "decreasing" : "increasing", [&](int64_t i) {
      return format("m=%lld n=%lld", static_cast<long long>(i / c.channels),
                    static_cast<long long>(i % c.channels));
    });
  }
  const bool tensor_cores = TileShape<T>::kTensorCores;
  const char* stores = tensor_cores ? (params.vector_store ? ", 16-byte stores" : ", element stores") : "";
  return check.print(format_case(c), format("%s%s, %lld CTAs", tensor_cores ? "wmma" : "fma", stores,
                                            static_cast<long long>(blocks)));
}

bool run_any_case(const Case& c, unsigned seed) {
  return with_dtype(c.dtype, [&](auto dtype) {
    return with_dtype(c.image_dtype, [&](auto image_dtype) {
      return with_activation(c.act, [&](auto act) {
        return run_case<decltype(dtype), decltype(image_dtype), decltype(act)::value>(c, seed);
      });
    });
  });
}

Case random_case(std::mt19937& rng) {
  Case c;
  c.dtype = static_cast<DTypeName>(rng() % 3);
  c.image_dtype = static_cast<DTypeName>(rng() % 3);
  c.act = rng() % 2 ? Activation::kRelu : Activation::kGelu;
  c.patch = 1 + static_cast<int>(rng() % 8);
  c.in_channels = 1 + static_cast<int>(rng() % 4);
  c.batch = 1 + static_cast<int>(rng() % 3);
  c.height = c.patch + static_cast<int>(rng() % 30);
  c.width = c.patch + static_cast<int>(rng() % 30);
  c.channels = rng() % 2 ? 8 * (1 + static_cast<int>(rng() % 20)) : 1 + static_cast<int>(rng() % 150);
  c.layout = static_cast<Layout>(rng() % 4);
  c.misaligned = rng() % 8 == 0;
  return c;
}

int main(int argc, char** argv) {
  register_static_shared("convmixer_fast::stem_detail::stem_kernel");
  return run_harness(argc, argv,
                     "CASE: DTYPE,IMAGE,ACT,B,CIN,H,W,C,P,LAYOUT[,misaligned] (DTYPE, IMAGE f32|f16|bf16;\n"
                     "      ACT gelu|relu; LAYOUT nchw|nhwc|view|bcast; H, W >= P)\n",
                     kFixedCases, parse_case, format_case, random_case, run_any_case);
}
