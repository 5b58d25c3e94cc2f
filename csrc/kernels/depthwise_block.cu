// convmixer_fast::depthwise_block (kernels.h): argument checks and dtype dispatch. The kernel, its
// tiling and the per-dtype launchers are in depthwise_block.cuh, instantiated in
// depthwise_block_{f32,f16,bf16}.cu.
#include "depthwise_block.cuh"

namespace convmixer_fast {

cudaError_t depthwise_block(const void* x, const void* weight, Epilogue epilogue, void* out,
                            int64_t batch, int height, int width, int channels, int kernel_size,
                            DType dtype, cudaStream_t stream) {
  using namespace depthwise_detail;
  if (kernel_size < 1 || kernel_size > kMaxKernelSize) return cudaErrorInvalidValue;
  if (batch < 0 || height < 0 || width < 0 || channels < 0) return cudaErrorInvalidValue;
  if (batch == 0 || height == 0 || width == 0 || channels == 0) return cudaSuccess;
  if (x == nullptr || weight == nullptr || out == nullptr || epilogue.bias == nullptr ||
      epilogue.scale == nullptr || epilogue.shift == nullptr) {
    return cudaErrorInvalidValue;
  }
  const Problem problem{x, weight, epilogue, out, batch, height, width, channels, kernel_size};
  return dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
    return launch_depthwise_block<decltype(tag)>(problem, stream);
  });
}

}  // namespace convmixer_fast
