"""Fused pointwise (1x1 conv) GEMM: ``X' = scale * act(Y @ Wᵀ + bias) + shift`` (DESIGN.md §2).

``y`` is ``[..., K]`` NHWC tokens (contiguous, i.e. the token matrix ``[M, K]`` with M = B*H*W),
``weight`` ``[N, K]`` contiguous in y's dtype, ``bias`` / ``scale`` / ``shift`` fp32 ``[N]``; the
output ``[..., N]`` has y's dtype. The GEMM accumulates in fp32 on the tensor cores (wgmma on
Hopper for 16-bit operands), bias + activation + BN affine are applied in fp32 in the epilogue and
the result is rounded once at the store. Reference: ``reference.pointwise_reference``.

fp32 inputs use TF32 only where torch allows it for matmuls (``_tf32.matmul_allows_tf32``; exact
fp32 otherwise), like ``torch.matmul``. On a GPU the configs whose operand tiles do not fit its shared
memory are left out (``configs_that_fit``: in fp32 on an H100, five of the seven pointer configs).

The autotuner chooses among two kinds of configs (``CONFIGS``): one program per output tile with
pointer loads (``gemm_tile``, cp.async on Hopper), and, where ``tma_loads_apply`` (16-bit operands,
aligned, a GPU with a TMA unit), persistent programs that walk the tiles and load the operands
through the TMA unit from tensor descriptors built on the device (``tma_gemm_tile``).

The tile helpers (``grouped_output_tile``, ``gemm_tile``, ``epilogue_store``) are shared with the
stem kernel (``stem.py``), whose A operand is the patchified image instead of a token matrix.
"""

from __future__ import annotations

import contextvars
import functools
import math
from typing import Callable

import torch
import triton
import triton.language as tl

from convmixer_fast._settings import TRITON_COMPILE_OPTIONS
from convmixer_fast._tf32 import matmul_allows_tf32
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
    max_shared_memory,
)
from convmixer_fast.ops._checks import epilogue_entry, pointwise_outputs


# --------------------------------------------------------------------------------------------
# Shared tile helpers (also used by stem.py)
# --------------------------------------------------------------------------------------------


@triton.jit
def grouped_tile(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(``tile_m``, ``tile_n``): the row and column tile of output tile number ``tile`` of the
    [M, N] output, in grouped order.

    GROUP_M consecutive row tiles sweep the column tiles together, so programs running at the same
    time share their A rows and weight columns in L2 instead of streaming the whole weight per row.
    """
    num_tiles_m = tl.cdiv(M, BLOCK_M)
    num_tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * num_tiles_n
    group = tile // tiles_per_group
    first_tile_m = group * GROUP_M
    group_rows = tl.minimum(num_tiles_m - first_tile_m, GROUP_M)  # the last group may be short
    tile_m = first_tile_m + (tile % tiles_per_group) % group_rows
    tile_n = (tile % tiles_per_group) // group_rows
    return tile_m, tile_n


@triton.jit
def grouped_output_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's tile of the [M, N] output (``grouped_tile`` of the program id): (``offs_m``
    [BLOCK_M], its unclamped rows for the store; ``n_start``, its first column; ``rows`` [BLOCK_M]
    and ``cols`` [BLOCK_N], rows and columns wrapped into range for the loads, which then need no
    mask)."""
    tile_m, tile_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    return offs_m, tile_n * BLOCK_N, offs_m % M, offs_n % N


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """``acc + a @ b`` in fp32; DOT_IN_FP32: on exact fp32 copies of the 16-bit operands (the same
    products), only for Triton's CPU interpreter, whose bf16 tl.dot returns garbage (triton 3.6
    and 3.9)."""
    if DOT_IN_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


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
    valid indices by the caller; K is masked here unless EVEN_K (K % BLOCK_K == 0). DOT_* as in
    ``_dot``.
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
        acc = _dot(a_tile, w_tile, acc, DOT_PRECISION, DOT_IN_FP32)
    return acc


@triton.jit
def tma_gemm_tile(
    a_desc,  # [M, K] tensor descriptor, blocks [BLOCK_M, BLOCK_K]
    weight_desc,  # [N, K] tensor descriptor, blocks [BLOCK_N, BLOCK_K]
    m_start,
    n_start,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """fp32 ``acc[BLOCK_M, BLOCK_N] = A[m_start:, :] @ weight[n_start:, :]ᵀ`` over the whole K, the
    operand tiles loaded by the TMA unit, which fills rows and columns past the tensors' ends with
    zeros (no clamping, no K mask). DOT_* as in ``_dot``."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # [BLOCK_M, BLOCK_N]
    for k_start in range(0, K, BLOCK_K):
        a_tile = a_desc.load([m_start, k_start])  # [BLOCK_M, BLOCK_K]
        w_tile = weight_desc.load([n_start, k_start])  # [BLOCK_N, BLOCK_K]
        acc = _dot(a_tile, w_tile.T, acc, DOT_PRECISION, DOT_IN_FP32)
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
    if dtype == torch.float32 and not matmul_allows_tf32():
        return "ieee"
    return "tf32"


# What a GEMM kernel's autotuner keys its choice on (Triton adds the tensor arguments' dtypes): the
# problem size and the dot precision, since an fp32 GEMM runs on the tensor cores in TF32 and on the
# FMA units in "ieee" (an H100's spec sheet: ~495 against ~67 TFLOP/s), and ``dot_precision`` follows
# torch's TF32 switch, which a program may change between calls.
GEMM_AUTOTUNE_KEY = ["M", "N", "K", "DOT_PRECISION"]


# Programs of a persistent launch (configs with TMA=True) per SM: two, so that where a config's
# shared memory lets both be resident one's epilogue overlaps the other's main loop, as a
# non-persistent launch overlaps its CTAs; where it does not, the second wave takes its share of the
# tiles after the first. Under the interpreter, where there are no SMs to count,
# INTERPRETER_PERSISTENT_PROGRAMS: few, so that the tests see programs walk several tiles.
PERSISTENT_PROGRAMS_PER_SM = 2
INTERPRETER_PERSISTENT_PROGRAMS = 3


def persistent_programs(device: torch.device) -> int:
    """Programs a persistent GEMM launches at most: ``PERSISTENT_PROGRAMS_PER_SM`` per SM of
    ``device`` (the interpreter: ``INTERPRETER_PERSISTENT_PROGRAMS``)."""
    if device.type != "cuda":
        return INTERPRETER_PERSISTENT_PROGRAMS
    return PERSISTENT_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def _with_torch_scratch(device: torch.device, launch: Callable[[], None]) -> None:
    """``launch()`` with Triton's allocator set to torch's on ``device``: kernels that build tensor
    descriptors on the device keep them in global scratch memory that the launch asks that allocator
    for (128 bytes per descriptor and program, released when the launch returns, stream-ordered as
    torch's allocations are, so CUDA graph capture takes it from the graph's pool). Run in a copy of
    the caller's context (``contextvars``): the caller's own allocator setting stays as it was."""
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device))
    launch()


def launch_gemm(tuned, kernel, args: tuple, act: str, dtype: torch.dtype, M: int, N: int, K: int,
                config: triton.Config | None, tma: bool = False, **constexprs) -> None:
    """Launch a GEMM kernel of this tiling on ``args`` (the first one a tensor on the launch
    device), the epilogue's ``act`` and the operand ``dtype``'s dot settings, and the kernel's own
    ``constexprs``: through its autotuner ``tuned``, or at ``config`` (tests), with ``EVEN_K`` as the
    ``even_k`` heuristic sets it. One program per ``BLOCK_M x BLOCK_N`` output tile, except for
    configs with ``TMA`` True (``tma``: such configs may run; the pointwise kernel's), which are
    persistent: ``persistent_programs`` programs at most, each walking tiles, with the allocator of
    ``_with_torch_scratch`` for their tensor descriptors. An empty output launches nothing."""
    if M == 0 or N == 0:
        return
    meta = {"ACTIVATION": ACTIVATION_CODES[act], "DOT_PRECISION": dot_precision(dtype),
            "DOT_IN_FP32": dot_in_fp32(dtype), **constexprs, **TRITON_COMPILE_OPTIONS}
    device = args[0].device

    def grid(kw):
        tiles = triton.cdiv(M, kw["BLOCK_M"]) * triton.cdiv(N, kw["BLOCK_N"])
        return (min(tiles, persistent_programs(device)) if kw.get("TMA") else tiles,)

    def launch():
        if config is None:
            tuned[grid](*args, **meta)
        else:
            kw = dict(config.kwargs, EVEN_K=K % config.kwargs["BLOCK_K"] == 0)
            kernel[grid(kw)](*args, **meta, **kw, num_warps=config.num_warps, num_stages=config.num_stages)

    with device_guard(args[0]):
        if tma:
            contextvars.copy_context().run(_with_torch_scratch, device, launch)
        else:
            launch()


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

# Candidates for H100 (bf16, dim 768/1024/1536, M = 1024 .. 262144), chosen from the tile
# arithmetic; which win where is not yet measured on a GPU (benchmarks/NOTES.md §8: tune-gemm, and
# bench-ops records each config's time). The first config is the one the interpreter uses, and with
# CONVMIXER_FAST_TRITON_AUTOTUNE=0 the first that fits the GPU. Shared memory per stage:
# (BLOCK_M + BLOCK_N) * BLOCK_K * 2 bytes (4 in fp32: ``shared_memory_bytes``).
# TMA=False: one program per output tile, operands through pointer loads (cp.async on Hopper);
# TMA=True: persistent (``persistent_programs`` walk the tiles in grouped order), operands through the
# TMA unit from tensor descriptors built on the device; these run where ``tma_loads_apply``.
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "TMA": False}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "TMA": False}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "TMA": False}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "TMA": False}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "TMA": False}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "TMA": False}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "TMA": False}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "TMA": True}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "TMA": True}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "TMA": True}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "TMA": True}, num_warps=4, num_stages=4),
]
TMA_DTYPES = (torch.float16, torch.bfloat16)  # the tensor-core operands TMA configs are for
# Shared memory of a config beyond its operand stages: the TMA configs' barriers (32 bytes at 4
# stages), a margin for the others (whose stages Triton 3.6 and 3.9 allocate to the byte, fp32 and
# 16-bit, sm_90a and sm_80).
SHARED_MEMORY_SLACK = 64


def shared_memory_bytes(config: triton.Config, element_size: int) -> int:
    """Shared memory per program of a pointwise config on operands of ``element_size`` bytes:
    ``num_stages`` x (BLOCK_M + BLOCK_N) x BLOCK_K elements, plus ``SHARED_MEMORY_SLACK``."""
    kw = config.kwargs
    return config.num_stages * (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * element_size + SHARED_MEMORY_SLACK


def configs_that_fit(configs: list[triton.Config], element_size: int, limit: int) -> list[triton.Config]:
    """The ``configs`` whose shared memory (``shared_memory_bytes``) is within ``limit``; where none
    is (fp32 on a GPU with ~100 KB per block), the least of them with fewer stages (down to 2), then
    a halved BLOCK_K (down to 16), until it is."""
    fitting = [c for c in configs if shared_memory_bytes(c, element_size) <= limit]
    if fitting:
        return fitting
    config = min(configs, key=lambda c: shared_memory_bytes(c, element_size))
    while shared_memory_bytes(config, element_size) > limit:
        kwargs, stages = dict(config.kwargs), config.num_stages
        if stages > 2:
            stages -= 1
        elif kwargs["BLOCK_K"] > 16:
            kwargs["BLOCK_K"] //= 2
        else:
            break  # (no GPU Triton runs on has so little: its launch says what it needed)
        config = triton.Config(kwargs, num_warps=config.num_warps, num_stages=stages)
    return [config]


def _prune_configs(configs, named_args, **kwargs):
    """``configs_that_fit`` the operands' GPU (``max_shared_memory``); all of them elsewhere."""
    y = named_args["y_ptr"]
    if y.device.type != "cuda":
        return configs
    return configs_that_fit(configs, y.element_size(), max_shared_memory(y.device))


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
    TMA: tl.constexpr,
):
    if TMA:
        y_desc = tl.make_tensor_descriptor(y_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
        weight_desc = tl.make_tensor_descriptor(
            weight_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K]
        )
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0)):
            tile_m, tile_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            acc = tma_gemm_tile(
                y_desc, weight_desc, tile_m * BLOCK_M, tile_n * BLOCK_N, K,
                BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION, DOT_IN_FP32,
            )  # [BLOCK_M, BLOCK_N] fp32
            epilogue_store(
                acc, tile_m * BLOCK_M + tl.arange(0, BLOCK_M), tile_n * BLOCK_N, M, N,
                bias_ptr, scale_ptr, shift_ptr, out_ptr, ACTIVATION, BLOCK_M, BLOCK_N,
            )
    else:
        offs_m, n_start, rows, cols = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = gemm_tile(
            y_ptr, rows.to(tl.int64) * K, weight_ptr, cols, K, 1, 0, 0,
            0, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, DOT_PRECISION, DOT_IN_FP32,
        )  # [BLOCK_M, BLOCK_N] fp32
        epilogue_store(
            acc, offs_m, n_start, M, N, bias_ptr, scale_ptr, shift_ptr, out_ptr,
            ACTIVATION, BLOCK_M, BLOCK_N,
        )


# Which configs each autotuner of the kernel benchmarks: "any", the op's, every config that applies
# (without the TMA ones where ``tma_loads_apply`` is False: that case runs "pointer", as the
# autotuner's cache key, ``GEMM_AUTOTUNE_KEY`` and dtypes, cannot tell the two apart); "pointer" and
# "tma", one form each, also for ``bench-ops`` to time each form on its own (``VARIANTS``).
CONFIG_KINDS = {
    "any": lambda config: True,
    "pointer": lambda config: not config.kwargs["TMA"],
    "tma": lambda config: config.kwargs["TMA"],
}
_pointwise_tuned = {
    kind: autotune([c for c in CONFIGS if keeps(c)], key=GEMM_AUTOTUNE_KEY, prune=_prune_configs)(
        triton.heuristics({"EVEN_K": even_k})(pointwise_kernel)
    )
    for kind, keeps in CONFIG_KINDS.items()
}


def tma_loads_apply(y: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the TMA configs may run on these operands: 16-bit (``TMA_DTYPES``), on a GPU with
    a TMA unit (compute capability 9.0 and later) or in the interpreter, with what a tensor
    descriptor needs: both base addresses and the row pitch (K elements) multiples of 16 bytes."""
    if y.dtype not in TMA_DTYPES or (weight.shape[1] * y.element_size()) % 16:
        return False
    if y.data_ptr() % 16 or weight.data_ptr() % 16:
        return False
    if y.device.type == "cuda":
        return torch.cuda.get_device_properties(y.device).major >= 9
    return is_interpreting()


def tma_requirements(y: torch.Tensor, weight: torch.Tensor) -> str:
    """What the TMA configs need (``tma_loads_apply``) and what these operands are: the reason a TMA
    config is refused them."""
    return (f"a TMA config needs float16/bfloat16 operands, 16-byte aligned, with K * {y.element_size()} bytes a "
            f"multiple of 16 and a GPU with a TMA unit; got {y.dtype}, K={weight.shape[1]}, addresses "
            f"{y.data_ptr() % 16} and {weight.data_ptr() % 16} mod 16, device {y.device}")


def _launch(y, weight, bias, scale, shift, act, out, config: triton.Config | None = None, kind: str = "any") -> None:
    """Launch on already validated tensors; ``config`` forces one config (tests), else the
    autotuner of ``kind`` (``CONFIG_KINDS``) chooses."""
    N, K = weight.shape
    M = math.prod(y.shape[:-1])
    tma = tma_loads_apply(y, weight)
    if not tma and (kind == "tma" or (config is not None and config.kwargs["TMA"])):
        raise ValueError(f"pointwise: {tma_requirements(y, weight)}")
    tuned = _pointwise_tuned["pointer" if kind == "any" and not tma else kind]
    launch_gemm(tuned, pointwise_kernel, (y, weight, bias, scale, shift, out, M, N, K), act, y.dtype, M, N, K,
                config, tma=tma)


triton_pointwise = epilogue_custom_op(
    "triton_pointwise", _launch, "Writes ``scale * act(y @ weightᵀ + bias) + shift`` into ``out``; see ``pointwise``.", "y"
)


pointwise = epilogue_entry(
    "pointwise", pointwise_outputs, triton_pointwise,
    """``scale * act(x @ weightᵀ + bias) + shift`` with one fused Triton GEMM (x: the tokens ``y``).

    x: ``[..., K]`` contiguous, fp32/fp16/bf16; weight: ``[N, K]`` contiguous, x's dtype;
    bias/scale/shift: fp32 ``[N]``; act: "gelu" or "relu"; out: optional ``[..., N]`` contiguous
    tensor of x's dtype that overlaps no input (allocated when None). Returns ``out``.
    Raises TypeError for wrong types/dtypes and ValueError for wrong shapes/devices/layouts or an
    overlapping ``out`` (``ops._checks``).
    """,
)


# The op with one form of config each, for ``bench-ops`` to time on its own until the measurements
# settle which stay (benchmarks/NOTES.md §8); "tma" raises ValueError where ``tma_loads_apply`` is False.
VARIANTS = {
    "pointwise": {
        kind: epilogue_entry(
            "pointwise", pointwise_outputs, functools.partial(_launch, kind=kind),
            f"``pointwise`` autotuned over its {kind!r} configs only (``CONFIG_KINDS``).",
        )
        for kind in ("pointer", "tma")
    }
}


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
