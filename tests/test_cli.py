"""``python -m convmixer_fast`` info and verify (inspect is tested in test_inspect.py)."""

import json
import subprocess
import sys

import pytest

from convmixer_fast.__main__ import main


def test_info_runs_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "convmixer_fast", "info"], capture_output=True, text=True, check=True)
    assert "convmixer_fast 0.1.0" in result.stdout
    assert "backends on cpu:" in result.stdout and "eager   available" in result.stdout
    assert "_C " in result.stdout


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_verify_passes_and_reports_every_kernel(capsys, backend):
    pytest.importorskip("triton") if backend == "triton" else None
    code = main(["verify", "--config", "16,2,3,2,5", "--image-size", "9", "--backend", backend, "--dtype", "fp32", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] and len(report["runs"]) == 1
    rows = report["runs"][0]["rows"]
    assert [row["step"] for row in rows] == ["stem", "block 0 depthwise", "block 0 pointwise", "block 1 depthwise",
                                             "block 1 pointwise", "head", "model logits vs fp32 reference"]
    assert all(row["max_rel"] <= row["tolerance"] for row in rows)


def test_verify_runs_every_combination_and_an_unavailable_backend_fails_alone(capsys):
    code = main(["verify", "--config", "16,1,3,2,5", "--image-size", "8", "--device", "cpu",
                 "--backend", "eager", "cuda", "--dtype", "fp32", "bf16", "--json"])
    report = json.loads(capsys.readouterr().out)
    runs = {(run["backend"], run["dtype"]): run for run in report["runs"]}
    assert code == 1 and not report["ok"] and len(runs) == 4
    for dtype in ("torch.float32", "torch.bfloat16"):
        assert runs["eager", dtype]["ok"] and len(runs["eager", dtype]["rows"]) == 5
        assert not runs["cuda", dtype]["ok"] and "cannot run on cpu" in runs["cuda", dtype]["error"]


def test_verify_fails_past_tolerance(capsys, monkeypatch):
    import torch

    from convmixer_fast import verify

    monkeypatch.setitem(verify.MODEL_TOLERANCE, torch.bfloat16, 0.0)
    code = main(["verify", "--config", "16,1,3,2,5", "--image-size", "8", "--backend", "eager", "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out
