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


def archive_names(path: Path) -> set[str]:
    """The paths in the archive ``path``, relative to its root."""
    with tarfile.open(path) as archive:
        return {Path(name).as_posix().lstrip("./") for name in archive.getnames()}


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
    names = archive_names(tmp_path / "out" / "gpu-out.tar.gz")
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


def test_refuses_the_home_folder_as_logs_folder(tmp_path):
    tree = scratch_tree(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "sentinel").write_text("kept")
    result = subprocess.run(["bash", ".ci/gpu", "test"], cwd=tree, capture_output=True, text=True, timeout=60,
                            env=script_env(GPU_LOGS=str(home), HOME=str(home)))
    assert result.returncode == 2 and "name a folder of its own" in result.stdout
    assert (home / "sentinel").read_text() == "kept"


def test_judge_reads_the_bench_result_of_the_call(tmp_path):
    # In a scratch tree (the package imported from this checkout): a tiny CPU bench, then its verdict.
    tree = scratch_tree(tmp_path)
    (tree / "benchmarks" / "results").mkdir(parents=True)
    earlier = tree / "benchmarks" / "results" / "earlier.json"  # a result of an earlier call: neither judged nor packed
    earlier.write_text("{}")
    os.utime(earlier, (1, 1))
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
    names = archive_names(tmp_path / "gpu-out.tar.gz")
    assert "results/cpu.json" in names and "results/earlier.json" not in names


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


def stand_in_python(tmp_path, **variables) -> dict:
    """The environment with a stand-in ``python3`` first on PATH: it appends its arguments to
    ``calls.txt``, answers ``-c`` snippets with $STAND_IN_C_EXIT (default 0), runs ``-m zipfile``
    with this interpreter, and otherwise prints what ``info`` prints where _C has its CUDA kernels."""
    bin_dir = tmp_path / "stand-in-bin"
    bin_dir.mkdir(exist_ok=True)
    python3 = bin_dir / "python3"
    python3.write_text(f"""#!/usr/bin/env bash
echo "$*" >> "{tmp_path / 'calls.txt'}"
case "$1 ${{2:-}}" in
  "-c "*) exit "${{STAND_IN_C_EXIT:-0}}" ;;
  "-m zipfile") exec "{sys.executable}" "$@" ;;
  "setup.py build_ext") echo "CUTLASS_DIR=$CUTLASS_DIR" >> "{tmp_path / 'calls.txt'}"; exit "${{STAND_IN_BUILD_EXIT:-0}}" ;;
esac
eval "${{STAND_IN_BODY:-}}"
echo "_C             built, CUDA kernels yes"
""")
    python3.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "GPU_LOGS": "logs",
            "OUT": str(tmp_path / "out"), **variables}


def summary_stages(path: Path) -> list[tuple[str, str]]:
    """(stage, verdict) of each line of a summary."""
    import re

    lines = path.read_text().splitlines()
    matches = [re.fullmatch(r"(.*?) +(ok|TIMED OUT|FAILED \(exit \d+\)) in \d+ s", line) for line in lines]
    assert all(matches), lines
    return [(match[1], match[2]) for match in matches]


@pytest.mark.parametrize("plan, stages", [
    ("check", ["build", "verify", "ops convmixer_1536_20", "test"]),
    ("targets", ["build", "bench convmixer_1536_20 --batch 256 1 --dtype bf16", "judge",
                 "bench convmixer_768_32 --model convmixer_1024_20_ks9_p14 --batch 256 --dtype bf16 "
                 "--providers eager-* torch-compile convmixer_fast-auto gemm-floor", "judge"]),
    ("tuning", ["build", "ops convmixer_1536_20 --batch 1", "ncu", "tune --group-m 1 8 16"]),
])
def test_each_plan_runs_its_stages_in_order(tmp_path, plan, stages):
    # The three calls a GPU session makes, each stage's command line as the summary names it; a
    # file the provider pattern would match as a shell glob stays out of it.
    tree = scratch_tree(tmp_path)
    (tree / "eager-amp").write_text("")
    (tmp_path / "out").mkdir()
    subprocess.run(["bash", ".ci/gpu", plan], cwd=tree, capture_output=True, text=True, timeout=120,
                   env=stand_in_python(tmp_path))
    assert [stage for stage, _ in summary_stages(tmp_path / "out" / "summary.txt")] == stages
    assert summary_stages(tmp_path / "out" / "summary.txt")[0] == ("build", "ok")  # the carried _C kept
    assert "_C as carried" in (tree / "logs" / "build-time.txt").read_text()
    assert "setup.py" not in (tmp_path / "calls.txt").read_text()


def test_a_failed_build_leaves_the_later_stages_to_run(tmp_path):
    # No current _C carried and no CUTLASS wheel: build fails, the triton stages still run.
    tree = scratch_tree(tmp_path)
    (tmp_path / "out").mkdir()
    result = subprocess.run(["bash", ".ci/gpu", "build", "+", "verify", "+", "tune", "--group-m", "8"], cwd=tree,
                            capture_output=True, text=True, timeout=120, env=stand_in_python(tmp_path, STAND_IN_C_EXIT="1"))
    assert result.returncode == 1
    assert summary_stages(tmp_path / "out" / "summary.txt") == [
        ("build", "FAILED (exit 1)"), ("verify", "ok"), ("tune --group-m 8", "ok")]
    assert "no CUTLASS wheel in .whl/" in (tree / "logs" / "build.log").read_text()
    assert "-m convmixer_fast tune-gemm --group-m 8" in (tmp_path / "calls.txt").read_text()


def test_build_compiles_against_the_carried_cutlass_wheel_when_the_carried_extension_does_not_fit(tmp_path):
    import zipfile

    tree = scratch_tree(tmp_path)
    (tree / ".whl").mkdir()
    with zipfile.ZipFile(tree / ".whl" / "nvidia_cutlass-4.2.0.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("cutlass_library/source/include/cutlass/cutlass.h", "")
    (tmp_path / "out").mkdir()
    env = stand_in_python(tmp_path, STAND_IN_C_EXIT="1", TMPDIR=str(tmp_path))
    env.pop("CUTLASS_DIR", None)
    subprocess.run(["bash", ".ci/gpu", "build"], cwd=tree, capture_output=True, text=True, timeout=120, env=env)
    assert summary_stages(tmp_path / "out" / "summary.txt") == [("build", "ok")]
    calls = (tmp_path / "calls.txt").read_text()
    assert "setup.py build_ext --inplace" in calls
    cutlass = tmp_path / "convmixer_fast-cutlass" / "cutlass_library" / "source"
    assert f"CUTLASS_DIR={cutlass}\n" in calls and (cutlass / "include" / "cutlass" / "cutlass.h").is_file()
    assert "build_ext --inplace took" in (tree / "logs" / "build-time.txt").read_text()


def test_a_stage_past_the_budget_is_interrupted_then_killed_in_time_when_it_goes_on(tmp_path):
    # 36 s: 16 s for the stage (the budget less the packing reserve), then SIGINT (which Python turns
    # into a traceback in the log), then SIGKILL 10 s later: this stand-in notes the SIGINT and waits on.
    tree = scratch_tree(tmp_path)
    (tmp_path / "out").mkdir()
    env = stand_in_python(tmp_path, GPU_BUDGET_S="36",
                          STAND_IN_BODY="trap 'echo stopped by SIGINT' INT; sleep 45 & while ! wait; do :; done")
    import time

    begin = time.monotonic()
    result = subprocess.run(["bash", ".ci/gpu", "tune"], cwd=tree, capture_output=True, text=True, timeout=120,
                            env=env)
    assert time.monotonic() - begin < 36
    assert result.returncode == 1
    assert summary_stages(tmp_path / "out" / "summary.txt") == [("tune", "TIMED OUT")]
    assert "stopped by SIGINT" in (tree / "logs" / "tune-gemm.txt").read_text()
    assert (tmp_path / "out" / "gpu-out.tar.gz").is_file()


def test_logs_of_an_earlier_call_are_cleared(tmp_path):
    tree = scratch_tree(tmp_path)
    (tree / "logs").mkdir()
    (tree / "logs" / "summary.txt").write_text("stale 1\n")
    (tree / "logs" / "old.txt").write_text("stale\n")
    (tmp_path / "out").mkdir()
    subprocess.run(["bash", ".ci/gpu", "verify"], cwd=tree, capture_output=True, text=True, timeout=120,
                   env=stand_in_python(tmp_path))
    assert summary_stages(tmp_path / "out" / "summary.txt") == [("verify", "ok")]
    names = archive_names(tmp_path / "out" / "gpu-out.tar.gz")
    assert "old.txt" not in names and "verify.txt" in names


def script_function(name: str) -> str:
    """The bash text of the script's function ``name``."""
    lines = SCRIPT.read_text().splitlines()
    start = lines.index(f"{name}() {{")
    return "\n".join(lines[start:lines.index("}", start) + 1])


def test_record_names_each_exit_and_copies_the_summary_out_after_each_line(tmp_path):
    (tmp_path / "out").mkdir()
    program = script_function("record") + """
record "a" 0 1; cp "$OUT/summary.txt" first.txt
record "b" 124 2; record "c" 137 3; record "d" 1 4; record "e" 2 5"""
    subprocess.run(["bash", "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
                   env={**os.environ, "summary": "summary.txt", "OUT": str(tmp_path / "out")})
    assert summary_stages(tmp_path / "summary.txt") == [
        ("a", "ok"), ("b", "TIMED OUT"), ("c", "TIMED OUT"), ("d", "FAILED (exit 1)"), ("e", "FAILED (exit 2)")]
    assert summary_stages(tmp_path / "first.txt") == [("a", "ok")]  # there before the next stage
    assert (tmp_path / "out" / "summary.txt").read_text() == (tmp_path / "summary.txt").read_text()


def test_autotuning_lines_stay_out_of_the_printed_log(tmp_path):
    log = tmp_path / "log.txt"
    kept = ["op            backend   ms", "pointwise     triton    1.20", "  depthwise_block  cuda  0.91"]
    log.write_text("\n".join([
        "Autotuning kernel _pointwise_kernel with config BLOCK_M: 128", "Triton autotuning for function _k,",
        "with key as (1024, 768),", "finished after 2.10s,", "best config selected: BLOCK_M: 128;", kept[0], kept[1],
        "    autotuned BLOCK_M=128 BLOCK_N=64", "        0.412  BLOCK_M=128 BLOCK_N=64", "      did not run  BLOCK_M=256",
        kept[2]] + ["x" * 99] * 40) + "\n")
    result = subprocess.run(["bash", "-c", script_function("without_autotuning_lines") + '\nwithout_autotuning_lines "$1"',
                             "_", str(log)], capture_output=True, text=True, timeout=60, check=True)
    assert len(result.stdout) == 3000 and result.stdout.endswith("x" * 99 + "\n")
    short = tmp_path / "short.txt"
    short.write_text("\n".join(log.read_text().splitlines()[:11]) + "\n")
    result = subprocess.run(["bash", "-c", script_function("without_autotuning_lines") + '\nwithout_autotuning_lines "$1"',
                             "_", str(short)], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.splitlines() == kept


@pytest.mark.parametrize("current, with_cuda, archs, capability, fits", [
    (True, True, ("80", "90a"), (9, 0), True),
    (False, True, ("80", "90a"), (9, 0), False),  # stale: other sources or another torch
    (True, False, (), (9, 0), False),  # built without its CUDA kernels
    (True, True, ("80",), (9, 0), False),  # no machine code for this GPU
    (True, True, ("90a", "80"), (8, 6), True),  # one of the targets runs on it
])
def test_a_carried_extension_is_kept_only_where_it_fits(monkeypatch, current, with_cuda, archs, capability, fits):
    import re

    import torch

    from convmixer_fast import _extension

    snippet = re.search(r"^carried_extension_fits='(.*?)'$", SCRIPT.read_text(), re.S | re.M)[1]
    status = _extension.ExtensionStatus(True, with_cuda, "", archs, current)
    monkeypatch.setattr(_extension, "extension_status", lambda: status)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: capability)
    with pytest.raises(SystemExit) as exit_:
        exec(compile(snippet, "carried_extension_fits", "exec"), {})
    assert (not exit_.value.code) == fits


def test_a_command_the_device_tool_stops_keeps_the_archive_of_the_stages_before(tmp_path):
    """The tool kills the command at its limit (sooner when the session's device time runs low):
    the archive in $OUT, written after each stage, still holds the finished stages' logs."""
    import signal
    import time

    tree = scratch_tree(tmp_path)
    (tmp_path / "out").mkdir()
    env = stand_in_python(tmp_path, STAND_IN_BODY='[[ "$*" == *tune-gemm* ]] && sleep 60')
    process = subprocess.Popen(["bash", ".ci/gpu", "verify", "+", "tune"], cwd=tree, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "out" / "gpu-out.tar.gz").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # into the tune stage
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no trap runs
        process.wait()
    assert summary_stages(tmp_path / "out" / "summary.txt") == [("verify", "ok")]
    names = archive_names(tmp_path / "out" / "gpu-out.tar.gz")
    assert "verify.txt" in names and "tune-gemm.txt" not in names


def test_judge_fails_on_any_files_miss_and_leaves_tune_gemm_results_alone(tmp_path):
    tree = scratch_tree(tmp_path)
    (tree / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    writes = ("for name in a b tune-gemm-gpu-bf16; do echo '{}' > benchmarks/results/$name.json; done")
    env = stand_in_python(tmp_path, STAND_IN_BODY=f'[[ "$*" == *"bench --model"* ]] && {{ {writes}; }}; '
                                                  '[[ "$*" == *"--targets benchmarks/results/a.json"* ]] && exit 1')
    result = subprocess.run(["bash", ".ci/gpu", "bench", "+", "judge"], cwd=tree, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 1
    assert summary_stages(tmp_path / "out" / "summary.txt") == [("bench", "ok"), ("judge", "FAILED (exit 1)")]
    judged = sorted(line.split("--targets ")[1] for line in (tmp_path / "calls.txt").read_text().splitlines()
                    if "--targets" in line)
    assert judged == ["benchmarks/results/a.json", "benchmarks/results/b.json"]


def test_runs_without_home(tmp_path):
    tree = scratch_tree(tmp_path)
    (tmp_path / "out").mkdir()
    env = stand_in_python(tmp_path)
    del env["HOME"]
    result = subprocess.run(["bash", ".ci/gpu", "verify"], cwd=tree, capture_output=True, text=True, timeout=120,
                            env=env)
    assert "unbound variable" not in result.stdout + result.stderr and result.returncode == 0
