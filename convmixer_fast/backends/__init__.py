"""Backend registry: who runs the four fused steps of DESIGN.md §2 on which device.

A backend provides ``stem``, ``depthwise_block``, ``pointwise`` and ``head`` with the signatures of
``BackendOps`` below. ``backend="auto"`` takes the first available backend of ``AUTO_ORDER`` for the
input's device; naming an unavailable backend raises ``BackendUnavailableError`` with the reason.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from ..ops._interpreter import is_interpreting


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine / device; the message says why."""


class BackendOps(NamedTuple):
    """The four steps, with the signatures of the Triton op entries (``convmixer_fast.ops.*``).

    Each writes into ``out`` when given (else allocates) and returns it; bias / scale / shift are
    the fp32 epilogue vectors, ``act`` is "gelu" or "relu".
      stem(image, weight, bias, scale, shift, act, out=None) -> [B, Hp, Wp, C] tokens
      depthwise_block(x, weight, bias, scale, shift, act, out=None) -> [B, H, W, C]
      pointwise(y, weight, bias, scale, shift, act, out=None) -> [B, H, W, C]
      head(x, weight, bias, pooled=None, out=None) -> [B, N] logits (``pooled``: fp32 [B, C] workspace)
    """

    stem: Callable
    depthwise_block: Callable
    pointwise: Callable
    head: Callable


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    unavailable_reason: Callable[[torch.device], str | None]  # None when it can run on the device
    load_ops: Callable[[], BackendOps]  # imports the backend's module on first use
    preallocates: bool  # True: the model hands it preallocated activation buffers


def _eager_unavailable_reason(device: torch.device) -> str | None:
    return None


# Loaders use import statements (not importlib) so torch.compile can trace them.
def _load_eager_ops() -> BackendOps:
    from . import eager

    return eager.OPS


def _load_triton_ops() -> BackendOps:
    from . import triton

    return triton.OPS


def _triton_unavailable_reason(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton; Linux only)"
    if device.type == "cpu":
        if is_interpreting():
            return None
        return "Triton kernels run on CUDA GPUs; CPU tensors only under TRITON_INTERPRET=1 (a slow test mode)"
    if device.type != "cuda":
        return f"Triton kernels run on CUDA GPUs, not on {device.type}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"needs compute capability >= 8.0 (bf16 tensor cores), this GPU has {major}.{minor}"
    return None


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "triton",
            "fused Triton kernels (CUDA GPUs with compute capability >= 8.0; CPU tensors only under "
            "TRITON_INTERPRET=1, for testing)",
            _triton_unavailable_reason,
            _load_triton_ops,
            preallocates=True,
        ),
        Backend(
            "eager",
            "the folded computation in plain PyTorch (NHWC tokens); runs on every device",
            _eager_unavailable_reason,
            _load_eager_ops,
            preallocates=False,
        ),
    )
}
BACKEND_NAMES = ("auto", *BACKENDS)
# Fastest first, per device type.
AUTO_ORDER = {"cuda": ("triton", "eager")}
AUTO_ORDER_DEFAULT = ("eager",)


def check_backend_name(name: str) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    return name


def resolve_backend(name: str, device: torch.device) -> Backend:
    """The backend to run on ``device``: the named one, or for "auto" the fastest available."""
    return BACKENDS[_resolve_backend_name(check_backend_name(name), str(device))]


@torch.compiler.assume_constant_result
def _resolve_backend_name(name: str, device_name: str) -> str:
    # Evaluated once at trace time under torch.compile (availability probes are not traceable).
    device = torch.device(device_name)
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, AUTO_ORDER_DEFAULT):
            if BACKENDS[candidate].unavailable_reason(device) is None:
                return candidate
        raise BackendUnavailableError(f"no backend can run on {device}")
    reason = BACKENDS[name].unavailable_reason(device)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run on {device}: {reason}")
    return name


def availability(device: torch.device) -> dict[str, str | None]:
    """backend name -> None if it can run on ``device``, else the reason it cannot."""
    return {name: backend.unavailable_reason(device) for name, backend in BACKENDS.items()}
