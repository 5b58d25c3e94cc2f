// Pieces shared by the sm80 and sm90 pointwise GEMMs: the CUTLASS element type of a DType and
// the fused epilogue as a CUTLASS compute functor.
//
// Both kernels evaluate the same epilogue visitor tree
//     out = FusedEpilogue<act>(acc, bias[n], scale[n], shift[n])
//         = scale * act(acc + bias) + shift          (fp32: common.cuh's apply_epilogue)
// where bias / scale / shift are fp32 row broadcasts (one value per output column n, the same
// for every row m), then round once to the output dtype (round-to-nearest-even).
#pragma once

#include <cutlass/array.h>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_types.h>

#include "common.cuh"
#include "pointwise.cuh"

namespace convmixer_fast {
namespace pointwise_detail {

template <DType kDType>
struct CutlassElement;
template <>
struct CutlassElement<DType::kFloat16> {
  using type = cutlass::half_t;
};
template <>
struct CutlassElement<DType::kBFloat16> {
  using type = cutlass::bfloat16_t;
};

// The compute node of the visitor tree. CUTLASS instantiates ComputeFn<Array<float, V>> and calls
// it with the (already fp32) fragments of the node's children, in child order; it also names
// ComputeFn<float> to look for an optional Arguments member, so Fn must be instantiable for a
// scalar too (its operator() is only ever called with cutlass::Array fragments).
template <Activation kAct>
struct FusedEpilogue {
  template <class Fragment>  // cutlass::Array<float, V>: V consecutive columns of one row
  struct Fn {
    CUTLASS_DEVICE Fragment operator()(Fragment const& acc, Fragment const& bias,
                                       Fragment const& scale, Fragment const& shift) const {
      Fragment out;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < Fragment::kElements; ++i) {
        out[i] = apply_epilogue<kAct>(acc[i], bias[i], scale[i], shift[i]);
      }
      return out;
    }
  };
};

// A failed CUTLASS host step: the pending CUDA error if there is one, else cudaErrorInvalidValue
// (CUTLASS rejected the arguments).
inline cudaError_t status_to_error(cutlass::Status status) {
  if (status == cutlass::Status::kSuccess) return cudaSuccess;
  const cudaError_t pending = cudaGetLastError();
  return pending != cudaSuccess ? pending : cudaErrorInvalidValue;
}

}  // namespace pointwise_detail
}  // namespace convmixer_fast
