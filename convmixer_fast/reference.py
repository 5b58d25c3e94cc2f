"""The eager ConvMixer exactly as the original repo (locuslab/convmixer, ``convmixer.py``) defines it.

An ``nn.Sequential`` with the original module nesting, so its ``state_dict`` keys are the original
ones (``0.*`` stem conv, ``2.*`` stem BN, ``{3+j}.0.fn.0.*`` depthwise conv, ...; DESIGN.md §1).
The activation is a parameter (the original hard-codes ``nn.GELU``; convmixer_768_32 uses ReLU) and
so is the number of input channels. Tests and benchmarks import this model; nothing copies it.
"""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """``fn(x) + x``, as in the original repo (its child is named ``fn``)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


def ConvMixerReference(
    dim: int,
    depth: int,
    kernel_size: int = 9,
    patch_size: int = 7,
    n_classes: int = 1000,
    *,
    in_chans: int = 3,
    activation: type[nn.Module] = nn.GELU,
) -> nn.Sequential:
    """The original ``ConvMixer(dim, depth, kernel_size, patch_size, n_classes)``."""
    return nn.Sequential(
        nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size),
        activation(),
        nn.BatchNorm2d(dim),
        *[
            nn.Sequential(
                Residual(
                    nn.Sequential(
                        nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"),
                        activation(),
                        nn.BatchNorm2d(dim),
                    )
                ),
                nn.Conv2d(dim, dim, kernel_size=1),
                activation(),
                nn.BatchNorm2d(dim),
            )
            for _ in range(depth)
        ],
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(dim, n_classes),
    )
