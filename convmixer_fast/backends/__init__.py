"""Backend registry: who runs the four fused steps of DESIGN.md §2 on which device.

A backend provides ``stem``, ``depthwise_block``, ``pointwise`` and ``head`` with the signatures of
``BackendOps`` below. For ``backend="auto"`` the *candidates* of each op are the backends of
``AUTO_ORDER`` that are available on the input's device and support that op for the model's dtype
and width (``Backend.op_unsupported_reason``), or ``AUTO_FALLBACK`` (eager) where there are none.
Where an op has several, the model runs the one measured fastest for each shape (``measured.py``);
without measuring (``resolve_ops(measure=False)``: torch.compile tracing,
``CONVMIXER_FAST_AUTO_MEASURE=0``) the first. Naming a backend runs every op on it, and raises
``BackendUnavailableError`` with the reason when it cannot.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from .. import _settings
from .._extension import extension_status
from ..ops._interpreter import is_interpreting
from . import measured
from .measured import MeasuredOp


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


OP_NAMES = BackendOps._fields


def _supports_every_op(op: str, device: torch.device, dtype: torch.dtype, channels: int) -> str | None:
    return None


def _no_variants() -> dict[str, dict[str, Callable]]:
    return {}


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    unavailable_reason: Callable[[torch.device], str | None]  # None when it can run on the device
    load_ops: Callable[[], BackendOps]  # imports the backend's module on first use
    preallocates: bool  # True: the model hands it preallocated activation buffers
    # (op, device, model dtype, model width) -> None if the op runs for them, else why not. Called
    # only where unavailable_reason(device) is None.
    op_unsupported_reason: Callable[[str, torch.device, torch.dtype, int], str | None] = field(
        default=_supports_every_op
    )
    # op -> {variant: entry}: other kernels of an op that the backend chooses between itself, each
    # with the op's signature, for ``bench-ops`` to time one by one (imports the backend's module).
    load_variants: Callable[[], dict[str, dict[str, Callable]]] = field(default=_no_variants)


def _eager_unavailable_reason(device: torch.device) -> str | None:
    return None


# Loaders use import statements (not importlib) so torch.compile can trace them.
def _load_eager_ops() -> BackendOps:
    from . import eager

    return eager.OPS


def _load_triton_ops() -> BackendOps:
    from . import triton

    return triton.OPS


def _load_triton_variants() -> dict[str, dict[str, Callable]]:
    from . import triton

    return triton.VARIANTS


def _gpu_unavailable_reason(device: torch.device) -> str | None:
    """Why the CUDA GPU ``device`` cannot run the kernels (both kernel backends need an NVIDIA GPU
    with bf16 tensor cores). A ROCm torch calls AMD GPUs "cuda" too, with capabilities of 9.x for
    MI200 / MI300: the kernels' configs, TMA paths and tolerances are NVIDIA's, so ``auto`` runs
    the eager backend there."""
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    if torch.version.hip is not None:
        return (f"the kernels are written for NVIDIA GPUs; this torch runs AMD GPUs through ROCm "
                f"(HIP {torch.version.hip}): the eager backend runs there")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"needs compute capability >= 8.0 (bf16 tensor cores), this GPU has {major}.{minor}"
    return None


def _load_cuda_ops() -> BackendOps:
    from . import cuda

    return cuda.OPS


def _load_cuda_variants() -> dict[str, dict[str, Callable]]:
    from . import cuda

    return cuda.VARIANTS


def _cuda_unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the CUDA kernels run on CUDA GPUs, not on {device.type}"
    status = extension_status()
    if not status.loaded:
        return status.detail
    if not status.with_cuda:
        return f"convmixer_fast._C was built without its CUDA kernels ({status.detail})"
    reason = _gpu_unavailable_reason(device)
    if reason is not None or not status.cuda_archs:
        return reason
    major, minor = torch.cuda.get_device_capability(device)
    if not any(_settings.arch_runs_on(arch, major, minor) for arch in status.cuda_archs):
        return (f"its CUDA kernels were built for sm_{', sm_'.join(status.cuda_archs)}, which do not run on this "
                f"GPU (compute capability {major}.{minor}); rebuild with {_settings.ENV_CUDA_ARCHS} naming it")
    return None


def _cuda_op_unsupported_reason(op: str, device: torch.device, dtype: torch.dtype, channels: int) -> str | None:
    if op != "pointwise":
        return None
    from . import cuda

    capability = torch.cuda.get_device_capability(device)
    if cuda.pointwise_supported(dtype, channels, capability):
        return None
    return (f"no CUDA GEMM kernel for {dtype} with {channels} channels on sm_{capability[0]}{capability[1]} "
            "(it needs float16/bfloat16, channels a multiple of 8, sm_80..sm_90)")


def _triton_unavailable_reason(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton; Linux only)"
    if device.type == "cpu":
        if is_interpreting():
            return None
        return "Triton kernels run on CUDA GPUs; CPU tensors only under TRITON_INTERPRET=1 (a slow test mode)"
    if device.type != "cuda":
        return f"Triton kernels run on CUDA GPUs, not on {device.type}"
    return _gpu_unavailable_reason(device)


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
            load_variants=_load_triton_variants,
        ),
        Backend(
            "cuda",
            "hand-written CUDA C++ / CUTLASS kernels compiled into convmixer_fast._C (CUDA GPUs with "
            "compute capability >= 8.0; the GEMM takes float16/bfloat16)",
            _cuda_unavailable_reason,
            _load_cuda_ops,
            preallocates=True,
            op_unsupported_reason=_cuda_op_unsupported_reason,
            load_variants=_load_cuda_variants,
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
# Per device type, per op: the kernel backends "auto" considers, in order of preference (the first
# one runs where nothing is measured; ties in measurements go to the earlier one). Where none of
# them runs an op, AUTO_FALLBACK does: the reference ops in plain PyTorch, on every device, never
# a contender for speed (fp32 math, and timing it at large batches would cost seconds and memory).
# On CPU only the fallback: Triton runs there only in its interpreter, for tests.
AUTO_ORDER = {"cuda": {op: ("triton", "cuda") for op in OP_NAMES}}
AUTO_ORDER_DEFAULT: dict[str, tuple[str, ...]] = {op: () for op in OP_NAMES}
AUTO_FALLBACK = "eager"


class ResolvedOps(NamedTuple):
    """Per op (``OP_NAMES`` order): its candidate backends (one unless "auto" found several) and
    the entry the model calls (a ``measured.MeasuredOp`` where several are measured)."""

    candidates: tuple[tuple[str, ...], ...]
    ops: BackendOps

    @property
    def names(self) -> tuple[str, ...]:
        """The backend of each op where it is fixed, the first candidate where it is measured."""
        return tuple(names[0] for names in self.candidates)

    @property
    def preallocates(self) -> bool:
        """Whether the model should hand the ops preallocated activation buffers."""
        return any(BACKENDS[name].preallocates for names in self.candidates for name in names)

    @property
    def label(self) -> str:
        """"triton" when one backend runs every op, else "stem=cuda, depthwise_block=triton, ...";
        a measured op shows what it chose so far ("cuda (measured)")."""
        parts = [op.label if isinstance(op, MeasuredOp) else names[0] for op, names in zip(self.ops, self.candidates)]
        if len(set(parts)) == 1:
            return parts[0]
        return ", ".join(f"{op}={part}" for op, part in zip(OP_NAMES, parts))


def check_backend_name(name: str) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    return name


def resolve_ops(name: str, device: torch.device, dtype: torch.dtype, channels: int, *,
                measure: bool = False) -> ResolvedOps:
    """The backend of each op for a model of ``dtype`` and width ``channels`` on ``device``: the named
    backend for every op; for "auto", with ``measure`` (and ``CONVMIXER_FAST_AUTO_MEASURE`` not 0),
    the fastest candidate measured per shape where an op has several, else the first candidate."""
    candidates = tuple(tuple(names.split("|")) for names in
                       _resolve_candidates(check_backend_name(name), str(device), str(dtype), channels).split(","))
    if not (measure and _settings.auto_measures()):
        candidates = tuple(names[:1] for names in candidates)
    loaded = {backend: BACKENDS[backend].load_ops() for names in candidates for backend in names}
    ops = []
    for op, names in zip(OP_NAMES, candidates):
        if len(names) == 1:
            ops.append(getattr(loaded[names[0]], op))
        else:
            reference = getattr(BACKENDS[measured.REFERENCE].load_ops(), op)
            ops.append(MeasuredOp(op, {backend: getattr(loaded[backend], op) for backend in names}, device,
                                  reference=reference))
    return ResolvedOps(candidates, BackendOps(*ops))


@torch.compiler.assume_constant_result
def _resolve_candidates(name: str, device_name: str, dtype_name: str, channels: int) -> str:
    # Evaluated once at trace time under torch.compile (availability probes are not traceable);
    # returns each op's candidates, "|"-separated, the ops ","-separated.
    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name.removeprefix("torch."))
    if name != "auto":
        reason = BACKENDS[name].unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} cannot run on {device}: {reason}")
        for op in OP_NAMES:
            reason = BACKENDS[name].op_unsupported_reason(op, device, dtype, channels)
            if reason is not None:
                raise BackendUnavailableError(
                    f"backend {name!r} cannot run {op} for a {dtype} model of width {channels} on {device}: "
                    f"{reason}; backend='auto' picks another backend for that op"
                )
        return ",".join(name for _ in OP_NAMES)
    available = {b: BACKENDS[b].unavailable_reason(device) is None for b in BACKENDS}
    per_op = []
    for op, order in AUTO_ORDER.get(device.type, AUTO_ORDER_DEFAULT).items():
        runnable = [b for b in order if available[b] and BACKENDS[b].op_unsupported_reason(op, device, dtype, channels) is None]
        per_op.append("|".join(runnable or [AUTO_FALLBACK]))
    return ",".join(per_op)


def availability(device: torch.device) -> dict[str, str | None]:
    """backend name -> None if it can run on ``device``, else the reason it cannot."""
    return {name: backend.unavailable_reason(device) for name, backend in BACKENDS.items()}
