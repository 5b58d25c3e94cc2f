"""Fused stem (patch embedding): NCHW image -> NHWC tokens in one GEMM (DESIGN.md §2).

``tokens[b, hp, wp, :] = scale * act(patch(b, hp, wp) @ Wᵀ + bias) + shift`` where the patch is the
``Cin x p x p`` block of the image at ``(hp*p, wp*p)`` flattened as ``(cin, i, j)``, i.e. the conv
weight ``[C, Cin, p, p]`` seen as ``[N, K]`` with K = Cin*p*p. The kernel reads the image directly in
its own dtype and strides (NCHW, channels_last or any view): the patchify is the address
computation of the A loads (``gemm_tile`` with PATCH = p), the values are rounded to the weight
(model) dtype before the dot, and the tokens ``[B, H//p, W//p, C]`` are written in that dtype.
Rows/columns past the last whole patch are ignored (floor), as the strided conv does.
Reference: ``reference.stem_reference``. Shares its tile helpers with ``pointwise.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from convmixer_fast.ops._triton_utils import (
    TRITON_DTYPE_NAMES,
    KernelSpec,
    autotune,
    epilogue_custom_op,
)
from convmixer_fast.ops._checks import epilogue_entry, stem_outputs
from convmixer_fast.ops.pointwise import (
    GEMM_AUTOTUNE_KEY,
    epilogue_store,
    even_k,
    gemm_kernel_specs,
    gemm_tile,
    grouped_output_tile,
    launch_gemm,
)

# Candidates for H100 (bf16, K = 3*7*7 = 147 or 3*14*14 = 588, N = 768..1536, M = B*32*32 or
# B*16*16), from the tile arithmetic and register counts; not yet measured on a GPU.
# K is small and never a multiple of BLOCK_K and the A loads are gathers (one address per element),
# so K tiles stay small: the configs with BLOCK_K = 64 and 128x256 / 64-deep tiles spill on sm_80.
# The first config is the one the interpreter uses.
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
]


@triton.jit
def stem_kernel(
    image_ptr,  # [B, Cin, H, W], any strides, any float dtype
    weight_ptr,  # [N, K] = [C, Cin * PATCH * PATCH]
    bias_ptr,  # [N] fp32
    scale_ptr,  # [N] fp32
    shift_ptr,  # [N] fp32
    out_ptr,  # [M, N] = [B * Hp * Wp, C] tokens, weight dtype
    M,
    N,
    K,
    Hp,
    Wp,
    stride_ib,
    stride_ic,
    stride_ih,
    stride_iw,
    ACTIVATION: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    PATCH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    offs_m, n_start, rows, cols = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)  # rows: tokens
    # token m -> (b, hp, wp) -> element offset of the patch's top-left pixel of channel 0
    batch = rows // (Hp * Wp)
    patch_in_image = rows % (Hp * Wp)
    patch_row = patch_in_image // Wp
    patch_col = patch_in_image % Wp
    a_row_offsets = (
        batch.to(tl.int64) * stride_ib
        + (patch_row * PATCH).to(tl.int64) * stride_ih
        + (patch_col * PATCH).to(tl.int64) * stride_iw
    )  # [BLOCK_M] int64
    acc = gemm_tile(
        image_ptr, a_row_offsets, weight_ptr, cols, K, stride_ic, stride_ih, stride_iw,
        PATCH, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, DOT_PRECISION, DOT_IN_FP32,
    )  # [BLOCK_M, BLOCK_N] fp32
    epilogue_store(
        acc, offs_m, n_start, M, N, bias_ptr, scale_ptr, shift_ptr, out_ptr,
        ACTIVATION, BLOCK_M, BLOCK_N,
    )


_stem_tuned = autotune(CONFIGS, key=GEMM_AUTOTUNE_KEY)(
    triton.heuristics({"EVEN_K": even_k})(stem_kernel)
)


def _launch(image, weight, bias, scale, shift, act, out, config: triton.Config | None = None) -> None:
    """Launch on already validated tensors; ``config`` forces one config (tests), else autotune."""
    B, Cin, H, W = image.shape
    N, _, patch, _ = weight.shape
    Hp, Wp = H // patch, W // patch
    M, K = B * Hp * Wp, Cin * patch * patch
    args = (image, weight, bias, scale, shift, out, M, N, K, Hp, Wp, *image.stride())
    launch_gemm(_stem_tuned, stem_kernel, args, act, weight.dtype, M, N, K, config, PATCH=patch)


triton_stem = epilogue_custom_op(
    "triton_stem", _launch, "Writes the stem tokens of ``image`` into ``out`` ``[B, H//p, W//p, C]``; see ``stem``.", "image"
)


stem = epilogue_entry(
    "stem", stem_outputs, triton_stem,
    """Patch embedding of the image ``x`` ``[B, Cin, H, W]`` -> ``[B, H//p, W//p, C]`` tokens with
    one fused GEMM.

    x: fp32/fp16/bf16, any strides (read in place; need not match the weight dtype);
    weight: conv weight ``[C, Cin, p, p]`` contiguous, fp32/fp16/bf16 (the model dtype);
    bias/scale/shift: fp32 ``[C]``; act: "gelu" or "relu"; out: optional contiguous
    ``[B, H//p, W//p, C]`` tensor of the weight dtype that overlaps no input (allocated when None).
    Returns ``out``. Raises TypeError for wrong types/dtypes and ValueError for wrong
    shapes/devices/layouts or an overlapping ``out`` (``ops._checks``).
    """,
)


def kernel_specs() -> list[KernelSpec]:
    """One spec per config of ``stem_kernel``: bf16 weight, fp32 NCHW image, p = 7, Cin = 3, GELU.

    The image's unit W stride is a constant and N (1536) is marked a multiple of 16, as Triton
    specialises them at run time; the other integers stay plain i32.
    """
    ty = "*" + TRITON_DTYPE_NAMES[torch.bfloat16]
    signature = {
        "image_ptr": "*fp32", "weight_ptr": ty, "bias_ptr": "*fp32", "scale_ptr": "*fp32",
        "shift_ptr": "*fp32", "out_ptr": ty, "M": "i32", "N": "i32", "K": "i32", "Hp": "i32", "Wp": "i32",
        "stride_ib": "i32", "stride_ic": "i32", "stride_ih": "i32",
    }
    patch = 7
    return gemm_kernel_specs(stem_kernel, CONFIGS, signature, {"stride_iw": 1, "PATCH": patch},
                             K=3 * patch * patch, divisible_by_16=("N",))
