"""Shared by the model-level tests: trained-looking models and the timm layout without timm."""

from __future__ import annotations

import sys
import threading

import pytest
import torch
from torch import nn

from convmixer_fast.reference import ConvMixerReference, Residual
from convmixer_fast.testing import randomize_weights_

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
# torch.export's dynamic_shapes entry of an image batch: any batch; H and W of at least two patches
# of 2 (torch specializes a token map's size 1, so a dynamic size needs at least 2 tokens).
DYNAMIC_IMAGE = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("height", min=4, max=1024),
                 3: torch.export.Dim("width", min=4, max=1024)}


def reference_model(dim, depth, kernel_size, patch_size, n_classes, act="gelu", in_chans=3, seed=0):
    model = ConvMixerReference(dim, depth, kernel_size, patch_size, n_classes,
                               in_chans=in_chans, activation=ACTIVATIONS[act])
    return randomize_weights_(model, seed=seed, image_size=max(16, 3 * patch_size))


class TimmLikePool(nn.Module):
    """timm's SelectAdaptivePool2d for the pool types that keep the width: its ``pool_type``,
    "avgmax" (the mean of average and max pooling) as timm computes it, "" (none)."""

    def __init__(self, pool_type: str = "avg"):
        super().__init__()
        self.pool_type = pool_type

    def forward(self, x):
        if self.pool_type == "avgmax":
            return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        return x.mean((2, 3)) if self.pool_type else x


class TimmLikeConvMixer(nn.Module):
    """timm's ConvMixer module tree (stem / blocks / global_pool / head), for machines without timm."""

    def __init__(self, dim, depth, kernel_size=9, patch_size=7, in_chans=3, num_classes=1000, global_pool="avg",
                 act_layer=nn.GELU):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), act_layer(), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[
            nn.Sequential(
                Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"), act_layer(),
                                       nn.BatchNorm2d(dim))),
                nn.Conv2d(dim, dim, 1), act_layer(), nn.BatchNorm2d(dim))
            for _ in range(depth)])
        self.global_pool = TimmLikePool(global_pool)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.head(self.global_pool(self.blocks(self.stem(x))))


def one_liner_model(h, d, k, p, n):
    """The README one-liner of locuslab/convmixer, written out (same module nesting and padding)."""
    S, C, A = nn.Sequential, nn.Conv2d, lambda x: nn.Sequential(x, nn.GELU(), nn.BatchNorm2d(h))
    R = type("R", (nn.Sequential,), {"forward": lambda s, x: s[0](x) + x})
    return S(A(C(3, h, p, stride=p)), *[S(R(A(C(h, h, k, groups=h, padding=k // 2))), A(C(h, h, 1))) for _ in range(d)],
             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(h, n))


# Model-sized shapes: too slow for Triton's interpreter, run where a GPU is.
ON_GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="model-sized case: GPU only")


def skip_module_unless_triton_runs() -> None:
    """Skip the calling test module unless Triton can run here: on a GPU, or on CPU tensors under
    TRITON_INTERPRET=1 (conftest.py sets it when there is no GPU)."""
    import os

    import pytest

    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)


def run_in_threads(target, count: int) -> None:
    """``target(index)`` for index 0 .. count-1, each in its own thread, switching threads as often
    as the interpreter allows (so that their calls interleave)."""
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=target, args=(index,)) for index in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch_interval)
