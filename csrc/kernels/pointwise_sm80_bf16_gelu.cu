// sm_80 pointwise GEMM, bf16, exact GELU: one explicit instantiation (see pointwise_sm80.cuh).
#include "pointwise_sm80.cuh"

namespace convmixer_fast {
template cudaError_t pointwise_sm80<DType::kBFloat16, Activation::kGelu>(
    const PointwiseProblem& problem, cudaStream_t stream);
}  // namespace convmixer_fast
