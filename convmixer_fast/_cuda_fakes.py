"""Fake (meta) implementations of the C++ ops ``convmixer_fast::cuda_*`` (csrc/cuda_ops.cpp), for
torch.compile, torch.export and FakeTensor tracing. The ops mutate their preallocated outputs and
return nothing, so each fake does nothing. Imported by ``_extension`` as soon as ``_C`` loads (the C++
library also names this module, so torch points here when a fake is missing)."""

import torch


@torch.library.register_fake("convmixer_fast::cuda_stem")
def _(image, weight, bias, scale, shift, act, out) -> None:
    return None


@torch.library.register_fake("convmixer_fast::cuda_depthwise_block")
def _(x, weight, bias, scale, shift, act, out) -> None:
    return None


@torch.library.register_fake("convmixer_fast::cuda_pointwise")
def _(y, weight, bias, scale, shift, act, out) -> None:
    return None


@torch.library.register_fake("convmixer_fast::cuda_head")
def _(x, weight, bias, pooled, out) -> None:
    return None
