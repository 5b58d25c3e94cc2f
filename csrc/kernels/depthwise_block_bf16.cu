// Instantiates the depthwise-block kernels (depthwise_block.cuh) for dtype __nv_bfloat16: k = 3, 5, 7, 9
// and the runtime-k path, x GELU / ReLU.
#include "depthwise_block.cuh"

namespace convmixer_fast {
namespace depthwise_detail {
template cudaError_t launch_depthwise_block<__nv_bfloat16>(const Problem&, cudaStream_t);
}  // namespace depthwise_detail
}  // namespace convmixer_fast
