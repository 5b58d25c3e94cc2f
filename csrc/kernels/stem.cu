// convmixer_fast::stem (kernels.h): argument checks and the launch of stem_kernel (stem.cuh) for
// the model dtype; the kernels themselves are instantiated per dtype in stem_{f32,f16,bf16}.cu.
#include <climits>
#include <cstdint>

#include "stem.cuh"

namespace convmixer_fast {

cudaError_t stem(const void* image, DType image_dtype, const int64_t image_strides[4],
                 const void* weight, Epilogue epilogue, void* out, int64_t batch, int in_channels,
                 int height, int width, int channels, int patch, DType dtype, cudaStream_t stream) {
  using namespace stem_detail;
  if (batch < 0 || in_channels < 0 || channels < 0 || patch < 1 || height < patch || width < patch)
    return cudaErrorInvalidValue;
  if (batch == 0 || channels == 0) return cudaSuccess;  // no output
  const int64_t K = static_cast<int64_t>(in_channels) * patch * patch;
  if (K > INT_MAX || static_cast<int64_t>(patch) * patch > INT_MAX) return cudaErrorInvalidValue;
  // K == 0 (Cin == 0): image and weight are empty, and torch hands out nullptr for them.
  if (image_strides == nullptr || out == nullptr || epilogue.bias == nullptr || epilogue.scale == nullptr ||
      epilogue.shift == nullptr || (K > 0 && (image == nullptr || weight == nullptr)))
    return cudaErrorInvalidValue;

  const int Hp = height / patch;  // floored, as the strided conv does
  const int Wp = width / patch;
  StemParams params;
  params.image = image;
  params.stride_b = image_strides[0];
  params.stride_c = image_strides[1];
  params.stride_h = image_strides[2];
  params.stride_w = image_strides[3];
  params.weight = weight;
  params.bias = epilogue.bias;
  params.scale = epilogue.scale;
  params.shift = epilogue.shift;
  params.out = out;
  params.tokens_per_image = static_cast<int64_t>(Hp) * Wp;
  params.M = batch * params.tokens_per_image;
  params.Wp = Wp;
  params.N = channels;
  params.K = static_cast<int>(K);
  params.patch = patch;
  params.patch_area = patch * patch;
  params.tiles_n = static_cast<int>(ceil_div(channels, kBlockN));
  params.vector_store =
      channels % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int64_t blocks = ceil_div(params.M, kBlockM) * params.tiles_n;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;  // gridDim.x limit

  return dispatch_dtype(dtype, [&](auto tag) {
    return launch_stem<decltype(tag)>(params, image_dtype, epilogue.act, blocks, stream);
  });
}

}  // namespace convmixer_fast
