// convmixer_fast::depthwise_block (kernels.h): argument checks, the algorithm and dtype dispatch.
// The kernels, their tiling and the per-dtype launchers are in depthwise_block.cuh (direct) and
// depthwise_band.cuh (band), instantiated in depthwise_{block,band}_<dtype>.cu.
#include "depthwise_band.cuh"

namespace convmixer_fast {

cudaError_t depthwise_block(const void* x, const void* weight, Epilogue epilogue, void* out,
                            int64_t batch, int height, int width, int channels, int kernel_size,
                            DType dtype, DepthwiseAlgorithm algorithm, cudaStream_t stream) {
  using namespace depthwise_detail;
  if (kernel_size < 1 || kernel_size > kMaxKernelSize) return cudaErrorInvalidValue;
  if (batch < 0 || height < 0 || width < 0 || channels < 0) return cudaErrorInvalidValue;
  if (batch == 0 || height == 0 || width == 0 || channels == 0) return cudaSuccess;
  if (x == nullptr || weight == nullptr || out == nullptr || epilogue.bias == nullptr ||
      epilogue.scale == nullptr || epilogue.shift == nullptr) {
    return cudaErrorInvalidValue;
  }
  const Problem problem{x, weight, epilogue, out, batch, height, width, channels, kernel_size};
  const bool band = band_supported(problem, dtype);
  if (algorithm == DepthwiseAlgorithm::kBand && !band) return cudaErrorInvalidValue;
  if (band && algorithm != DepthwiseAlgorithm::kDirect) {
    return dtype == DType::kFloat16 ? launch_depthwise_band<__half>(problem, stream)
                                    : launch_depthwise_band<__nv_bfloat16>(problem, stream);
  }
  return dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
    return launch_depthwise_block<decltype(tag)>(problem, stream);
  });
}

bool depthwise_band_supported(const void* x, const void* weight, const void* out, int channels,
                              int kernel_size, DType dtype) {
  using namespace depthwise_detail;
  const Problem problem{x, weight, Epilogue{}, const_cast<void*>(out), 1, 1, 1, channels, kernel_size};
  return kernel_size >= 1 && band_supported(problem, dtype);
}

}  // namespace convmixer_fast
