"""Pieces shared by the Triton kernels: activation + epilogue, config selection, inspect specs.

Imported only by the Triton op modules (never at ``import convmixer_fast``), so a machine without
Triton can still use the package.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
import triton
import triton.language as tl

from .. import _settings
from ._checks import check_apart
from ._interpreter import is_interpreting  # noqa: F401  (re-exported for the op modules)
from .gelu import GELU_LOG2_PHI_COEFFICIENTS

# Codes of the activations inside kernels (a constexpr, so each is its own specialisation).
ACTIVATION_CODES = {"gelu": 0, "relu": 1}

# torch dtype -> the name Triton gives it in a kernel signature.
TRITON_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def device_guard(tensor: torch.Tensor):
    """Make the tensor's CUDA device current for a launch (Triton launches on the current device);
    nothing to do on CPU (interpreter) or when it already is."""
    device = tensor.device
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def max_shared_memory(device: torch.device) -> int:
    """Shared memory per block a kernel may use on the CUDA ``device`` (a tensor's: its index is
    set): the limit Triton's launcher holds a compiled kernel to (its ``max_shared_mem``; 227 KB on
    an H100, ~100 KB on consumer GPUs). Asked once per new autotune key, so not cached."""
    from triton.runtime import driver

    return driver.active.utils.get_device_properties(device.index)["max_shared_mem"]


def epilogue_custom_op(name: str, launch: Callable[..., None], doc: str, input_name: str):
    """The ``convmixer_fast::<name>`` custom op ``(x, weight, bias, scale, shift, act, out) -> None``
    of a kernel with the fused epilogue (stem, depthwise block, pointwise): ``out`` must overlap no
    input (``_checks.check_apart``, here where real pointers exist, not at trace time under
    torch.compile; ``x`` is called ``input_name`` in its message), then ``launch`` writes it from
    validated arguments; its fake writes nothing (``out`` is preallocated and mutated)."""
    checked_as = name.removeprefix("triton_")

    def op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
           act: str, out: torch.Tensor) -> None:
        check_apart(checked_as, {"out": out},
                    {input_name: x, "weight": weight, "bias": bias, "scale": scale, "shift": shift})
        launch(x, weight, bias, scale, shift, act, out)

    op.__doc__ = doc
    custom = torch.library.custom_op(f"convmixer_fast::{name}", op, mutates_args=("out",))
    custom.register_fake(lambda x, weight, bias, scale, shift, act, out: None)
    return custom


def autotune(configs: list[triton.Config], key: list[str], prune: Callable | None = None, **kwargs):
    """``triton.autotune`` as every op uses it. On a GPU, per new key, the configs that apply
    (``prune``, the kernel's ``early_config_prune(configs, named_args, **kwargs)``, if any: e.g. those
    that fit the GPU's shared memory) are each timed by ``autotune_benchmark`` (unless ``kwargs``
    names another ``do_bench``), or with CONVMIXER_FAST_TRITON_AUTOTUNE=0 (``_settings``; the
    tests: benchmarking would only multiply their compile time, correctness does not depend on the
    config, and tests that want a specific config pass it explicitly) the first of them runs
    untimed. Under the interpreter only the first config exists (no benchmarking, nothing to fit).
    Results are cached on disk (``cache_results``, under TRITON_CACHE_DIR, keyed by the configs
    timed), so another process with the same kernel source, Triton version and GPU does not tune
    again. The autotuner is registered in ``AUTOTUNERS``; its launches are serialised process-wide,
    and one that would tune while a CUDA graph is being captured runs untuned (``_serialized``)."""
    autotunes = _settings.triton_autotunes()

    def applicable(candidates, named_args, **launch_kwargs):
        if prune is not None:
            candidates = prune(candidates, named_args, **launch_kwargs)
        return candidates if autotunes else candidates[:1]

    kwargs.setdefault("do_bench", autotune_benchmark)
    tune = triton.autotune(configs=configs[:1] if is_interpreting() else configs, key=key, cache_results=True,
                           prune_configs_by={"early_config_prune": applicable}, **kwargs)

    def registered(fn):
        tuner = tune(fn)
        tuner.run = _serialized(tuner, tuner.run)  # ``tuner[grid](...)`` calls ``self.run``
        AUTOTUNERS.append(tuner)
        return tuner

    return registered


AUTOTUNERS: list = []  # every autotuner ``autotune`` made, in order: ``recorded_autotuning`` reads them
AUTOTUNE_REPEATS = 10  # ``autotune_benchmark``'s repeats per config (of measured.TIMED_CALLS calls each)
# Held by every launch through an autotuner. Triton's Autotuner keeps a launch's arguments on itself
# (``nargs``) while it benchmarks and clears them when done, so two threads launching one kernel at
# once, the first tuning a new shape, would hand the first the second's arguments or none (a
# TypeError mid-benchmark), and time each other's kernels. (Triton's interpreter, which patches
# triton.language while a kernel runs, is not thread-safe either.)
_AUTOTUNED_LAUNCH = threading.RLock()


class _CapturingGraph(Exception):
    """``autotune_benchmark`` was asked to time configs while a CUDA graph is being captured."""


def _serialized(tuner, run: Callable) -> Callable:
    """``tuner``'s ``run`` under ``_AUTOTUNED_LAUNCH``; a launch that would tune a new key while the
    current stream captures a CUDA graph (the caller's own: the model warms up before it captures)
    runs ``_run_untuned`` instead."""

    @functools.wraps(run)
    def locked(*args, **kwargs):
        with _AUTOTUNED_LAUNCH:
            try:
                return run(*args, **kwargs)
            except _CapturingGraph:
                return _run_untuned(tuner, args, kwargs)

    return locked


def _run_untuned(tuner, args: tuple, kwargs: dict):
    """The launch on the first config that applies, its key left untuned: the first launch outside
    a capture tunes it. (Timing inside a capture is impossible: a synchronize invalidates it, and
    the timed launches would be recorded into the graph. ``auto`` likewise takes its first backend
    there, unmeasured.)"""
    tuner.nargs = dict(zip(tuner.arg_names, args))
    try:
        config = tuner.prune_configs(kwargs)[0]
    finally:
        tuner.nargs = None
    return tuner.fn.run(*args, **kwargs, **config.all_kwargs())


def autotune_benchmark(kernel_call: Callable[[], None], quantiles) -> list[float]:
    """The autotuners' timer, in Triton's ``do_bench`` interface: milliseconds per call at each of
    ``quantiles`` over ``AUTOTUNE_REPEATS`` repeats of ``backends.measured.repeat_times`` on the
    current device. On a GPU each repeat is queued behind a spin kernel, so it times the kernels as
    the model's CUDA graph replays them, without the host's launch overhead (which at batch 1
    exceeds a GEMM's own time and would blur the configs' differences) and with the L2 cache as
    consecutive calls leave it (Triton's own timer launches one call at a time and flushes L2
    first). Raises ``_CapturingGraph`` while the current stream captures a CUDA graph."""
    from ..backends.measured import repeat_times

    on_gpu = torch.cuda.is_available()
    if on_gpu and torch.cuda.is_current_stream_capturing():
        raise _CapturingGraph
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    times_ms = sorted(seconds * 1e3 for seconds in repeat_times(kernel_call, device, repeats=AUTOTUNE_REPEATS))
    return [times_ms[round(q * (len(times_ms) - 1))] for q in quantiles]


@contextlib.contextmanager
def recorded_autotuning():
    """Yield a list that, once the block ends, holds one dict per autotuner (of ``AUTOTUNERS``) that
    chose a config for a new key in the block, by benchmarking its configs or from Triton's disk cache:

    - ``kernel``: the kernel's name; ``key``: the autotune key (the key arguments, then each tensor
      argument's dtype), its items as JSON numbers or strings;
    - ``best``: the chosen config's ``config_label``;
    - ``bench_s``: seconds the benchmarking took, None where the timings came from the disk cache;
    - ``timings_us``: each config's median time (µs) by label, in the autotuner's config order; None
      for a config that could not run (out of resources, a compile-time assertion).

    Triton keeps only each autotuner's latest timings (``configs_timings``), so an autotuner that
    tunes two keys in one block is recorded with the second only (``bench-ops`` calls each op once
    per block).
    """
    before = {id(tuner): (getattr(tuner, "configs_timings", None), getattr(tuner, "bench_time", None))
              for tuner in AUTOTUNERS}
    runs: list[dict] = []
    try:
        yield runs
    finally:
        for tuner in AUTOTUNERS:
            timings_before, bench_time_before = before.get(id(tuner), (None, None))
            timings = getattr(tuner, "configs_timings", None)
            if not timings or timings is timings_before:
                continue
            key = list(tuner.cache)[-1]  # the newest key: Triton sets cache[key] with configs_timings
            bench_time = getattr(tuner, "bench_time", None)
            runs.append({
                "kernel": tuner.base_fn.__name__,
                "key": [item if isinstance(item, (bool, int, float, str)) else str(item) for item in key],
                "best": config_label(tuner.cache[key]),
                "bench_s": None if bench_time is bench_time_before else bench_time,
                "timings_us": {config_label(config): _median_us(timing) for config, timing in timings.items()},
            })


def _median_us(timing) -> float | None:
    """One of Triton's autotune timings (ms: the median, or [median, 20th, 80th percentile]) in µs;
    None where the config could not run (Triton records infinity)."""
    median = timing[0] if isinstance(timing, (list, tuple)) else timing
    return median * 1e3 if math.isfinite(median) else None


def config_label(config: triton.Config) -> str:
    """A short, stable name for a config, e.g. ``BLOCK_M=128,BLOCK_N=64,w=8,s=3``."""
    kwargs = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{kwargs},w={config.num_warps},s={config.num_stages}"


_GELU_LOG2_PHI_COEFFICIENTS = tl.constexpr(GELU_LOG2_PHI_COEFFICIENTS)
_GELU_DEGREE = tl.constexpr(len(GELU_LOG2_PHI_COEFFICIENTS) - 1)


@triton.jit
def gelu(z):
    """GELU of fp32 ``z``, the exact (erf) form in 8 instructions; ops/gelu.py has the method."""
    t = tl.abs(z)
    log2_q = tl.full(t.shape, _GELU_LOG2_PHI_COEFFICIENTS[_GELU_DEGREE], tl.float32)
    for i in tl.static_range(_GELU_DEGREE - 1, -1, -1):
        log2_q = tl.fma(log2_q, t, _GELU_LOG2_PHI_COEFFICIENTS[i])
    return tl.fma(-t, tl.math.exp2(log2_q), tl.maximum(z, 0.0))  # z (1 - q) for z >= 0, z q below


@triton.jit
def apply_activation(z, ACTIVATION: tl.constexpr):
    """Exact (erf) GELU (``gelu``) for ACTIVATION == 0, ReLU for ACTIVATION == 1; fp32 in and out.
    Both keep NaN as torch's do (ReLU explicitly: tl.maximum's default compiles to PTX max.f32,
    which returns the other operand, so a NaN pre-activation would come out as 0)."""
    if ACTIVATION == 0:
        z = gelu(z)
    else:
        z = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return z


@triton.jit
def fused_epilogue(acc, bias, scale, shift, ACTIVATION: tl.constexpr):
    """``scale * act(acc + bias) + shift`` in fp32; bias/scale/shift broadcast along channels."""
    return apply_activation(acc + bias, ACTIVATION) * scale + shift


@dataclass(frozen=True)
class KernelSpec:
    """One Triton kernel at one autotune config, as ``python -m convmixer_fast inspect`` compiles it.

    ``signature`` maps every non-constexpr argument to its Triton type (``"*bf16"``, ``"i32"``,
    ``"fp32"``); ``constexprs`` maps every constexpr argument (config and specialisation) to its
    value. ``num_warps`` / ``num_stages`` come from the config. ``divisible_by_16`` names the
    integer arguments that are multiples of 16 at the sample shape: the JIT specialises on that at
    run time (vectorised loads depend on it), so inspect marks them as it does.
    """

    kernel: str
    fn: object  # the @triton.jit function (not the autotuner wrapping it)
    signature: dict[str, str]
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int
    config: str
    divisible_by_16: tuple[str, ...] = ()
    backend: str = field(default="triton")
