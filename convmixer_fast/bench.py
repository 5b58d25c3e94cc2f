"""``python -m convmixer_fast bench``: convmixer_fast against its peers, measured fairly and kept.

A *workload* is (model config, batch, image size, dtype, device); a *provider* builds a model and a
timed callable for it. The providers (``all_providers()``, ``--list-providers``):

- ``eager-fp32``: ``reference.ConvMixerReference`` as users run it (NCHW, fp32).
- ``eager-amp``: the same under autocast, fp16 on a GPU (timm benchmark.py's settings, the best
  published PyTorch mode for the k=9 models), bf16 on CPU (torch's CPU autocast dtype: CPU fp16
  convolutions are ~10x slower than fp32); ``eager-channels-last``: the same in channels_last memory.
- ``torch-compile``: ``torch.compile`` (default mode, static shapes) of eager-amp; its compile time
  is reported apart from the timing. ``torch-compile-max-autotune`` is opt-in (slow to compile).
- ``convmixer_fast-<backend>`` for ``auto`` (per op the backend measured fastest for the shape:
  what users get by default) and every backend of ``backends.BACKENDS`` that can run the whole
  model on the device in the workload's dtype, as users run them: on a GPU the model replays its
  own CUDA graph from the second call on (copying the input in and the logits out).
  ``convmixer_fast-auto-nograph``: auto with ``cuda_graphs=False`` (GPU only: on CPU it is
  ``convmixer_fast-auto``). These run in the workload's dtype.
- ``gemm-floor``: the ``depth`` pointwise GEMMs alone, ``[B*H*W, C] @ [C, C]`` through ``torch.mm``
  (cuBLAS) in the workload's dtype, captured in a CUDA graph on a GPU: what a fused engine cannot
  beat by much. It has no logits.

The peers have a fixed precision (fp32, autocast) whatever the workload's dtype, so they are
measured once per (model, batch, image size) and shown in every dtype's table. On a GPU every
provider runs with ``cudnn.benchmark=True`` (on CPU it slows convolutions down); TF32 stays at
torch's defaults.

Measurement: inputs are ``torch.randn``; each provider's logits are checked against the fp32
reference model (same weights, TF32 off) on its first ``CHECKED_CALL`` calls, the worst error
counting (so a CUDA graph's replay is checked, not only the call before the capture), within
``verify.model_tolerance`` of its precision (for fp32 on a GPU that allows TF32: TF32's, or fp16's
on the workload where that is wider, fp16 having TF32's significand); a provider outside it is
WRONG, and still timed: a peer's speed is what its users get whatever its accuracy (``targets``
counts it; our own providers' figures count only when right), and a first GPU run keeps the speed
of a provider its check refused. Then ``warmup`` calls, then repeats of ``calls_per_repeat`` calls
(enough to last ``MIN_REPEAT_SECONDS``), timed by CUDA events on a GPU and ``time.perf_counter`` on
CPU; the median over repeats is the figure. Repeats are capped so one provider's timing lasts
about ``MEASURE_SECONDS`` (at least ``MIN_REPEATS``). Achieved TFLOP/s use ``flops_per_image``
(stem + depthwise + pointwise + head, DESIGN.md §1; gemm-floor counts its GEMMs only); %peak is
against a ``torch.mm`` of ``PEAK_GEMM_SIZE``-square matrices in the workload's dtype, measured in
the same run (GPU only).

Results: a JSON document (``result_document``; schema below ``RESULT_SCHEMA``), rewritten after each
provider (the workload marked ``"partial": true`` until its last provider is done) so an interrupted
run keeps what it measured; ``--merge`` adds workloads to an existing file of the same device (a
partial one does not replace a complete one); ``--compare`` checks img/s against a saved result.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import gc
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from . import _settings

IMAGENET_MODELS = ("convmixer_1536_20", "convmixer_768_32", "convmixer_1024_20_ks9_p14")
GPU_BATCHES = (1, 8, 64, 256)
GPU_DTYPES = ("bf16", "fp16")
GPU_REPEATS = 20
CPU_MODEL, CPU_BATCH, CPU_DTYPE, CPU_REPEATS = "convmixer_cifar10", 8, "fp32", 5
WARMUP_CALLS = 3
# Logits are checked on the first calls up to this one: a convmixer_fast model on a GPU warms up on
# its first call, captures its CUDA graph on the second and replays it from then on, as when timed.
CHECKED_CALL = 3
MIN_REPEATS = 3
MEASURE_SECONDS = 0.5
MIN_REPEAT_SECONDS = 0.01
PEAK_GEMM_SIZE = 8192
LATENCY_SECONDS = 0.25  # most time spent on single synchronized calls (at least one)
AMP_DTYPES = {"cuda": "fp16", "cpu": "bf16"}  # autocast dtype of the eager peers per device type
TABLE_BASELINES = ("eager-amp", "torch-compile", "gemm-floor")
RESULTS_DIR = Path("benchmarks") / "results"
RESULT_SCHEMA = 1
STATUSES = ("ok", "wrong", "error", "skipped")

TRITON_INTERPRETER_REASON = (
    "on CPU the triton backend runs in Triton's interpreter (TRITON_INTERPRET=1), which emulates the "
    "kernels in numpy (~30 s for one batch-1 CIFAR forward): its time means nothing; check its "
    "correctness with `python -m convmixer_fast verify --backend triton`"
)


# --------------------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    """One row group of the comparison: a named model config at one batch, image size and dtype."""

    model: str  # a key of configs.MODEL_CONFIGS
    batch: int
    image_size: int  # square images
    dtype: str  # "fp32" | "fp16" | "bf16": convmixer_fast's and gemm-floor's precision
    device: str

    @property
    def label(self) -> str:
        """Human-readable and stable: the key of results, comparisons and pytest-benchmark groups."""
        return f"{self.model} {self.dtype} batch {self.batch} {self.image_size}px"

    @property
    def config(self) -> dict:
        """The model's entry of ``configs.MODEL_CONFIGS``."""
        from .configs import MODEL_CONFIGS

        return MODEL_CONFIGS[self.model]

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def slug(self) -> str:
        """The label without spaces (pytest ids)."""
        return f"{self.model}-{self.dtype}-b{self.batch}-{self.image_size}px"


def default_image_size(config: dict) -> int:
    """The commands' image size for a model ``config``: 224 for the ImageNet configs, 32 for the
    CIFAR one (patch size <= 2); at least one patch, whatever the patch size."""
    patch_size = config["patch_size"]
    return max(32 if patch_size <= 2 else 224, patch_size)


def make_workloads(device: str, models, batches, dtypes, image_size: int | None = None) -> list[Workload]:
    """Every (model, batch, dtype) combination, model-major: the dtypes of one (model, batch) are
    adjacent, so the fixed-precision peers measured for the first are reused by the next."""
    from .configs import MODEL_CONFIGS

    return [
        Workload(model, batch, image_size or default_image_size(MODEL_CONFIGS[model]), dtype, device)
        for model in models
        for batch in batches
        for dtype in dtypes
    ]


def default_plan(device: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(models, batches, dtypes): the full GPU suite on a CUDA device, the small CPU workload elsewhere."""
    if device.startswith("cuda"):
        return IMAGENET_MODELS, GPU_BATCHES, GPU_DTYPES
    return (CPU_MODEL,), (CPU_BATCH,), (CPU_DTYPE,)


def flops_per_image(config: dict, image_size: int) -> dict[str, int]:
    """FLOPs of one image (2 per multiply-add) per part of DESIGN.md §1, and their total.

    Convolutions and the classifier only: bias, activation, BatchNorm, residual and pooling are
    elementwise and not counted (as in DESIGN.md's GFLOP column). ``config`` holds ``dim``,
    ``depth``, ``kernel_size``, ``patch_size``, ``n_classes`` (``in_chans`` defaults to 3).
    """
    dim, depth, k, p = config["dim"], config["depth"], config["kernel_size"], config["patch_size"]
    tokens = (image_size // p) ** 2
    parts = {
        "stem": 2 * tokens * dim * config.get("in_chans", 3) * p * p,
        "depthwise": depth * 2 * tokens * dim * k * k,
        "pointwise": depth * 2 * tokens * dim * dim,
        "head": 2 * dim * config["n_classes"],
    }
    return {**parts, "total": sum(parts.values())}


# --------------------------------------------------------------------------------------- providers
@dataclass(frozen=True)
class Prepared:
    """A provider built for one workload: ``run()`` is one forward on the bound input (it returns
    the logits, or None for gemm-floor); ``compile_s`` is the compile time where there is one;
    ``describe()`` what else a reader needs, asked after the timing (which backend ran each op)."""

    run: Callable[[], object]
    compile_s: float | None = None
    describe: Callable[[], str | None] = lambda: None


@dataclass(frozen=True)
class Provider:
    """How to build and run one contender; ``unavailable_reason`` says why it cannot run (or None)."""

    name: str
    description: str
    build: Callable[[Workload, "InputCache"], Prepared]
    unavailable_reason: Callable[[Workload], str | None]
    fixed_dtype: str | None = None  # its dtype whatever the workload's (None: the workload's)
    autocast: bool = False  # runs under autocast to the device's AMP_DTYPES entry
    has_logits: bool = True
    flops_part: str = "total"  # the key of flops_per_image its TFLOP/s count
    opt_in: bool = False  # runs only when named in --providers

    def dtype(self, workload: Workload) -> str:
        """The dtype it computes in on ``workload``."""
        if self.autocast:
            return AMP_DTYPES[workload.device_type]
        return self.fixed_dtype or workload.dtype

    def precision(self, workload: Workload) -> str:
        """Its precision on ``workload`` as shown in tables: "bf16", "fp16 autocast", ..."""
        return self.dtype(workload) + (" autocast" if self.autocast else "")


@dataclass(frozen=True)
class WorkloadInputs:
    """What the providers of one workload share."""

    reference: object  # fp32 ConvMixerReference (eval) with trained-looking random weights
    image: object  # torch.randn [B, 3, S, S] fp32 on the device
    logits: object  # the reference's fp32 logits, computed with TF32 off
    dtype_errors: dict = field(default_factory=dict)  # dtype -> (eager backend's, plain PyTorch's) errors


def _torch_dtype(name: str):
    from .verify import DTYPES

    return DTYPES[name]


def _synchronize(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


def _available_anywhere(workload: Workload) -> str | None:
    return None


def _compile_unavailable_reason(workload: Workload) -> str | None:
    import importlib.util
    import shutil

    if workload.device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile (Inductor) needs triton on a GPU"
        return None
    if not any(shutil.which(compiler) for compiler in ("c++", "g++", "clang++")):
        return "torch.compile (Inductor) on CPU needs a C++ compiler"
    return None


def capture_cuda_graph(forward: Callable[[], object]) -> Callable[[], object]:
    """``forward`` captured in a CUDA graph after warm-up on a side stream (autotuning, cuDNN
    algorithm search and buffer allocation happen there), both under inference mode, on the current
    GPU; the returned callable replays it and returns the graph's static output. ``forward``'s
    inputs must stay put."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_CALLS):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            output = forward()

    def replay():
        graph.replay()
        return output

    return replay


def _build_eager_fp32(workload: Workload, cache: InputCache) -> Prepared:
    inputs = cache.get(workload)
    reference, image = inputs.reference, inputs.image
    return Prepared(lambda: reference(image))


def _autocast_forward(workload: Workload, model) -> Callable:
    import torch

    device_type = workload.device_type
    dtype = _torch_dtype(AMP_DTYPES[device_type])

    def forward(image):
        with torch.autocast(device_type, dtype=dtype):
            return model(image)

    return forward


def _build_eager_amp(workload: Workload, cache: InputCache) -> Prepared:
    inputs = cache.get(workload)
    forward, image = _autocast_forward(workload, inputs.reference), inputs.image
    return Prepared(lambda: forward(image))


def _build_eager_channels_last(workload: Workload, cache: InputCache) -> Prepared:
    import copy

    import torch

    inputs = cache.get(workload)
    model = copy.deepcopy(inputs.reference).to(memory_format=torch.channels_last)
    forward = _autocast_forward(workload, model)
    image = inputs.image.contiguous(memory_format=torch.channels_last)
    return Prepared(lambda: forward(image))


def _torch_compile_builder(mode: str) -> Callable[[Workload, InputCache], Prepared]:
    def build(workload: Workload, cache: InputCache) -> Prepared:
        import torch

        inputs = cache.get(workload)
        torch.compiler.reset()  # a fresh cache: no recompile limit carried over from other workloads
        compiled = torch.compile(_autocast_forward(workload, inputs.reference), mode=mode, dynamic=False)
        image = inputs.image
        start = time.perf_counter()
        with torch.inference_mode():  # as the timed calls run: no recompile for a change of grad mode
            compiled(image)
        _synchronize(workload.device_type)
        return Prepared(lambda: compiled(image), compile_s=time.perf_counter() - start)

    return build


def _resolve_ops(backend: str, workload: Workload):
    """The backend of each op for ``workload`` (raises ``BackendUnavailableError`` with the reason)."""
    import torch

    from .backends import resolve_ops

    return resolve_ops(backend, torch.device(workload.device), _torch_dtype(workload.dtype), workload.config["dim"])


def _convmixer_fast_builder(backend: str, cuda_graphs: bool) -> Callable[[Workload, InputCache], Prepared]:
    def build(workload: Workload, cache: InputCache) -> Prepared:
        model, image = cache.convmixer_fast(workload, backend, cuda_graphs), cache.get(workload).image
        describe = model.backend_label if backend == "auto" else (lambda: None)
        return Prepared(lambda: model(image), describe=describe)

    return build


def _convmixer_fast_unavailable(backend: str, cuda_graphs: bool) -> Callable[[Workload], str | None]:
    def reason(workload: Workload) -> str | None:
        from .backends import BackendUnavailableError

        try:
            _resolve_ops(backend, workload)
        except BackendUnavailableError as error:
            return str(error)
        if backend == "triton" and workload.device_type == "cpu":
            return TRITON_INTERPRETER_REASON
        if not cuda_graphs and workload.device_type != "cuda":
            return f"CUDA graphs exist only on a GPU: here this is convmixer_fast-{backend}"
        return None

    return reason


def _build_gemm_floor(workload: Workload, cache: InputCache) -> Prepared:
    import torch

    config = workload.config
    dim, depth = config["dim"], config["depth"]
    rows = workload.batch * (workload.image_size // config["patch_size"]) ** 2
    device, dtype = torch.device(workload.device), _torch_dtype(workload.dtype)
    weights = [torch.randn(dim, dim, device=device, dtype=dtype) / dim**0.5 for _ in range(depth)]
    tokens = torch.randn(rows, dim, device=device, dtype=dtype)
    ping, pong = torch.empty_like(tokens), torch.empty_like(tokens)

    def gemms():
        source, target = tokens, ping  # the first GEMM reads the fixed input: values never drift
        for weight in weights:
            torch.mm(source, weight, out=target)
            source, target = target, (pong if target is ping else ping)

    return Prepared(capture_cuda_graph(gemms) if device.type == "cuda" else gemms)


def all_providers() -> list[Provider]:
    """Every provider, in table order; one convmixer_fast pair for "auto" and each of ``BACKENDS``."""
    from .backends import BACKENDS

    providers = [
        Provider("eager-fp32", "the reference model as users run it: NCHW, fp32",
                 _build_eager_fp32, _available_anywhere, fixed_dtype="fp32"),
        Provider("eager-amp", "the reference under autocast (fp16 on a GPU: timm benchmark.py's settings; bf16 on "
                 "CPU), NCHW",
                 _build_eager_amp, _available_anywhere, autocast=True),
        Provider("eager-channels-last", "eager-amp with the model and input in channels_last memory",
                 _build_eager_channels_last, _available_anywhere, autocast=True),
        Provider("torch-compile", "torch.compile of eager-amp (default mode, static shapes); compile time "
                 "reported apart", _torch_compile_builder("default"), _compile_unavailable_reason, autocast=True),
        Provider("torch-compile-max-autotune", "torch.compile of eager-amp, mode max-autotune (opt-in: "
                 "compiles for minutes)", _torch_compile_builder("max-autotune"), _compile_unavailable_reason,
                 opt_in=True, autocast=True),
    ]
    descriptions = {"auto": "per op the backend measured fastest for the shape (the default)"}
    descriptions.update((name, backend.description) for name, backend in BACKENDS.items())
    for name, description in descriptions.items():
        providers.append(Provider(f"convmixer_fast-{name}", f"convmixer_fast.ConvMixer, backend {name!r}: "
                                  f"{description}; on a GPU it replays its own CUDA graph per input shape",
                                  _convmixer_fast_builder(name, cuda_graphs=True),
                                  _convmixer_fast_unavailable(name, cuda_graphs=True)))
    providers.append(Provider("convmixer_fast-auto-nograph", "convmixer_fast-auto with cuda_graphs=False: every "
                              "kernel launched from Python on each call (GPU only)",
                              _convmixer_fast_builder("auto", cuda_graphs=False),
                              _convmixer_fast_unavailable("auto", cuda_graphs=False)))
    providers.append(Provider("gemm-floor", "the depth pointwise GEMMs alone through torch.mm (cuBLAS), in one "
                              "CUDA graph on a GPU: the floor", _build_gemm_floor, _available_anywhere,
                              has_logits=False, flops_part="pointwise"))
    return providers


def select_providers(providers: list[Provider], patterns: list[str] | None) -> list[Provider]:
    """Providers matching any of ``patterns`` (names or shell patterns, e.g. ``convmixer_fast-*``),
    in table order; without patterns, every provider that is not opt-in."""
    if not patterns:
        return [p for p in providers if not p.opt_in]
    unmatched = [pattern for pattern in patterns if not any(fnmatch.fnmatchcase(p.name, pattern) for p in providers)]
    if unmatched:
        raise ValueError(f"no provider matches {', '.join(unmatched)}; known: {', '.join(p.name for p in providers)}")
    return [p for p in providers if any(fnmatch.fnmatchcase(p.name, pattern) for pattern in patterns)]


# --------------------------------------------------------------------------------------- inputs
@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    """``torch.backends.cudnn.benchmark = enabled`` for the duration (on for GPU workloads)."""
    import torch

    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class InputCache:
    """What providers build from: the ``WorkloadInputs`` of a workload and convmixer_fast models
    holding the reference's weights. Keeps the last reference model (and its conversions) and the
    last input batch: workloads come model-major, so each is built once and memory stays bounded."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._reference: tuple[tuple, object] | None = None
        self._converted: dict[str, object] = {}  # dtype -> ConvMixer of the current reference, never run
        self._inputs: tuple[tuple, WorkloadInputs] | None = None

    def get(self, workload: Workload) -> WorkloadInputs:
        """The shared inputs of ``workload`` (one image batch per model, batch and image size)."""
        import torch

        from ._tf32 import tf32_off

        key = (workload.model, workload.device, workload.batch, workload.image_size)
        if self._inputs is None or self._inputs[0] != key:
            self._inputs = None  # free the previous batch before building the next
            reference = self._reference_model(workload)
            generator = torch.Generator().manual_seed(self.seed)
            image = torch.randn(workload.batch, 3, workload.image_size, workload.image_size, generator=generator)
            image = image.to(workload.device)
            with torch.inference_mode(), tf32_off():
                logits = reference(image)
            self._inputs = (key, WorkloadInputs(reference, image, logits))
        return self._inputs[1]

    def dtype_errors(self, workload: Workload, dtype: str) -> tuple[float, float]:
        """``max|out - ref| / max|ref|`` of the workload's logits in ``dtype`` computed by
        convmixer_fast's eager backend (PyTorch's ops, rounding to ``dtype`` where the kernels do)
        and by plain PyTorch (``verify.plain_torch_error``): what the dtype itself loses on this
        network, the yardsticks of ``verify.model_tolerance``."""
        import torch

        from .verify import errors, plain_torch_error

        inputs = self.get(workload)
        if dtype not in inputs.dtype_errors:
            model = self.convmixer_fast(replace(workload, dtype=dtype), "eager", cuda_graphs=False)
            with torch.inference_mode():
                eager_error = errors(model(inputs.image), inputs.logits)[1]
            del model
            plain_error = plain_torch_error(inputs.reference, inputs.image, _torch_dtype(dtype), inputs.logits)
            inputs.dtype_errors[dtype] = eager_error, plain_error
        return inputs.dtype_errors[dtype]

    def _reference_model(self, workload: Workload):
        """The fp32 reference of the workload's model, its weights calibrated at its image size."""
        import torch

        from .verify import build_reference

        key = (workload.model, workload.device, workload.image_size)
        if self._reference is None or self._reference[0] != key:
            self._reference, self._converted = None, {}
            self._reference = (key, build_reference(workload.config, torch.device(workload.device),
                                                    workload.image_size, self.seed))
        return self._reference[1]

    def convmixer_fast(self, workload: Workload, backend: str, cuda_graphs: bool = True):
        """A fresh ``ConvMixer`` with the reference's weights in the workload's dtype, running
        ``backend`` (a copy of one conversion per dtype: converting builds the model on the CPU)."""
        import copy

        from .model import ConvMixer

        reference = self._reference_model(workload)
        if workload.dtype not in self._converted:
            self._converted[workload.dtype] = ConvMixer.from_eager(reference).to(dtype=_torch_dtype(workload.dtype))
        model = copy.deepcopy(self._converted[workload.dtype])
        model.backend, model.cuda_graphs = backend, cuda_graphs
        return model


# --------------------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class Check:
    """A provider's logits against the fp32 reference: ``max|out - ref| / max|ref|``."""

    max_rel_err: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_rel_err <= self.tolerance  # False for NaN


def model_tolerance(dtype: str, device_type: str, eager_error: float, plain_error: float) -> float:
    """``verify``'s whole-model tolerance of ``dtype`` given the eager backend's and plain
    PyTorch's errors in it; fp32 on a GPU counts as TF32 when matmuls or cuDNN convolutions (its
    default, which the eager peers use) may run in TF32."""
    import torch

    from . import verify

    floor = verify.tolerances(_torch_dtype(dtype), torch.device(device_type))[1]
    return verify.model_tolerance(floor, eager_error, plain_error)


def check_logits(provider: Provider, prepared: Prepared, workload: Workload, cache: InputCache) -> Check | None:
    """The worst of the first ``CHECKED_CALL`` forwards of ``prepared`` against the reference logits
    (NaN the worst of all); None for providers without logits."""
    if not provider.has_logits:
        return None
    from . import _tf32
    from .verify import errors

    inputs, dtype = cache.get(workload), provider.dtype(workload)
    relative = [errors(prepared.run(), inputs.logits)[1] for _ in range(CHECKED_CALL)]
    max_rel_err = max(relative, key=lambda error: math.inf if math.isnan(error) else error)
    tolerance = model_tolerance(dtype, workload.device_type, *cache.dtype_errors(workload, dtype))
    if dtype == "fp32" and workload.device_type == "cuda" and _tf32.any_allowed():
        # TF32 rounds a tensor-core op's inputs to fp16's 10-bit significand (fp16 rounds every
        # activation too): what fp16 loses on this network bounds what fp32 may lose here, e.g.
        # eager-fp32 with cuDNN's default TF32 convolutions.
        tolerance = max(tolerance, model_tolerance("fp16", "cuda", *cache.dtype_errors(workload, "fp16")))
    return Check(max_rel_err, tolerance)


@dataclass(frozen=True)
class Timing:
    """Median seconds per call over repeats; ``per_call_s`` holds each repeat's mean (calls back to
    back: on a GPU the host queues a call while the previous ones run). ``latency_s``: the median
    wall time of single calls, each waited for (the host's own work included: what a caller that
    needs each result before the next input waits)."""

    median_s: float
    per_call_s: tuple[float, ...]
    calls_per_repeat: int
    latency_s: float | None = None


def plan_repeats(call_seconds: float, max_repeats: int) -> tuple[int, int]:
    """(repeats, calls per repeat) for a call of ``call_seconds``: calls batched so a repeat lasts
    ``MIN_REPEAT_SECONDS``, repeats capped to fit ``MEASURE_SECONDS`` but at least ``MIN_REPEATS``
    (or ``max_repeats`` when that is smaller)."""
    calls = max(1, math.ceil(MIN_REPEAT_SECONDS / max(call_seconds, 1e-9)))
    fitting = int(MEASURE_SECONDS / (call_seconds * calls)) if call_seconds > 0 else max_repeats
    return min(max_repeats, max(MIN_REPEATS, fitting)), calls


def synchronized(run: Callable[[], object], device_type: str) -> Callable[[], None]:
    """``run`` followed by a device synchronization (for wall-clock timers such as pytest-benchmark's)."""

    def call():
        run()
        _synchronize(device_type)

    return call


def warm_up(run: Callable[[], object], device_type: str, warmup: int) -> float:
    """``warmup`` calls (at least one); returns the seconds of the last, synchronized."""
    for _ in range(max(warmup, 1) - 1):
        run()
    _synchronize(device_type)
    start = time.perf_counter()
    synchronized(run, device_type)()
    return time.perf_counter() - start


def latency(run: Callable[[], object], device_type: str, call_seconds: float, max_calls: int) -> float:
    """The median wall time of single synchronized calls of ``run`` (``call_seconds`` each, about:
    as many as fit ``LATENCY_SECONDS``, at least one, at most ``max_calls``; a call that long is
    GPU-bound, its latency near its time back to back)."""
    calls = min(max_calls, max(1, int(LATENCY_SECONDS / max(call_seconds, 1e-9))))
    call = synchronized(run, device_type)
    _synchronize(device_type)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def time_calls(run: Callable[[], object], device_type: str, *, warmup: int, max_repeats: int,
               with_latency: bool = False) -> Timing:
    """Time ``run`` after ``warm_up`` (its last call sizes the repeats, ``plan_repeats``): CUDA
    events around each repeat on a GPU, ``time.perf_counter`` on CPU; the median is the figure.
    ``with_latency``: then single synchronized calls too (``latency``)."""
    import torch

    repeats, calls = plan_repeats(warm_up(run, device_type, warmup), max_repeats)
    if device_type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for begin, end in events:
            begin.record()
            for _ in range(calls):
                run()
            end.record()
        torch.cuda.synchronize()
        per_call = [begin.elapsed_time(end) / 1e3 / calls for begin, end in events]
    else:
        per_call = []
        for _ in range(repeats):
            begin = time.perf_counter()
            for _ in range(calls):
                run()
            per_call.append((time.perf_counter() - begin) / calls)
    median = statistics.median(per_call)
    single = latency(run, device_type, median, max_repeats) if with_latency else None
    return Timing(median, tuple(per_call), calls, single)


def matmul_peak_tflops(dtype: str, device: str, max_repeats: int = GPU_REPEATS) -> float:
    """TFLOP/s of ``torch.mm`` on ``PEAK_GEMM_SIZE``-square matrices of ``dtype`` (the yardstick of %peak)."""
    import torch

    n = PEAK_GEMM_SIZE
    a, b = (torch.randn(n, n, device=device, dtype=_torch_dtype(dtype)) for _ in range(2))
    out = torch.empty_like(a)
    timing = time_calls(lambda: torch.mm(a, b, out=out), "cuda", warmup=WARMUP_CALLS, max_repeats=max_repeats)
    return 2 * n**3 / timing.median_s / 1e12


@dataclass(frozen=True)
class Entry:
    """One provider's outcome on one workload (status in ``STATUSES``; ``reason`` unless ok)."""

    provider: Provider
    status: str
    precision: str
    reason: str | None = None
    timing: Timing | None = None
    compile_s: float | None = None
    detail: str | None = None
    check: Check | None = None
    wall_s: float = 0.0


def error_summary(error: Exception) -> str:
    """``"<type>: <first line of the message>"`` (at most 300 characters of it), for a result's reason."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first_line}"


def device_lost(device_type: str, failed: str) -> str | None:
    """After ``failed`` raised on a GPU: None while the GPU still works, else what each later entry
    of the run reports instead of running. A sticky CUDA error (an illegal address, a trap in a
    kernel) leaves the process's CUDA context unusable: every later launch would fail with it, each
    blamed for the first one's fault, and the next ``torch.cuda.empty_cache`` would end the run
    before it saved what it had measured."""
    if device_type != "cuda":
        return None
    import torch

    try:
        torch.cuda.synchronize()
    except Exception as error:
        return f"not run: the GPU was unusable after {failed} failed ({error_summary(error)})"
    return None


def measure_provider(provider: Provider, workload: Workload, cache: InputCache, *, warmup: int,
                     max_repeats: int) -> Entry:
    """Build ``provider`` for ``workload``, then check and time it under inference mode (models are
    built outside it: their parameters stay ordinary tensors). Unavailable: skipped; logits beyond
    tolerance: wrong, timed all the same (module docstring); an exception: error (the run goes on)."""
    import torch

    start = time.perf_counter()
    precision = provider.precision(workload)
    reason = provider.unavailable_reason(workload)
    if reason is not None:
        return Entry(provider, "skipped", precision, reason=reason)
    device_type = workload.device_type
    try:
        prepared = provider.build(workload, cache)
        with torch.inference_mode():
            check = check_logits(provider, prepared, workload, cache)
            timing = time_calls(prepared.run, device_type, warmup=warmup, max_repeats=max_repeats, with_latency=True)
    except Exception as error:  # one failing provider is reported; the others still run
        return Entry(provider, "error", precision, reason=error_summary(error), wall_s=time.perf_counter() - start)
    wrong = check is not None and not check.ok
    return Entry(provider, "wrong" if wrong else "ok", precision, timing=timing, compile_s=prepared.compile_s,
                 detail=prepared.describe(), check=check, wall_s=time.perf_counter() - start,
                 reason=f"max rel err {check.max_rel_err:.3g} > tolerance {check.tolerance:.3g}" if wrong else None)


def add_ratios(providers: dict) -> None:
    """Give each timed provider record (status "ok" or "wrong") ``ratios[other] = its img/s /
    other's`` for every other one timed."""
    speeds = {name: r["img_per_s"] for name, r in providers.items() if timed(r)}
    for name, speed in speeds.items():
        providers[name]["ratios"] = {other: speed / speeds[other] for other in speeds if other != name}


# What the tables say of a WRONG provider's figures (module docstring).
WRONG_BUT_TIMED = "timed all the same: a peer's speed counts in the targets, ours does not"


def timed(entry: dict) -> bool:
    """Whether a provider record holds figures: it ran, its logits right ("ok") or not ("wrong")."""
    return entry["status"] in ("ok", "wrong") and "img_per_s" in entry


def status_label(entry: dict) -> str:
    """A provider record's status as tables show it: "WRONG" for logits that failed the check."""
    return "WRONG" if entry["status"] == "wrong" else entry["status"]


def workload_record(workload: Workload, entries: list[Entry], peak_tflops: float | None) -> dict:
    """The JSON record of one workload: its FLOPs and every provider's figures, failures and the
    ratio of its img/s to every other provider's (``ratios[other] = img_s / other's img_s``)."""
    flops = flops_per_image(workload.config, workload.image_size)
    providers = {}
    for entry in entries:
        record = {"status": entry.status, "precision": entry.precision, "reason": entry.reason,
                  "wall_s": round(entry.wall_s, 3)}
        if entry.check is not None:
            record.update(max_rel_err=entry.check.max_rel_err, tolerance=entry.check.tolerance)
        if entry.timing is not None:
            seconds = entry.timing.median_s
            flops_per_batch = flops[entry.provider.flops_part] * workload.batch
            tflops = flops_per_batch / seconds / 1e12
            record.update(
                img_per_s=workload.batch / seconds,
                ms_per_batch=seconds * 1e3,
                tflops=tflops,
                fraction_of_peak=tflops / peak_tflops if peak_tflops else None,
                flops_per_batch=flops_per_batch,
                compile_s=entry.compile_s,
                detail=entry.detail,
                repeats=len(entry.timing.per_call_s),
                calls_per_repeat=entry.timing.calls_per_repeat,
                times_ms=[t * 1e3 for t in entry.timing.per_call_s],
                latency_ms=entry.timing.latency_s * 1e3,
            )
        providers[entry.provider.name] = record
    add_ratios(providers)
    return {
        "label": workload.label, "model": workload.model, "batch": workload.batch,
        "image_size": workload.image_size, "dtype": workload.dtype,
        "run": 0,  # index into the document's runs: a new document has one; merge_results renumbers
        "flops_per_image": flops, "gflop_per_image": flops["total"] / 1e9,
        "peak_tflops": peak_tflops, "providers": providers,
    }


def run_workloads(workloads: list[Workload], providers: list[Provider], *, warmup: int, max_repeats: int,
                  peaks: dict[str, float], seed: int = 0,
                  on_step: Callable[[str], None] = lambda label: None,
                  on_partial: Callable[[dict], None] = lambda record: None) -> Iterator[dict]:
    """Measure every provider on every workload, yielding each workload's record when it is done.

    A fixed-precision provider (the peers) is measured once per (model, batch, image size) and
    its entry reused for the other dtypes. ``peaks`` maps dtype -> matmul peak TFLOP/s (GPU).
    ``on_step`` hears "<workload label>: <provider>" before each provider. Once a failure leaves
    the GPU unusable (``device_lost``), every later entry is an error saying so, not run.
    """
    import torch

    cache = InputCache(seed)
    measured: dict[tuple, Entry] = {}
    lost: str | None = None
    for workload in workloads:
        on_gpu = workload.device_type == "cuda"
        entries = []
        for provider in providers:
            on_step(f"{workload.label}: {provider.name}")
            key = (provider.name, workload.model, workload.batch, workload.image_size, provider.precision(workload))
            if key not in measured and lost is not None:
                measured[key] = Entry(provider, "error", provider.precision(workload), reason=lost)
            elif key not in measured:
                with cudnn_benchmark(on_gpu):
                    measured[key] = measure_provider(provider, workload, cache, warmup=warmup, max_repeats=max_repeats)
                if measured[key].status == "error":
                    lost = device_lost(workload.device_type, f"{workload.label}: {provider.name}")
                if on_gpu and lost is None:
                    gc.collect()  # the provider's models, graphs and buffers go before the next one's
                    torch.cuda.empty_cache()
            entries.append(measured[key])
            if len(entries) < len(providers):  # what a kill before the workload ends would otherwise lose
                on_partial({**workload_record(workload, entries, peaks.get(workload.dtype)), "partial": True})
        yield workload_record(workload, entries, peaks.get(workload.dtype))


# --------------------------------------------------------------------------------------- results
def gpu_slug(name: str) -> str:
    """A device name as a file-name part: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _command_output(command: list[str], cwd: str | None = None) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit() -> dict:
    """The source tree's commit and whether tracked files differ from it; outside a git checkout, the
    commit named by CONVMIXER_FAST_SOURCE_COMMIT (``dirty`` unknown), else None."""
    here = str(Path(__file__).resolve().parent)
    commit = _command_output(["git", "rev-parse", "HEAD"], cwd=here)
    if commit is None:
        return {"commit": _settings.source_commit(), "dirty": None}
    status = _command_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here)
    return {"commit": commit, "dirty": bool(status)}


def device_info(device: str) -> dict:
    """Name and properties of the device (GPU name, capability, memory, driver; or the CPU model)."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(index)
        driver = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(index)])
        return {"type": "cuda", "name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
                "driver": driver.splitlines()[0] if driver else None}
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"type": "cpu", "name": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def run_info(device: str, settings: dict) -> dict:
    """Where and with what a run measured: date, host, commit, versions, settings."""
    import torch

    from . import __version__
    from ._tf32 import cudnn_conv_allows_tf32, matmul_allows_tf32

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    now = datetime.datetime.now().astimezone()
    return {
        "date": now.date().isoformat(), "time": now.isoformat(timespec="seconds"), "host": socket.gethostname(),
        **git_commit(),
        "versions": {"convmixer_fast": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "triton": triton_version, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None},
        "settings": {**settings, "cudnn_benchmark": device.startswith("cuda"),
                     "allow_tf32": {"matmul": matmul_allows_tf32(), "cudnn": cudnn_conv_allows_tf32()}},
        "complete": False, "wall_s": None,
    }


def result_document(device: dict, run: dict, providers: list[Provider]) -> dict:
    """An empty result: schema, device, the run, provider descriptions; workloads get appended.

    ``{"schema", "device", "runs": [run_info...], "providers": {name: description},
    "workloads": [workload_record...]}``; each workload record names the run it came from.
    """
    return {"schema": RESULT_SCHEMA, "device": device, "runs": [run],
            "providers": {p.name: p.description for p in providers}, "workloads": []}


def load_result(path: str | os.PathLike) -> dict:
    """Read a result JSON, checking it is one this version understands."""
    try:
        result = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(result, dict) or result.get("schema") != RESULT_SCHEMA:
        raise ValueError(f"{path}: not a convmixer_fast bench result of schema {RESULT_SCHEMA}")
    return result


def merge_results(existing: dict, new: dict) -> dict:
    """``existing`` with ``new``'s run appended and its workloads replacing those of the same label
    (kept in place; new labels appended). Both must come from the same kind of device."""
    if existing["device"].get("name") != new["device"].get("name"):
        raise ValueError(f"cannot merge results of {new['device'].get('name')!r} into a file of "
                         f"{existing['device'].get('name')!r}")
    offset = len(existing["runs"])
    incoming = {w["label"]: {**w, "run": w["run"] + offset} for w in new["workloads"]}

    def replaced(old: dict) -> bool:  # a partial record (a run cut short) never displaces a complete one
        record = incoming.get(old["label"])
        return record is not None and (not record.get("partial") or bool(old.get("partial")))

    labels = {w["label"] for w in existing["workloads"]}
    kept = [incoming[w["label"]] if replaced(w) else w for w in existing["workloads"]]
    return {**existing, "runs": existing["runs"] + new["runs"],
            "providers": {**existing["providers"], **new["providers"]},
            "workloads": kept + [w for label, w in incoming.items() if label not in labels]}


def write_result(result: dict, path: str | os.PathLike) -> None:
    """Write atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(temporary, path)


def default_result_path(device_name: str, date: str) -> Path:
    """``benchmarks/results/<gpu-slug>-<YYYY-MM-DD>.json`` (relative to the current directory)."""
    return RESULTS_DIR / f"{gpu_slug(device_name)}-{date}.json"


# --------------------------------------------------------------------------------------- report
def _number(value: float | None, width: int, digits: int = 1) -> str:
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width},.{digits}f}"


def format_workload(record: dict) -> str:
    """The comparison table of one workload record (also readable from a saved result)."""
    flops = record["flops_per_image"]
    parts = ", ".join(f"{part} {flops[part] / 1e9:.3g}" for part in ("stem", "depthwise", "pointwise", "head"))
    peak = f"; {record['dtype']} mm peak {record['peak_tflops']:,.0f} TFLOP/s" if record.get("peak_tflops") else ""
    lines = [f"{record['label']}: {record['gflop_per_image']:.4g} GFLOP/img ({parts}){peak}"]
    header = (f"  {'provider':<30} {'precision':<14} {'img/s':>10} {'ms/batch':>9} {'latency ms':>10} {'TFLOP/s':>8} "
              f"{'%peak':>6}"
              + "".join(f" {'x ' + name:>16}" for name in TABLE_BASELINES))
    lines.append(header)
    notes = []
    for name, entry in record["providers"].items():
        row = f"  {name:<30} {entry['precision']:<14}"
        if not timed(entry):
            lines.append(f"{row} {status_label(entry)}: {entry['reason']}")
            continue
        if entry["status"] == "wrong":
            notes.append(f"  {name}: {status_label(entry)}: {entry['reason']}; {WRONG_BUT_TIMED}")
        fraction = entry.get("fraction_of_peak")
        row += (f" {_number(entry['img_per_s'], 10)} {_number(entry['ms_per_batch'], 9, 3)}"
                f" {_number(entry.get('latency_ms'), 10, 3)} {_number(entry['tflops'], 8, 2)}"
                f" {_number(fraction * 100 if fraction else None, 6)}")
        for baseline in TABLE_BASELINES:
            ratio = entry["ratios"].get(baseline)
            row += f" {'-' if ratio is None else f'{ratio:.2f}x':>16}" if baseline != name else f" {'':>16}"
        lines.append(row + ("  WRONG" if entry["status"] == "wrong" else ""))
        if entry.get("compile_s") is not None:
            notes.append(f"  {name}: compiled in {entry['compile_s']:.1f} s (not timed)")
        if entry.get("detail"):
            notes.append(f"  {name}: {entry['detail']}")
    return "\n".join(lines + notes)


def markdown_workload(record: dict) -> str:
    """One workload record as the Markdown table the README shows: a heading line, one row per
    provider timed (a WRONG one marked), then the WRONG ones' reasons and the ones not timed with
    their status."""
    peak = f", {record['dtype']} mm peak {record['peak_tflops']:,.0f} TFLOP/s" if record.get("peak_tflops") else ""
    partial = "; partial: the run stopped before its other providers" if record.get("partial") else ""
    lines = [f"**{record['label']}** ({record['gflop_per_image']:.4g} GFLOP/img{peak}{partial})", "",
             "| provider | precision | img/s | ms/batch | latency ms | TFLOP/s | %peak | "
             + " | ".join(f"× {name}" for name in TABLE_BASELINES) + " |",
             "|---|---|" + "---:|" * (5 + len(TABLE_BASELINES))]
    wrong, others = [], []
    for name, entry in record["providers"].items():
        if not timed(entry):
            others.append(f"`{name}` ({status_label(entry)}: {entry['reason']})")
            continue
        if entry["status"] == "wrong":
            wrong.append(f"`{name}` ({entry['reason']})")
        fraction = entry.get("fraction_of_peak")
        ratios = [("—" if baseline == name else
                   f"{entry['ratios'][baseline]:.2f}×" if baseline in entry["ratios"] else "-")
                  for baseline in TABLE_BASELINES]
        detail = f" ({entry['detail']})" if entry.get("detail") else ""
        latency_ms = f"{entry['latency_ms']:.3f}" if entry.get("latency_ms") is not None else "-"
        marker = f" **{status_label(entry)}**" if entry["status"] == "wrong" else ""
        cells = [f"`{name}`{marker}{detail}", entry["precision"], f"{entry['img_per_s']:,.1f}",
                 f"{entry['ms_per_batch']:.3f}", latency_ms, f"{entry['tflops']:.2f}", f"{fraction * 100:.1f}" if fraction else "-", *ratios]
        lines.append("| " + " | ".join(cells) + " |")
    if wrong:
        lines += ["", f"WRONG, {WRONG_BUT_TIMED}: " + "; ".join(wrong) + "."]
    if others:
        lines += ["", "Not timed: " + "; ".join(others) + "."]
    return "\n".join(lines)


def compare_results(current: dict, baseline: dict, max_regression: float,
                    baseline_name: str = "baseline") -> tuple[str, bool]:
    """(report, failed): img/s change per (workload, provider) measured ok in both; failed when
    any is slower than the baseline by more than ``max_regression`` (a fraction), or when none was
    measured in both (a gate that compared nothing must not pass)."""
    base_run = baseline["runs"][-1]
    lines = [f"comparison with {baseline_name} ({baseline['device'].get('name')}, {base_run.get('date')}, "
             f"commit {(base_run.get('commit') or 'unknown')[:12]}); regression: slower by more than "
             f"{max_regression:.0%}"]
    if baseline["device"].get("name") != current["device"].get("name"):
        lines.append(f"  note: different devices ({baseline['device'].get('name')} -> {current['device'].get('name')})")
    lines.append(f"  {'workload':<44} {'provider':<30} {'baseline':>10} {'img/s':>10} {'change':>8}")
    old = {(w["label"], name): e for w in baseline["workloads"] for name, e in w["providers"].items()}
    compared = regressions = 0
    for workload in current["workloads"]:
        for name, entry in workload["providers"].items():
            before = old.get((workload["label"], name))
            if entry["status"] != "ok" or before is None or before["status"] != "ok":
                continue
            change = entry["img_per_s"] / before["img_per_s"] - 1
            regressed = change < -max_regression
            compared += 1
            regressions += regressed
            lines.append(f"  {workload['label']:<44} {name:<30} {before['img_per_s']:>10,.1f} "
                         f"{entry['img_per_s']:>10,.1f} {change:>+8.1%}{'  REGRESSION' if regressed else ''}")
    lines.append(f"{compared} entries compared, {regressions} regression{'s' if regressions != 1 else ''}")
    if not compared:
        lines.append("nothing to compare: no workload and provider was measured in both (another model, batch, "
                     "dtype or image size, or other providers?)")
    return "\n".join(lines), regressions > 0 or not compared


# --------------------------------------------------------------------------------------- command line
class _Progress:
    """A tqdm bar when tqdm is installed and stderr is a terminal, else one stderr line per step
    (a bar's carriage returns would garble a log file)."""

    def __init__(self, total: int):
        tqdm = None
        if sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm
        self.total, self.count = total, 0
        self.bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, leave=False) if tqdm else None

    def step(self, label: str) -> None:
        if self.bar is not None:
            if self.count:
                self.bar.update(1)
            self.bar.set_description_str(label)
        else:
            print(f"[{self.count + 1}/{self.total}] {label}", file=sys.stderr, flush=True)
        self.count += 1

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.close()


def _headline(device: str, workloads: list[Workload], providers: list[Provider], defaults: bool,
              json_path: Path | None) -> str:
    models = sorted({w.model for w in workloads})
    what = (f"{len(workloads)} workload{'s' if len(workloads) != 1 else ''} ({', '.join(models)}), "
            f"{len(providers)} providers")
    where = f"; results -> {json_path}" if json_path else ""
    if device.startswith("cuda"):
        import torch

        return f"bench on {device} ({torch.cuda.get_device_name(torch.device(device))}): {what}{where}"
    if defaults:
        from .configs import MODEL_CONFIGS

        size = default_image_size(MODEL_CONFIGS[CPU_MODEL])
        return (f"CPU run (no GPU in use): the small CPU default workload ({CPU_MODEL}, "
                f"{size}x{size}, batch {CPU_BATCH}, {CPU_DTYPE}, "
                f"at most {CPU_REPEATS} repeats); GPU-only providers skip. CPU figures check the machinery, "
                f"they are not the comparison{where}")
    return f"CPU run (no GPU in use): {what}; GPU-only providers skip{where}"


def _list_providers(device: str) -> None:
    workload = make_workloads(device, *default_plan(device))[0]
    for provider in all_providers():
        reason = provider.unavailable_reason(workload)
        print(f"{provider.name:<30} {provider.description}{' [opt-in]' if provider.opt_in else ''}")
        print(f"{'':<30} {'available' if reason is None else 'unavailable: ' + reason}")


def _measure_peaks(workloads: list[Workload], device: str) -> dict[str, float]:
    if not device.startswith("cuda"):
        return {}
    peaks = {dtype: matmul_peak_tflops(dtype, device) for dtype in sorted({w.dtype for w in workloads})}
    print("torch.mm peak: " + ", ".join(f"{d} {t:,.0f} TFLOP/s" for d, t in peaks.items()), flush=True)
    return peaks


def cli_image_size_fits(command: str, models: list[tuple[str, dict]], image_size: int | None) -> bool:
    """Whether square images of ``image_size`` (None: ``default_image_size``, always large enough)
    hold a patch of each ``(name, config)``; says which does not on stderr."""
    for name, config in models:
        if image_size is not None and image_size < config["patch_size"]:
            print(f"{command}: image size {image_size} is smaller than {name}'s patch size {config['patch_size']}",
                  file=sys.stderr)
            return False
    return True


def cli_device(requested: str | None, command: str) -> str | None:
    """The device a command runs on: ``requested`` (a name ``torch.device`` parses), else cuda where
    torch sees a GPU, else cpu; a GPU is made the current device (events, graphs and synchronize use
    it). None, after saying why on stderr, when the device cannot be used here (no such GPU, or a
    device type this torch cannot allocate on)."""
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    parsed = torch.device(device)
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            print(f"{command}: --device {device}, but torch sees no CUDA GPU", file=sys.stderr)
            return None
        if parsed.index is not None:
            if parsed.index >= count:
                print(f"{command}: --device {device}, but torch sees {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}",
                      file=sys.stderr)
                return None
            torch.cuda.set_device(parsed)
    elif parsed.type != "cpu":
        try:
            torch.empty(1, device=parsed)
        except Exception as error:  # no such backend in this torch build, no such device
            reason = (str(error).strip() or type(error).__name__).splitlines()[0].split(". ")[0]  # (torch's go on)
            print(f"{command}: --device {device} cannot be used here: {reason}", file=sys.stderr)
            return None
    return device


def run_cli(args) -> int:
    """``python -m convmixer_fast bench`` (arguments from ``__main__``): 0; 1 on a WRONG or failed
    provider, a regression beyond ``--max-regression`` or (``--targets``) a target not met; 2 on bad
    arguments or files."""
    if args.markdown or args.targets:
        try:
            saved = load_result(args.markdown or args.targets)
        except (OSError, ValueError) as error:
            print(f"bench: {error}", file=sys.stderr)
            return 2
        run = saved["runs"][-1]
        versions = run["versions"]
        print(f"{saved['device']['name']}; torch {versions['torch']}, triton {versions['triton']}, CUDA "
              f"{versions['cuda']}; commit {(run['commit'] or 'unknown')[:10]}{' (dirty)' if run['dirty'] else ''}, "
              f"{run['date']}\n")
        if args.markdown:
            print("\n\n".join(markdown_workload(record) for record in saved["workloads"]))
            return 0
        from .targets import evaluate, format_verdicts

        verdicts = evaluate(saved)
        print(format_verdicts(verdicts, saved["runs"]))
        return 0 if all(verdict.passed for verdict in verdicts) else 1
    device = cli_device(args.device, "bench")
    if device is None:
        return 2
    on_gpu = device.startswith("cuda")
    if args.list_providers:
        _list_providers(device)
        return 0

    from .configs import MODEL_CONFIGS

    models, batches, dtypes = default_plan(device)
    if not cli_image_size_fits("bench", [(m, MODEL_CONFIGS[m]) for m in args.model or models], args.image_size):
        return 2
    workloads = make_workloads(device, args.model or models, args.batch or batches, args.dtype or dtypes,
                               args.image_size)
    max_repeats = args.repeats or (GPU_REPEATS if on_gpu else CPU_REPEATS)
    run = run_info(device, {"warmup": args.warmup, "max_repeats": max_repeats, "measure_seconds": MEASURE_SECONDS,
                            "min_repeat_seconds": MIN_REPEAT_SECONDS, "seed": args.seed})
    info = device_info(device)
    json_path = Path(args.json) if args.json else (default_result_path(info["name"], run["date"]) if on_gpu else None)
    plot_path = Path(args.plot) if args.plot else (json_path.with_suffix(".png") if on_gpu and json_path else None)
    if args.merge and json_path is None:
        print("bench: --merge adds this run to a result file, and on a CPU none is written unless --json PATH "
              "names one", file=sys.stderr)
        return 2
    result = None
    try:
        providers = select_providers(all_providers(), args.providers)
        result = result_document(info, run, providers)
        baseline = load_result(args.compare) if args.compare else None
        earlier = load_result(json_path) if args.merge and json_path and json_path.exists() else None
        if earlier is not None:
            merge_results(earlier, result)  # a different device fails here, before measuring
    except (OSError, ValueError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2

    uses_defaults = not (args.model or args.batch or args.dtype)
    print(_headline(device, workloads, providers, uses_defaults, json_path), flush=True)
    start = time.perf_counter()
    run["matmul_peak_tflops"] = peaks = _measure_peaks(workloads, device)

    def save() -> dict:
        run["wall_s"] = round(time.perf_counter() - start, 1)
        merged = merge_results(earlier, result) if earlier is not None else result
        if json_path:
            write_result(merged, json_path)
        return merged

    def keep(record: dict) -> None:
        """``record`` saved in place of its workload's partial one: after each provider (a partial
        record, ``"partial": true``) and each workload, so a run killed midway keeps what it measured."""
        if result["workloads"] and result["workloads"][-1].get("partial"):
            result["workloads"].pop()
        result["workloads"].append(record)
        save()

    progress = _Progress(len(workloads) * len(providers))
    failed = []
    try:
        for record in run_workloads(workloads, providers, warmup=args.warmup, max_repeats=max_repeats, peaks=peaks,
                                    seed=args.seed, on_step=progress.step, on_partial=keep):
            keep(record)
            failed += [f"{record['label']}: {name} {e['status']}" for name, e in record["providers"].items()
                       if e["status"] in ("wrong", "error")]
            progress.write("\n" + format_workload(record))
    finally:
        progress.close()
    run["complete"] = True
    merged = save()
    if json_path:
        print(f"\nwrote {json_path}")
    if plot_path:
        _plot(merged, plot_path)
    status = 0
    if failed:
        print(f"\n{len(failed)} provider result{'s' if len(failed) != 1 else ''} WRONG or failed:\n  " + "\n  ".join(failed))
        status = 1
    if baseline is not None:
        report, comparison_failed = compare_results(result, baseline, args.max_regression, baseline_name=args.compare)
        print("\n" + report)
        status = 1 if comparison_failed else status
    return status


def _plot(result: dict, path: Path) -> None:
    from .plot import PlotUnavailableError, plot_result

    try:
        plot_result(result, path)
        print(f"wrote {path}")
    except PlotUnavailableError as error:
        print(f"no plot: {error}", file=sys.stderr)
