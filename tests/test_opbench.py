"""The machinery of ``python -m convmixer_fast bench-ops`` (convmixer_fast/opbench.py), not speed: byte and
FLOP counts, the FMA-rate kernel's predicted output, the command end to end on a tiny CPU workload, the
result JSON, skipped backends and a WRONG op (the autotuning a row records: test_autotuning.py)."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convmixer_fast import bench, opbench
from convmixer_fast.__main__ import main
from convmixer_fast.backends import BACKENDS, OP_NAMES, eager
from convmixer_fast.configs import MODEL_CONFIGS

# dim 8, depth 2, k 3, p 2, 5 classes, 3 input channels: at 8x8 images, 4x4 tokens.
SMALL = dict(dim=8, depth=2, kernel_size=3, patch_size=2, n_classes=5)
TINY = ["--device", "cpu", "--model", "convmixer_cifar10", "--batch", "1", "--repeats", "2", "--warmup", "1"]
ROW_KEYS = {"op", "backend", "variant", "status", "reason", "traceback", "max_rel_err", "tolerance", "time_us", "times_us",
            "repeats", "calls_per_repeat", "calls_per_forward", "flops", "bytes", "compute_rate", "compute_floor_us",
            "memory_floor_us", "floor_us", "tflops", "gb_per_s", "floor_fraction", "autotuning"}


def run_bench_ops(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["bench-ops", *argv])
    return code, out.getvalue()


# --------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("dtype", ["bf16", torch.bfloat16, "fp16"])
def test_op_bytes_of_a_small_config(dtype):
    # batch 3, 8x8 image -> M = 3 * 16 = 48 tokens of 8 channels, 2 bytes each: 768 bytes per token map.
    assert opbench.op_bytes("stem", SMALL, 3, 8, dtype) == 3 * 3 * 8 * 8 * 4 + 8 * 3 * 2 * 2 * 2 + 3 * 8 * 4 + 768
    assert opbench.op_bytes("depthwise_block", SMALL, 3, 8, dtype) == 768 + 3 * 3 * 8 * 2 + 96 + 768
    assert opbench.op_bytes("pointwise", SMALL, 3, 8, dtype) == 768 + 8 * 8 * 2 + 96 + 768
    assert opbench.op_bytes("head", SMALL, 3, 8, dtype) == 768 + 5 * 8 * 2 + 5 * 4 + 3 * 5 * 2
    assert [opbench.op_bytes(op, SMALL, 3, 8, dtype) for op in OP_NAMES] == [3360, 1776, 1760, 898]


def test_op_bytes_fp32_and_floored_images():
    assert opbench.op_bytes("pointwise", SMALL, 3, 8, "fp32") == 2 * 48 * 8 * 4 + 8 * 8 * 4 + 96
    # A 9x9 image has 4x4 whole patches: the last row and column are never read.
    for op in OP_NAMES:
        assert opbench.op_bytes(op, SMALL, 3, 9, "bf16") == opbench.op_bytes(op, SMALL, 3, 8, "bf16")
    with pytest.raises(ValueError, match="op must be one of"):
        opbench.op_bytes("conv", SMALL, 1, 8, "bf16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        opbench.op_bytes("head", SMALL, 1, 8, "int8")


def test_op_flops_of_a_small_config():
    assert opbench.op_flops("stem", SMALL, 3, 8) == 2 * 48 * 8 * (3 * 2 * 2)  # 9216
    assert opbench.op_flops("depthwise_block", SMALL, 3, 8) == 2 * 48 * 8 * 3 * 3  # one block: 6912
    assert opbench.op_flops("pointwise", SMALL, 3, 8) == 2 * 48 * 8 * 8  # one block: 6144
    assert opbench.op_flops("head", SMALL, 3, 8) == 2 * 3 * 8 * 5  # 240
    assert [opbench.calls_per_forward(op, SMALL) for op in OP_NAMES] == [1, 2, 2, 1]
    # The sum over one forward is bench.flops_per_image's total.
    total = sum(opbench.op_flops(op, SMALL, 3, 8) * opbench.calls_per_forward(op, SMALL) for op in OP_NAMES)
    assert total == 3 * bench.flops_per_image(SMALL, 8)["total"]


def test_convmixer_1536_20_counts_match_design():
    # DESIGN.md §2: a 9x9 depthwise block is 0.255 GFLOP per image, the pointwise GEMM 4.83 GFLOP.
    config = MODEL_CONFIGS["convmixer_1536_20"]
    assert opbench.op_flops("depthwise_block", config, 1, 224) == 2 * 1024 * 1536 * 81
    assert opbench.op_flops("pointwise", config, 1, 224) == 2 * 1024 * 1536 * 1536
    tokens = 256 * 1024 * 1536 * 2
    assert opbench.op_bytes("depthwise_block", config, 256, 224, "bf16") == 2 * tokens + 81 * 1536 * 2 + 3 * 1536 * 4


def test_floors_take_the_larger_known_bound():
    rates = opbench.Rates(fma_tflops=None, gemm_tflops=2.0, copy_gb_per_s=4.0, detail={})
    gemm = opbench.floors("pointwise", flops=4_000_000, nbytes=8_000, rates=rates)
    assert gemm["compute_floor_us"] == pytest.approx(2.0) and gemm["memory_floor_us"] == pytest.approx(2.0)
    assert gemm["floor_us"] == pytest.approx(2.0) and gemm["compute_rate"] == "gemm"
    fma = opbench.floors("depthwise_block", flops=4_000_000, nbytes=8_000, rates=rates)
    assert fma["compute_floor_us"] is None and fma["floor_us"] == pytest.approx(2.0) and fma["compute_rate"] == "fma"


def test_forward_estimates_weight_ops_by_their_calls():
    rows = [{"op": op, "backend": backend, "calls_per_forward": calls, "time_us": time, "floor_us": 1.0}
            for op, calls in zip(OP_NAMES, (1, 2, 2, 1))
            for backend, time in (("a", 10.0), ("b", 5.0 if op == "pointwise" else None))]
    estimates = opbench.forward_estimates(rows, OP_NAMES)
    assert estimates["a"] == {"per_op_sum_us": 60.0, "missing": []}
    assert estimates["b"]["per_op_sum_us"] is None and estimates["b"]["missing"] == ["stem", "depthwise_block", "head"]
    assert estimates["best"]["per_op_sum_us"] == 50.0 and estimates["best"]["backends"]["pointwise"] == "b"
    assert estimates["floor"]["per_op_sum_us"] == 6.0


# --------------------------------------------------------------------------------------- FMA kernel
@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1")
def test_fma_kernel_stores_the_predicted_value():
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.full((3 * 32,), float("nan"), device=device)
    opbench.launch_fma_loop(out, 3, block=32, unroll=2)
    expected = opbench.fma_loop_expected(out.numel(), 3, unroll=2)
    assert torch.equal(out.cpu(), expected)
    # element i: 8 * (i % 64) + (0 + 1 + ... + 7) + 8 chains * 6 steps
    assert expected[:3].tolist() == [76.0, 84.0, 92.0] and expected[64].item() == 76.0
    assert opbench.fma_loop_flops(out.numel(), 3, unroll=2) == 2 * 8 * 96 * 6


def test_fma_launcher_checks_its_buffer():
    pytest.importorskip("triton")
    with pytest.raises(ValueError, match="multiple of 32"):
        opbench.launch_fma_loop(torch.empty(40), 1, block=32)
    with pytest.raises(ValueError, match="fp32"):
        opbench.launch_fma_loop(torch.empty(64, dtype=torch.float16), 1, block=32)


# --------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(exit code, stdout, result document) of one tiny CPU run over every backend."""
    path = tmp_path_factory.mktemp("bench_ops") / "ops.json"
    code, out = run_bench_ops(*TINY, "--backends", "eager", "triton", "cuda", "--json", str(path))
    return code, out, json.loads(path.read_text())


def test_cli_runs_every_op_on_cpu(tiny_run):
    code, out, _ = tiny_run
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("bench-ops convmixer_cifar10 fp32, batch 1, 32px (16x16 tokens, C=256, k=5, p=2)")
    assert "CPU run" in lines[1]
    assert any(line.startswith("rates: fp32 FMA - (not measured") for line in lines)
    for op in OP_NAMES:
        assert any(line.split()[:2] == [op, "eager"] and "skipped" not in line for line in lines)
    assert "per-op-sum estimate of one forward (stem x1, depthwise_block x8, pointwise x8, head x1)" in out


def test_result_json_has_the_documented_keys(tiny_run):
    _, _, result = tiny_run
    assert {"schema", "device", "run", "workload", "rates", "rows", "forward"} <= set(result)
    assert result["schema"] == opbench.SCHEMA and result["device"]["type"] == "cpu"
    assert result["run"]["complete"] and result["run"]["wall_s"] is not None
    assert {"date", "commit", "versions", "settings"} <= set(result["run"])
    workload = result["workload"]
    assert (workload["model"], workload["batch"], workload["image_size"], workload["dtype"]) == (
        "convmixer_cifar10", 1, 32, "fp32")
    assert workload["calls_per_forward"] == {"stem": 1, "depthwise_block": 8, "pointwise": 8, "head": 1}
    rates = result["rates"]
    assert rates["fma_tflops"] is None and "not measured" in rates["detail"]["fma"]
    assert rates["gemm_tflops"] > 0 and rates["copy_gb_per_s"] > 0


def test_every_op_has_a_row_per_backend_with_floors(tiny_run):
    _, _, result = tiny_run
    rows = {(row["op"], row["backend"]): row for row in result["rows"]}
    assert set(rows) == {(op, b) for op in OP_NAMES for b in ("eager", "triton", "cuda")}
    config = MODEL_CONFIGS["convmixer_cifar10"]
    for (op, backend), row in rows.items():
        assert set(row) == ROW_KEYS
        assert row["flops"] == opbench.op_flops(op, config, 1, 32)
        assert row["bytes"] == opbench.op_bytes(op, config, 1, 32, "fp32")
        assert row["memory_floor_us"] > 0  # bytes at the measured copy bandwidth
        if op in ("stem", "pointwise"):
            assert row["compute_floor_us"] > 0
            assert row["floor_us"] == max(row["compute_floor_us"], row["memory_floor_us"])
        else:  # FMA-bound ops: no FMA rate on CPU
            assert row["compute_floor_us"] is None and row["floor_us"] == row["memory_floor_us"]
        if backend == "eager":
            assert row["status"] == "ok" and row["max_rel_err"] <= row["tolerance"]
            assert row["time_us"] > 0 and row["repeats"] == len(row["times_us"]) >= 2
            assert row["tflops"] == pytest.approx(row["flops"] / row["time_us"] / 1e6)
            assert row["gb_per_s"] == pytest.approx(row["bytes"] / row["time_us"] / 1e3)
            assert row["floor_fraction"] == pytest.approx(row["floor_us"] / row["time_us"])
        else:  # triton: interpreter only on CPU; cuda: needs a GPU
            assert row["status"] == "skipped" and row["reason"] and row["time_us"] is None
    assert "interpreter" in rows["stem", "triton"]["reason"] or "TRITON_INTERPRET" in rows["stem", "triton"]["reason"]
    assert "CUDA GPUs" in rows["stem", "cuda"]["reason"]
    forward = result["forward"]
    eager_rows = [rows[op, "eager"] for op in OP_NAMES]
    assert forward["eager"]["per_op_sum_us"] == pytest.approx(
        sum(r["time_us"] * r["calls_per_forward"] for r in eager_rows))
    assert forward["triton"]["per_op_sum_us"] is None and forward["floor"]["per_op_sum_us"] > 0


def test_variants_of_an_op_get_rows_of_their_own(monkeypatch, tmp_path):
    """A backend's other kernels of an op (``Backend.load_variants``, the cuda depthwise algorithms)
    are checked and timed one by one as "backend:variant" rows; they count for "best", not as a
    backend's forward."""
    def refusing(x, weight, bias, scale, shift, act, out=None):
        raise ValueError("algorithm 'refusing' needs something else")

    variants = {"depthwise_block": {"twin": eager.OPS.depthwise_block, "refusing": refusing}}
    monkeypatch.setitem(BACKENDS, "eager", dataclasses.replace(BACKENDS["eager"], load_variants=lambda: variants))
    path = tmp_path / "ops.json"
    code, out = run_bench_ops(*TINY, "--backends", "eager", "--ops", "depthwise_block", "pointwise",
                              "--json", str(path))
    assert code == 1 and "depthwise_block on eager:refusing: error" in out
    rows = {(row["op"], row["backend"]): row for row in json.loads(path.read_text())["rows"]}
    assert set(rows) == {("depthwise_block", "eager"), ("depthwise_block", "eager:twin"),
                         ("depthwise_block", "eager:refusing"), ("pointwise", "eager")}
    twin = rows["depthwise_block", "eager:twin"]
    assert twin["variant"] == "twin" and twin["status"] == "ok" and twin["time_us"] > 0
    assert rows["depthwise_block", "eager"]["variant"] is None
    assert "algorithm 'refusing' needs" in rows["depthwise_block", "eager:refusing"]["reason"]
    forward = json.loads(path.read_text())["forward"]
    assert set(forward) == {"eager", "best", "floor"}


def test_a_wrong_op_is_reported_and_not_timed(monkeypatch, tmp_path):
    def garbage(x, weight, bias, scale, shift, act, out=None):
        return out.fill_(123.0)

    monkeypatch.setattr(eager, "OPS", eager.OPS._replace(depthwise_block=garbage))
    monkeypatch.chdir(tmp_path)
    code, out = run_bench_ops(*TINY, "--backends", "eager", "--ops", "depthwise_block", "pointwise")
    assert code == 1
    assert "WRONG: max rel err" in out and "depthwise_block on eager: wrong" in out
    assert list(tmp_path.iterdir()) == []  # no --json on CPU: nothing written


def test_an_op_that_raises_is_an_error_row(monkeypatch):
    def broken(*args, pooled=None, out=None):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(eager, "OPS", eager.OPS._replace(head=broken))
    cases = opbench.build_cases(MODEL_CONFIGS["convmixer_cifar10"], 1, 8, torch.float32, "cpu", ops=("head",))
    row = opbench.measure_op(cases["head"], "eager", dtype=torch.float32, device="cpu", channels=256,
                             tolerance=1e-4, warmup=1, max_repeats=2)
    assert row["status"] == "error" and row["reason"] == "RuntimeError: kernel exploded" and row["time_us"] is None
    assert "kernel exploded" in row["traceback"] and "broken" in row["traceback"]


def test_no_op_is_measured_once_a_failure_left_the_gpu_unusable(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(eager, "OPS", eager.OPS._replace(depthwise_block=broken))
    monkeypatch.setattr(opbench.bench, "device_lost", lambda device_type, failed: f"not run: lost after {failed}")
    path = tmp_path / "ops.json"
    code, out = run_bench_ops(*TINY, "--backends", "eager", "--ops", "stem", "depthwise_block", "pointwise",
                              "--json", str(path))
    result = json.loads(path.read_text())
    assert code == 1 and [(row["op"], row["status"]) for row in result["rows"]] == [
        ("stem", "ok"), ("depthwise_block", "error")]
    assert result["device_lost"] == "not run: lost after depthwise_block on eager" in out


def test_operands_come_from_the_prepared_model():
    config = MODEL_CONFIGS["convmixer_cifar10"]
    cases = opbench.build_cases(config, 2, 8, torch.bfloat16, "cpu")
    assert list(cases) == list(OP_NAMES)
    image, stem_weight, *stem_epilogue, act = cases["stem"].args
    assert image.shape == (2, 3, 8, 8) and image.dtype == torch.float32 and act == "gelu"
    assert stem_weight.shape == (256, 3, 2, 2) and stem_weight.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 and v.shape == (256,) for v in stem_epilogue)
    tokens, dw_weight, *_ = cases["depthwise_block"].args
    assert tokens.shape == (2, 4, 4, 256) and tokens.dtype == torch.bfloat16 and dw_weight.shape == (5, 5, 256)
    assert cases["pointwise"].args[1].shape == (256, 256)
    head_tokens, head_weight, head_bias = cases["head"].args
    assert head_weight.shape == (10, 256) and head_bias.dtype == torch.float32
    assert cases["head"].out_shape == (2, 10) and cases["stem"].out_shape == (2, 4, 4, 256)
    assert cases["head"].reference.shape == (2, 10) and cases["head"].reference.dtype == torch.bfloat16


def test_default_result_path_names_the_gpu_and_workload():
    path = opbench.default_result_path("NVIDIA H100 80GB HBM3", "convmixer_1536_20", 1, "2026-01-01")
    assert path == Path("benchmarks/results/ops-nvidia-h100-80gb-hbm3-convmixer_1536_20-b1-2026-01-01.json")


def test_import_touches_no_cuda():
    code = "import torch, convmixer_fast.opbench; assert not torch.cuda.is_initialized()"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_gpu_op_timing_replays_a_graph_of_calls(monkeypatch):
    """On a GPU each op is timed as a CUDA graph of GRAPH_CALLS calls (its kernels, not the host's
    launches); here capture and timing are stood in for, the scaling is what is checked."""
    ran, graph_calls = [], opbench.GRAPH_CALLS

    def capture(forward):
        forward()  # what a capture records
        return lambda: "replayed"

    def time_calls(run, device_type, *, warmup, max_repeats):
        assert run() == "replayed" and device_type == "cuda"
        return bench.Timing(2e-3, (2e-3, 4e-3), 3)

    monkeypatch.setattr(bench, "capture_cuda_graph", capture)
    monkeypatch.setattr(bench, "time_calls", time_calls)
    timing = opbench.time_op(lambda: ran.append(1), "cuda", warmup=1, max_repeats=2)
    assert len(ran) == graph_calls
    assert timing.median_s == pytest.approx(2e-3 / graph_calls) and timing.calls_per_repeat == 3 * graph_calls
    assert timing.per_call_s == pytest.approx((2e-3 / graph_calls, 4e-3 / graph_calls))


def test_rates_count_their_flops_and_bytes(monkeypatch):
    """Each yardstick's figure from a given timing: a GEMM's 2 n**3 FLOPs, a copy's bytes read plus
    written, the FMA loop's 2 FLOPs per FMA (its kernel and the GPU stood in for)."""
    def time_calls(run, device_type, **kwargs):
        run()
        return bench.Timing(0.25, (0.25,), 1)

    monkeypatch.setattr(bench, "time_calls", time_calls)
    monkeypatch.setattr(opbench, "CPU_GEMM_SIZE", 64)
    monkeypatch.setitem(opbench.COPY_BYTES, "cpu", 4096)
    gemm_tflops, _ = opbench.measure_gemm_tflops("fp32", "cpu", warmup=1, max_repeats=1)
    assert gemm_tflops == pytest.approx(2 * 64**3 / 0.25 / 1e12)
    assert opbench.measure_copy_gb_per_s("cpu", warmup=1, max_repeats=1)[0] == pytest.approx(2 * 4096 / 0.25 / 1e9)
    gpu = type("Properties", (), {"multi_processor_count": 2})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: gpu)
    monkeypatch.setattr(opbench, "launch_fma_loop", lambda out, iterations: out.copy_(
        opbench.fma_loop_expected(out.numel(), iterations)))
    tflops, _ = opbench.measure_fma_tflops("cpu", warmup=1, max_repeats=1)
    elements = 2 * opbench.FMA_PROGRAMS_PER_SM * opbench.FMA_BLOCK
    assert tflops == pytest.approx(opbench.fma_loop_flops(elements, opbench.FMA_ITERATIONS) / 0.25 / 1e12)


def test_a_nan_output_is_wrong_and_not_timed(monkeypatch):
    monkeypatch.setattr(opbench, "time_op", lambda *args, **kwargs: pytest.fail("a NaN output was timed"))
    out = torch.full((4, 4), float("nan"))
    max_rel, timing = opbench.check_then_time(lambda: None, out, torch.ones(4, 4), tolerance=1.0, device_type="cpu",
                                              warmup=1, max_repeats=1)
    assert timing is None and max_rel != max_rel
