// Pointwise GEMM for sm_80 / sm_86 / sm_89 (Ampere, Ada): CUTLASS 2.x, cp.async multistage
// mainloop + mma.sync tensor cores, fused epilogue as a (2.x) epilogue visitor tree.
//
//   out[m, n] = scale[n] * act(sum_k y[m, k] * weight[n, k] + bias[n]) + shift[n]
//
// Layout mapping (CUTLASS GEMM D[M, N] = A[M, K] * B[K, N]):
//   A = y      [M, K] row-major                      -> LayoutA RowMajor,    lda = K
//   B = weight [N, K] row-major, i.e. B[k, n] at n*K+k -> LayoutB ColumnMajor, ldb = K
//   D = out    [M, N] row-major, written by the tree's VisitorAuxStore (stride (N, 1, M*N))
//   bias / scale / shift are per n: VisitorRowBroadcast (stride (_0, _1, _0)).
//
// Tiling: threadblock tile [BLOCK_M, BLOCK_N, BLOCK_K] = [128, 256, 32], 8 warps of [64, 64]
// (2 x 4), mma.sync 16x8x16, 3-stage cp.async pipeline (72 KiB of smem, which fits the 99 KiB
// of sm_86 / sm_89 as well as sm_80's 163 KiB). Threadblocks are swizzled in groups of 8 for L2
// reuse. The epilogue stages each 8-row slice of the accumulator tile through smem, reads each
// thread's bias / scale / shift columns once, applies the fused epilogue in fp32 and stores
// 16-byte vectors, predicated at the M, N edges.
//
// Requirements (checked by the launcher in pointwise.cu): N % 8 == 0, K % 8 == 0, M, N, K > 0,
// M < 2^31; y, weight, out, bias, scale, shift 16-byte aligned. No workspace (no split-K).
//
// The sm_90a build of this file compiles the same kernel for Hopper; the launcher only runs it on
// compute capability 8.x.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/gemm/device/gemm_universal_base.h>
#include <cutlass/gemm/kernel/default_gemm_universal_with_visitor.h>
#include <cutlass/gemm/threadblock/threadblock_swizzle.h>
// After the GEMM headers: visitors.hpp relies on what they include.
#include <cutlass/epilogue/threadblock/fusion/visitors.hpp>

#include "pointwise_epilogue.cuh"

namespace convmixer_fast {
namespace pointwise_detail {

template <DType kDType, Activation kAct>
struct Sm80PointwiseGemm {
  using Element = typename CutlassElement<kDType>::type;  // y, weight, out
  using LayoutA = cutlass::layout::RowMajor;              // y      [M, K]
  using LayoutB = cutlass::layout::ColumnMajor;           // weight [N, K] == B [K, N] col-major
  using LayoutD = cutlass::layout::RowMajor;              // out    [M, N]
  static constexpr int kAlignment = 16 / sizeof(Element);  // elements per 16-byte access

  using ThreadblockShape = cutlass::gemm::GemmShape<128, 256, 32>;  // [BLOCK_M, BLOCK_N, BLOCK_K]
  using WarpShape = cutlass::gemm::GemmShape<64, 64, 32>;           // [WARP_M, WARP_N, BLOCK_K]
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 16>;     // mma.sync m16n8k16
  static constexpr int kStages = 3;
  static constexpr int kEpilogueStages = 1;

  using OutputTileThreadMap = cutlass::epilogue::threadblock::OutputTileThreadLayout<
      ThreadblockShape, WarpShape, Element, kAlignment, kEpilogueStages>;

  // fp32 [N] vector, one value per output column: bias, scale, shift.
  using ChannelVector = cutlass::epilogue::threadblock::VisitorRowBroadcast<
      OutputTileThreadMap, float, cute::Stride<cute::_0, cute::_1, cute::_0>>;
  // FusedEpilogue(acc, bias, scale, shift) in fp32 ...
  using Compute =
      cutlass::epilogue::threadblock::VisitorCompute<FusedEpilogue<kAct>::template Fn, float, float,
                                                     cutlass::FloatRoundStyle::round_to_nearest>;
  // ... rounded once to Element (round-to-nearest-even) and stored to out [M, N] (M*N in int64).
  using Store = cutlass::epilogue::threadblock::VisitorAuxStore<
      OutputTileThreadMap, Element, cutlass::FloatRoundStyle::round_to_nearest,
      cute::Stride<int64_t, cute::_1, int64_t>>;
  using EpilogueTree = cutlass::epilogue::threadblock::Sm80EVT<
      Store,
      cutlass::epilogue::threadblock::Sm80EVT<
          Compute, cutlass::epilogue::threadblock::VisitorAccFetch, ChannelVector /* bias */,
          ChannelVector /* scale */, ChannelVector /* shift */>>;

  using Kernel = typename cutlass::gemm::kernel::DefaultGemmWithVisitor<
      Element, LayoutA, cutlass::ComplexTransform::kNone, kAlignment,  //
      Element, LayoutB, cutlass::ComplexTransform::kNone, kAlignment,  //
      Element, LayoutD, kAlignment,  // C: unused, sizes the epilogue's thread map
      float /* accumulator */, float /* epilogue */, cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80, ThreadblockShape, WarpShape, InstructionShape, EpilogueTree,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, kStages,
      cutlass::arch::OpMultiplyAdd, kEpilogueStages>::GemmKernel;

  // CUTLASS's host-side driver (occupancy / smem attribute per device, params), launched by
  // launch() below: GemmUniversalBase::run() would swallow the launch's cudaError_t.
  class Device : public cutlass::gemm::device::GemmUniversalBase<Kernel> {
   public:
    cudaError_t launch(cudaStream_t stream) const {
      const dim3 block(Kernel::kThreadCount, 1, 1);
      const dim3 grid = this->params_.get_grid_dims();
      cutlass::Kernel2<Kernel><<<grid, block, Device::kSharedStorageSize, stream>>>(this->params_);
      return cudaGetLastError();
    }
  };
};

}  // namespace pointwise_detail

template <DType kDType, Activation kAct>
cudaError_t pointwise_sm80(const PointwiseProblem& problem, cudaStream_t stream) {
  using Gemm = pointwise_detail::Sm80PointwiseGemm<kDType, kAct>;
  using Device = typename Gemm::Device;
  using pointwise_detail::status_to_error;

  const int M = problem.M, N = problem.N, K = problem.K;

  // Visitor-tree arguments: {child tree {acc, bias, scale, shift, compute}, store}.
  typename Gemm::EpilogueTree::Arguments tree{};
  cute::get<1>(tree.op_0).ptr_row = problem.bias;
  cute::get<2>(tree.op_0).ptr_row = problem.scale;
  cute::get<3>(tree.op_0).ptr_row = problem.shift;
  tree.op_1.ptr_aux = static_cast<typename Gemm::Element*>(problem.out);
  tree.op_1.dAux = {int64_t(N), cute::_1{}, int64_t(M) * N};

  const typename Device::Arguments args(
      cutlass::gemm::GemmUniversalMode::kGemm, cutlass::gemm::GemmCoord(M, N, K),
      /*batch_count=*/1, tree, problem.y, problem.weight, /*ptr_C=*/nullptr, /*ptr_D=*/nullptr,
      /*batch_stride_A=*/int64_t(M) * K, /*batch_stride_B=*/int64_t(N) * K,
      /*batch_stride_C=*/int64_t(0), /*batch_stride_D=*/int64_t(0),
      /*lda=*/int64_t(K), /*ldb=*/int64_t(K), /*ldc=*/int64_t(0), /*ldd=*/int64_t(0));

  cutlass::Status status = Device::can_implement(args);
  if (status != cutlass::Status::kSuccess) return status_to_error(status);
  if (Device::get_workspace_size(args) != 0) return cudaErrorInvalidValue;  // we allocate nothing
  Device gemm;
  status = gemm.initialize(args, /*workspace=*/nullptr, stream);
  if (status != cutlass::Status::kSuccess) return status_to_error(status);
  return gemm.launch(stream);
}

}  // namespace convmixer_fast
