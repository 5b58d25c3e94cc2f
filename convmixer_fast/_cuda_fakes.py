"""Fake (meta) implementations of the C++ ops ``convmixer_fast::cuda_*`` (csrc/cuda_ops.cpp), for
torch.compile, torch.export and FakeTensor tracing. The ops mutate their preallocated outputs and
return nothing, so each fake does nothing. Imported by ``_extension`` as soon as ``_C`` loads (the C++
library also names this module, so torch points here when a fake is missing)."""

import torch

CUDA_OPS = ("cuda_stem", "cuda_depthwise_block", "cuda_pointwise", "cuda_head")


def _writes_only_preallocated_outputs(*args) -> None:
    return None


for _name in CUDA_OPS:
    torch.library.register_fake(f"convmixer_fast::{_name}", _writes_only_preallocated_outputs)
