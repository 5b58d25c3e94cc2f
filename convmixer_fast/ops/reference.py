"""Folded PyTorch references for the four fused kernels of DESIGN.md §2.

Activations travel as NHWC tokens: ``x`` is ``[B, H, W, C]`` (contiguous), i.e. the token matrix
``[B*H*W, C]``. Every reference computes in fp32 from the operands as the kernels see them (weights
and activations in the model dtype, bias / BN scale / BN shift in fp32) and rounds once to the
output dtype, which is the math the kernels implement (fp32 accumulation, fp32 epilogue).

These functions are the ``eager`` backend, the references the Triton and CUDA kernels are tested
against, and what ``python -m convmixer_fast verify`` compares with. They need nothing but torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "relu")


def activation_(z: torch.Tensor, act: str) -> torch.Tensor:
    """Exact (erf) GELU or ReLU of ``z``, in place."""
    if act == "gelu":
        return torch.ops.aten.gelu_(z)
    if act == "relu":
        return z.relu_()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")


def epilogue_(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, act: str) -> torch.Tensor:
    """``scale * act(z) + shift`` per channel (last dimension), in place of ``z``: the fp32
    accumulator with its bias added, a tensor of the reference's own. In place, the epilogue
    allocates nothing: on the CPU, where these references are the model, a fresh activation-sized
    tensor per step cost more than the step's arithmetic (benchmarks/NOTES.md §10)."""
    return activation_(z, act).mul_(scale).add_(shift)


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
    acc = torch.addmm(bias.float(), patches.to(weight.dtype).float(), weight.reshape(C, Cin * p * p).float().T)
    return epilogue_(acc, scale, shift, act).to(weight.dtype).reshape(B, Hp, Wp, C)


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
    conv = F.conv2d(x.permute(0, 3, 1, 2).float(), conv_weight, bias.float(), padding="same", groups=C)
    y = epilogue_(conv.permute(0, 2, 3, 1), scale, shift, act).add_(x)  # [B, H, W, C]
    # (contiguous: a no-op where the convolution keeps the input's channels-last layout, as mkldnn
    # and cuDNN do)
    return y.to(x.dtype).contiguous()


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
    tokens = y.reshape(math.prod(y.shape[:-1]), y.shape[-1])  # (not -1: K may be 0)
    acc = torch.addmm(bias.float(), tokens.float(), weight.float().T)  # [tokens, N]
    return epilogue_(acc, scale, shift, act).to(y.dtype).reshape(*y.shape[:-1], weight.shape[0])


def head_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Global average pool of ``[B, H, W, C]`` tokens, then the classifier ``weight`` ``[N, C]``.

    Returns ``[B, N]`` logits in the dtype of ``x``.
    """
    pooled = x.mean(dim=(1, 2), dtype=torch.float32)  # [B, C]
    return torch.addmm(bias.float(), pooled, weight.float().T).to(x.dtype)
