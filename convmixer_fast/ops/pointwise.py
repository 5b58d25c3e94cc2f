"""Fused pointwise (1x1 conv) GEMM: ``X' = scale * act(Y @ Wᵀ + bias) + shift`` (DESIGN.md §2).

``y`` is ``[..., K]`` NHWC tokens (contiguous, i.e. the token matrix ``[M, K]`` with M = B*H*W),
``weight`` ``[N, K]`` contiguous in y's dtype, ``bias`` / ``scale`` / ``shift`` fp32 ``[N]``; the
output ``[..., N]`` has y's dtype. The GEMM accumulates in fp32 on the tensor cores (wgmma on
Hopper for 16-bit operands), bias + activation + BN affine are applied in fp32 in the epilogue and
the result is rounded once at the store. Reference: ``reference.pointwise_reference``.

fp32 inputs use TF32 only when ``torch.backends.cuda.matmul.allow_tf32`` is True (exact fp32
otherwise), like ``torch.matmul``.

The tile helpers (``grouped_output_tile``, ``gemm_tile``, ``epilogue_store``) are shared with the
stem kernel (``stem.py``), whose A operand is the patchified image instead of a token matrix.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from convmixer_fast._settings import TRITON_COMPILE_OPTIONS
from convmixer_fast.ops._triton_utils import (
    ACTIVATION_CODES,
    TRITON_DTYPE_NAMES,
    KernelSpec,
    autotune,
    config_label,
    device_guard,
    epilogue_custom_op,
    fused_epilogue,
    is_interpreting,
)
from convmixer_fast.ops._checks import epilogue_entry, pointwise_outputs


# --------------------------------------------------------------------------------------------
# Shared tile helpers (also used by stem.py)
# --------------------------------------------------------------------------------------------


@triton.jit
def grouped_output_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's tile of the [M, N] output, in grouped order: (``offs_m`` [BLOCK_M], its
    unclamped rows for the store; ``n_start``, its first column; ``rows`` [BLOCK_M] and ``cols``
    [BLOCK_N], rows and columns wrapped into range for the loads, which then need no mask).

    GROUP_M consecutive row tiles sweep the column tiles together, so programs running at the same
    time share their A rows and weight columns in L2 instead of streaming the whole weight per row.
    """
    pid = tl.program_id(0)
    num_tiles_m = tl.cdiv(M, BLOCK_M)
    num_tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * num_tiles_n
    group = pid // tiles_per_group
    first_tile_m = group * GROUP_M
    group_rows = tl.minimum(num_tiles_m - first_tile_m, GROUP_M)  # the last group may be short
    tile_m = first_tile_m + (pid % tiles_per_group) % group_rows
    tile_n = (pid % tiles_per_group) // group_rows
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    return offs_m, tile_n * BLOCK_N, offs_m % M, offs_n % N


@triton.jit
def gemm_tile(
    a_ptr,
    a_row_offsets,  # [BLOCK_M] int64: element offset of each (clamped) A row
    weight_ptr,
    weight_rows,  # [BLOCK_N]: (clamped) output channels, i.e. rows of the [N, K] weight
    K,
    stride_ac,
    stride_ah,
    stride_aw,
    PATCH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """fp32 ``acc[BLOCK_M, BLOCK_N] = A[rows, :] @ weight[cols, :]ᵀ`` over the whole K.

    A element (m, k) is at ``a_ptr + a_row_offsets[m] + column_offset(k)`` where
    - PATCH == 0: ``column_offset(k) = k`` (a contiguous token row);
    - PATCH == p: k -> (cin, i, j) with k = (cin * p + i) * p + j and
      ``column_offset = cin * stride_ac + i * stride_ah + j * stride_aw`` (the stem's patchify:
      the row offset points at the patch's top-left pixel of channel 0).
    A values are converted to the weight dtype before the dot. Rows / columns must be clamped to
    valid indices by the caller; K is masked here unless EVEN_K (K % BLOCK_K == 0).
    DOT_IN_FP32 runs the dot on exact fp32 copies of the 16-bit operands (the same products): only
    for Triton's CPU interpreter, whose bf16 tl.dot returns garbage (triton 3.6 and 3.9).
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # [BLOCK_M, BLOCK_N]
    weight_row_offsets = weight_rows * K  # [BLOCK_N]
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        if PATCH == 0:
            a_col_offsets = offs_k
        else:
            cin = offs_k // (PATCH * PATCH)
            within_patch = offs_k % (PATCH * PATCH)
            a_col_offsets = (
                cin * stride_ac + (within_patch // PATCH) * stride_ah + (within_patch % PATCH) * stride_aw
            )
        a_ptrs = a_ptr + (a_row_offsets[:, None] + a_col_offsets[None, :])  # [BLOCK_M, BLOCK_K]
        w_ptrs = weight_ptr + (weight_row_offsets[None, :] + offs_k[:, None])  # [BLOCK_K, BLOCK_N]
        if EVEN_K:
            a_tile = tl.load(a_ptrs)
            w_tile = tl.load(w_ptrs)
        else:
            k_in_range = offs_k < K  # [BLOCK_K]
            a_tile = tl.load(a_ptrs, mask=k_in_range[None, :], other=0.0)
            w_tile = tl.load(w_ptrs, mask=k_in_range[:, None], other=0.0)
        a_tile = a_tile.to(w_tile.dtype)  # [BLOCK_M, BLOCK_K] in the weight (model) dtype
        if DOT_IN_FP32:
            acc = tl.dot(a_tile.to(tl.float32), w_tile.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a_tile, w_tile, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _epilogue_store_columns(
    acc,  # [BLOCK_M, COLUMNS] fp32
    offs_m,  # [BLOCK_M] unclamped output rows
    offs_n,  # [COLUMNS] unclamped output channels
    M,
    N,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    out_ptr,
    ACTIVATION: tl.constexpr,
):
    """``out[m, n] = scale[n] * act(acc + bias[n]) + shift[n]`` in fp32, rounded once at the store."""
    n_in_range = offs_n < N  # [COLUMNS]
    bias = tl.load(bias_ptr + offs_n, mask=n_in_range, other=0.0)  # [COLUMNS] fp32
    scale = tl.load(scale_ptr + offs_n, mask=n_in_range, other=0.0)  # [COLUMNS] fp32
    shift = tl.load(shift_ptr + offs_n, mask=n_in_range, other=0.0)  # [COLUMNS] fp32
    result = fused_epilogue(acc, bias[None, :], scale[None, :], shift[None, :], ACTIVATION)
    out_ptrs = out_ptr + (offs_m.to(tl.int64)[:, None] * N + offs_n[None, :])  # [BLOCK_M, COLUMNS]
    out_mask = (offs_m < M)[:, None] & n_in_range[None, :]
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _column_halves(tile, ROWS: tl.constexpr, COLUMNS: tl.constexpr):
    """[ROWS, COLUMNS] -> its left and right [ROWS, COLUMNS // 2] halves."""
    return tl.split(tl.permute(tl.reshape(tile, (ROWS, 2, COLUMNS // 2)), (0, 2, 1)))


@triton.jit
def epilogue_store(
    acc,  # [BLOCK_M, BLOCK_N] fp32
    offs_m,  # [BLOCK_M] unclamped output rows
    n_start,  # first output channel of the tile
    M,
    N,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    out_ptr,
    ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Bias + activation + BN affine and the store of the [M, N] output tile, in column quarters.

    Doing the epilogue a quarter of the columns at a time bounds the registers that the exact GELU
    (erf) and the per-channel vectors need next to the accumulator: without it the 128x256 (8 warps)
    and 256x128 tiles spill on sm_90 (fewer registers for every config, too).
    """
    QUARTER: tl.constexpr = BLOCK_N // 4
    left, right = _column_halves(acc, BLOCK_M, BLOCK_N)  # [BLOCK_M, BLOCK_N // 2] each
    q0, q1 = _column_halves(left, BLOCK_M, BLOCK_N // 2)  # [BLOCK_M, QUARTER] each
    q2, q3 = _column_halves(right, BLOCK_M, BLOCK_N // 2)
    offs_q = n_start + tl.arange(0, QUARTER)  # [QUARTER]
    _epilogue_store_columns(q0, offs_m, offs_q, M, N, bias_ptr, scale_ptr, shift_ptr, out_ptr, ACTIVATION)
    _epilogue_store_columns(q1, offs_m, offs_q + QUARTER, M, N, bias_ptr, scale_ptr, shift_ptr, out_ptr, ACTIVATION)
    _epilogue_store_columns(
        q2, offs_m, offs_q + 2 * QUARTER, M, N, bias_ptr, scale_ptr, shift_ptr, out_ptr, ACTIVATION
    )
    _epilogue_store_columns(
        q3, offs_m, offs_q + 3 * QUARTER, M, N, bias_ptr, scale_ptr, shift_ptr, out_ptr, ACTIVATION
    )


def even_k(args) -> bool:
    """Heuristic shared with stem.py: no K mask needed when K is a multiple of BLOCK_K."""
    return args["K"] % args["BLOCK_K"] == 0


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """DOT_IN_FP32 of ``gemm_tile``: only bf16 under the interpreter (its bf16 dot is broken)."""
    return dtype == torch.bfloat16 and is_interpreting()


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of tl.dot: TF32 for fp32 only if torch allows it for matmuls.

    16-bit operands ignore it (they always run on the tensor cores); "tf32" is Triton's default.
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def launch_gemm(tuned, kernel, args: tuple, act: str, dtype: torch.dtype, M: int, N: int, K: int,
                config: triton.Config | None, **constexprs) -> None:
    """Launch a GEMM kernel of this tiling (one program per ``BLOCK_M x BLOCK_N`` output tile) on
    ``args`` (the first one a tensor on the launch device), the epilogue's ``act`` and the operand
    ``dtype``'s dot settings, and the kernel's own ``constexprs``: through its autotuner ``tuned``,
    or at ``config`` (tests), with ``EVEN_K`` as the ``even_k`` heuristic sets it. An empty output
    launches nothing."""
    if M == 0 or N == 0:
        return
    meta = {"ACTIVATION": ACTIVATION_CODES[act], "DOT_PRECISION": dot_precision(dtype),
            "DOT_IN_FP32": dot_in_fp32(dtype), **constexprs, **TRITON_COMPILE_OPTIONS}

    def grid(kw):
        return (triton.cdiv(M, kw["BLOCK_M"]) * triton.cdiv(N, kw["BLOCK_N"]),)

    with device_guard(args[0]):
        if config is None:
            tuned[grid](*args, **meta)
        else:
            kw = dict(config.kwargs, EVEN_K=K % config.kwargs["BLOCK_K"] == 0)
            kernel[grid(kw)](*args, **meta, **kw, num_warps=config.num_warps, num_stages=config.num_stages)


def gemm_kernel_specs(kernel, configs: list[triton.Config], signature: dict, constexprs: dict, K: int,
                      divisible_by_16: tuple[str, ...]) -> list[KernelSpec]:
    """One ``KernelSpec`` of a GEMM kernel of this tiling per config, GELU, tf32 dots for fp32,
    ``EVEN_K`` for the given ``K``."""
    specs = []
    for config in configs:
        specs.append(
            KernelSpec(
                kernel=kernel.__name__,
                fn=kernel,
                signature=dict(signature),
                constexprs={
                    "ACTIVATION": ACTIVATION_CODES["gelu"],
                    "DOT_PRECISION": "tf32",
                    "DOT_IN_FP32": False,
                    **constexprs,
                    **config.kwargs,
                    "EVEN_K": K % config.kwargs["BLOCK_K"] == 0,
                },
                num_warps=config.num_warps,
                num_stages=config.num_stages,
                config=config_label(config),
                divisible_by_16=divisible_by_16,
            )
        )
    return specs


# --------------------------------------------------------------------------------------------
# Pointwise kernel
# --------------------------------------------------------------------------------------------

# Tuned for H100 (bf16, dim 768/1024/1536, M = 1024 .. 262144). The first config is the one the
# interpreter uses. Shared memory per stage: (BLOCK_M + BLOCK_N) * BLOCK_K * 2 bytes.
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
]


@triton.jit
def pointwise_kernel(
    y_ptr,  # [M, K] tokens
    weight_ptr,  # [N, K]
    bias_ptr,  # [N] fp32
    scale_ptr,  # [N] fp32
    shift_ptr,  # [N] fp32
    out_ptr,  # [M, N]
    M,
    N,
    K,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    offs_m, n_start, rows, cols = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = gemm_tile(
        y_ptr, rows.to(tl.int64) * K, weight_ptr, cols, K, 1, 0, 0,
        0, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, DOT_PRECISION, DOT_IN_FP32,
    )  # [BLOCK_M, BLOCK_N] fp32
    epilogue_store(
        acc, offs_m, n_start, M, N, bias_ptr, scale_ptr, shift_ptr, out_ptr,
        ACTIVATION, BLOCK_M, BLOCK_N,
    )


_pointwise_tuned = autotune(CONFIGS, key=["M", "N", "K"])(
    triton.heuristics({"EVEN_K": even_k})(pointwise_kernel)
)


def _launch(y, weight, bias, scale, shift, act, out, config: triton.Config | None = None) -> None:
    """Launch on already validated tensors; ``config`` forces one config (tests), else autotune."""
    N, K = weight.shape
    M = math.prod(y.shape[:-1])
    launch_gemm(_pointwise_tuned, pointwise_kernel, (y, weight, bias, scale, shift, out, M, N, K), act, y.dtype,
                M, N, K, config)



triton_pointwise = epilogue_custom_op(
    "triton_pointwise", _launch, "Writes ``scale * act(y @ weightᵀ + bias) + shift`` into ``out``; see ``pointwise``."
)


pointwise = epilogue_entry(
    "pointwise", pointwise_outputs, triton_pointwise,
    """``scale * act(x @ weightᵀ + bias) + shift`` with one fused Triton GEMM (x: the tokens ``y``).

    x: ``[..., K]`` contiguous, fp32/fp16/bf16; weight: ``[N, K]`` contiguous, x's dtype;
    bias/scale/shift: fp32 ``[N]``; act: "gelu" or "relu"; out: optional ``[..., N]`` contiguous
    tensor of x's dtype (allocated when None). Returns ``out``.
    Raises TypeError for wrong types/dtypes and ValueError for wrong shapes/devices/layouts
    (``ops._checks``).
    """,
)


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------


def kernel_specs() -> list[KernelSpec]:
    """One spec per config of ``pointwise_kernel``: bf16, GELU, N = K = 1536 (convmixer_1536_20).

    M, N and K are marked multiples of 16, as Triton specialises them at run time for the model's
    shapes (the vectorised, pipelined cp.async loads rely on it).
    """
    ty = "*" + TRITON_DTYPE_NAMES[torch.bfloat16]
    signature = {
        "y_ptr": ty, "weight_ptr": ty, "bias_ptr": "*fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32",
        "out_ptr": ty, "M": "i32", "N": "i32", "K": "i32",
    }
    return gemm_kernel_specs(pointwise_kernel, CONFIGS, signature, {}, K=1536, divisible_by_16=("M", "N", "K"))
