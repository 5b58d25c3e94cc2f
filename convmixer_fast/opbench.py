"""``python -m convmixer_fast bench-ops``: each fused op alone, against its own floors (issue 6).

For one workload (model config, batch, image size, dtype, device) every op of ``backends.OP_NAMES``
(stem, depthwise_block, pointwise, head) runs on its real operands: the image ``[B, 3, S, S]`` fp32
NCHW for the stem, random tokens ``[B, Hp, Wp, C]`` in the dtype for the others, and the weights and
fp32 epilogue vectors that ``prepare.prepare_params`` makes from a ``ConvMixer`` with
trained-looking random weights (``testing.randomize_weights_``) on the device and dtype: the first
block's depthwise and pointwise operands, the stem's, and the head with the last BatchNorm folded in
(``head_folded``, what ``ConvMixer.forward`` runs).

Each (op, backend) writes into a preallocated, NaN-filled ``out`` (and, for the head, a preallocated
fp32 ``pooled`` workspace). Its output is checked once against ``ops.reference`` (fp32 math,
rounded once to the dtype; computed with TF32 off), ``max|out - ref| / max|ref|`` within the per-kernel
tolerance of ``verify.tolerances`` (the TF32 one for fp32 on a GPU where torch may use TF32); a row
outside it is WRONG and not timed. Then ``bench.time_calls`` times ``op(..., out=out)``: on a GPU,
``GRAPH_CALLS`` calls captured in one CUDA graph (as the model replays its forward), the replays
timed by CUDA events, so the figure is the kernels' time and not the host's launch overhead (tens
of µs per call in Python, more than a batch-1 kernel takes); on CPU, the calls themselves by
``time.perf_counter``; the median over repeats. A backend that cannot run on the
device, or cannot run one op for the dtype and width, is skipped with its own reason; the triton
backend on CPU is skipped (``bench.TRITON_INTERPRETER_REASON``: interpreter timings mean nothing).

Floors, measured in the same run (``measure_rates``):

- **memory floor** = ``op_bytes`` (each input read once, the output written once, weights once) /
  the copy bandwidth: ``dst.copy_(src)`` of ``COPY_BYTES`` (1 GiB on a GPU, 64 MiB on CPU), counting
  the bytes read plus the bytes written;
- **compute floor** = ``op_flops`` / a rate: the stem and the pointwise GEMM at the tensor-core GEMM
  rate (``bench.matmul_peak_tflops``, a ``torch.mm`` of 8192-square matrices in the dtype, on a GPU;
  on CPU a ``torch.mm`` of ``CPU_GEMM_SIZE``-square ones); the depthwise block and the head at the
  fp32 FMA rate of ``_fma_loop_kernel`` (a Triton loop of independent FMA chains, GPU only: on CPU
  the FMA rate and those compute floors are None);
- **floor** = the larger of the two (the memory floor alone where the compute floor is None).

The memory floor counts DRAM traffic at the bandwidth of a copy far larger than the caches: an op
whose operands fit in cache (small batches: one 32x32x1536 bf16 token map is 3 MiB, an H100's L2
50 MiB) can beat it, so floor / time above 100% means "cache-resident", not a measuring error.

FLOPs are ``bench.flops_per_image`` (2 per multiply-add; convolutions and the classifier only) times
the batch, divided by ``depth`` for one block's depthwise / pointwise op.

Output: a table, one row per (op, backend), times in microseconds ("us"): time, both floors, the floor, floor / time (how close the
op is to its floor), achieved TFLOP/s and GB/s; under a row whose first call autotuned a Triton kernel,
each config's time as the autotuner measured it (the row's ``autotuning``: which config wins and
by how much, per shape, for pruning the config lists); a header with the three measured rates; and per
backend the per-op-sum estimate of one forward (stem once, depthwise and pointwise ``depth`` times,
head once). JSON (``--json``; on a GPU by default
``benchmarks/results/ops-<gpu>-<model>-b<batch>-<date>.json``)::

    {"schema": 1, "device": bench.device_info, "run": bench.run_info,
     "workload": {...}, "rates": {...}, "rows": [row...], "forward": {...}}

rewritten (write, then rename) after the rates and after each op, so an interrupted run keeps what
it measured; ``run["complete"]`` turns True at the end. Where an op's failure left the GPU
unusable (``bench.device_lost``), the rows stop there and ``"device_lost"`` says why.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import bench
from ._settings import TRITON_COMPILE_OPTIONS
from ._tf32 import tf32_off
from .backends import BACKENDS, OP_NAMES

try:  # the FMA-rate kernel and the autotuners' timings; without Triton neither is measured
    import triton
    import triton.language as tl

    from .ops._triton_utils import recorded_autotuning
except ImportError:  # pragma: no cover - Triton ships with every environment of this project
    triton = None

    def recorded_autotuning():
        return contextlib.nullcontext([])

SCHEMA = 1
GPU_MODEL, GPU_BATCH, GPU_DTYPE = "convmixer_1536_20", 256, "bf16"
CPU_MODEL, CPU_BATCH, CPU_DTYPE = "convmixer_cifar10", 2, "fp32"
GPU_REPEATS, CPU_REPEATS = 20, 5
GRAPH_CALLS = 20  # an op's calls per CUDA graph timed on a GPU
COPY_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}
CPU_GEMM_SIZE = 1024
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
IMAGE_ELEMENT_BYTES = 4  # the stem reads an fp32 image
STATUSES = bench.STATUSES  # "ok", "wrong", "error", "skipped"

# bench.flops_per_image key of each op, and which rate bounds its arithmetic.
FLOPS_PART = {"stem": "stem", "depthwise_block": "depthwise", "pointwise": "pointwise", "head": "head"}
COMPUTE_RATE = {"stem": "gemm", "depthwise_block": "fma", "pointwise": "gemm", "head": "fma"}

# The FMA loop: FMA_CHAINS independent accumulators per element (written out in the kernel) of a
# [FMA_BLOCK] vector per program, FMA_UNROLL steps per loop trip, FMA_PROGRAMS_PER_SM programs of
# FMA_WARPS warps per SM (one wave: 16 warps, 32 chains per thread, enough to hide the FMA latency).
FMA_CHAINS = 8
FMA_BLOCK = 512
FMA_WARPS = 4
FMA_UNROLL = 4
FMA_ITERATIONS = 4096  # loop trips: 16,384 FMAs per chain, ~1 ms on an H100
FMA_PROGRAMS_PER_SM = 4
FMA_START_MODULUS = 64  # chain j of element i starts at (i % 64) + j


# --------------------------------------------------------------------------------------- counts
def _dtype_name(dtype) -> str:
    if isinstance(dtype, str):
        if dtype not in ELEMENT_BYTES:
            raise ValueError(f"dtype must be one of {tuple(ELEMENT_BYTES)}, got {dtype!r}")
        return dtype
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    if dtype not in names:
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    return names[dtype]


def calls_per_forward(op: str, config: dict) -> int:
    """How often ``op`` runs in one forward: stem and head once, the block ops ``depth`` times."""
    return config["depth"] if op in ("depthwise_block", "pointwise") else 1


def op_flops(op: str, config: dict, batch: int, image_size: int) -> int:
    """FLOPs of one call of ``op`` (2 per multiply-add): ``bench.flops_per_image`` times ``batch``,
    one block's share for depthwise_block and pointwise."""
    per_image = bench.flops_per_image(config, image_size)[FLOPS_PART[op]]
    return per_image * batch // (config["depth"] if op in ("depthwise_block", "pointwise") else 1)


def op_bytes(op: str, config: dict, batch: int, image_size: int, dtype) -> int:
    """The bytes one call of ``op`` must move at least: each input read once, the output written once,
    the weights once. ``dtype`` ("fp32" / "fp16" / "bf16" or a torch dtype) is the model's; with
    ``M = batch * (image_size // p)**2`` tokens, ``e`` bytes per element, ``C`` = dim:

    - stem: the fp32 image's pixels that fall in whole patches (``batch * Cin * (Hp*p)**2 * 4``; the
      strided conv ignores the rest), the weight ``C * Cin * p * p * e``, bias / scale / shift
      ``3 * C * 4``, the tokens ``M * C * e``;
    - depthwise_block: the tokens ``M * C * e`` (the residual is the same read), the taps
      ``k * k * C * e``, ``3 * C * 4``, the output ``M * C * e``;
    - pointwise: the tokens ``M * C * e``, the weight ``C * C * e``, ``3 * C * 4``, the output
      ``M * C * e``;
    - head: the tokens ``M * C * e``, the weight ``N * C * e``, the fp32 bias ``N * 4``, the logits
      ``batch * N * e`` (the pooled workspace is an intermediate: not counted).
    """
    e = ELEMENT_BYTES[_dtype_name(dtype)]
    dim, k, p = config["dim"], config["kernel_size"], config["patch_size"]
    cin, classes = config.get("in_chans", 3), config["n_classes"]
    side = image_size // p
    tokens = batch * side * side * dim * e  # one [B, Hp, Wp, C] token map
    epilogue = 3 * dim * 4
    if op == "stem":
        return batch * cin * (side * p) ** 2 * IMAGE_ELEMENT_BYTES + dim * cin * p * p * e + epilogue + tokens
    if op == "depthwise_block":
        return tokens + k * k * dim * e + epilogue + tokens
    if op == "pointwise":
        return tokens + dim * dim * e + epilogue + tokens
    if op == "head":
        return tokens + classes * dim * e + classes * 4 + batch * classes * e
    raise ValueError(f"op must be one of {OP_NAMES}, got {op!r}")


# --------------------------------------------------------------------------------------- FMA rate
if triton is not None:

    @triton.jit
    def _fma_loop_kernel(out_ptr, multiplier, addend, iterations, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
        """``iterations * UNROLL`` steps of ``a = fma(a, multiplier, addend)`` on 8 independent chains
        per element of a ``[BLOCK]`` vector, then the sum of the chains stored per element.

        ``multiplier`` and ``addend`` are runtime scalars, so the compiler cannot fold the chains;
        with ``multiplier = addend = 1`` the result is exact: ``fma_loop_expected``.
        """
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
        start = (offsets % 64).to(tl.float32)  # [BLOCK]; 64 = FMA_START_MODULUS
        a0 = start
        a1 = start + 1.0
        a2 = start + 2.0
        a3 = start + 3.0
        a4 = start + 4.0
        a5 = start + 5.0
        a6 = start + 6.0
        a7 = start + 7.0
        for _ in range(iterations):
            for _step in tl.static_range(UNROLL):
                a0 = tl.fma(a0, multiplier, addend)
                a1 = tl.fma(a1, multiplier, addend)
                a2 = tl.fma(a2, multiplier, addend)
                a3 = tl.fma(a3, multiplier, addend)
                a4 = tl.fma(a4, multiplier, addend)
                a5 = tl.fma(a5, multiplier, addend)
                a6 = tl.fma(a6, multiplier, addend)
                a7 = tl.fma(a7, multiplier, addend)
        total = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))  # [BLOCK]
        tl.store(out_ptr + offsets, total)

else:  # pragma: no cover
    _fma_loop_kernel = None


def launch_fma_loop(out: torch.Tensor, iterations: int, *, block: int = FMA_BLOCK, unroll: int = FMA_UNROLL,
                    num_warps: int = FMA_WARPS) -> None:
    """Run ``_fma_loop_kernel`` over ``out`` (fp32, contiguous, ``numel`` a multiple of ``block``:
    one program per ``block`` elements) with ``multiplier = addend = 1``."""
    if _fma_loop_kernel is None:
        raise RuntimeError("the FMA-rate kernel needs Triton")
    if out.dtype != torch.float32 or not out.is_contiguous() or out.numel() % block:
        raise ValueError(f"out must be a contiguous fp32 tensor of a multiple of {block} elements, got "
                         f"{out.dtype} {tuple(out.shape)}")
    _fma_loop_kernel[(out.numel() // block,)](out, 1.0, 1.0, iterations, BLOCK=block, UNROLL=unroll,
                                              num_warps=num_warps, **TRITON_COMPILE_OPTIONS)


def fma_loop_expected(n_elements: int, iterations: int, unroll: int = FMA_UNROLL) -> torch.Tensor:
    """What ``launch_fma_loop`` stores (fp32, exact while below 2**24): chain j of element i starts at
    ``i % 64 + j`` and gains 1 per step, so the sum is ``8 * (i % 64) + 28 + 8 * iterations * unroll``."""
    start = torch.arange(n_elements, dtype=torch.float64) % FMA_START_MODULUS
    steps = iterations * unroll
    return (FMA_CHAINS * start + sum(range(FMA_CHAINS)) + FMA_CHAINS * steps).float()


def fma_loop_flops(n_elements: int, iterations: int, unroll: int = FMA_UNROLL) -> int:
    """FLOPs of one ``launch_fma_loop`` (2 per FMA; the final sums are not counted)."""
    return 2 * FMA_CHAINS * n_elements * iterations * unroll


# --------------------------------------------------------------------------------------- rates
@dataclass
class Rates:
    """The yardsticks of the floors; a rate is None where not measured, with the reason."""

    fma_tflops: float | None
    gemm_tflops: float | None
    copy_gb_per_s: float | None
    detail: dict  # rate name -> how it was measured, or why it was not

    def as_dict(self) -> dict:
        return {"fma_tflops": self.fma_tflops, "gemm_tflops": self.gemm_tflops, "copy_gb_per_s": self.copy_gb_per_s,
                "detail": self.detail}


def measure_fma_tflops(device: str, *, warmup: int, max_repeats: int) -> tuple[float, str]:
    """(TFLOP/s, description) of ``_fma_loop_kernel`` filling the GPU: ``FMA_PROGRAMS_PER_SM``
    programs per SM; its output is checked against ``fma_loop_expected`` first."""
    programs = FMA_PROGRAMS_PER_SM * torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
    out = torch.empty(programs * FMA_BLOCK, device=device, dtype=torch.float32)
    launch_fma_loop(out, FMA_ITERATIONS)
    expected = fma_loop_expected(out.numel(), FMA_ITERATIONS).to(device)
    if not torch.equal(out, expected):
        raise RuntimeError("the FMA loop kernel stored values other than predicted")
    timing = bench.time_calls(lambda: launch_fma_loop(out, FMA_ITERATIONS), "cuda", warmup=warmup,
                              max_repeats=max_repeats)
    flops = fma_loop_flops(out.numel(), FMA_ITERATIONS)
    return flops / timing.median_s / 1e12, (f"Triton loop of fp32 FMAs: {programs} programs x {FMA_BLOCK} elements x "
                                            f"{FMA_CHAINS} chains x {FMA_ITERATIONS * FMA_UNROLL} steps, "
                                            f"{FMA_WARPS} warps per program")


def measure_gemm_tflops(dtype: str, device: str, *, warmup: int, max_repeats: int) -> tuple[float, str]:
    """(TFLOP/s, description) of ``torch.mm``: ``bench.matmul_peak_tflops`` on a GPU, a
    ``CPU_GEMM_SIZE``-square one on CPU."""
    if device.startswith("cuda"):
        return bench.matmul_peak_tflops(dtype, device, max_repeats=max_repeats), (
            f"torch.mm {bench.PEAK_GEMM_SIZE}x{bench.PEAK_GEMM_SIZE}x{bench.PEAK_GEMM_SIZE} {dtype}")
    n = CPU_GEMM_SIZE
    a, b = (torch.randn(n, n, dtype=bench._torch_dtype(dtype)) for _ in range(2))
    out = torch.empty_like(a)
    timing = bench.time_calls(lambda: torch.mm(a, b, out=out), "cpu", warmup=warmup, max_repeats=max_repeats)
    return 2 * n**3 / timing.median_s / 1e12, f"torch.mm {n}x{n}x{n} {dtype} on CPU"


def measure_copy_gb_per_s(device: str, *, warmup: int, max_repeats: int) -> tuple[float, str]:
    """(GB/s, description) of ``dst.copy_(src)`` of ``COPY_BYTES`` (read + write bytes counted)."""
    size = COPY_BYTES["cuda" if device.startswith("cuda") else "cpu"]
    src = torch.ones(size // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    timing = bench.time_calls(lambda: dst.copy_(src), torch.device(device).type, warmup=warmup,
                              max_repeats=max_repeats)
    return 2 * size / timing.median_s / 1e9, f"dst.copy_(src) of {size / 2**20:,.0f} MiB, read + write bytes"


def measure_rates(dtype: str, device: str, *, warmup: int, max_repeats: int) -> Rates:
    """The three rates; one that fails (or cannot be measured here) is None with the reason."""
    values, detail = {}, {}
    on_gpu = device.startswith("cuda")
    for name, measure in (("copy", lambda: measure_copy_gb_per_s(device, warmup=warmup, max_repeats=max_repeats)),
                          ("gemm", lambda: measure_gemm_tflops(dtype, device, warmup=warmup, max_repeats=max_repeats)),
                          ("fma", lambda: measure_fma_tflops(device, warmup=warmup, max_repeats=max_repeats))):
        if name == "fma" and not on_gpu:
            values[name], detail[name] = None, "not measured: the FMA loop is a Triton kernel timed on CUDA GPUs only"
            continue
        if name == "fma" and _fma_loop_kernel is None:
            values[name], detail[name] = None, "not measured: Triton is not installed"
            continue
        try:
            with torch.inference_mode():
                values[name], detail[name] = measure()
        except Exception as error:  # a failed yardstick leaves its floors unknown; the ops still run
            values[name], detail[name] = None, f"failed: {bench.error_summary(error)}"
        if on_gpu:
            torch.cuda.empty_cache()
    return Rates(values["fma"], values["gemm"], values["copy"], detail)


def floors(op: str, flops: int, nbytes: int, rates: Rates) -> dict:
    """``compute_floor_us``, ``memory_floor_us``, ``floor_us`` (the larger known one) and
    ``compute_rate`` ("gemm" / "fma") of one call."""
    rate = rates.gemm_tflops if COMPUTE_RATE[op] == "gemm" else rates.fma_tflops
    compute = flops / (rate * 1e12) * 1e6 if rate else None
    memory = nbytes / (rates.copy_gb_per_s * 1e9) * 1e6 if rates.copy_gb_per_s else None
    known = [value for value in (compute, memory) if value is not None]
    return {"compute_rate": COMPUTE_RATE[op], "compute_floor_us": compute, "memory_floor_us": memory,
            "floor_us": max(known) if known else None}


# --------------------------------------------------------------------------------------- operands
@dataclass(frozen=True)
class OpCase:
    """One op's operands: ``args`` as the backends take them (without ``out``), the output shape,
    and the output of ``ops.reference`` it is checked against (fp32 math, rounded once to the dtype)."""

    op: str
    args: tuple
    out_shape: tuple[int, ...]
    reference: torch.Tensor


_REFERENCES = {"stem": "stem_reference", "depthwise_block": "depthwise_block_reference",
               "pointwise": "pointwise_reference", "head": "head_reference"}


def build_params(config: dict, dtype: torch.dtype, device: str, image_size: int, seed: int = 0):
    """``prepare.PreparedParams`` of a ``ConvMixer`` of ``config`` with trained-looking random weights
    for images of ``image_size`` on ``device`` in ``dtype`` (through the model's own preparation path)."""
    from .model import ConvMixer
    from .testing import randomize_weights_

    model = randomize_weights_(ConvMixer(**config).to(device), image_size=image_size, seed=seed)
    model.to(dtype=dtype)
    return model._prepared_params()


def build_cases(config: dict, batch: int, image_size: int, dtype: torch.dtype, device: str, seed: int = 0,
                ops=OP_NAMES) -> dict[str, OpCase]:
    """The operands of each op at the model's shapes, and their references (TF32 off)."""
    from .ops import reference

    params = build_params(config, dtype, device, image_size, seed)
    generator = torch.Generator(device).manual_seed(seed + 1)  # on the device: no host-side batch
    p, dim = config["patch_size"], config["dim"]
    side = image_size // p
    image = torch.randn(batch, config.get("in_chans", 3), image_size, image_size, generator=generator, device=device)
    tokens = torch.randn(batch, side, side, dim, generator=generator, device=device, dtype=dtype)
    block = params.blocks[0]
    args = {
        "stem": (image, params.stem.weight, *params.stem.epilogue, params.act),
        "depthwise_block": (tokens, block.depthwise.weight, *block.depthwise.epilogue, params.act),
        "pointwise": (tokens, block.pointwise.weight, *block.pointwise.epilogue, params.act),
        "head": (tokens, params.head_folded.weight, params.head_folded.bias),
    }
    shapes = {op: (batch, side, side, dim) for op in ("stem", "depthwise_block", "pointwise")}
    shapes["head"] = (batch, config["n_classes"])
    cases = {}
    with torch.inference_mode(), tf32_off():
        for op in ops:
            cases[op] = OpCase(op, args[op], shapes[op], getattr(reference, _REFERENCES[op])(*args[op]))
    return cases


# --------------------------------------------------------------------------------------- measurement
def backend_skip_reason(backend: str, op: str, device: str, dtype: torch.dtype, channels: int) -> str | None:
    """Why ``backend`` cannot (or should not) be timed on ``op`` here, or None."""
    entry = BACKENDS[backend]
    torch_device = torch.device(device)
    reason = entry.unavailable_reason(torch_device)
    if reason is None and backend == "triton" and torch_device.type == "cpu":
        reason = bench.TRITON_INTERPRETER_REASON
    if reason is None:
        reason = entry.op_unsupported_reason(op, torch_device, dtype, channels)
    return reason


def default_backends(device: str) -> list[str]:
    """Every backend available on ``device`` (eager always is), in ``BACKENDS`` order."""
    return [name for name, backend in BACKENDS.items() if backend.unavailable_reason(torch.device(device)) is None]


def op_variants(backend: str, op: str, device: str, dtype: torch.dtype, channels: int) -> list[str]:
    """The backend's other kernels of ``op`` (``Backend.load_variants``) where the backend itself is
    timed on it (``backend_skip_reason``)."""
    if backend_skip_reason(backend, op, device, dtype, channels) is not None:
        return []
    return list(BACKENDS[backend].load_variants().get(op, {}))


def measure_op(case: OpCase, backend: str, *, dtype: torch.dtype, device: str, channels: int, tolerance: float,
               warmup: int, max_repeats: int, variant: str | None = None) -> dict:
    """The outcome of one (op, backend), or of one of the backend's ``variant`` kernels of the op (row
    backend "cuda:band"): status, reason, the check and the timing (``time_us``, ``times_us``,
    ``repeats``, ``calls_per_repeat``; ``traceback`` for an error), and ``autotuning``: the
    autotuning its first call ran (``ops._triton_utils.recorded_autotuning``: each config's time as
    the autotuner measured it). Wrong outputs and exceptions are not timed."""
    label = backend if variant is None else f"{backend}:{variant}"
    row = {"op": case.op, "backend": label, "variant": variant, "status": "skipped", "reason": None, "traceback": None,
           "max_rel_err": None, "tolerance": tolerance, "time_us": None, "times_us": None, "repeats": None,
           "calls_per_repeat": None, "autotuning": []}
    reason = backend_skip_reason(backend, case.op, device, dtype, channels)
    if reason is not None:
        row["reason"] = reason
        return row
    device_type = torch.device(device).type
    try:
        if variant is None:
            fn = getattr(BACKENDS[backend].load_ops(), case.op)
        else:
            fn = BACKENDS[backend].load_variants()[case.op][variant]
        with torch.inference_mode():
            out = torch.full(case.out_shape, float("nan"), dtype=dtype, device=device)  # unwritten: NaN
            kwargs = {"out": out}
            if case.op == "head":
                kwargs["pooled"] = torch.full((out.shape[0], case.args[0].shape[-1]), float("nan"),
                                              dtype=torch.float32, device=device)

            def call():
                return fn(*case.args, **kwargs)

            with recorded_autotuning() as autotuning:
                call()  # compiles / autotunes on the first call
            row["autotuning"] = autotuning
            row["max_rel_err"], timing = check_then_time(call, out, case.reference, tolerance=tolerance,
                                                         device_type=device_type, warmup=warmup,
                                                         max_repeats=max_repeats)
            if timing is None:
                row.update(status="wrong", reason=wrong_reason(row["max_rel_err"], tolerance))
                return row
    except Exception as error:  # one failing op is reported (its traceback in the JSON); the others still run
        row.update(status="error", reason=bench.error_summary(error), traceback=traceback.format_exc()[-4000:])
        return row
    row.update(status="ok", time_us=timing.median_s * 1e6, times_us=[t * 1e6 for t in timing.per_call_s],
               repeats=len(timing.per_call_s), calls_per_repeat=timing.calls_per_repeat)
    return row


def check_then_time(call: Callable[[], object], out: torch.Tensor, reference: torch.Tensor, *, tolerance: float,
                    device_type: str, warmup: int, max_repeats: int) -> tuple[float, bench.Timing | None]:
    """(max relative error, timing): ``out``, written by a call of ``call`` already made, against
    ``reference``; then ``call`` timed by ``time_op``, only where the error is within ``tolerance``
    (the timing None otherwise, NaN included: a wrong output is not timed)."""
    from .verify import errors

    bench._synchronize(device_type)
    _, max_rel = errors(out, reference)
    if not max_rel <= tolerance:  # NaN too
        return max_rel, None
    return max_rel, time_op(call, device_type, warmup=warmup, max_repeats=max_repeats)


def wrong_reason(max_rel: float, tolerance: float) -> str:
    """Why a row is WRONG (``check_then_time`` gave no timing)."""
    return f"max rel err {max_rel:.3g} > tolerance {tolerance:.3g} (against ops.reference): not timed"


def time_op(call: Callable[[], object], device_type: str, *, warmup: int, max_repeats: int) -> bench.Timing:
    """Seconds per ``call`` (module docstring): on a GPU through a CUDA graph of ``GRAPH_CALLS`` calls."""
    if device_type != "cuda":
        return bench.time_calls(call, device_type, warmup=warmup, max_repeats=max_repeats)

    def calls():
        for _ in range(GRAPH_CALLS):
            call()

    timing = bench.time_calls(bench.capture_cuda_graph(calls), device_type, warmup=warmup, max_repeats=max_repeats)
    return bench.Timing(timing.median_s / GRAPH_CALLS, tuple(t / GRAPH_CALLS for t in timing.per_call_s),
                        timing.calls_per_repeat * GRAPH_CALLS)


def complete_row(row: dict, config: dict, batch: int, image_size: int, dtype: str, rates: Rates) -> dict:
    """``row`` with the op's counts, floors and (when timed) achieved figures."""
    op = row["op"]
    flops, nbytes = op_flops(op, config, batch, image_size), op_bytes(op, config, batch, image_size, dtype)
    full = {**row, "calls_per_forward": calls_per_forward(op, config), "flops": flops, "bytes": nbytes,
            **floors(op, flops, nbytes, rates)}
    seconds = row["time_us"] / 1e6 if row["time_us"] else None
    full["tflops"] = flops / seconds / 1e12 if seconds else None
    full["gb_per_s"] = nbytes / seconds / 1e9 if seconds else None
    full["floor_fraction"] = full["floor_us"] / row["time_us"] if seconds and full["floor_us"] else None
    return full


def forward_estimates(rows: list[dict], ops) -> dict:
    """Per backend (and "floor", and "best": the fastest ok backend or variant of each op): the per-op-sum time
    of one forward in µs, each op weighted by ``calls_per_forward``; None (with ``missing``) unless
    every op has a figure."""
    def estimate(times: dict[str, float | None], counts: dict[str, int]) -> dict:
        missing = [op for op in ops if times.get(op) is None]
        total = None if missing else sum(times[op] * counts[op] for op in ops)
        return {"per_op_sum_us": total, "missing": missing}

    counts = {row["op"]: row["calls_per_forward"] for row in rows}
    result = {}
    for backend in dict.fromkeys(row["backend"] for row in rows if row.get("variant") is None):
        result[backend] = estimate({r["op"]: r["time_us"] for r in rows if r["backend"] == backend}, counts)
    best = {}
    for row in rows:
        if row["time_us"] is not None and (best.get(row["op"]) is None or row["time_us"] < best[row["op"]][0]):
            best[row["op"]] = (row["time_us"], row["backend"])
    result["best"] = {**estimate({op: t for op, (t, _) in best.items()}, counts),
                      "backends": {op: name for op, (_, name) in best.items()}}
    result["floor"] = estimate({r["op"]: r["floor_us"] for r in rows}, counts)
    return result


# --------------------------------------------------------------------------------------- report
def _num(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.{digits}f}"


def format_rates(rates: dict, dtype: str) -> str:
    def part(value, unit, label, name):
        if value is None:
            return f"{label} - ({rates['detail'][name]})"
        return f"{label} {value:,.4g} {unit}"

    return ("rates: " + part(rates["fma_tflops"], "TFLOP/s", "fp32 FMA", "fma") + "; "
            + part(rates["gemm_tflops"], "TFLOP/s", f"{dtype} GEMM", "gemm") + "; "
            + part(rates["copy_gb_per_s"], "GB/s", "copy", "copy"))


TABLE_HEADER = (f"  {'op':<16} {'backend':<12} {'time us':>11} {'compute fl':>11} {'memory fl':>11} "
                f"{'floor us':>11} {'floor/time':>10} {'TFLOP/s':>8} {'GB/s':>8}")


def format_row(row: dict) -> str:
    """One table line: times in microseconds (compute / memory floor, their max), floor / time."""
    start = f"  {row['op']:<16} {row['backend']:<12}"
    if row["status"] != "ok":
        label = "WRONG" if row["status"] == "wrong" else row["status"]
        return f"{start} {label}: {row['reason']}"
    fraction = row["floor_fraction"]
    return (f"{start} {_num(row['time_us'], 11)} {_num(row['compute_floor_us'], 11)} "
            f"{_num(row['memory_floor_us'], 11)} {_num(row['floor_us'], 11)} "
            f"{_num(fraction * 100 if fraction is not None else None, 9)}% "
            f"{_num(row['tflops'], 8, 2)} {_num(row['gb_per_s'], 8)}")


def format_autotuning(row: dict) -> list[str]:
    """The lines under a row: each autotuning its first call ran, the configs fastest first, in µs as
    the autotuner timed them (``ops._triton_utils.autotune_benchmark``: calls queued behind a spin
    kernel, fewer of them than the row's timing)."""
    lines = []
    for run in row.get("autotuning") or []:  # results written before the field have none
        source = "Triton's disk cache" if run["bench_s"] is None else f"benchmarked in {run['bench_s']:.1f} s"
        lines.append(f"    autotuned {run['kernel']} ({', '.join(map(str, run['key']))}), {source}:")
        for label, time_us in sorted(run["timings_us"].items(), key=lambda item: (item[1] is None, item[1] or 0.0)):
            time_text = f"{'did not run':>11}" if time_us is None else _num(time_us, 11)
            lines.append(f"      {time_text}  {label}{'  (chosen)' if label == run['best'] else ''}")
    return lines


def format_row_and_autotuning(row: dict) -> str:
    """A row's line and the lines under it (``format_autotuning``)."""
    return "\n".join([format_row(row), *format_autotuning(row)])


def format_forward(document: dict) -> str:
    """The per-op-sum estimates of one forward, per backend, "best" and "floor"."""
    workload = document["workload"]
    counts = ", ".join(f"{op} x{n}" for op, n in workload["calls_per_forward"].items())
    lines = [f"per-op-sum estimate of one forward ({counts}), batch {workload['batch']}:"]
    for name, estimate in (document["forward"] or {}).items():
        total = estimate["per_op_sum_us"]
        if total is None:
            text = f"incomplete (no figure for {', '.join(estimate['missing'])})"
        else:
            text = f"{total / 1e3:>10,.3f} ms  {workload['batch'] / (total / 1e6):>12,.1f} img/s"
            if name == "best":
                text += "  (" + ", ".join(f"{op}={b}" for op, b in estimate["backends"].items()) + ")"
        lines.append(f"  {name:<12} {text}")
    return "\n".join(lines)


def format_table(document: dict) -> str:
    """The rows of a result document as a table, then the forward estimates (also for a saved result)."""
    rows = (format_row_and_autotuning(row) for row in document["rows"])
    return "\n".join([TABLE_HEADER, *rows, format_forward(document)])


def headline(document: dict) -> str:
    workload, device = document["workload"], document["device"]
    config = workload["config"]
    where = f"{workload['device']} ({device.get('name')})"
    text = (f"bench-ops {workload['model']} {workload['dtype']}, batch {workload['batch']}, "
            f"{workload['image_size']}px ({workload['tokens_side']}x{workload['tokens_side']} tokens, "
            f"C={config['dim']}, k={config['kernel_size']}, p={config['patch_size']}) on {where}")
    if device.get("type") == "cpu":
        text += "\nCPU run: these figures check the machinery; they are not GPU measurements"
    return text


# --------------------------------------------------------------------------------------- command line
def default_result_path(device_name: str, model: str, batch: int, date: str) -> Path:
    """``benchmarks/results/ops-<gpu-slug>-<model>-b<batch>-<YYYY-MM-DD>.json`` (relative to the
    current directory): one file per workload, so runs of other models or batches keep theirs."""
    return bench.RESULTS_DIR / f"ops-{bench.gpu_slug(device_name)}-{model}-b{batch}-{date}.json"


def timing_arguments(args, on_gpu: bool) -> tuple[int, int]:
    """(warm-up calls, most repeats) from ``--warmup`` and ``--repeats`` (``__main__``'s measuring
    arguments, shared by bench-ops and tune-gemm), their defaults where not given."""
    warmup = bench.WARMUP_CALLS if args.warmup is None else args.warmup
    return warmup, args.repeats or (GPU_REPEATS if on_gpu else CPU_REPEATS)


def run_cli(args) -> int:
    """``python -m convmixer_fast bench-ops`` (arguments from ``__main__``): 0; 1 when an op is WRONG
    or fails; 2 on bad arguments."""
    from .configs import MODEL_CONFIGS

    device = bench.cli_device(args.device, "bench-ops")
    if device is None:
        return 2
    on_gpu = device.startswith("cuda")
    model = args.model or (GPU_MODEL if on_gpu else CPU_MODEL)
    config = MODEL_CONFIGS[model]
    batch = (GPU_BATCH if on_gpu else CPU_BATCH) if args.batch is None else args.batch
    image_size = bench.default_image_size(config) if args.image_size is None else args.image_size
    dtype_name = args.dtype or (GPU_DTYPE if on_gpu else CPU_DTYPE)
    dtype = bench._torch_dtype(dtype_name)
    ops = tuple(dict.fromkeys(args.ops or OP_NAMES))
    if not bench.cli_image_size_fits("bench-ops", [(model, config)], image_size):
        return 2
    backends = list(dict.fromkeys(args.backends or default_backends(device)))
    warmup, max_repeats = timing_arguments(args, on_gpu)

    start = time.perf_counter()
    run = bench.run_info(device, {"warmup": warmup, "max_repeats": max_repeats, "seed": args.seed,
                                  "measure_seconds": bench.MEASURE_SECONDS,
                                  "min_repeat_seconds": bench.MIN_REPEAT_SECONDS})
    info = bench.device_info(device)
    default_path = default_result_path(info["name"], model, batch, run["date"]) if on_gpu else None
    json_path = Path(args.json) if args.json else default_path
    side = image_size // config["patch_size"]
    unavailable = {name: reason for name, reason in
                   ((n, BACKENDS[n].unavailable_reason(torch.device(device))) for n in BACKENDS)
                   if reason is not None}
    document = {
        "schema": SCHEMA, "device": info, "run": run,
        "workload": {"model": model, "config": config, "batch": batch, "image_size": image_size,
                     "tokens_side": side, "dtype": dtype_name, "device": device, "ops": list(ops),
                     "backends": backends, "unavailable_backends": unavailable,
                     "calls_per_forward": {op: calls_per_forward(op, config) for op in ops}},
        "rates": None, "rows": [], "forward": None,
    }
    print(headline(document), flush=True)
    for name, reason in unavailable.items():
        if name not in backends:
            print(f"  (backend {name} not measured: {reason})")

    def save() -> None:
        run["wall_s"] = round(time.perf_counter() - start, 1)
        if json_path:
            bench.write_result(document, json_path)

    with bench.cudnn_benchmark(on_gpu):
        rates = measure_rates(dtype_name, device, warmup=warmup, max_repeats=max_repeats)
        document["rates"] = rates.as_dict()
        print(format_rates(document["rates"], dtype_name), flush=True)
        save()
        cases = build_cases(config, batch, image_size, dtype, device, seed=args.seed, ops=ops)
        from .verify import tolerances

        kernel_tolerance = tolerances(dtype, torch.device(device))[0]
        print(TABLE_HEADER, flush=True)
        lost = None  # (``bench.device_lost``: the rows after such a failure are not measured)
        for op in ops:
            for backend in backends:
                for variant in (None, *op_variants(backend, op, device, dtype, config["dim"])):
                    if lost is not None:
                        continue
                    row = measure_op(cases[op], backend, dtype=dtype, device=device, channels=config["dim"],
                                     tolerance=kernel_tolerance, warmup=warmup, max_repeats=max_repeats,
                                     variant=variant)
                    row = complete_row(row, config, batch, image_size, dtype_name, rates)
                    document["rows"].append(row)
                    print(format_row_and_autotuning(row), flush=True)
                    if row["status"] == "error":
                        lost = bench.device_lost(torch.device(device).type, f"{op} on {row['backend']}")
                    if on_gpu and lost is None:
                        torch.cuda.empty_cache()
            document["forward"] = forward_estimates(document["rows"], ops)
            save()
        if lost is not None:
            document["device_lost"] = lost
            print(lost)
    run["complete"] = True
    save()
    print(format_forward(document))
    if json_path:
        print(f"wrote {json_path}")
    failed = [f"{r['op']} on {r['backend']}: {r['status']}" for r in document["rows"]
              if r["status"] in ("wrong", "error")]
    if failed:
        print(f"{len(failed)} op result{'s' if len(failed) != 1 else ''} WRONG or failed: {'; '.join(failed)}")
        return 1
    return 0
