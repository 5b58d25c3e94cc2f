"""PyTorch's TF32 switches, read and set the same way on every torch the package supports.

torch 2.9 and later have two ways to set them: the legacy flags (``torch.backends.cuda.matmul.
allow_tf32``, ``torch.backends.cudnn.allow_tf32``, ``torch.set_float32_matmul_precision``) and
``fp32_precision`` (``torch.backends.cuda.matmul.fp32_precision``, ``torch.backends.cudnn.conv.
fp32_precision``, ``torch.backends.fp32_precision`` for all). Once a program has set the new ones,
reading a legacy flag raises ("mix of the legacy and new APIs", torch 2.11 and 2.13). So the
package reads ``fp32_precision``, which resolves unset levels ("none") through their defaults as
torch's kernels do, and the legacy flag only on a torch without it.
"""

from __future__ import annotations

import contextlib

import torch


def matmul_allows_tf32() -> bool:
    """Whether fp32 matmuls on a GPU may run in TF32: what the kernels' fp32 GEMMs follow."""
    try:
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    except AttributeError:  # torch < 2.9
        return torch.backends.cuda.matmul.allow_tf32


def cudnn_conv_allows_tf32() -> bool:
    """Whether cuDNN's fp32 convolutions may run in TF32 (its default), as eager models' do."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    return torch.backends.cudnn.allow_tf32 if conv is None else conv.fp32_precision == "tf32"


def switches() -> tuple[bool, bool]:
    """(matmul, cuDNN conv): whether fp32 matmuls and cuDNN convolutions may run in TF32."""
    return matmul_allows_tf32(), cudnn_conv_allows_tf32()


def any_allowed() -> bool:
    """Whether fp32 math may run in TF32 anywhere (matmuls, or cuDNN's convolutions as eager models'
    do): what fp32 tolerances against an eager model follow."""
    return any(switches())


def switches_for(dtype: torch.dtype) -> tuple[bool, ...]:
    """``switches()`` where work computed in ``dtype`` depends on them (fp32), else (): the part of a
    key of what was captured or measured under them (the model's CUDA graphs, ``auto``'s choices),
    read only where it matters (two property reads, ~5 µs on the CPU machine)."""
    return switches() if dtype == torch.float32 else ()


def _set(matmul: bool, conv: bool) -> None:
    """Both switches through both ways, so that either way reads them back without raising."""
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = conv
    if getattr(torch.backends.cudnn, "conv", None) is not None:  # the legacy setters leave them "none"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if conv else "ieee"


@contextlib.contextmanager
def tf32_off():
    """Exact fp32 matmuls and cuDNN convolutions inside the block (the fp32 references); after it the
    two switches are set back to what they were in effect."""
    saved = switches()
    _set(False, False)
    try:
        yield
    finally:
        _set(*saved)
