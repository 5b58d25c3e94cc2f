"""The ``cuda`` backend: the C++/CUDA kernels of ``csrc/kernels`` through ``convmixer_fast._C``.

The ``convmixer_fast::cuda_*`` ops are defined in C++ (``csrc/cuda_ops.cpp``: schemas, argument
checks, stream, launch; their fakes are in ``_cuda_fakes.py``). The entries here run the shared
checks of ``ops._checks`` and allocate outputs like the triton entries. Imported on first use only.
"""

from __future__ import annotations

import functools

import torch

from .._extension import extension_status
from ..ops._checks import depthwise_block_outputs, epilogue_entry, head_outputs, pointwise_outputs, stem_outputs
from . import BackendOps

_status = extension_status()
if not _status.loaded:  # the backend's availability check says so first; this guards direct imports
    raise ImportError(_status.detail)

_ops = torch.ops.convmixer_fast


stem = epilogue_entry(
    "stem", stem_outputs, _ops.cuda_stem,
    "Patch embedding to ``[B, H//p, W//p, C]`` tokens; arguments as ``ops.stem.stem``.",
)
depthwise_block = epilogue_entry(
    "depthwise_block", depthwise_block_outputs, _ops.cuda_depthwise_block,
    "``x + scale * act(dwconv_k(x) + bias) + shift``; arguments as ``ops.depthwise.depthwise_block``. "
    "Runs the tensor-core band kernel where it applies, else the direct one (``DEPTHWISE_ALGORITHMS``).",
)
pointwise = epilogue_entry(
    "pointwise", pointwise_outputs, _ops.cuda_pointwise,
    "``scale * act(x @ weightᵀ + bias) + shift``; arguments as ``ops.pointwise.pointwise`` (float16 / "
    "bfloat16 with N and K multiples of 8: see ``pointwise_supported``).",
)


def head(x, weight, bias, pooled=None, out=None):
    """Pooled logits ``[B, N]``; arguments as ``ops.head.head``."""
    pooled, out = head_outputs(x, weight, bias, pooled, out)
    _ops.cuda_head(x, weight, bias, pooled, out)
    return out


def pointwise_supported(dtype: torch.dtype, channels: int, capability: tuple[int, int]) -> bool:
    """Whether the CUDA GEMM has a kernel for a ``channels`` x ``channels`` pointwise conv in ``dtype``
    on a GPU of compute ``capability`` (the C++ library's own rule, ``pointwise_supported``)."""
    return bool(_ops.cuda_pointwise_supported(dtype, channels, channels, *capability))


OPS = BackendOps(stem, depthwise_block, pointwise, head)

# The depthwise kernels the op chooses between (its ``algorithm`` argument, csrc/kernels/kernels.h):
# "direct" (fp32 FMAs; every dtype and k) and "band" (the band matrix on tensor cores; float16 /
# bfloat16, k <= 9, C a multiple of 8, 16-byte aligned tensors). ``depthwise_block`` above passes
# "auto": band where it applies. ``VARIANTS`` has one entry per algorithm, for ``bench-ops`` to time
# each on its own until the measurements settle which one stays (benchmarks/NOTES.md).
DEPTHWISE_ALGORITHMS = ("direct", "band")
VARIANTS = {
    "depthwise_block": {
        algorithm: epilogue_entry(
            "depthwise_block", depthwise_block_outputs, functools.partial(_ops.cuda_depthwise_block, algorithm=algorithm),
            f"``depthwise_block`` with the {algorithm!r} kernel (raises ValueError where it does not apply).",
        )
        for algorithm in DEPTHWISE_ALGORITHMS
    }
}
