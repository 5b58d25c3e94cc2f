// Instantiates the band depthwise kernels (depthwise_band.cuh) for dtype __nv_bfloat16: the four tile
// shapes x GELU / ReLU.
#include "depthwise_band.cuh"

namespace convmixer_fast {
namespace depthwise_detail {
template cudaError_t launch_depthwise_band<__nv_bfloat16>(const Problem&, cudaStream_t);
}  // namespace depthwise_detail
}  // namespace convmixer_fast
