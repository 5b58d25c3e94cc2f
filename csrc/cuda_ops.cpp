// Torch glue of the CUDA kernel library (csrc/kernels/kernels.h): the convmixer_fast::cuda_* op
// schemas, their argument checks, device guard, stream and dtype mapping, and registration for the
// CPU and CUDA dispatch keys. Their fake (meta) implementations are Python, in
// convmixer_fast/_cuda_fakes.py (imported as soon as _C loads; set_python_module names it).
//
// Compiled in every build. Without CUDA (a CPU torch, or CONVMIXER_FAST_NO_CUDA) the ops still
// exist and run every argument check, then say that the kernels were not built; with CUDA they run
// the checks, then the kernels. Either way a CPU tensor that passes the checks gets a clear error.
// Checks raise TypeError (dtype) or ValueError (shape, layout, device, value) in Python, naming the
// op, the argument, what was expected and what came.
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef CONVMIXER_FAST_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/kernels.h"
#endif

#ifndef CONVMIXER_FAST_CUDA_STATUS
#define CONVMIXER_FAST_CUDA_STATUS "off: not configured by setup.py"
#endif

namespace convmixer_fast {
namespace {

constexpr int64_t kMaxKernelSize = 31;

// cuda_depthwise_block's `algorithm` names, in the order of kernels.h's DepthwiseAlgorithm values.
constexpr const char* kDepthwiseAlgorithms[] = {"auto", "direct", "band"};

// The position of `name` in kDepthwiseAlgorithms, -1 if it is none of them.
int depthwise_algorithm_index(const std::string& name) {
  for (int i = 0; i < static_cast<int>(std::size(kDepthwiseAlgorithms)); ++i) {
    if (name == kDepthwiseAlgorithms[i]) return i;
  }
  return -1;
}

// "('auto', 'direct', 'band')", for messages.
std::string depthwise_algorithm_names() {
  std::string names;
  for (const char* name : kDepthwiseAlgorithms) names += (names.empty() ? "('" : ", '") + std::string(name) + "'";
  return names + ")";
}

// The dtype as Python spells it ("torch.float32"), so messages match those of ops/_checks.py.
std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "torch.float32";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kDouble: return "torch.float64";
    default: return std::string("torch.") + c10::toString(dtype);
  }
}

// The bytes from a tensor's first element to just past its last, by its strides (all >= 0 in torch):
// a strided view (a cropped image) spans more than nbytes() from its start.
std::pair<const char*, const char*> byte_span(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const auto* start = static_cast<const char*>(t.data_ptr());
  return {start, start + (last + 1) * t.element_size()};
}

// Whether a and b may share bytes: their spans intersect (conservative for interleaved views).
bool may_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto [a_start, a_end] = byte_span(a);
  const auto [b_start, b_end] = byte_span(b);
  return a_start < b_end && b_start < a_end;
}

// Checks for one op: every message starts with the op's name.
struct Checker {
  const char* op;

  void dtype_in_supported(const at::Tensor& t, const char* name) const {
    const auto dtype = t.scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op, ": ", name,
                     " must have a dtype in float32, float16, bfloat16, got ",
                     dtype_name(dtype));
  }
  void dtype_is(const at::Tensor& t, const char* name, at::ScalarType dtype) const {
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype_name(dtype), ", got ",
                     dtype_name(t.scalar_type()));
  }
  void shape_is(const at::Tensor& t, const char* name, at::IntArrayRef shape) const {
    TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  }
  // Contiguous and on `device` (the device of the op's first input).
  void placed(const at::Tensor& t, const char* name, const at::Device& device) const {
    TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " must be on ", device,
                      " (the device of the input), got ", t.device());
    TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides(),
                      " for shape ", t.sizes());
  }
  // [B, H, W, C] tokens of a supported dtype, contiguous (their device is the op's device).
  void tokens(const at::Tensor& x, const char* name) const {
    dtype_in_supported(x, name);
    expect(x.dim() == 4, std::string(name) + " must be [B, H, W, C] tokens");
    placed(x, name, x.device());
  }
  void expect(bool condition, const std::string& message) const {
    TORCH_CHECK_VALUE(condition, op, ": ", message);
  }
  // Kernels read `input` while writing `output` (and mark them __restrict__).
  void apart(const at::Tensor& output, const char* output_name, const at::Tensor& input, const char* input_name) const {
    TORCH_CHECK_VALUE(!may_overlap(output, input), op, ": ", output_name, " must not overlap ", input_name);
  }
  // The op's weight and fp32 epilogue vectors are read (by other CTAs) while `output` is written.
  void apart_from_operands(const at::Tensor& output, const char* output_name, const at::Tensor& weight,
                           const at::Tensor& bias, const at::Tensor& scale, const at::Tensor& shift) const {
    apart(output, output_name, weight, "weight");
    apart(output, output_name, bias, "bias");
    apart(output, output_name, scale, "scale");
    apart(output, output_name, shift, "shift");
  }
  // TMA and 16-byte vector accesses: a fresh tensor always is; a view with an offset may not be.
  void aligned16(const at::Tensor& t, const char* name) const {
    TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": ", name,
                      " must start at a 16-byte aligned address (a view with a storage offset may not); pass "
                      ".clone() of it");
  }
  // bias / scale / shift: fp32 [channels], contiguous, on `device`; act "gelu" or "relu".
  void epilogue(const at::Tensor& bias, const at::Tensor& scale, const at::Tensor& shift,
                const std::string& act, int64_t channels, const at::Device& device) const {
    const std::pair<const at::Tensor*, const char*> vectors[] = {{&bias, "bias"}, {&scale, "scale"}, {&shift, "shift"}};
    for (const auto& [t, name] : vectors) {
      dtype_is(*t, name, at::kFloat);
      shape_is(*t, name, {channels});
      placed(*t, name, device);
    }
    expect(act == "gelu" || act == "relu", "act must be one of ('gelu', 'relu'), got '" + act + "'");
  }
  // Last check before a launch: the kernels run on CUDA tensors, and only if they were built.
  void runs_here(const at::Device& device) const {
    TORCH_CHECK_VALUE(device.is_cuda(), op, ": the cuda backend runs on CUDA tensors, got ", device);
#ifndef CONVMIXER_FAST_WITH_CUDA
    TORCH_CHECK(false, op, ": convmixer_fast._C was built without its CUDA kernels (",
                CONVMIXER_FAST_CUDA_STATUS, "); reinstall on a machine with a CUDA torch and nvcc: "
                "pip install --no-build-isolation .");
#endif
  }
};

#ifdef CONVMIXER_FAST_WITH_CUDA
DType kernel_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "convmixer_fast: unsupported dtype ", dtype_name(dtype));
  }
}

Epilogue kernel_epilogue(const at::Tensor& bias, const at::Tensor& scale, const at::Tensor& shift,
                         const std::string& act) {
  return {bias.data_ptr<float>(), scale.data_ptr<float>(), shift.data_ptr<float>(),
          act == "gelu" ? Activation::kGelu : Activation::kRelu};
}

cudaStream_t current_stream(const at::Device& device) {
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
}

// A launcher's status as a torch error. Anything but an argument rejection (cudaErrorInvalidValue,
// launching nothing) may be an earlier kernel's fault that CUDA reports only now, at this op's launch
// (an illegal address, a trap: the context stays broken), so the message says how to find the kernel.
void check_launch(const char* op, cudaError_t status) {
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: torch's next launch check would report it again as its own
    TORCH_CHECK(false, op, ": CUDA error: ", cudaGetErrorString(status),
                status == cudaErrorInvalidValue
                    ? ""
                    : " (CUDA may report an earlier kernel's fault at this launch: run with CUDA_LAUNCH_BLOCKING=1 "
                      "to find the kernel that failed)");
  }
}
#endif

void cuda_stem(const at::Tensor& image, const at::Tensor& weight, const at::Tensor& bias,
               const at::Tensor& scale, const at::Tensor& shift, const std::string& act, const at::Tensor& out) {
  const Checker check{"stem"};
  check.dtype_in_supported(image, "image");
  check.expect(image.dim() == 4, "image must be [B, Cin, H, W]");
  const auto device = image.device();
  const int64_t batch = image.size(0), in_channels = image.size(1), height = image.size(2), width = image.size(3);
  check.dtype_in_supported(weight, "weight");
  check.placed(weight, "weight", device);
  check.expect(weight.dim() == 4 && weight.size(1) == in_channels && weight.size(2) == weight.size(3) &&
                   weight.size(2) >= 1,
               "weight must be [C, Cin, p, p] with Cin=" + std::to_string(in_channels) + " and square patches, p >= 1");
  const int64_t channels = weight.size(0), patch = weight.size(2);
  check.expect(height >= patch && width >= patch, "image H and W must be >= the patch size " + std::to_string(patch));
  check.epilogue(bias, scale, shift, act, channels, device);
  check.dtype_is(out, "out", weight.scalar_type());
  check.shape_is(out, "out", {batch, height / patch, width / patch, channels});
  check.placed(out, "out", device);
  check.apart(out, "out", image, "image");
  check.apart_from_operands(out, "out", weight, bias, scale, shift);
  check.runs_here(device);
#ifdef CONVMIXER_FAST_WITH_CUDA
  const c10::cuda::CUDAGuard guard(device);
  const int64_t strides[4] = {image.stride(0), image.stride(1), image.stride(2), image.stride(3)};
  check_launch(check.op, stem(image.data_ptr(), kernel_dtype(image.scalar_type()), strides, weight.data_ptr(),
                              kernel_epilogue(bias, scale, shift, act), out.data_ptr(), batch,
                              static_cast<int>(in_channels), static_cast<int>(height), static_cast<int>(width),
                              static_cast<int>(channels), static_cast<int>(patch),
                              kernel_dtype(weight.scalar_type()), current_stream(device)));
#endif
}

void cuda_depthwise_block(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& scale, const at::Tensor& shift, const std::string& act,
                          const at::Tensor& out, const std::string& algorithm) {
  const Checker check{"depthwise_block"};
  check.tokens(x, "x");
  const auto device = x.device();
  const int64_t batch = x.size(0), height = x.size(1), width = x.size(2), channels = x.size(3);
  check.expect(batch > 0 && height > 0 && width > 0 && channels > 0, "x must be non-empty");
  check.expect(height * width * channels < (int64_t{1} << 31), "one image must have fewer than 2**31 elements");
  check.dtype_is(weight, "weight", x.scalar_type());
  check.placed(weight, "weight", device);
  check.expect(weight.dim() == 3 && weight.size(0) == weight.size(1) && weight.size(2) == channels &&
                   weight.size(0) >= 1 && weight.size(0) <= kMaxKernelSize,
               "weight must be [k, k, C] with C=" + std::to_string(channels) + " and 1 <= k <= " +
                   std::to_string(kMaxKernelSize));
  check.epilogue(bias, scale, shift, act, channels, device);
  check.dtype_is(out, "out", x.scalar_type());
  check.shape_is(out, "out", x.sizes());
  check.placed(out, "out", device);
  check.apart(out, "out", x, "x (the kernel reads the halo of x)");
  check.apart_from_operands(out, "out", weight, bias, scale, shift);
  const int algorithm_index = depthwise_algorithm_index(algorithm);
  check.expect(algorithm_index >= 0,
               "algorithm must be one of " + depthwise_algorithm_names() + ", got '" + algorithm + "'");
  check.runs_here(device);
#ifdef CONVMIXER_FAST_WITH_CUDA
  const int kernel_size = static_cast<int>(weight.size(0));
  const DType dtype = kernel_dtype(x.scalar_type());
  check.expect(algorithm != "band" || depthwise_band_supported(x.data_ptr(), weight.data_ptr(), out.data_ptr(),
                                                                static_cast<int>(channels), kernel_size, dtype),
               "algorithm 'band' needs float16/bfloat16 tokens, k <= 9, C a multiple of 8 and 16-byte aligned "
               "x, weight and out; got " + dtype_name(x.scalar_type()) + ", k=" + std::to_string(kernel_size) +
                   ", C=" + std::to_string(channels));
  static_assert(static_cast<int>(DepthwiseAlgorithm::kAuto) == 0 && static_cast<int>(DepthwiseAlgorithm::kDirect) == 1 &&
                    static_cast<int>(DepthwiseAlgorithm::kBand) == 2,
                "kDepthwiseAlgorithms lists the names in DepthwiseAlgorithm's order");
  const auto kernel_algorithm = static_cast<DepthwiseAlgorithm>(algorithm_index);
  const c10::cuda::CUDAGuard guard(device);
  check_launch(check.op, depthwise_block(x.data_ptr(), weight.data_ptr(), kernel_epilogue(bias, scale, shift, act),
                                         out.data_ptr(), batch, static_cast<int>(height), static_cast<int>(width),
                                         static_cast<int>(channels), kernel_size, dtype, kernel_algorithm,
                                         current_stream(device)));
#endif
}

bool cuda_pointwise_supported(at::ScalarType dtype, int64_t n, int64_t k, int64_t cc_major, int64_t cc_minor) {
#ifdef CONVMIXER_FAST_WITH_CUDA
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) return false;
  return pointwise_supported(kernel_dtype(dtype), static_cast<int>(n), static_cast<int>(k),
                             static_cast<int>(cc_major), static_cast<int>(cc_minor));
#else
  return false;
#endif
}

void cuda_pointwise(const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scale,
                    const at::Tensor& shift, const std::string& act, const at::Tensor& out) {
  const Checker check{"pointwise"};
  check.dtype_in_supported(y, "y");
  check.expect(y.dim() >= 1, "y must be [..., K] tokens, got a 0-d tensor");
  const auto device = y.device();
  check.placed(y, "y", device);
  const int64_t k = y.size(-1);
  check.expect(k >= 1 && y.numel() / k < (int64_t{1} << 31),
               "y must be [..., K] with K >= 1 and fewer than 2**31 rows, got shape " + c10::str(y.sizes()));
  check.dtype_is(weight, "weight", y.scalar_type());
  check.placed(weight, "weight", device);
  check.expect(weight.dim() == 2 && weight.size(1) == k, "weight must be [N, K] with K=" + std::to_string(k));
  const int64_t n = weight.size(0);
  check.epilogue(bias, scale, shift, act, n, device);
  std::vector<int64_t> out_shape(y.sizes().begin(), y.sizes().end());
  out_shape.back() = n;
  check.dtype_is(out, "out", y.scalar_type());
  check.shape_is(out, "out", out_shape);
  check.placed(out, "out", device);
  check.apart(out, "out", y, "y");
  check.apart_from_operands(out, "out", weight, bias, scale, shift);
  const std::pair<const at::Tensor*, const char*> operands[] = {
      {&y, "y"}, {&weight, "weight"}, {&bias, "bias"}, {&scale, "scale"}, {&shift, "shift"}, {&out, "out"}};
  for (const auto& [t, name] : operands) check.aligned16(*t, name);
  check.runs_here(device);
#ifdef CONVMIXER_FAST_WITH_CUDA
  const c10::cuda::CUDAGuard guard(device);
  int cc_major = 0, cc_minor = 0;
  check_launch(check.op, cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, device.index()));
  check_launch(check.op, cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, device.index()));
  check.expect(cuda_pointwise_supported(y.scalar_type(), n, k, cc_major, cc_minor),
               "no CUDA GEMM kernel for dtype " + dtype_name(y.scalar_type()) + ", N=" +
                   std::to_string(n) + ", K=" + std::to_string(k) + " on compute capability " +
                   std::to_string(cc_major) + "." + std::to_string(cc_minor) +
                   " (it needs float16/bfloat16, N and K multiples of 8, sm_80..sm_90); use the triton backend");
  const int64_t m = k > 0 ? y.numel() / k : 0;
  check_launch(check.op, pointwise(y.data_ptr(), weight.data_ptr(), kernel_epilogue(bias, scale, shift, act),
                                   out.data_ptr(), m, static_cast<int>(n), static_cast<int>(k),
                                   kernel_dtype(y.scalar_type()), current_stream(device)));
#endif
}

void cuda_head(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& pooled,
               const at::Tensor& out) {
  const Checker check{"head"};
  check.tokens(x, "x");
  const auto device = x.device();
  const int64_t batch = x.size(0), hw = x.size(1) * x.size(2), channels = x.size(3);
  check.expect(batch > 0 && hw > 0, "x must be non-empty");
  check.expect(hw * channels < (int64_t{1} << 31), "one image must have fewer than 2**31 elements");
  check.dtype_is(weight, "weight", x.scalar_type());
  check.placed(weight, "weight", device);
  check.expect(weight.dim() == 2 && weight.size(1) == channels && weight.size(0) > 0,
               "weight must be [N, C] with C=" + std::to_string(channels) + " and N >= 1");
  const int64_t classes = weight.size(0);
  check.dtype_is(bias, "bias", at::kFloat);
  check.shape_is(bias, "bias", {classes});
  check.placed(bias, "bias", device);
  check.dtype_is(pooled, "pooled", at::kFloat);
  check.shape_is(pooled, "pooled", {batch, channels});
  check.placed(pooled, "pooled", device);
  check.dtype_is(out, "out", x.scalar_type());
  check.shape_is(out, "out", {batch, classes});
  check.placed(out, "out", device);
  check.apart(pooled, "pooled", x, "x");
  check.apart(out, "out", x, "x");
  check.apart(out, "out", pooled, "pooled");
  check.apart(pooled, "pooled", weight, "weight");  // the classifier reads them after the pool wrote pooled
  check.apart(pooled, "pooled", bias, "bias");
  check.apart(out, "out", weight, "weight");
  check.apart(out, "out", bias, "bias");
  check.runs_here(device);
#ifdef CONVMIXER_FAST_WITH_CUDA
  const c10::cuda::CUDAGuard guard(device);
  check_launch(check.op, head(x.data_ptr(), weight.data_ptr(), bias.data_ptr<float>(), pooled.data_ptr<float>(),
                              out.data_ptr(), batch, static_cast<int>(hw), static_cast<int>(channels),
                              static_cast<int>(classes), kernel_dtype(x.scalar_type()), current_stream(device)));
#endif
}

}  // namespace
}  // namespace convmixer_fast

TORCH_LIBRARY_FRAGMENT(convmixer_fast, m) {
  m.set_python_module("convmixer_fast._cuda_fakes");
  m.def("cuda_stem(Tensor image, Tensor weight, Tensor bias, Tensor scale, Tensor shift, str act, "
        "Tensor(a!) out) -> ()");
  m.def("cuda_depthwise_block(Tensor x, Tensor weight, Tensor bias, Tensor scale, Tensor shift, str act, "
        "Tensor(a!) out, str algorithm=\"auto\") -> ()");
  m.def("cuda_pointwise(Tensor y, Tensor weight, Tensor bias, Tensor scale, Tensor shift, str act, "
        "Tensor(a!) out) -> ()");
  m.def("cuda_head(Tensor x, Tensor weight, Tensor bias, Tensor(a!) pooled, Tensor(b!) out) -> ()");
  m.def("cuda_pointwise_supported(ScalarType dtype, int n, int k, int cc_major, int cc_minor) -> bool",
        &convmixer_fast::cuda_pointwise_supported);
}

// CPU: the same checks, then the "runs on CUDA tensors" error (testable without a GPU).
#define CONVMIXER_FAST_REGISTER_CUDA_OPS(m)                           \
  m.impl("cuda_stem", &convmixer_fast::cuda_stem);                     \
  m.impl("cuda_depthwise_block", &convmixer_fast::cuda_depthwise_block); \
  m.impl("cuda_pointwise", &convmixer_fast::cuda_pointwise);           \
  m.impl("cuda_head", &convmixer_fast::cuda_head)

TORCH_LIBRARY_IMPL(convmixer_fast, CPU, m) { CONVMIXER_FAST_REGISTER_CUDA_OPS(m); }
TORCH_LIBRARY_IMPL(convmixer_fast, CUDA, m) { CONVMIXER_FAST_REGISTER_CUDA_OPS(m); }
