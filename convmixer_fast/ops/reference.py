"""Folded PyTorch references for the four fused kernels of DESIGN.md §2.

Activations travel as NHWC tokens: ``x`` is ``[B, H, W, C]`` (contiguous), i.e. the token matrix
``[B*H*W, C]``. Every reference computes in fp32 from the operands as the kernels see them (weights
and activations in the model dtype, bias / BN scale / BN shift in fp32) and rounds once to the
output dtype, which is the math the kernels implement (fp32 accumulation, fp32 epilogue).

These functions are the ``eager`` backend, the references the Triton and CUDA kernels are tested
against, and what ``python -m convmixer_fast verify`` compares with. They need nothing but torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "relu")


def apply_activation(z: torch.Tensor, act: str) -> torch.Tensor:
    """Exact (erf) GELU or ReLU."""
    if act == "gelu":
        return F.gelu(z)
    if act == "relu":
        return F.relu(z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")


def fused_epilogue(
    acc: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, act: str
) -> torch.Tensor:
    """``scale * act(acc + bias) + shift`` in fp32, per channel (last dimension)."""
    return apply_activation(acc + bias, act) * scale + shift


def stem_reference(
    image: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    act: str,
) -> torch.Tensor:
    """Patch embedding: ``[B, Cin, H, W]`` image (any float dtype) -> ``[B, H//p, W//p, C]`` tokens.

    ``weight`` is the conv weight ``[C, Cin, p, p]`` in the model dtype; the output has its dtype.
    The image is rounded to the model dtype before the GEMM, as the kernels do; rows and columns
    past the last whole patch are ignored, as the strided conv does.
    """
    B, Cin, H, W = image.shape
    C, _, p, _ = weight.shape
    # unfold (windows of p, step p) rather than a slice to Hp * p: the same patches, and no guard
    # Hp * p <= H, which torch.export cannot prove for symbolic H.
    patches = image.unfold(2, p, p).unfold(3, p, p)  # [B, Cin, Hp, Wp, p, p]
    Hp, Wp = patches.shape[2], patches.shape[3]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(B * Hp * Wp, Cin * p * p)  # [B*Hp*Wp, Cin*p*p]
    acc = patches.to(weight.dtype).float() @ weight.reshape(C, Cin * p * p).float().T
    tokens = fused_epilogue(acc, bias, scale, shift, act).to(weight.dtype)
    return tokens.reshape(B, Hp, Wp, C)


def depthwise_block_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    act: str,
) -> torch.Tensor:
    """``Y = X + scale * act(dwconv_k(X) + bias) + shift`` on ``[B, H, W, C]`` tokens.

    ``weight`` is ``[k, k, C]`` (tap-major, channels contiguous), stride 1, torch's "same" padding
    ((k-1)//2 before, k//2 after). The output has the dtype of ``x``.
    """
    C = x.shape[-1]
    conv_weight = weight.permute(2, 0, 1).unsqueeze(1).float()  # [C, 1, k, k]
    conv = F.conv2d(x.permute(0, 3, 1, 2).float(), conv_weight, padding="same", groups=C)
    y = x.float() + fused_epilogue(conv.permute(0, 2, 3, 1), bias, scale, shift, act)
    return y.to(x.dtype)


def pointwise_reference(
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    act: str,
) -> torch.Tensor:
    """``X' = scale * act(Y @ Wᵀ + bias) + shift``: ``[..., K]`` tokens, ``weight`` ``[N, K]``.

    The output ``[..., N]`` has the dtype of ``y``.
    """
    acc = y.float() @ weight.float().T
    return fused_epilogue(acc, bias, scale, shift, act).to(y.dtype)


def head_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Global average pool of ``[B, H, W, C]`` tokens, then the classifier ``weight`` ``[N, C]``.

    Returns ``[B, N]`` logits in the dtype of ``x``.
    """
    pooled = x.float().mean(dim=(1, 2))  # [B, C]
    return (pooled @ weight.float().T + bias).to(x.dtype)
