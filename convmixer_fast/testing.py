"""Trained-looking random weights for tests, ``verify`` and benchmarks.

Fresh BatchNorm layers are identities (mean 0, var 1, gamma 1, beta 0) and would hide folding bugs;
random running statistics that do not match the activations would let values grow block after
block. So: random gamma / beta, then running statistics calibrated on random images (one forward in
training mode with a cumulative average), as a trained network's would be.

Calibrate at the image size the model will run at. On a smaller token map more of each depthwise
window lies in the zero padding, so the statistics under-estimate the variances at the larger map,
and the residual stream grows block after block: calibrated at 64 px and run at 224 px, the
largest activation of ConvMixer-1536/20 reached ~1e5 (past fp16's 65,504), of ConvMixer-768/32
~5e6, and of ConvMixer-1024/20 (patch 14) ~1e10; calibrated at 224 px, 17, 64 and 35.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_weights_(model: nn.Module, *, image_size: int, seed: int = 0, batch: int = 4) -> nn.Module:
    """Give ``model`` (a reference ``nn.Sequential``, timm or convmixer_fast ConvMixer) random,
    trained-looking weights in place, its BatchNorm statistics calibrated on ``batch`` random
    images of ``image_size`` x ``image_size`` (the size it will run at); returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    first = next(model.parameters())
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            bound = (3.0 / fan_in) ** 0.5
            weight = (torch.rand(module.weight.shape, generator=generator) * 2 - 1) * bound
            module.weight.copy_(weight)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
            module.reset_running_stats()
    in_chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    images = torch.randn(batch, in_chans, image_size, image_size, generator=generator)
    _calibrate_batchnorm(model, images.to(device=first.device, dtype=first.dtype))
    return model


def _calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    from .model import ConvMixer

    eager = model if not isinstance(model, ConvMixer) else nn.Sequential(model.stem, model.blocks)
    bns = [m for m in eager.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = None  # cumulative average over the calibration pass
        bn.train()
    eager(images)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()
