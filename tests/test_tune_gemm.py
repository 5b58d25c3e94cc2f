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


@pytest.mark.parametrize("argument", [["--dims", "0"], ["--tokens", "x"], ["--group-m", "-1"], ["--group-m", "0"],
                                      ["--dtype", "int8"], ["--warmup", "-1"], ["--repeats", "0"]])
def test_bad_arguments_exit_2(argument):
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()):
        main(["tune-gemm", "--dims", "24", "--tokens", "40", *argument])  # (accepted, a tiny shape runs)
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


def fake_shapes(monkeypatch, lost_at=None) -> list:
    """``measure_shape`` replaced by one that measures nothing: every config ok, 10 us; the shapes asked
    for are recorded (and ``lost_at``'s (dim, tokens) reports a lost GPU)."""
    asked = []

    def measure_shape(dim, tokens, configs, **kwargs):
        asked.append((dim, tokens))
        rows = [{"config": _triton_utils.config_label(c), "tma": c.kwargs["TMA"], "status": "ok", "reason": None,
                 "max_rel_err": 0.0, "time_us": 10.0 + i, "tflops": 1.0} for i, c in enumerate(configs)]
        lost = "not run: the GPU was unusable" if (dim, tokens) == lost_at else None
        return {"dim": dim, "tokens": tokens, "cublas_us": 5.0, "best": rows[0]["config"], "rows": rows,
                "device_lost": lost}

    monkeypatch.setattr(tune_gemm, "measure_shape", measure_shape)
    monkeypatch.setattr(_triton_utils, "is_interpreting", lambda: True)
    return asked


def test_the_default_grid_is_every_width_by_every_token_count(monkeypatch, tmp_path):
    """N = K = 768, 1024, 1536 by M = 1,024 to 262,144 in steps of 4x (batch 1 to 256 of 32x32 tokens),
    each shape once, given twice or not."""
    asked = fake_shapes(monkeypatch)
    code, _, _ = run_tune("--device", "cpu", "--json", str(tmp_path / "tune.json"))
    tokens = [1024 * 4**i for i in range(5)]
    assert code == 0 and tokens[-1] == 262144
    assert asked == [(dim, count) for dim in (768, 1024, 1536) for count in tokens]
    workload = json.loads((tmp_path / "tune.json").read_text())["workload"]
    assert (workload["dims"], workload["tokens"]) == ([768, 1024, 1536], tokens)
    asked.clear()
    assert run_tune("--device", "cpu", "--dims", "24", "32", "24", "--tokens", "40", "40")[0] == 0
    assert asked == [(24, 40), (32, 40)]


def test_a_cpu_run_writes_no_result_file_unless_asked(monkeypatch, tmp_path):
    fake_shapes(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_tune("--device", "cpu", "--dims", "24", "--tokens", "40")
    assert code == 0 and "wrote" not in out and list(tmp_path.iterdir()) == []


def test_no_shape_is_measured_once_the_gpu_was_lost(monkeypatch, tmp_path):
    asked = fake_shapes(monkeypatch, lost_at=(24, 40))
    path = tmp_path / "tune.json"
    code, out, _ = run_tune("--device", "cpu", "--dims", "24", "32", "--tokens", "40", "80", "--json", str(path))
    assert asked == [(24, 40)] and "not run: the GPU was unusable" in out
    result = json.loads(path.read_text())
    assert result["run"]["complete"] and len(result["shapes"]) == 1


def test_the_best_is_the_fastest_ok_row_of_either_form(monkeypatch):
    """Pointer and TMA configs compete alike; a WRONG or failed config (not timed) is never the best."""
    times = {0: 30.0, 1: None, 2: 20.0, 7: 10.0, 8: None}  # by index into CONFIGS; the rest 40 us

    def measure_config(config, *args, **kwargs):
        i = pw.CONFIGS.index(config)
        time_us = times.get(i, 40.0)
        status = "ok" if time_us is not None else "wrong" if i == 1 else "error"
        return {"config": LABELS[i], "tma": config.kwargs["TMA"], "status": status, "time_us": time_us}

    monkeypatch.setattr(tune_gemm, "measure_config", measure_config)
    assert pw.CONFIGS[7].kwargs["TMA"] and not pw.CONFIGS[2].kwargs["TMA"]
    shape = tune_gemm.measure_shape(24, 40, pw.CONFIGS, dtype=torch.float32, device=DEVICE.type, seed=0, warmup=0,
                                    max_repeats=1)
    assert shape["best"] == LABELS[7] and shape["device_lost"] is None and len(shape["rows"]) == len(pw.CONFIGS)


def test_a_config_that_writes_nothing_is_wrong(monkeypatch, tmp_path):
    """``out`` is shared by the configs: one that leaves it unwritten must not pass on the result of
    the config before it."""
    launch, lazy = pw._launch, LABELS[1]

    def launch_but_one(y, weight, bias, scale, shift, act, out, config=None, kind="any"):
        if _triton_utils.config_label(config) != lazy:
            launch(y, weight, bias, scale, shift, act, out, config=config, kind=kind)

    monkeypatch.setattr(pw, "_launch", launch_but_one)
    path = tmp_path / "tune.json"
    code, out, _ = run_tune(*TINY, "--dtype", "fp32", "--json", str(path))
    rows = {row["config"]: row for row in json.loads(path.read_text())["shapes"][0]["rows"]}
    assert code == 1 and rows[lazy]["status"] == "wrong" and rows[lazy]["time_us"] is None
    assert rows[LABELS[0]]["status"] == "ok"


def test_a_config_past_the_gpus_shared_memory_is_skipped(monkeypatch):
    """On a GPU, a config needing more shared memory per block than the GPU has is skipped with why,
    not launched (it would fail, and count as a failed config)."""
    monkeypatch.setattr(pw, "shared_memory_bytes", lambda config, element_size: 300_000)
    monkeypatch.setattr(_triton_utils, "max_shared_memory", lambda device: 232_448)
    operands = tune_gemm.make_operands(40, 24, torch.float32, DEVICE.type, seed=0)
    out = torch.empty(40, 24, device=DEVICE)
    row = tune_gemm.measure_config(pw.CONFIGS[0], operands, out, out, tolerance=1e-4, device_type="cuda", warmup=0,
                                   max_repeats=1)
    assert row["status"] == "skipped" and row["time_us"] is None
    assert row["reason"] == "needs 300,000 bytes of shared memory per block, the GPU has 232,448"


def test_the_shape_line_gives_cublas_over_the_best():
    rows = [{"config": "a", "tma": False, "status": "ok", "time_us": 50.0, "tflops": 2.0},
            {"config": "b", "tma": True, "status": "ok", "time_us": 80.0, "tflops": 1.0}]
    line = tune_gemm.format_shape({"dim": 768, "tokens": 1024, "cublas_us": 100.0, "best": "a", "rows": rows})
    assert line.split() == ["1024", "768", "100.0", "50.0", "2.0", "2.00", "50.0", "80.0", "a"]


def test_the_weight_and_epilogue_operands_are_scaled_as_documented():
    y, weight, bias, scale, shift = tune_gemm.make_operands(64, 256, torch.float32, "cpu", seed=0)
    assert abs(y.std().item() - 1.0) < 0.05 and abs(weight.std().item() * 16 - 1.0) < 0.05
    assert all(abs(v.std().item() - 0.1) < 0.03 for v in (bias, scale, shift))
