// Pointwise GEMM for sm_90 (Hopper): CUTLASS 3.x, TMA loads + wgmma, warp-specialized ping-pong
// schedule, persistent tile scheduler, fused epilogue as an epilogue visitor tree, TMA store.
//
//   out[m, n] = scale[n] * act(sum_k y[m, k] * weight[n, k] + bias[n]) + shift[n]
//
// Layout mapping (CUTLASS GEMM D[M, N] = A[M, K] * B[K, N]):
//   A = y      [M, K] row-major                      -> LayoutA RowMajor    (K contiguous)
//   B = weight [N, K] row-major, i.e. B[k, n] at n*K+k -> LayoutB ColumnMajor (K contiguous)
//   D = out    [M, N] row-major                      -> LayoutD RowMajor    (N contiguous)
//   no C operand (ElementC = void); bias / scale / shift are per n: Sm90RowBroadcast (stride
//   (_0, _1, _0): constant along M, contiguous along N).
//
// Tiling: CTA tile [BLOCK_M, BLOCK_N, BLOCK_K] = [128, 128, 64], cluster 2x1 (the two CTAs of a
// cluster share the weight tile by TMA multicast). Ping-pong: one producer warp group streams A/B
// tiles through a smem pipeline (stage count: whatever fits next to the epilogue's smem), two
// consumer warp groups each own a whole 128x128 tile and alternate, so one group's epilogue
// (erf GELU is not cheap) overlaps the other group's wgmma mainloop. The epilogue works on
// sub-tiles (EpilogueTileAuto), reads bias / scale / shift for the tile's 128 columns into smem
// once per tile, and stores bf16/fp16 sub-tiles through smem with TMA (clipped at M, N edges).
//
// Requirements (checked by the launcher in pointwise.cu): N % 8 == 0, K % 8 == 0, M, N, K > 0,
// M < 2^31; y, weight, out, bias, scale, shift 16-byte aligned. No workspace.
//
// Compiled for sm_80 this file still builds: CUTLASS replaces the kernel body by a stub unless
// the target has the sm_90a features (__CUDA_ARCH_FEAT_SM90_ALL); the launcher never calls it
// on a device other than sm_90.
#pragma once

// A plain sm_90 target (no "a") would compile CUTLASS's stub instead of the kernel, and the
// launcher would run it on an H100: refuse that build.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "pointwise_sm90 needs sm_90a: -gencode=arch=compute_90a,code=sm_90a (ARCHS entry 90a)"
#endif

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/device_kernel.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/kernel_hardware_info.h>
#include <cutlass/util/packed_stride.hpp>

#include "pointwise_epilogue.cuh"

namespace convmixer_fast {
namespace pointwise_detail {

template <DType kDType, Activation kAct>
struct Sm90PointwiseGemm {
  using Element = typename CutlassElement<kDType>::type;  // y, weight, out
  using LayoutA = cutlass::layout::RowMajor;              // y      [M, K]
  using LayoutB = cutlass::layout::ColumnMajor;           // weight [N, K] == B [K, N] col-major
  using LayoutD = cutlass::layout::RowMajor;              // out    [M, N]
  static constexpr int kAlignment = 16 / sizeof(Element);  // elements per 16-byte TMA access

  using TileShape = cute::Shape<cute::_128, cute::_128, cute::_64>;  // [BLOCK_M, BLOCK_N, BLOCK_K]
  using ClusterShape = cute::Shape<cute::_2, cute::_1, cute::_1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;

  // fp32 [N] vector, one value per output column: bias, scale, shift. 4 floats per 16-byte copy.
  using ChannelVector =
      cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float,
                                                  cute::Stride<cute::_0, cute::_1, cute::_0>, 4>;
  // out = FusedEpilogue(acc, bias, scale, shift), rounded to Element (round-to-nearest-even).
  using EpilogueTree = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<FusedEpilogue<kAct>::template Fn, Element, float,
                                             cutlass::FloatRoundStyle::round_to_nearest>,
      cutlass::epilogue::fusion::Sm90AccFetch, ChannelVector /* bias */,
      ChannelVector /* scale */, ChannelVector /* shift */>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float /* accumulator */,
      float /* compute */, void /* no C */, LayoutD, kAlignment, Element, LayoutD, kAlignment,
      EpilogueSchedule, EpilogueTree>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA, kAlignment, Element,
      LayoutB, kAlignment, float /* accumulator */, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>,  // M,N,K,L
                                                      CollectiveMainloop, CollectiveEpilogue>;
};

}  // namespace pointwise_detail

template <DType kDType, Activation kAct>
cudaError_t pointwise_sm90(const PointwiseProblem& problem, cudaStream_t stream) {
  using Gemm = pointwise_detail::Sm90PointwiseGemm<kDType, kAct>;
  using Kernel = typename Gemm::Kernel;
  using Element = typename Gemm::Element;
  using pointwise_detail::status_to_error;

  const int M = problem.M, N = problem.N, K = problem.K;
  // Packed strides (int64): A [M, K] row-major, B as (N, K) with K contiguous, D [M, N] row-major.
  const auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {M, K, 1});
  const auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {N, K, 1});
  const auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, {M, N, 1});

  typename Kernel::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = {M, N, K, 1};
  args.mainloop.ptr_A = static_cast<const Element*>(problem.y);
  args.mainloop.dA = stride_a;
  args.mainloop.ptr_B = static_cast<const Element*>(problem.weight);
  args.mainloop.dB = stride_b;
  // Visitor-tree arguments: one entry per node in child order, the compute node's last.
  auto& tree = args.epilogue.thread;
  cute::get<1>(tree).ptr_row = problem.bias;
  cute::get<2>(tree).ptr_row = problem.scale;
  cute::get<3>(tree).ptr_row = problem.shift;
  args.epilogue.ptr_C = nullptr;
  args.epilogue.ptr_D = static_cast<Element*>(problem.out);
  args.epilogue.dD = stride_d;
  args.hw_info.device_id = problem.device;
  args.hw_info.sm_count = problem.sm_count;

  if (!Kernel::can_implement(args)) return cudaErrorInvalidValue;
  if (Kernel::get_workspace_size(args) != 0) return cudaErrorInvalidValue;  // we allocate nothing
  cutlass::Status status = Kernel::initialize_workspace(args, nullptr, stream);
  if (status != cutlass::Status::kSuccess) return status_to_error(status);
  typename Kernel::Params params = Kernel::to_underlying_arguments(args, nullptr);

  // Launch as CUTLASS's GemmUniversalAdapter::run does (cluster launch), but keep the CUDA error.
  const void* kernel = reinterpret_cast<const void*>(&cutlass::device_kernel<Kernel>);
  const int smem_bytes = Kernel::SharedStorageSize;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         smem_bytes);
  if (err != cudaSuccess) return err;
  cudaLaunchAttribute cluster_attribute{};
  cluster_attribute.id = cudaLaunchAttributeClusterDimension;
  cluster_attribute.val.clusterDim.x = cute::size<0>(typename Gemm::ClusterShape{});
  cluster_attribute.val.clusterDim.y = cute::size<1>(typename Gemm::ClusterShape{});
  cluster_attribute.val.clusterDim.z = cute::size<2>(typename Gemm::ClusterShape{});
  cudaLaunchConfig_t config{};
  config.gridDim = Kernel::get_grid_shape(params);  // persistent: <= sm_count CTAs, cluster-aligned
  config.blockDim = Kernel::get_block_shape();
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = &cluster_attribute;
  config.numAttrs = 1;
  void* kernel_args[] = {&params};
  err = cudaLaunchKernelExC(&config, kernel, kernel_args);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

}  // namespace convmixer_fast
