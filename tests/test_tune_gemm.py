"""The machinery of ``python -m convmixer_fast tune-gemm`` (convmixer_fast/tune_gemm.py), not speed:
every candidate config checked and timed per shape, the TMA configs skipped where they cannot run,
a WRONG config reported and not timed, the per-config summary, the JSON, and the refusals."""

import contextlib
import io
import json

import pytest
import torch

from helpers import DEVICE, skip_module_unless_triton_runs

skip_module_unless_triton_runs()

from convmixer_fast import tune_gemm  # noqa: E402
from convmixer_fast.__main__ import main  # noqa: E402
from convmixer_fast.ops import _triton_utils  # noqa: E402
from convmixer_fast.ops import pointwise as pw  # noqa: E402

# One small shape, none of its sizes a multiple of a block: M = 40 tokens, N = K = 24.
TINY = ["--device", DEVICE.type, "--dims", "24", "--tokens", "40", "--repeats", "2", "--warmup", "1"]
LABELS = [_triton_utils.config_label(config) for config in pw.CONFIGS]


def run_tune(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["tune-gemm", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_every_config_is_checked_and_timed(tmp_path, dtype):
    path = tmp_path / "tune.json"
    code, out, _ = run_tune(*TINY, "--dtype", dtype, "--json", str(path))
    assert code == 0, out
    result = json.loads(path.read_text())
    assert result["schema"] == tune_gemm.SCHEMA and result["run"]["complete"]
    assert result["workload"] == {"dims": [24], "tokens": [40], "dtype": dtype, "act": "gelu", "configs": LABELS}
    (shape,) = result["shapes"]
    assert (shape["dim"], shape["tokens"]) == (24, 40) and shape["cublas_us"] > 0
    rows = {row["config"]: row for row in shape["rows"]}
    assert list(rows) == LABELS
    for config in pw.CONFIGS:
        row = rows[_triton_utils.config_label(config)]
        assert row["tma"] == config.kwargs["TMA"]
        if row["tma"] and dtype == "fp32":  # TMA configs are for 16-bit operands
            assert row["status"] == "skipped" and "a TMA config needs float16/bfloat16" in row["reason"]
            assert row["time_us"] is None
        else:
            assert row["status"] == "ok" and row["max_rel_err"] <= 1e-2 and row["time_us"] > 0
            assert row["tflops"] == pytest.approx(2 * 40 * 24 * 24 / row["time_us"] / 1e6)
    timed = {label: row["time_us"] for label, row in rows.items() if row["time_us"] is not None}
    assert shape["best"] == min(timed, key=timed.get)
    assert result["summary"][shape["best"]]["fastest"] == 1
    assert sum(counts["fastest"] for counts in result["summary"].values()) == 1
    assert "CPU run in Triton's interpreter" in out or DEVICE.type == "cuda"
    assert f"{shape['best']}" in out and "per config, of 1 shapes" in out


def test_group_m_multiplies_the_candidates():
    configs = tune_gemm.candidate_configs([1, 16, 1])
    assert len(configs) == 2 * len(pw.CONFIGS)
    assert [c.kwargs["GROUP_M"] for c in configs[:2]] == [1, 16]
    assert {**configs[1].kwargs, "GROUP_M": 8} == pw.CONFIGS[0].kwargs
    assert (configs[1].num_warps, configs[1].num_stages) == (pw.CONFIGS[0].num_warps, pw.CONFIGS[0].num_stages)
    assert tune_gemm.candidate_configs() == list(pw.CONFIGS)


def test_a_wrong_config_is_reported_and_not_timed(monkeypatch, tmp_path):
    launch, broken = pw._launch, _triton_utils.config_label(pw.CONFIGS[1])

    def launch_one_wrong(y, weight, bias, scale, shift, act, out, config=None, kind="any"):
        launch(y, weight, bias, scale, shift, act, out, config=config, kind=kind)
        if _triton_utils.config_label(config) == broken:
            out[-1, -1] += 1.0

    monkeypatch.setattr(pw, "_launch", launch_one_wrong)
    path = tmp_path / "tune.json"
    code, out, _ = run_tune(*TINY, "--dtype", "fp32", "--json", str(path))
    assert code == 1
    assert f"WRONG {broken}: max rel err" in out and "1 config result WRONG or failed" in out
    rows = {row["config"]: row for row in json.loads(path.read_text())["shapes"][0]["rows"]}
    assert rows[broken]["status"] == "wrong" and rows[broken]["time_us"] is None
    assert json.loads(path.read_text())["shapes"][0]["best"] != broken


def test_summary_counts_fastest_and_near_best():
    def shape(times):
        rows = [{"config": label, "time_us": t} for label, t in times.items()]
        timed = {label: t for label, t in times.items() if t is not None}
        return {"rows": rows, "best": min(timed, key=timed.get)}

    shapes = [shape({"a": 100.0, "b": 102.9, "c": 110.0}), shape({"a": 50.0, "b": 40.0, "c": None})]
    assert tune_gemm.summarize(shapes, ["a", "b", "c", "d"]) == {
        "a": {"fastest": 1, "near_best": 1}, "b": {"fastest": 1, "near_best": 2},
        "c": {"fastest": 0, "near_best": 0}, "d": {"fastest": 0, "near_best": 0}}
    assert "(near the best nowhere)" in tune_gemm.format_summary({"c": {"fastest": 0, "near_best": 0}}, 2)


def test_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(_triton_utils, "is_interpreting", lambda: False)
    code, out, err = run_tune("--device", "cpu", "--dims", "24", "--tokens", "40")
    assert code == 2 and out == "" and "TRITON_INTERPRET=1" in err


@pytest.mark.parametrize("argument", [["--dims", "0"], ["--tokens", "x"], ["--group-m", "-1"], ["--dtype", "int8"]])
def test_bad_arguments_exit_2(argument):
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()):
        main(["tune-gemm", *argument])
    assert raised.value.code == 2


def test_default_result_path_names_the_gpu_and_dtype():
    path = tune_gemm.default_result_path("NVIDIA H100 80GB HBM3", "bf16", "2026-01-01")
    assert str(path) == "benchmarks/results/tune-gemm-nvidia-h100-80gb-hbm3-bf16-2026-01-01.json"


def test_operands_are_reproducible_and_scaled():
    y, weight, bias, scale, shift = tune_gemm.make_operands(40, 24, torch.bfloat16, "cpu", seed=3)
    again = tune_gemm.make_operands(40, 24, torch.bfloat16, "cpu", seed=3)
    assert all(torch.equal(a, b) for a, b in zip((y, weight, bias, scale, shift), again))
    assert y.shape == (40, 24) and weight.shape == (24, 24) and y.dtype == weight.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 and v.shape == (24,) for v in (bias, scale, shift))
    assert abs(scale.mean().item() - 1.0) < 0.1


def test_no_config_is_measured_once_a_failure_left_the_gpu_unusable(monkeypatch):
    measured = []

    def measure_config(config, *args, **kwargs):
        measured.append(config)
        return {"config": _triton_utils.config_label(config), "status": "error", "time_us": None}

    monkeypatch.setattr(tune_gemm, "measure_config", measure_config)
    monkeypatch.setattr(tune_gemm.bench, "device_lost", lambda device_type, failed: f"not run: lost after {failed}")
    shape = tune_gemm.measure_shape(24, 40, pw.CONFIGS, dtype=torch.float32, device=DEVICE.type, seed=0, warmup=0,
                                    max_repeats=1)
    assert measured == pw.CONFIGS[:1] and len(shape["rows"]) == 1 and shape["best"] is None
    assert shape["device_lost"] == f"not run: lost after {LABELS[0]} at M=40, N=K=24"
