"""``python -m convmixer_fast tune-gemm``: every config of the Triton pointwise GEMM timed on its own
over issue 6's grid of shapes, against cuBLAS, to choose the autotune list from (benchmarks/NOTES.md
§8).

For each width ``N = K`` of ``dims`` (default 768, 1024, 1536: the named models') and token count
``M`` of ``tokens`` (default 1,024 to 262,144 by 4x: batch 1 to 256 of 32x32 tokens), the op runs
on random operands (tokens ``[M, K]`` ~ N(0, 1), weight ``[N, K]`` ~ N(0, 1/K), the fp32 bias and
shift ~ N(0, 0.1²), scale ~ N(1, 0.1²)) with GELU at each candidate config forced
(``ops.pointwise.CONFIGS``; with ``group_m``, each of them once per GROUP_M given, the tile order's
swizzle, in place of its own). Each output is checked against ``ops.reference.pointwise_reference``
within the per-kernel tolerance of ``verify.tolerances`` (a WRONG one is not timed), then timed as
``bench-ops`` times an op (``opbench.time_op``: on a GPU the replays of a CUDA graph of 20 calls).
Beside them ``torch.mm`` of the same operands, the GEMM alone through cuBLAS (no epilogue): what the
issue's ``gemm-floor`` runs. A TMA config where ``tma_loads_apply`` is false is skipped, with why.

Output: per shape the fastest config, its time, TFLOP/s and cuBLAS's time over it, and the fastest
of each form (pointer loads, TMA); then per config on how many shapes it was the fastest and on how
many within ``NEAR_BEST`` of the fastest: one that is near the best nowhere is a candidate to leave
the autotune list. JSON (``--json``; on a GPU by default
``benchmarks/results/tune-gemm-<gpu>-<dtype>-<date>.json``), rewritten after each shape::

    {"schema": 1, "device": bench.device_info, "run": bench.run_info,
     "workload": {"dims", "tokens", "dtype", "act", "configs": [label...]},
     "shapes": [{"dim", "tokens", "cublas_us", "best", "device_lost", "rows": [{"config", "tma", "status",
                 "reason", "max_rel_err", "time_us", "tflops"}...]}...],
     "summary": {label: {"fastest": n, "near_best": n}}}

On CPU the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1``): it checks the configs
on small shapes; its times mean nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from . import bench, opbench
from ._tf32 import matmul_allows_tf32, tf32_off

SCHEMA = 1
DEFAULT_DIMS = (768, 1024, 1536)
DEFAULT_TOKENS = (1024, 4096, 16384, 65536, 262144)
DEFAULT_DTYPE = "bf16"
ACT = "gelu"
NEAR_BEST = 0.03  # within 3% of the fastest config counts as near it (as auto's TIE_MARGIN)


def candidate_configs(group_m: list[int] | None = None) -> list:
    """The pointwise kernel's autotune configs, or with ``group_m`` each of them once per value as
    its GROUP_M."""
    import triton

    from .ops.pointwise import CONFIGS

    if not group_m:
        return list(CONFIGS)
    return [triton.Config({**config.kwargs, "GROUP_M": group}, num_warps=config.num_warps,
                          num_stages=config.num_stages) for config in CONFIGS for group in dict.fromkeys(group_m)]


def make_operands(tokens: int, dim: int, dtype: torch.dtype, device: str, seed: int) -> tuple:
    """(tokens ``[M, K]``, weight ``[N, K]``, bias, scale, shift) as the module docstring says."""
    generator = torch.Generator(device).manual_seed(seed)

    def normal(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=generator, device=device) * std + mean

    y = normal(tokens, dim).to(dtype)
    weight = normal(dim, dim, std=dim**-0.5).to(dtype)
    return y, weight, normal(dim, std=0.1), normal(dim, std=0.1, mean=1.0), normal(dim, std=0.1)


def measure_config(config, operands: tuple, out: torch.Tensor, reference: torch.Tensor, *, tolerance: float,
                   device_type: str, warmup: int, max_repeats: int) -> dict:
    """One config's row: checked, then timed (module docstring); skipped, WRONG or an error with why."""
    from .ops import pointwise
    from .ops._triton_utils import config_label, max_shared_memory

    y, weight = operands[:2]
    row = {"config": config_label(config), "tma": config.kwargs["TMA"], "status": "skipped", "reason": None,
           "max_rel_err": None, "time_us": None, "tflops": None}
    if config.kwargs["TMA"] and not pointwise.tma_loads_apply(y, weight):
        row["reason"] = pointwise.tma_requirements(y, weight)
        return row
    if device_type == "cuda":  # (the autotuner leaves such configs out: ``pointwise.configs_that_fit``)
        needed, limit = pointwise.shared_memory_bytes(config, y.element_size()), max_shared_memory(y.device)
        if needed > limit:
            row["reason"] = f"needs {needed:,} bytes of shared memory per block, the GPU has {limit:,}"
            return row

    def call():
        pointwise._launch(*operands, ACT, out, config=config)

    try:
        out.fill_(float("nan"))  # unwritten: NaN
        call()
        row["max_rel_err"], timing = opbench.check_then_time(call, out, reference, tolerance=tolerance,
                                                             device_type=device_type, warmup=warmup,
                                                             max_repeats=max_repeats)
        if timing is None:
            row.update(status="wrong", reason=opbench.wrong_reason(row["max_rel_err"], tolerance))
            return row
    except Exception as error:  # one failing config is reported; the others still run
        row.update(status="error", reason=bench.error_summary(error))
        return row
    flops = 2 * y.shape[0] * weight.shape[0] * weight.shape[1]
    row.update(status="ok", time_us=timing.median_s * 1e6, tflops=flops / timing.median_s / 1e12)
    return row


def measure_shape(dim: int, tokens: int, configs: list, *, dtype: torch.dtype, device: str, seed: int,
                  warmup: int, max_repeats: int) -> dict:
    """cuBLAS's time and every config's row at ``M = tokens``, ``N = K = dim``; ``best``: the fastest
    config's label (None if none ran); ``device_lost``: ``bench.device_lost``'s reason where a config's
    failure left the GPU unusable (the configs after it not measured), else None."""
    from .ops.reference import pointwise_reference
    from .verify import tolerances

    device_type = torch.device(device).type
    operands = make_operands(tokens, dim, dtype, device, seed)
    y, weight = operands[:2]
    with torch.inference_mode():
        with tf32_off():
            reference = pointwise_reference(*operands, ACT)
        out = torch.empty(tokens, dim, dtype=dtype, device=device)
        gemm_out = torch.empty_like(out)
        cublas = opbench.time_op(lambda: torch.mm(y, weight.T, out=gemm_out), device_type, warmup=warmup,
                                 max_repeats=max_repeats)
        tolerance = tolerances(dtype, torch.device(device), tf32=matmul_allows_tf32())[0]  # (both GEMMs)
        rows, lost = [], None
        for config in configs:
            rows.append(measure_config(config, operands, out, reference, tolerance=tolerance, device_type=device_type,
                                       warmup=warmup, max_repeats=max_repeats))
            if rows[-1]["status"] == "error":
                lost = bench.device_lost(device_type, f"{rows[-1]['config']} at M={tokens}, N=K={dim}")
                if lost is not None:
                    break
    timed = [row for row in rows if row["time_us"] is not None]
    best = min(timed, key=lambda row: row["time_us"])["config"] if timed else None
    return {"dim": dim, "tokens": tokens, "cublas_us": cublas.median_s * 1e6, "best": best, "rows": rows,
            "device_lost": lost}


def summarize(shapes: list[dict], labels: list[str]) -> dict:
    """Per config label: on how many shapes it was the fastest, and within ``NEAR_BEST`` of it."""
    summary = {label: {"fastest": 0, "near_best": 0} for label in labels}
    for shape in shapes:
        times = {row["config"]: row["time_us"] for row in shape["rows"] if row["time_us"] is not None}
        if not times:
            continue
        fastest = min(times.values())
        for label, time_us in times.items():
            summary[label]["fastest"] += label == shape["best"]
            summary[label]["near_best"] += time_us <= fastest * (1 + NEAR_BEST)
    return summary


def _number(value: float | None, width: int = 10, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.{digits}f}"


def _fastest(shape: dict, tma: bool) -> float | None:
    times = [row["time_us"] for row in shape["rows"] if row["tma"] == tma and row["time_us"] is not None]
    return min(times) if times else None


SHAPE_HEADER = (f"  {'M':>7} {'N=K':>5} {'cuBLAS us':>10} {'best us':>10} {'TFLOP/s':>8} {'cuBLAS/best':>11} "
                f"{'pointer us':>10} {'TMA us':>10}  best config")


def format_shape(shape: dict) -> str:
    """One line per shape (``SHAPE_HEADER``), then a line per config that was WRONG or failed."""
    rows = {row["config"]: row for row in shape["rows"]}
    best = rows.get(shape["best"])
    line = (f"  {shape['tokens']:>7} {shape['dim']:>5} {_number(shape['cublas_us'])} "
            f"{_number(best and best['time_us'])} {_number(best and best['tflops'], 8)} "
            f"{_number(best and shape['cublas_us'] / best['time_us'], 11, 2)} {_number(_fastest(shape, False))} "
            f"{_number(_fastest(shape, True))}  {shape['best'] or 'none ran'}")
    failed = [f"    {row['status'].upper()} {row['config']}: {row['reason']}" for row in shape["rows"]
              if row["status"] in ("wrong", "error")]
    return "\n".join([line, *failed])


def format_summary(summary: dict, shapes: int) -> str:
    lines = [f"per config, of {shapes} shapes: fastest / within {NEAR_BEST:.0%} of the fastest"]
    for label, counts in sorted(summary.items(), key=lambda item: (-item[1]["near_best"], -item[1]["fastest"])):
        note = "  (near the best nowhere)" if counts["near_best"] == 0 else ""
        lines.append(f"  {counts['fastest']:>3} {counts['near_best']:>3}  {label}{note}")
    return "\n".join(lines)


def default_result_path(device_name: str, dtype: str, date: str) -> Path:
    """``benchmarks/results/tune-gemm-<gpu-slug>-<dtype>-<YYYY-MM-DD>.json``."""
    return bench.RESULTS_DIR / f"tune-gemm-{bench.gpu_slug(device_name)}-{dtype}-{date}.json"


def run_cli(args) -> int:
    """``python -m convmixer_fast tune-gemm``: 0; 1 when a config is WRONG or fails; 2 where the
    Triton kernels cannot run (no Triton; CPU without the interpreter)."""
    try:
        from .ops._triton_utils import config_label, is_interpreting
    except ImportError as error:
        print(f"tune-gemm: the Triton kernels need triton: {error}", file=sys.stderr)
        return 2
    device = bench.cli_device(args.device, "tune-gemm")
    if device is None:
        return 2
    on_gpu = device.startswith("cuda")
    if not on_gpu and not is_interpreting():
        print("tune-gemm: the Triton kernels run on CUDA GPUs, or on CPU in Triton's interpreter "
              "(TRITON_INTERPRET=1, to check the configs: its times mean nothing)", file=sys.stderr)
        return 2
    dtype_name = args.dtype or DEFAULT_DTYPE
    dims = list(dict.fromkeys(args.dims or DEFAULT_DIMS))
    tokens = list(dict.fromkeys(args.tokens or DEFAULT_TOKENS))
    warmup, max_repeats = opbench.timing_arguments(args, on_gpu)
    configs = candidate_configs(args.group_m)
    labels = [config_label(config) for config in configs]

    start = time.perf_counter()
    run = bench.run_info(device, {"warmup": warmup, "max_repeats": max_repeats, "seed": args.seed,
                                  "group_m": args.group_m})
    info = bench.device_info(device)
    json_path = Path(args.json) if args.json else (
        default_result_path(info["name"], dtype_name, run["date"]) if on_gpu else None)
    document = {"schema": SCHEMA, "device": info, "run": run,
                "workload": {"dims": dims, "tokens": tokens, "dtype": dtype_name, "act": ACT, "configs": labels},
                "shapes": [], "summary": None}
    print(f"tune-gemm: the Triton pointwise GEMM, {len(configs)} configs x {len(dims)} widths x {len(tokens)} "
          f"token counts, {dtype_name}, {ACT}, on {device} ({info.get('name')})", flush=True)
    if not on_gpu:
        print("CPU run in Triton's interpreter: it checks the configs; its times mean nothing")
    print(SHAPE_HEADER, flush=True)

    def save() -> None:
        run["wall_s"] = round(time.perf_counter() - start, 1)
        if json_path:
            bench.write_result(document, json_path)

    for dim, count in [(dim, count) for dim in dims for count in tokens]:
        shape = measure_shape(dim, count, configs, dtype=bench._torch_dtype(dtype_name), device=device,
                              seed=args.seed, warmup=warmup, max_repeats=max_repeats)
        document["shapes"].append(shape)
        document["summary"] = summarize(document["shapes"], labels)
        print(format_shape(shape), flush=True)
        save()
        if shape["device_lost"] is not None:  # (``bench.device_lost``: no further shape is measured)
            print(shape["device_lost"])
            break
        if on_gpu:
            torch.cuda.empty_cache()
    run["complete"] = True
    save()
    print(format_summary(document["summary"], len(document["shapes"])))
    if json_path:
        print(f"wrote {json_path}")
    failed = [f"{row['config']} at M={shape['tokens']}, N=K={shape['dim']}: {row['status']}"
              for shape in document["shapes"] for row in shape["rows"] if row["status"] in ("wrong", "error")]
    if failed:
        print(f"{len(failed)} config result{'s' if len(failed) != 1 else ''} WRONG or failed: {'; '.join(failed)}")
        return 1
    return 0
