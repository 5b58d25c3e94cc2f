// sm_90 pointwise GEMM, fp16, exact GELU: one explicit instantiation (see pointwise_sm90.cuh).
#include "pointwise_sm90.cuh"

namespace convmixer_fast {
template cudaError_t pointwise_sm90<DType::kFloat16, Activation::kGelu>(
    const PointwiseProblem& problem, cudaStream_t stream);
}  // namespace convmixer_fast
