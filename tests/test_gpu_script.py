"""``.ci/gpu``'s own mechanics, on any machine: stages chained with ``+``, one summary line each,
the time budget, and the one archive the device tool brings back. (What its stages measure needs a GPU.)"""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from convmixer_fast.targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "gpu"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or not SCRIPT.exists(), reason="needs bash and .ci/gpu")


def script_env(**variables) -> dict:
    """The environment with this interpreter's python3 first on PATH, plus ``variables``."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **variables}


def scratch_tree(root: Path) -> Path:
    """A tree holding a copy of the script (which works on the tree it sits in): what a broken
    script could do stays inside it."""
    tree = root / "tree"
    (tree / ".ci").mkdir(parents=True)
    shutil.copy(SCRIPT, tree / ".ci" / "gpu")
    return tree


def run_script(tmp_path, *args, budget=300):
    env = script_env(GPU_LOGS=str(tmp_path / "logs"), GPU_BUDGET_S=str(budget), OUT=str(tmp_path / "out"))
    (tmp_path / "out").mkdir(exist_ok=True)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=240)


def test_unknown_plan_prints_usage():
    result = subprocess.run(["bash", str(SCRIPT), "nonsense"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage: bash .ci/gpu" in result.stdout


def test_chained_stages_each_get_a_summary_line_and_one_archive_comes_back(tmp_path):
    result = run_script(tmp_path, "test", "--collect-only", "-q", "tests/test_cli.py", "+", "nonsense")
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert result.returncode == 1  # one stage failed
    assert summary[0].startswith("test --collect-only -q tests/test_cli.py") and " ok in " in summary[0]
    assert summary[1].startswith("nonsense") and "FAILED (exit 2)" in summary[1]
    assert result.stdout.rstrip().endswith(summary[-1])  # the summary is printed last
    assert sorted(os.listdir(tmp_path / "out")) == ["gpu-out.tar.gz", "summary.txt"]
    with tarfile.open(tmp_path / "out" / "gpu-out.tar.gz") as archive:
        names = {Path(name).as_posix().lstrip("./") for name in archive.getnames()}
    assert {"pytest.log", "summary.txt", "results"} <= names


def test_a_stage_without_time_left_is_not_started(tmp_path):
    result = run_script(tmp_path, "verify", budget=30)  # 30 s less the packing reserve: under a stage's minimum
    assert result.returncode == 1
    assert "not started: no time left" in (tmp_path / "out" / "summary.txt").read_text()


@pytest.mark.parametrize("logs", [".", "..", "sub/../.."])
def test_refuses_logs_folder_that_holds_the_tree(tmp_path, logs):
    tree = scratch_tree(tmp_path / "parent")  # were the guard broken, only the scratch would go
    (tree / "sentinel").write_text("kept")
    result = subprocess.run(["bash", ".ci/gpu", "test"], cwd=tree, capture_output=True, text=True, timeout=60,
                            env=script_env(GPU_LOGS=logs))
    assert result.returncode == 2 and "name a folder of its own" in result.stdout
    assert (tree / "sentinel").read_text() == "kept"


def test_judge_reads_the_bench_result_of_the_call(tmp_path):
    # In a scratch tree (the package imported from this checkout): a tiny CPU bench, then its verdict.
    tree = scratch_tree(tmp_path)
    (tree / "benchmarks" / "results").mkdir(parents=True)
    env = script_env(GPU_LOGS="logs", OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run(["bash", ".ci/gpu", "judge", "+", "bench", "convmixer_cifar10", "--batch", "2",
                             "--image-size", "8", "--providers", "eager-fp32", "--json", "benchmarks/results/cpu.json",
                             "+", "judge"], cwd=tree, capture_output=True, text=True, timeout=240, env=env)
    summary = (tree / "logs" / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary] == ["judge", "bench", "judge"]
    assert "FAILED (exit 1)" in summary[0] and " ok in " in summary[1]  # nothing to judge yet; then the bench ran
    assert "FAILED (exit 1)" in summary[2]  # a CPU result holds none of the GPU workloads
    assert f"0 of {len(TARGETS)} targets pass" in (tree / "logs" / "targets.txt").read_text()
    assert "no bench result written in this call" in result.stdout


@pytest.mark.skipif(shutil.which("compute-sanitizer") is not None, reason="compute-sanitizer is on this machine")
def test_sanitize_without_compute_sanitizer_fails_alone_and_says_why(tmp_path):
    result = run_script(tmp_path, "sanitize", "racecheck", "+", "test", "--collect-only", "-q", "tests/test_cli.py")
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert result.returncode == 1
    assert summary[0].startswith("sanitize racecheck") and "FAILED (exit 1)" in summary[0]
    assert " ok in " in summary[1]
    assert "no compute-sanitizer on this machine" in (tmp_path / "logs" / "sanitize-racecheck.txt").read_text()


def test_the_tune_stage_runs_tune_gemm_with_its_arguments(tmp_path):
    # On CPU tune-gemm runs in Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 without a GPU).
    # (On a GPU, --json keeps its result out of benchmarks/results/.)
    run_script(tmp_path, "tune", "--dims", "24", "--tokens", "40", "--repeats", "2", "--warmup", "1", "--dtype", "fp32",
               "--json", str(tmp_path / "tune.json"))
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("tune --dims 24 --tokens 40") and " ok in " in summary[0]
    log = (tmp_path / "logs" / "tune-gemm.txt").read_text()
    assert "1 widths x 1 token counts, fp32" in log and "per config, of 1 shapes" in log
