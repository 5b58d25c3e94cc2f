// Instantiates the stem kernels (stem.cuh) for model dtype float: every image dtype x activation.
#include "stem.cuh"

namespace convmixer_fast {
namespace stem_detail {
template cudaError_t launch_stem<float>(const StemParams&, DType, Activation, int64_t, cudaStream_t);
}  // namespace stem_detail
}  // namespace convmixer_fast
