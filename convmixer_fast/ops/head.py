"""Head: global average pool of the NHWC tokens, then the classifier (DESIGN.md §2, last row).

``logits = mean_{h,w}(X[b, h, w, :]) @ Wᵀ + bias`` for ``X`` ``[B, H, W, C]`` in the model dtype,
``W`` ``[N, C]`` in the model dtype and ``bias`` fp32 ``[N]``; logits ``[B, N]`` in the model dtype.

Two kernels, launched back to back by one op:

1. ``_head_pool_kernel``: grid ``(B, cdiv(C, BLOCK_C))``. Each program sums a ``BLOCK_C``-wide
   column strip of one image over all ``H*W`` tokens in fp32 and writes the mean to the fp32
   workspace ``pooled`` ``[B, C]``. X is read exactly once, and a 32x32x1536 map is spread over
   ``1536 / BLOCK_C`` programs even at batch 1 (small ``BLOCK_C`` configs are there for that).
   No atomics: every output element is owned by one program, so the result is deterministic.
2. ``_head_classifier_kernel``: grid ``(cdiv(B, BLOCK_B), cdiv(N, BLOCK_N))``. A small GEMM
   ``pooled @ Wᵀ`` with fp32 operands (the weight is widened from the model dtype, the pooled
   means stay fp32) on tensor cores with ``input_precision="tf32x3"`` (three tf32 products, about
   fp32 accuracy; a 16-bit weight is exact in tf32), fp32 accumulation, + bias, rounded once at
   the store.

The workspace is an argument so that a caller (a CUDA graph, the model) can preallocate it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._settings import TRITON_COMPILE_OPTIONS
from ._checks import check_apart, head_outputs
from ._triton_utils import KernelSpec, TRITON_DTYPE_NAMES, autotune, config_label, device_guard

__all__ = ["head", "kernel_specs", "POOL_CONFIGS", "CLASSIFIER_CONFIGS"]


# Pool: BLOCK_HW tokens x BLOCK_C channels per loop step. Small BLOCK_C gives more programs at
# batch 1 (C / BLOCK_C of them per image); BLOCK_C * 2 bytes >= 32 keeps every row read a whole
# 32-byte sector for 16-bit dtypes.
POOL_CONFIGS = [
    triton.Config({"BLOCK_HW": 64, "BLOCK_C": 32}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_HW": 128, "BLOCK_C": 16}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_HW": 128, "BLOCK_C": 32}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK_HW": 64, "BLOCK_C": 64}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_HW": 32, "BLOCK_C": 128}, num_warps=4, num_stages=1),
]

# Classifier: [BLOCK_B, BLOCK_K] pooled x [BLOCK_K, BLOCK_N] weight per step (tl.dot needs >= 16).
# BLOCK_K stays 32: the tf32x3 operand splits live in registers and grow with BLOCK_K * BLOCK_N.
# Small BLOCK_N spreads the weight (the bulk of the bytes at small batch) over more programs.
CLASSIFIER_CONFIGS = [
    triton.Config({"BLOCK_B": 16, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_B": 16, "BLOCK_N": 16, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_B": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_B": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=3),
]


@autotune(POOL_CONFIGS, key=["B", "HW", "C"])
@triton.jit
def _head_pool_kernel(
    x_ptr,  # [B, HW, C] tokens, model dtype, contiguous
    pooled_ptr,  # [B, C] fp32 workspace (output: the means)
    B,
    HW,
    C,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    image = tl.program_id(0)
    channel_block = tl.program_id(1)

    channels = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    channel_mask = channels < C
    x_image = x_ptr + image.to(tl.int64) * HW * C  # int64: B * HW * C may pass 2**31

    partial_sums = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)  # [BLOCK_HW, BLOCK_C]
    for token_start in range(0, HW, BLOCK_HW):
        tokens = token_start + tl.arange(0, BLOCK_HW)  # [BLOCK_HW]
        mask = (tokens[:, None] < HW) & channel_mask[None, :]  # [BLOCK_HW, BLOCK_C]
        tile = tl.load(x_image + tokens[:, None] * C + channels[None, :], mask=mask, other=0.0)
        partial_sums += tile.to(tl.float32)
    channel_sums = tl.sum(partial_sums, axis=0)  # [BLOCK_C]
    means = channel_sums / HW  # fp32 / i32 -> fp32
    tl.store(pooled_ptr + image.to(tl.int64) * C + channels, means, mask=channel_mask)


@autotune(CLASSIFIER_CONFIGS, key=["B", "N", "C"])
@triton.jit
def _head_classifier_kernel(
    pooled_ptr,  # [B, C] fp32
    weight_ptr,  # [N, C] model dtype
    bias_ptr,  # [N] fp32
    out_ptr,  # [B, N] model dtype
    B,
    N,
    C,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    batch_block = tl.program_id(0)
    class_block = tl.program_id(1)

    images = batch_block * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B]
    classes = class_block * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    image_mask = images < B
    class_mask = classes < N
    pooled_rows = pooled_ptr + images.to(tl.int64)[:, None] * C  # [BLOCK_B, 1]
    weight_rows = weight_ptr + classes.to(tl.int64)[None, :] * C  # [1, BLOCK_N]

    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)  # [BLOCK_B, BLOCK_N]
    for k_start in range(0, C, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_mask = ks < C
        pooled = tl.load(
            pooled_rows + ks[None, :], mask=image_mask[:, None] & k_mask[None, :], other=0.0
        )  # [BLOCK_B, BLOCK_K] fp32
        weight_t = tl.load(
            weight_rows + ks[:, None], mask=k_mask[:, None] & class_mask[None, :], other=0.0
        )  # [BLOCK_K, BLOCK_N] model dtype
        acc = tl.dot(pooled, weight_t.to(tl.float32), acc, input_precision="tf32x3")

    bias = tl.load(bias_ptr + classes, mask=class_mask, other=0.0)  # [BLOCK_N] fp32
    logits = acc + bias[None, :]  # [BLOCK_B, BLOCK_N]
    out_offsets = images.to(tl.int64)[:, None] * N + classes[None, :]
    tl.store(
        out_ptr + out_offsets,
        logits.to(out_ptr.dtype.element_ty),
        mask=image_mask[:, None] & class_mask[None, :],
    )



@torch.library.custom_op("convmixer_fast::triton_head", mutates_args=("pooled", "out"))
def triton_head(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pooled: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Pool ``x`` ``[B, H, W, C]`` into ``pooled`` (fp32 ``[B, C]``); ``out = pooled @ Wᵀ + b``."""
    check_apart("head", {"pooled": pooled, "out": out}, {"x": x, "weight": weight, "bias": bias})
    B, H, W, C = x.shape
    N = weight.shape[0]
    HW = H * W
    with device_guard(x):
        _head_pool_kernel[lambda meta: (B, triton.cdiv(C, meta["BLOCK_C"]))](
            x, pooled, B, HW, C, **TRITON_COMPILE_OPTIONS
        )
        _head_classifier_kernel[
            lambda meta: (triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(N, meta["BLOCK_N"]))
        ](pooled, weight, bias, out, B, N, C, **TRITON_COMPILE_OPTIONS)


@triton_head.register_fake
def _(x, weight, bias, pooled, out) -> None:
    return None


def head(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pooled: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``[B, N]`` (dtype of ``x``) of the pooled tokens ``x`` ``[B, H, W, C]``.

    ``weight`` ``[N, C]`` has the dtype of ``x``, ``bias`` is fp32 ``[N]``. ``pooled`` (fp32
    ``[B, C]``, the workspace: on return it holds the channel means) and ``out`` (``[B, N]``, dtype
    of ``x``) are allocated when None; they must overlap neither an input nor each other. All tensors
    must be contiguous and on one device. Raises ``TypeError`` for a wrong dtype and ``ValueError``
    for a wrong shape, contiguity, device or overlap (``ops._checks``).
    """
    pooled, out = head_outputs(x, weight, bias, pooled, out)
    triton_head(x, weight, bias, pooled, out)
    return out


def kernel_specs() -> list[KernelSpec]:
    """Both head kernels at every autotune config, bf16 (B=64, 32x32 tokens, C=1536, N=1000)."""
    dtype = TRITON_DTYPE_NAMES[torch.bfloat16]
    specs = []
    pool_fn = _head_pool_kernel.fn  # the @triton.jit function under the autotuner
    for config in POOL_CONFIGS:
        specs.append(
            KernelSpec(
                kernel="head_pool",
                fn=pool_fn,
                signature={"x_ptr": f"*{dtype}", "pooled_ptr": "*fp32", "B": "i32", "HW": "i32",
                           "C": "i32"},
                constexprs=dict(config.kwargs),
                num_warps=config.num_warps,
                num_stages=config.num_stages,
                config=config_label(config),
            )
        )
    classifier_fn = _head_classifier_kernel.fn
    for config in CLASSIFIER_CONFIGS:
        specs.append(
            KernelSpec(
                kernel="head_classifier",
                fn=classifier_fn,
                signature={"pooled_ptr": "*fp32", "weight_ptr": f"*{dtype}", "bias_ptr": "*fp32",
                           "out_ptr": f"*{dtype}", "B": "i32", "N": "i32", "C": "i32"},
                constexprs=dict(config.kwargs),
                num_warps=config.num_warps,
                num_stages=config.num_stages,
                config=config_label(config),
            )
        )
    return specs
