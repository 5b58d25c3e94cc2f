"""The Triton autotuners as ``ops._triton_utils.autotune`` makes them: each config timed by
``autotune_benchmark``, launches serialised across threads, every autotuner registered, and what
``recorded_autotuning`` gives ``bench-ops`` (each config's time, per row, printed under it); on a
GPU, a second process taking the choices from Triton's disk cache."""

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import DEVICE, run_in_threads, skip_module_unless_triton_runs

skip_module_unless_triton_runs()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from convmixer_fast import opbench  # noqa: E402
from convmixer_fast.__main__ import main  # noqa: E402
from convmixer_fast.backends import eager, measured  # noqa: E402
from convmixer_fast.ops import _triton_utils  # noqa: E402

TINY_BENCH_OPS = ["bench-ops", "--device", "cpu", "--model", "convmixer_cifar10", "--batch", "1", "--repeats", "2",
                  "--warmup", "1"]


@triton.jit
def _add_one_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) + 1.0, mask=offsets < n)


# Milliseconds per config, as Triton's do_bench gives them ([median, 20th, 80th percentile]); the
# last config "could not run" (Triton records infinity for out-of-resources configs).
FAKE_TIMINGS_MS = ([2.0, 1.9, 2.1], [1.5, 1.4, 1.6], [float("inf")] * 3)


@pytest.fixture
def add_one_autotuner(monkeypatch):
    """``make(do_bench, prune)``: ``launch(x)``, which adds 1 to a 1-D fp32 tensor through an
    autotuner made by ``_triton_utils.autotune`` over three configs (as on a GPU: all of them, even
    under the interpreter) with ``do_bench`` and ``prune`` (None: the defaults), in ``AUTOTUNERS`` for
    the test."""
    monkeypatch.setattr(_triton_utils, "is_interpreting", lambda: False)
    monkeypatch.setenv("CONVMIXER_FAST_TRITON_AUTOTUNE", "1")
    made = []

    def make(do_bench=None, prune=None):
        configs = [triton.Config({"BLOCK": 8}, num_warps=1), triton.Config({"BLOCK": 16}, num_warps=2),
                   triton.Config({"BLOCK": 32}, num_warps=1)]
        options = {} if do_bench is None else {"do_bench": do_bench}
        tuner = _triton_utils.autotune(configs, key=["n"], prune=prune, **options)(_add_one_kernel)
        assert _triton_utils.AUTOTUNERS[-1] is tuner
        made.append(tuner)

        def launch(x):
            tuner[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, x.numel())
            return tuner

        return launch

    yield make
    for tuner in made:
        _triton_utils.AUTOTUNERS.remove(tuner)


@pytest.fixture
def tuned_add_one(add_one_autotuner):
    """``launch(x)`` of ``add_one_autotuner`` whose benchmark runs each config once and reports
    ``FAKE_TIMINGS_MS``."""
    timings = iter(FAKE_TIMINGS_MS)

    def do_bench(kernel_call, quantiles):
        kernel_call()
        return next(timings)

    return add_one_autotuner(do_bench)


def test_recorded_autotuning_gives_each_configs_time(tuned_add_one):
    x = torch.zeros(37, device=DEVICE)
    with _triton_utils.recorded_autotuning() as runs:
        tuner = tuned_add_one(x)
    # The benchmarks ran the kernel once per config that ran (two), then the chosen config once.
    assert torch.equal(x, torch.full_like(x, 4.0))
    assert len(runs) == 1 and runs[0]["bench_s"] >= 0.0
    assert {k: v for k, v in runs[0].items() if k != "bench_s"} == {
        "kernel": "_add_one_kernel", "key": [37, "torch.float32"], "best": "BLOCK=16,w=2,s=3",
        "timings_us": {"BLOCK=8,w=1,s=3": 2000.0, "BLOCK=16,w=2,s=3": 1500.0, "BLOCK=32,w=1,s=3": None}}
    json.dumps(runs, allow_nan=False)  # the result files are strict JSON

    with _triton_utils.recorded_autotuning() as runs:
        tuned_add_one(x)  # the same key: Triton reuses its choice
    assert runs == []

    # What Triton's disk cache does for a key tuned by an earlier process: the choice and the
    # timings set, nothing benchmarked.
    with _triton_utils.recorded_autotuning() as runs:
        tuner.cache[(20, "torch.float32")] = tuner.configs[0]
        tuner.configs_timings = {config: [1.0, 0.9, 1.1] for config in tuner.configs}
    assert [(r["key"], r["best"], r["bench_s"]) for r in runs] == [([20, "torch.float32"], "BLOCK=8,w=1,s=3", None)]


def test_a_rows_autotuning_is_recorded_and_printed(monkeypatch, tmp_path, tuned_add_one):
    """The autotuning an op's first call runs lands in its row, and under it in the table, fastest
    config first; a row whose op tunes nothing records none."""
    scratch, pointwise = torch.zeros(37, device=DEVICE), eager.OPS.pointwise

    def tuning_pointwise(*args, **kwargs):
        tuned_add_one(scratch)
        return pointwise(*args, **kwargs)

    monkeypatch.setattr(eager, "OPS", eager.OPS._replace(pointwise=tuning_pointwise))
    path = tmp_path / "ops.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main([*TINY_BENCH_OPS, "--backends", "eager", "--ops", "pointwise", "head", "--json", str(path)])
    out = stdout.getvalue()
    assert code == 0, out
    rows = {row["op"]: row for row in json.loads(path.read_text())["rows"]}
    assert rows["head"]["autotuning"] == []
    (run,) = rows["pointwise"]["autotuning"]
    assert run["best"] == "BLOCK=16,w=2,s=3" and run["timings_us"]["BLOCK=32,w=1,s=3"] is None
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["pointwise", "eager"])
    assert lines[start + 1].startswith("    autotuned _add_one_kernel (37, torch.float32), benchmarked in ")
    assert lines[start + 2].split() == ["1,500.0", "BLOCK=16,w=2,s=3", "(chosen)"]
    assert lines[start + 3].split() == ["2,000.0", "BLOCK=8,w=1,s=3"]
    assert lines[start + 4].split() == ["did", "not", "run", "BLOCK=32,w=1,s=3"]
    assert lines[start + 5].split()[:2] == ["head", "eager"]
    # A saved result prints the same; one written before rows had the field prints none.
    table = opbench.format_table(json.loads(path.read_text()))
    assert "\n".join(lines[start:start + 5]) in table
    assert opbench.format_autotuning({"op": "pointwise"}) == []


def test_every_triton_kernel_autotunes_through_the_registry():
    """bench-ops records what ``AUTOTUNERS`` holds: every op's kernels, the pointwise GEMM's three
    autotuners (any, pointer and TMA configs) among them."""
    import convmixer_fast.backends.triton  # noqa: F401  (imports every Triton op module)

    names = [tuner.base_fn.__name__ for tuner in _triton_utils.AUTOTUNERS]
    assert sorted(names) == sorted(["stem_kernel", "_depthwise_block_kernel", "_head_pool_kernel",
                                    "_head_classifier_kernel", *["pointwise_kernel"] * 3])


# What one process runs: the Triton head (two autotuned kernels) at a small shape, its autotuning
# printed as JSON.
HEAD_AUTOTUNING_SCRIPT = """
import json, torch
from convmixer_fast.ops.head import head
from convmixer_fast.ops._triton_utils import recorded_autotuning
x = torch.randn(3, 5, 5, 48, device="cuda", dtype=torch.bfloat16)
weight, bias = torch.randn(7, 48, device="cuda", dtype=torch.bfloat16), torch.randn(7, device="cuda")
with recorded_autotuning() as runs:
    head(x, weight, bias)
torch.cuda.synchronize()
print(json.dumps(runs))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton autotunes on a GPU only")
def test_a_second_process_reads_the_autotuning_from_disk(tmp_path):
    """Issue 6: the autotune result is cached on disk (``_triton_utils.autotune``: ``cache_results``)
    so a second process does not tune again: it gets the first one's choices and timings without
    benchmarking (``bench_s`` None)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TRITON_CACHE_DIR": str(tmp_path), "CONVMIXER_FAST_TRITON_AUTOTUNE": "1"}

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", HEAD_AUTOTUNING_SCRIPT], env=env, capture_output=True,
                              text=True, timeout=300, check=True)
        return {r["kernel"]: r for r in json.loads(done.stdout.splitlines()[-1])}

    first, second = run(), run()
    assert set(first) == set(second) == {"_head_pool_kernel", "_head_classifier_kernel"}
    for kernel, tuned in first.items():
        assert tuned["bench_s"] > 0 and len(tuned["timings_us"]) > 1
        assert second[kernel]["bench_s"] is None
        assert (second[kernel]["best"], second[kernel]["timings_us"]) == (tuned["best"], tuned["timings_us"])


def test_autotune_benchmark_gives_the_quantiles_asked_for():
    calls = []
    median, low, high = _triton_utils.autotune_benchmark(lambda: calls.append(1), quantiles=(0.5, 0.2, 0.8))
    assert 0 <= low <= median <= high
    # One untimed call, then a call per repeat on CPU (on a GPU: TIMED_CALLS per repeat).
    assert len(calls) == 1 + max(_triton_utils.AUTOTUNE_REPEATS, measured.TIMED_CALLS)


def test_autotune_benchmark_gives_quantiles_of_its_repeats_in_milliseconds(monkeypatch):
    seconds = [3e-3, 1e-3, 4e-3, 1.5e-3, 9e-3, 2.6e-3, 5e-3, 3.5e-3, 8e-3]  # (sorted: 1, 1.5, 2.6, 3, 3.5, ...)
    monkeypatch.setattr(measured, "repeat_times", lambda kernel_call, device, repeats: seconds)
    quantiles = _triton_utils.autotune_benchmark(lambda: None, quantiles=(0.0, 0.25, 0.5, 1.0))
    assert quantiles == pytest.approx([1.0, 2.6, 3.5, 9.0])


def test_under_the_interpreter_every_op_autotuner_has_its_first_config_only():
    """Nothing to time or fit in the interpreter: each op autotuner holds its first config only."""
    if not _triton_utils.is_interpreting():
        pytest.skip("Triton's interpreter is not in use")
    import convmixer_fast.backends.triton  # noqa: F401  (imports every Triton op module)

    assert [len(tuner.configs) for tuner in _triton_utils.AUTOTUNERS] == [1] * len(_triton_utils.AUTOTUNERS)


def test_autotuners_time_their_configs_with_autotune_benchmark(add_one_autotuner):
    x = torch.zeros(37, device=DEVICE)
    launch = add_one_autotuner()
    with _triton_utils.recorded_autotuning() as runs:
        launch(x)
    (run,) = runs
    timings = run["timings_us"]
    assert len(timings) == 3 and all(t is not None and t > 0 for t in timings.values())
    assert run["best"] == min(timings, key=timings.get)
    assert torch.all(x >= 1)  # (each benchmark adds 1 too)


def test_two_threads_launching_while_one_autotunes(add_one_autotuner):
    """Triton's autotuner keeps a launch's arguments on itself while it benchmarks, and Triton's
    interpreter patches ``triton.language`` while it runs a kernel: neither is thread-safe, so every
    launch through an autotuner holds one process-wide lock. Four threads, two shapes: each tuned
    once, every launch complete (without the lock this fails, under the interpreter on CPU)."""
    def slow_bench(kernel_call, quantiles):
        kernel_call()
        time.sleep(0.02)  # a GPU benchmark waits on the device: the GIL is free meanwhile
        return [1.0, 1.0, 1.0]

    launch = add_one_autotuner(slow_bench)
    tensors = [torch.zeros(37 + i % 2, device=DEVICE) for i in range(4)]  # two keys, two threads each
    run_in_threads(lambda i: launch(tensors[i]), len(tensors))
    for x in tensors:
        # One launch by the chosen config, and one per config the benchmark ran if it tuned this key.
        assert torch.all(x == x[0]) and x[0].item() in (1.0, 4.0)


def test_with_autotuning_off_the_first_config_that_applies_runs(add_one_autotuner, monkeypatch):
    """CONVMIXER_FAST_TRITON_AUTOTUNE=0 on a GPU: the first config the kernel's prune keeps (e.g. the
    first that fits the GPU's shared memory, not the list's first), none of the others timed."""
    monkeypatch.setenv("CONVMIXER_FAST_TRITON_AUTOTUNE", "0")
    benchmarked = []

    def do_bench(kernel_call, quantiles):  # (Triton 3.6 times a single config too; 3.9 does not)
        benchmarked.append(1)
        kernel_call()
        return [1.0, 1.0, 1.0]

    launch = add_one_autotuner(do_bench, prune=lambda configs, named_args, **kwargs: configs[1:])
    x = torch.zeros(37, device=DEVICE)
    tuner = launch(x)
    assert tuner.best_config.kwargs["BLOCK"] == 16 and len(benchmarked) <= 1
    assert torch.all(x == 1 + len(benchmarked))


def test_a_launch_that_would_tune_during_a_graph_capture_runs_untuned(add_one_autotuner, monkeypatch):
    """A caller capturing a CUDA graph around a cold model: timing configs there would invalidate
    the capture (a synchronize) and record the benchmark's launches into it, so the launch runs the
    first config that applies, once, and the key stays untuned until a launch outside a capture."""
    launch = add_one_autotuner(prune=lambda configs, named_args, **kwargs: configs[1:])
    kernel, blocks = _triton_utils.AUTOTUNERS[-1].fn, []
    run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *args, **kwargs: blocks.append(kwargs["BLOCK"]) or run(*args, **kwargs))
    x = torch.zeros(37, device=DEVICE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    tuner = launch(x)
    assert torch.all(x == 1.0) and not tuner.cache and tuner.nargs is None
    assert blocks == [16]  # the first config the prune keeps
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the capture over, on CPU
    launch(x)
    assert list(tuner.cache) == [(37, "torch.float32")]
