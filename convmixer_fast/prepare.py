"""Parameter preparation: from the module's weights to the operands the kernels read (DESIGN.md §2).

Done once per (device, dtype) and again when the weights change (``ConvMixer`` caches the result;
an fp32 model under a caller's 16-bit autocast gets a second set, in that dtype):
- every BatchNorm becomes a per-channel fp32 ``scale = gamma / sqrt(var + eps)`` and
  ``shift = beta - mean * scale`` (it follows the activation, so it stays an epilogue affine);
- conv biases become fp32 vectors; weights in the compute dtype (rounded once), in kernel layouts: stem
  ``[C, Cin, p, p]``, depthwise ``[k, k, C]``, pointwise ``[C, C]``, head ``[N, C]``;
- the last BatchNorm is folded into the classifier for the logits path (``head_folded``; a model
  without a classifier, ``num_classes=0``, has neither ``head`` nor ``head_folded``):
  ``W' = W * scale``, ``b' = b + W @ shift``. Pooling is linear, so this is exact algebra; the last
  pointwise block then runs with the identity affine (``last_pointwise_unfolded`` keeps the real
  one for ``forward_features``).
Folding arithmetic runs in fp32 (fp64 is missing on some devices, e.g. MPS) and is rounded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


class Epilogue(NamedTuple):
    """The fp32 per-channel vectors of ``scale * act(acc + bias) + shift`` (unpack with ``*``)."""

    bias: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


@dataclass(frozen=True)
class Linear:
    """A weight in the model dtype and its epilogue (or, for the head, an fp32 bias)."""

    weight: torch.Tensor
    epilogue: Epilogue | None = None
    bias: torch.Tensor | None = None


@dataclass(frozen=True)
class Block:
    depthwise: Linear  # weight [k, k, C]
    pointwise: Linear  # weight [C, C]


@dataclass(frozen=True)
class PreparedParams:
    act: str
    stem: Linear  # weight [C, Cin, p, p]
    blocks: tuple[Block, ...]  # the last block's pointwise epilogue has the identity affine
    last_pointwise_unfolded: Epilogue  # the real affine of the last block
    head: Linear | None  # weight [N, C], fp32 bias: applies to the features (None: no classifier)
    head_folded: Linear | None  # the head with the last BatchNorm folded in: applies to the logits path

    def blocks_for(self, fold_last_bn: bool) -> tuple[Block, ...]:
        """The blocks for the logits path (folded) or for features (the real last affine)."""
        if fold_last_bn:
            return self.blocks
        last = self.blocks[-1]
        unfolded = Block(last.depthwise, Linear(last.pointwise.weight, self.last_pointwise_unfolded))
        return self.blocks[:-1] + (unfolded,)


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in fp32 of an eval-mode BatchNorm."""
    inv_std = torch.rsqrt(bn.running_var.float() + bn.eps)
    scale = bn.weight.float() * inv_std
    return scale, bn.bias.float() - bn.running_mean.float() * scale


def kernel_operand(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and 16-byte aligned (TMA and vector loads need it; a parameter loaded as a
    view into a larger checkpoint buffer may start anywhere): itself when it already is."""
    t = t.detach().contiguous()
    if torch.compiler.is_compiling() or t.data_ptr() % 16 == 0:  # compiled graphs allocate aligned
        return t
    return t.clone()


def _epilogue(conv_bias: torch.Tensor, bn: nn.BatchNorm2d) -> Epilogue:
    scale, shift = batchnorm_affine(bn)
    return Epilogue(kernel_operand(conv_bias.float()), scale, shift)


@torch.no_grad()
def prepare_params(model, dtype: torch.dtype | None = None) -> PreparedParams:
    """Prepared operands of a ``convmixer_fast.ConvMixer`` on its own device, weights in ``dtype``
    (default: the model's; an fp32 model under a caller's 16-bit autocast asks for that dtype)."""
    dim = model.dim
    dtype = dtype or model.stem[0].weight.dtype

    def weight(t: torch.Tensor) -> torch.Tensor:
        return kernel_operand(t.to(dtype))

    stem_conv, _, stem_bn = model.stem
    stem = Linear(weight(stem_conv.weight), _epilogue(stem_conv.bias, stem_bn))
    blocks = []
    for residual, pw_conv, _, pw_bn in model.blocks:
        dw_conv, _, dw_bn = residual.fn
        depthwise = Linear(weight(dw_conv.weight[:, 0].permute(1, 2, 0)), _epilogue(dw_conv.bias, dw_bn))
        pointwise = Linear(weight(pw_conv.weight.reshape(dim, dim)), _epilogue(pw_conv.bias, pw_bn))
        blocks.append(Block(depthwise, pointwise))

    # The logits path applies the last affine inside the head: the last block writes act(z).
    head = head_folded = None
    if model.n_classes:
        last_scale, last_shift = batchnorm_affine(model.blocks[-1][3])
        head_weight = model.head.weight.detach()
        head = Linear(weight(head_weight), bias=kernel_operand(model.head.bias.float()))
        head_folded = Linear(
            (head_weight.float() * last_scale).to(dtype).contiguous(),
            bias=(model.head.bias.float() + head_weight.float() @ last_shift).float(),
        )
    real = blocks[-1].pointwise.epilogue
    identity = Epilogue(real.bias, torch.ones_like(real.scale), torch.zeros_like(real.shift))
    blocks[-1] = Block(blocks[-1].depthwise, Linear(blocks[-1].pointwise.weight, identity))
    return PreparedParams(model.activation, stem, tuple(blocks), real, head, head_folded)
