// Instantiates the stem kernels (stem.cuh) for model dtype __nv_bfloat16: every image dtype x activation.
#include "stem.cuh"

namespace convmixer_fast {
namespace stem_detail {
template cudaError_t launch_stem<__nv_bfloat16>(const StemParams&, DType, Activation, int64_t, cudaStream_t);
}  // namespace stem_detail
}  // namespace convmixer_fast
