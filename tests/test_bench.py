"""The machinery of ``python -m convmixer_fast bench`` (convmixer_fast/bench.py, plot.py), not speed:
FLOP counts, provider selection and availability, the result JSON, the table, ``--compare`` and
``--merge``, a WRONG provider, and the command on a tiny CPU workload."""

import contextlib
import copy
import io
import json
import sys
import time
import warnings

import pytest
import torch

from convmixer_fast import bench
from convmixer_fast.__main__ import main
from convmixer_fast.backends import BACKENDS
from convmixer_fast.configs import MODEL_CONFIGS

# A few milliseconds per provider on CPU: CIFAR config at 8x8 (4x4 tokens), batch 2.
TINY = ["--device", "cpu", "--model", "convmixer_cifar10", "--image-size", "8", "--batch", "2", "--repeats", "2",
        "--warmup", "1"]
TINY_PROVIDERS = ["--providers", "eager-fp32", "convmixer_fast-*", "gemm-floor"]


def run_bench(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["bench", *argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(exit code, stdout, result document, JSON path) of one tiny CPU run."""
    path = tmp_path_factory.mktemp("bench") / "result.json"
    code, out = run_bench(*TINY, *TINY_PROVIDERS, "--json", str(path))
    return code, out, json.loads(path.read_text()), path


@pytest.mark.parametrize("model, gflop", [("convmixer_1536_20", 102.2), ("convmixer_768_32", 41.4),
                                          ("convmixer_1024_20_ks9_p14", 11.9)])
def test_flops_match_design_table(model, gflop):
    total = bench.flops_per_image(MODEL_CONFIGS[model], 224)["total"] / 1e9
    assert abs(total - gflop) <= 0.05  # DESIGN.md §1 rounds to 0.1 GFLOP


def test_flops_per_block_match_design_cost_section():
    # DESIGN.md §2, ConvMixer-1536/20 at 224: pw 4.83 GFLOP and dw 0.255 GFLOP per block.
    flops = bench.flops_per_image(MODEL_CONFIGS["convmixer_1536_20"], 224)
    assert abs(flops["pointwise"] / 20 / 1e9 - 4.83) <= 0.005
    assert abs(flops["depthwise"] / 20 / 1e9 - 0.255) <= 0.0005
    assert flops["total"] == sum(flops[part] for part in ("stem", "depthwise", "pointwise", "head"))


def test_flops_floor_the_image_like_the_strided_conv():
    config = MODEL_CONFIGS["convmixer_1024_20_ks9_p14"]
    assert bench.flops_per_image(config, 224) == bench.flops_per_image(config, 237)


def test_plan_repeats_batches_fast_calls_and_caps_slow_ones():
    repeats, calls = bench.plan_repeats(1e-5, max_repeats=20)
    assert repeats == 20 and calls * 1e-5 >= bench.MIN_REPEAT_SECONDS
    assert bench.plan_repeats(10.0, max_repeats=20) == (bench.MIN_REPEATS, 1)
    assert bench.plan_repeats(10.0, max_repeats=2) == (2, 1)


def test_every_backend_has_a_provider_and_auto_one_without_cuda_graphs():
    names = [p.name for p in bench.all_providers()]
    for backend in ("auto", *BACKENDS):
        assert f"convmixer_fast-{backend}" in names
    assert "convmixer_fast-auto-nograph" in names
    for peer in ("eager-fp32", "eager-amp", "eager-channels-last", "torch-compile", "gemm-floor"):
        assert peer in names


def test_select_providers_defaults_patterns_and_errors():
    providers = bench.all_providers()
    default = [p.name for p in bench.select_providers(providers, None)]
    assert "torch-compile-max-autotune" not in default and "torch-compile" in default
    assert [p.name for p in bench.select_providers(providers, ["torch-compile-max-autotune"])] == [
        "torch-compile-max-autotune"]
    fast = [p.name for p in bench.select_providers(providers, ["convmixer_fast-*"])]
    assert fast == [name for name in default if name.startswith("convmixer_fast-")]
    with pytest.raises(ValueError, match="no provider matches nope"):
        bench.select_providers(providers, ["nope"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given on a machine without a GPU")
def test_gpu_only_providers_say_why_on_cpu(monkeypatch):
    workload = bench.make_workloads("cpu", ["convmixer_cifar10"], [2], ["fp32"], 8)[0]
    providers = {p.name: p for p in bench.all_providers()}
    assert providers["convmixer_fast-auto-nograph"].unavailable_reason(workload) == (
        "CUDA graphs exist only on a GPU: here this is convmixer_fast-auto")
    assert providers["convmixer_fast-eager"].unavailable_reason(workload) is None
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "cannot run on cpu" in providers["convmixer_fast-triton"].unavailable_reason(workload)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the triton backend is available, in the interpreter
    assert "interpreter" in providers["convmixer_fast-triton"].unavailable_reason(workload)


def test_cli_runs_a_tiny_cpu_workload(tiny_run):
    code, out, result, _ = tiny_run
    assert code == 0
    assert out.splitlines()[0].startswith("CPU run")
    assert "convmixer_cifar10 fp32 batch 2 8px" in out and "x eager-amp" in out
    entries = result["workloads"][0]["providers"]
    assert entries["eager-fp32"]["status"] == entries["convmixer_fast-eager"]["status"] == "ok"
    assert entries["convmixer_fast-auto"]["status"] == "ok" and entries["convmixer_fast-auto"]["detail"] == "eager"
    assert "convmixer_fast-auto: eager" in out
    assert entries["gemm-floor"]["status"] == "ok" and "max_rel_err" not in entries["gemm-floor"]


def test_result_json_schema(tiny_run):
    _, _, result, _ = tiny_run
    assert result["schema"] == bench.RESULT_SCHEMA
    assert {"type", "name"} <= set(result["device"])
    (run,) = result["runs"]
    assert {"date", "time", "host", "commit", "dirty", "versions", "settings", "complete", "wall_s",
            "matmul_peak_tflops"} <= set(run)
    assert run["complete"] and {"torch", "triton", "cuda", "python", "convmixer_fast"} <= set(run["versions"])
    (workload,) = result["workloads"]
    assert workload["label"] == "convmixer_cifar10 fp32 batch 2 8px" and workload["run"] == 0
    assert workload["flops_per_image"] == bench.flops_per_image(MODEL_CONFIGS["convmixer_cifar10"], 8)
    assert set(workload["providers"]) <= set(result["providers"])
    ok = {name: e for name, e in workload["providers"].items() if e["status"] == "ok"}
    assert set(ok) == {"eager-fp32", "convmixer_fast-auto", "convmixer_fast-eager", "gemm-floor"}
    for name, entry in workload["providers"].items():
        assert entry["status"] in bench.STATUSES and entry["precision"]
        if entry["status"] != "ok":
            assert entry["reason"] and "img_per_s" not in entry
    for name, entry in ok.items():
        assert {"img_per_s", "ms_per_batch", "tflops", "fraction_of_peak", "flops_per_batch", "compile_s",
                "repeats", "calls_per_repeat", "times_ms", "latency_ms", "ratios"} <= set(entry)
        assert entry["latency_ms"] > 0
        assert entry["img_per_s"] == pytest.approx(2 / (entry["ms_per_batch"] / 1e3))
        assert entry["repeats"] == len(entry["times_ms"]) and entry["fraction_of_peak"] is None  # CPU: no peak
        assert set(entry["ratios"]) == set(ok) - {name}
        for other, ratio in entry["ratios"].items():
            assert ratio * ok[other]["ratios"][name] == pytest.approx(1.0)


def test_commit_outside_a_git_checkout_comes_from_the_environment(monkeypatch):
    monkeypatch.setattr(bench, "_command_output", lambda command, cwd=None: None)  # no git, or no .git
    monkeypatch.delenv("CONVMIXER_FAST_SOURCE_COMMIT", raising=False)
    assert bench.git_commit() == {"commit": None, "dirty": None}
    monkeypatch.setenv("CONVMIXER_FAST_SOURCE_COMMIT", "06f855f0")
    assert bench.git_commit() == {"commit": "06f855f0", "dirty": None}


def test_table_shows_figures_failures_and_reasons(tiny_run):
    _, _, result, _ = tiny_run
    record = copy.deepcopy(result["workloads"][0])
    record["providers"]["eager-fp32"] = {"status": "wrong", "precision": "fp32", "reason": "max rel err 1 > tolerance 0.001"}
    table = bench.format_workload(record)
    assert "eager-fp32" in table and "WRONG: max rel err 1 > tolerance 0.001" in table
    assert "skipped: CUDA graphs exist only on a GPU" in table
    assert "gemm-floor" in table and "x gemm-floor" in table


def slowed(result: dict, provider: str, factor: float) -> dict:
    """``result`` as a baseline in which ``provider`` was ``factor`` times as fast."""
    baseline = copy.deepcopy(result)
    baseline["workloads"][0]["providers"][provider]["img_per_s"] *= factor
    return baseline


def test_compare_flags_only_slowdowns_beyond_the_threshold(tiny_run):
    _, _, result, _ = tiny_run
    report, regressed = bench.compare_results(result, slowed(result, "convmixer_fast-eager", 1.05), 0.1)
    assert not regressed and "4 entries compared, 0 regressions" in report
    report, regressed = bench.compare_results(result, slowed(result, "convmixer_fast-eager", 1.5), 0.1)
    assert regressed and "REGRESSION" in report and "-33.3%" in report
    unrelated = copy.deepcopy(result)
    unrelated["workloads"][0]["label"] += " (another workload)"
    report, failed = bench.compare_results(result, unrelated, 0.1)
    assert failed and "0 entries compared" in report and "nothing to compare" in report  # (a gate must not pass)


def test_cli_compare_exits_1_on_a_regression(tiny_run, tmp_path):
    _, _, result, _ = tiny_run
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(slowed(result, "eager-fp32", 1000.0)))
    code, out = run_bench(*TINY, "--providers", "eager-fp32", "--compare", str(baseline))
    assert code == 1 and "REGRESSION" in out and "1 entries compared, 1 regression" in out


def test_merge_replaces_same_workloads_and_keeps_others(tiny_run):
    _, _, result, _ = tiny_run
    other = copy.deepcopy(result)
    other["workloads"][0]["label"] = "another workload"
    renewed = copy.deepcopy(result)
    renewed["workloads"][0]["providers"]["eager-fp32"]["img_per_s"] = -1.0
    merged = bench.merge_results(bench.merge_results(result, other), renewed)
    assert [w["label"] for w in merged["workloads"]] == [result["workloads"][0]["label"], "another workload"]
    assert merged["workloads"][0]["providers"]["eager-fp32"]["img_per_s"] == -1.0
    assert merged["workloads"][0]["run"] == 2 and merged["workloads"][1]["run"] == 1 and len(merged["runs"]) == 3
    elsewhere = copy.deepcopy(result)
    elsewhere["device"]["name"] = "another GPU"
    with pytest.raises(ValueError, match="cannot merge"):
        bench.merge_results(result, elsewhere)


def test_load_result_rejects_other_json(tmp_path, tiny_run):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"schema": 0}))
    with pytest.raises(ValueError, match="not a convmixer_fast bench result"):
        bench.load_result(path)
    assert bench.load_result(tiny_run[3]) == tiny_run[2]


def test_latency_times_single_calls_each_waited_for(monkeypatch):
    queued = []
    monkeypatch.setattr(bench, "_synchronize", lambda device_type: queued.append("sync"))
    seconds = bench.latency(lambda: queued.append("call") or time.sleep(0.002), "cuda", 0.002, max_calls=5)
    assert queued == ["sync"] + ["call", "sync"] * 5  # as many as fit LATENCY_SECONDS, at most max_calls
    assert 0.002 <= seconds < 0.1
    queued.clear()
    bench.latency(lambda: queued.append("call"), "cuda", 10.0, max_calls=20)
    assert queued.count("call") == 1  # a long call: one


def test_a_run_killed_midway_keeps_the_providers_it_measured(monkeypatch, tmp_path):
    """The result is saved after each provider (a partial record, replaced when the workload ends):
    a budget cut during the last providers of a long workload must not lose the first ones."""
    measure = bench.measure_provider

    def killed_at_the_third(provider, *args, **kwargs):
        if provider.name == "gemm-floor":
            raise KeyboardInterrupt  # what the device tool's timeout leaves of the process
        return measure(provider, *args, **kwargs)

    monkeypatch.setattr(bench, "measure_provider", killed_at_the_third)
    path = tmp_path / "killed.json"
    with pytest.raises(KeyboardInterrupt):
        run_bench(*TINY, "--providers", "eager-fp32", "convmixer_fast-eager", "gemm-floor", "--json", str(path))
    (record,) = json.loads(path.read_text())["workloads"]
    assert record["partial"] is True and list(record["providers"]) == ["eager-fp32", "convmixer_fast-eager"]
    assert all(entry["status"] == "ok" for entry in record["providers"].values())
    monkeypatch.setattr(bench, "measure_provider", measure)
    run_bench(*TINY, "--providers", "eager-fp32", "convmixer_fast-eager", "--json", str(path))
    (record,) = json.loads(path.read_text())["workloads"]
    assert "partial" not in record and len(record["providers"]) == 2


def test_a_wrong_provider_is_reported_and_still_timed(monkeypatch, tmp_path):
    """A peer's speed counts whatever its accuracy (targets.py), so a WRONG provider is timed, marked
    WRONG in every table, and the run exits 1."""
    from convmixer_fast import verify

    monkeypatch.setitem(verify.MODEL_TOLERANCE, torch.float32, 0.0)  # eager-fp32 is the reference itself: 0 error
    monkeypatch.setattr(verify, "EAGER_ERROR_FACTOR", 0.0)
    path = tmp_path / "wrong.json"
    code, out = run_bench(*TINY, "--providers", "eager-fp32", "convmixer_fast-eager", "--json", str(path))
    entries = json.loads(path.read_text())["workloads"][0]["providers"]
    assert code == 1 and "convmixer_fast-eager: WRONG: max rel err" in out
    ok, wrong = entries["eager-fp32"], entries["convmixer_fast-eager"]
    assert ok["status"] == "ok" and wrong["status"] == "wrong" and wrong["max_rel_err"] > wrong["tolerance"] == 0.0
    assert wrong["img_per_s"] > 0 and wrong["latency_ms"] > 0 and len(wrong["times_ms"]) == wrong["repeats"]
    assert wrong["ratios"]["eager-fp32"] * ok["ratios"]["convmixer_fast-eager"] == pytest.approx(1.0)
    (row,) = [line for line in out.splitlines() if line.startswith("  convmixer_fast-eager ")]
    assert f"{wrong['img_per_s']:,.1f}" in row and row.endswith("WRONG")
    code, markdown = run_bench("--markdown", str(path))
    (row,) = [line for line in markdown.splitlines() if line.startswith("| `convmixer_fast-eager`")]
    assert code == 0 and row.startswith("| `convmixer_fast-eager` **WRONG** |") and f"{wrong['img_per_s']:,.1f}" in row
    assert f"WRONG, {bench.WRONG_BUT_TIMED}: `convmixer_fast-eager` ({wrong['reason']})." in markdown
    assert "Not timed" not in markdown


def test_a_providers_tolerance_grows_with_the_eager_backends_error_in_its_dtype(monkeypatch):
    from convmixer_fast import verify

    monkeypatch.setitem(verify.MODEL_TOLERANCE, torch.bfloat16, 1e-9)
    workload = bench.make_workloads("cpu", ["convmixer_cifar10"], [2], ["bf16"], 8)[0]
    cache = bench.InputCache()
    eager_error, plain_error = cache.dtype_errors(workload, "bf16")
    assert eager_error < verify.PLAIN_ERROR_CAP * plain_error  # (else the cap would set the tolerance)
    model = cache.convmixer_fast(workload, "eager", cuda_graphs=False)
    provider = next(p for p in bench.all_providers() if p.name == "convmixer_fast-eager")
    with torch.inference_mode():
        check = bench.check_logits(provider, bench.Prepared(lambda: model(cache.get(workload).image)), workload, cache)
    assert eager_error > 1e-4 and check.max_rel_err == pytest.approx(eager_error)
    assert check.ok and check.tolerance == pytest.approx(verify.EAGER_ERROR_FACTOR * eager_error)


def test_a_provider_wrong_only_after_its_first_call_is_caught():
    # The state that gets timed (on a GPU: a CUDA graph replay) is checked, not just the first call.
    workload = bench.make_workloads("cpu", ["convmixer_cifar10"], [2], ["fp32"], 8)[0]
    cache = bench.InputCache()
    inputs = cache.get(workload)
    calls = []

    def run():
        calls.append(1)
        return inputs.logits if len(calls) == 1 else inputs.logits + 1.0

    provider = next(p for p in bench.all_providers() if p.name == "convmixer_fast-eager")
    check = bench.check_logits(provider, bench.Prepared(run), workload, cache)
    assert len(calls) == bench.CHECKED_CALL and not check.ok
    nan_once = iter([inputs.logits, inputs.logits * float("nan"), inputs.logits])
    check = bench.check_logits(provider, bench.Prepared(lambda: next(nan_once)), workload, cache)
    assert not check.ok


def test_device_lost_only_where_the_gpu_no_longer_synchronizes(monkeypatch):
    assert bench.device_lost("cpu", "anything") is None
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    assert bench.device_lost("cuda", "x") is None

    def dead_context():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "synchronize", dead_context)
    reason = bench.device_lost("cuda", "convmixer_1536_20 bf16 batch 1 224px: convmixer_fast-auto")
    assert reason.startswith("not run: the GPU was unusable after convmixer_1536_20 bf16 batch 1 224px: "
                             "convmixer_fast-auto failed (RuntimeError: CUDA error: an illegal memory access")


def test_after_the_gpu_is_lost_the_run_goes_on_without_running_anything(monkeypatch):
    """A kernel's illegal address leaves the CUDA context unusable: the providers after it are
    recorded as not run (each would fail with the first one's error), and every workload still
    yields its record, so the run saves what it measured."""
    built = []

    def provider(name, fails=False):
        def build(workload, cache):
            built.append(name)
            if fails:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return bench.Prepared(lambda: cache.get(workload).logits)

        return bench.Provider(name, name, build, lambda workload: None)

    providers = [provider("first"), provider("faulting", fails=True), provider("after")]
    monkeypatch.setattr(bench, "device_lost", lambda device_type, failed: f"not run: lost after {failed}")
    workloads = bench.make_workloads("cpu", ["convmixer_cifar10"], [1, 2], ["fp32"], 8)
    records = list(bench.run_workloads(workloads, providers, warmup=0, max_repeats=1, peaks={}))
    assert built == ["first", "faulting"]
    assert [r["providers"]["first"]["status"] for r in records] == ["ok", "error"]
    assert all(r["providers"]["after"]["status"] == "error" for r in records)
    assert records[1]["providers"]["first"]["reason"] == (
        "not run: lost after convmixer_cifar10 fp32 batch 1 8px: faulting")


def test_markdown_report_of_a_saved_result(tiny_run, tmp_path):
    code, out = run_bench("--markdown", str(tiny_run[3]))
    assert code == 0
    lines = out.splitlines()
    assert "torch" in lines[0] and "commit" in lines[0]
    assert ("| provider | precision | img/s | ms/batch | latency ms | TFLOP/s | %peak | × eager-amp | × torch-compile "
            "| × gemm-floor |") in lines
    entries = tiny_run[2]["workloads"][0]["providers"]
    for name, entry in entries.items():
        if entry["status"] == "ok":
            (row,) = [line for line in lines if line.startswith(f"| `{name}`")]
            assert f"{entry['img_per_s']:,.1f}" in row and f"| {entry['latency_ms']:.3f} |" in row
        else:
            assert f"`{name}` ({entry['status']}: {entry['reason']})" in out
    assert run_bench("--markdown", str(tmp_path / "missing.json"))[0] == 2


@pytest.mark.parametrize("providers", [None, 8])
def test_plot_is_written_or_explained(tiny_run, tmp_path, providers):
    """Written, or why not; with one panel (a CPU run) and as many providers as ``bench`` has, the
    layout still fits (matplotlib warns where it cannot: the title and legend were cut off)."""
    from convmixer_fast.plot import PlotUnavailableError, plot_result

    result = copy.deepcopy(tiny_run[2])
    if providers:
        (workload,) = result["workloads"]
        entry = next(entry for entry in workload["providers"].values() if entry["status"] == "ok")
        result["providers"] = [f"convmixer_fast-provider-{index}" for index in range(providers)]
        workload["providers"] = {name: dict(entry, img_per_s=100.0 + index)
                                 for index, name in enumerate(result["providers"])}
    path = tmp_path / "plot.png"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plot_result(result, path)
    except PlotUnavailableError as error:
        assert "pip install matplotlib" in str(error)
    else:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _plotted_result(workloads: list[tuple[str, int, int, dict]]) -> dict:
    """A bench result document of ``(model, image_size, batch, {provider: (status, precision)})``
    workloads, random img/s, from two runs (the last without a commit)."""
    return {
        "device": {"name": "Some GPU"},
        "runs": [{"date": "2025-01-01", "commit": "0123456789abcdef", "versions": {"torch": "2.7.0"}},
                 {"date": "2025-02-03", "commit": None, "versions": {"torch": "2.9.1"}}],
        "providers": {"eager-fp32": "eager", "convmixer_fast-auto": "ours", "eager-amp": "autocast"},
        "workloads": [{"model": model, "image_size": image_size, "batch": batch,
                       "providers": {name: {"status": status, "precision": precision,
                                            "img_per_s": 1.0 + 1000.0 * torch.rand(()).item()}
                                     for name, (status, precision) in entries.items()}}
                      for model, image_size, batch, entries in workloads],
    }


def test_plot_draws_img_per_s_against_batch_per_panel_provider_and_precision(tmp_path, monkeypatch):
    """One panel per model and image size measured, log-log, a line per provider and precision in
    the result's provider order with its measured points by batch size (unmeasured entries left out),
    a colour per provider and a line style per precision in every panel, one legend of them all,
    and the last run in the title; the PNG's folder is made."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from convmixer_fast.plot import LINE_STYLES, plot_result

    measured = {"convmixer_fast-auto": ("ok", "fp16"), "eager-amp": ("ok", "fp16 autocast"),
                "eager-fp32": ("ok", "fp32")}
    result = _plotted_result(
        [("convmixer_a", 224, batch, measured) for batch in (4, 1, 2)]
        + [("convmixer_a", 224, 2, {"convmixer_fast-auto": ("ok", "bf16"), "eager-fp32": ("wrong", "bf16")}),
           ("convmixer_b", 32, 8, {"eager-fp32": ("ok", "fp32"), "convmixer_fast-auto": ("skipped", "fp32")}),
           ("convmixer_c", 64, 1, {"eager-fp32": ("error", "fp32")})])
    figures, savefig = [], Figure.savefig

    def saving(figure, *args, **kwargs):  # (the figure drawn, kept to be looked at)
        figures.append(figure)
        savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", saving)
    path = tmp_path / "plots" / "bench.png"
    plot_result(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (figure,) = figures
    *panels, legend = figure.axes
    assert [panel.get_title() for panel in panels] == ["convmixer_a, 224x224", "convmixer_b, 32x32"]
    expected = [{"eager-fp32 (fp32)": ("eager-fp32", "fp32", [1, 2, 4]),
                 "convmixer_fast-auto (fp16)": ("convmixer_fast-auto", "fp16", [1, 2, 4]),
                 "convmixer_fast-auto (bf16)": ("convmixer_fast-auto", "bf16", [2]),
                 "eager-amp (fp16 autocast)": ("eager-amp", "fp16 autocast", [1, 2, 4])},
                {"eager-fp32 (fp32)": ("eager-fp32", "fp32", [8])}]
    img_per_s = {(w["model"], w["batch"], name, entry["precision"]): entry["img_per_s"]
                 for w in result["workloads"] for name, entry in w["providers"].items()}
    colours = {}
    for panel, model, lines in zip(panels, ("convmixer_a", "convmixer_b"), expected, strict=True):
        assert (panel.get_xscale(), panel.get_yscale()) == ("log", "log")
        assert (panel.get_xlabel(), panel.get_ylabel()) == ("batch size", "images / s")
        assert [line.get_label() for line in panel.get_lines()] == list(lines)
        assert list(panel.get_xticks()) == sorted({batch for *_, batches in lines.values() for batch in batches})
        for line, (name, precision, batches) in zip(panel.get_lines(), lines.values()):
            assert list(line.get_xdata()) == batches
            assert list(line.get_ydata()) == [img_per_s[model, batch, name, precision] for batch in batches]
            assert line.get_linestyle() == LINE_STYLES[precision]
            assert colours.setdefault(name, line.get_color()) == line.get_color()
    assert len(set(colours.values())) == len(colours)
    assert [text.get_text() for text in legend.get_legend().get_texts()] == list(expected[0])
    assert figure.get_suptitle() == "Some GPU: torch 2.9.1, 2025-02-03, commit unknown"


@pytest.mark.parametrize("statuses", [[], ["skipped", "error", "wrong"]])
def test_plot_of_nothing_measured_is_explained(tmp_path, statuses):
    """No workload, or none with a measured provider (a run whose providers all failed): no plot,
    saying why, where bench prints it (not a matplotlib error from an empty legend)."""
    pytest.importorskip("matplotlib")
    from convmixer_fast.plot import PlotUnavailableError, plot_result

    result = _plotted_result([("convmixer_a", 224, 1, {f"provider-{status}": (status, "fp32")})
                              for status in statuses])
    with pytest.raises(PlotUnavailableError, match="no provider was measured: nothing to plot"):
        plot_result(result, tmp_path / "bench.png")
    assert not (tmp_path / "bench.png").exists()


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    from convmixer_fast.plot import PlotUnavailableError, plot_result

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # (import matplotlib raises ImportError)
    with pytest.raises(PlotUnavailableError, match=r"matplotlib is not installed \(pip install matplotlib\)"):
        plot_result(_plotted_result([("convmixer_a", 224, 1, {"eager-fp32": ("ok", "fp32")})]), tmp_path / "x.png")


def test_cli_rejects_unreadable_files_before_measuring(tmp_path):
    code, out = run_bench(*TINY, "--compare", str(tmp_path / "missing.json"))
    assert code == 2 and out == ""


def test_cli_refuses_merge_without_a_result_file_on_cpu(capsys):
    """On a CPU no result file is written by default: --merge alone would merge into nothing, silently."""
    assert main(["bench", *TINY, "--merge"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--merge" in captured.err and "--json PATH" in captured.err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cli_on_a_gpu_runs_every_provider_but_compile(tmp_path):
    # Graph capture, autocast peers, the GEMM floor and the matmul peak on a tiny GPU workload.
    path = tmp_path / "gpu.json"
    code, out = run_bench("--device", "cuda", "--model", "convmixer_cifar10", "--image-size", "8", "--batch", "2",
                          "--dtype", "bf16", "--repeats", "2", "--warmup", "1", "--providers", "eager-*",
                          "convmixer_fast-*", "gemm-floor", "--json", str(path))
    result = json.loads(path.read_text())
    (workload,) = result["workloads"]
    assert code == 0, out
    assert result["runs"][0]["matmul_peak_tflops"]["bf16"] > 0 and workload["peak_tflops"] > 0
    for name, entry in workload["providers"].items():
        assert entry["status"] in ("ok", "skipped"), (name, entry)
    assert workload["providers"]["convmixer_fast-auto-nograph"]["status"] == "ok"
    if BACKENDS["cuda"].unavailable_reason(torch.device("cuda")) is None:  # two candidates: measured
        assert "(measured" in workload["providers"]["convmixer_fast-auto"]["detail"]
    assert workload["providers"]["gemm-floor"]["fraction_of_peak"] > 0


def test_gpu_slug_and_default_result_path():
    assert bench.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert str(bench.default_result_path("NVIDIA H200", "2026-01-02")) == "benchmarks/results/nvidia-h200-2026-01-02.json"


def test_a_partial_workload_does_not_displace_a_complete_one_on_merge():
    """``--merge`` re-measuring a workload, cut short after its first provider, must keep the
    complete record an earlier run left (each provider's save merges the partial one)."""
    complete = {"label": "w", "run": 0, "providers": {"a": {}, "b": {}}}
    existing = {"device": {"name": "d"}, "runs": [{}], "providers": {}, "workloads": [complete]}
    partial = {"label": "w", "run": 0, "providers": {"a": {}}, "partial": True}
    new = {"device": {"name": "d"}, "runs": [{}], "providers": {}, "workloads": [partial]}
    assert bench.merge_results(existing, new)["workloads"] == [complete]
    done = {"label": "w", "run": 0, "providers": {"a": {}, "b": {}, "c": {}}}
    assert bench.merge_results(existing, {**new, "workloads": [done]})["workloads"] == [{**done, "run": 1}]
    fresh = {**partial, "label": "v"}
    assert bench.merge_results(existing, {**new, "workloads": [fresh]})["workloads"] == [complete, {**fresh, "run": 1}]


def test_workload_record_figures_from_the_timing():
    """img/s and ms from the median, TFLOP/s from the provider's share of the FLOPs (gemm-floor: its
    GEMMs), %peak as a fraction of the run's peak, latency from the single calls (not the median)."""
    workload = bench.make_workloads("cuda", ["convmixer_1536_20"], [256], ["bf16"])[0]
    providers = {p.name: p for p in bench.all_providers()}
    ours = bench.Entry(providers["convmixer_fast-auto"], "ok", "bf16",
                       timing=bench.Timing(0.05, (0.04, 0.05, 0.09), 1, latency_s=0.07))
    floor = bench.Entry(providers["gemm-floor"], "ok", "bf16",
                        timing=bench.Timing(0.04, (0.04,) * 3, 1, latency_s=0.045))
    record = bench.workload_record(workload, [ours, floor], peak_tflops=800.0)
    flops = bench.flops_per_image(workload.config, 224)
    mine, theirs = record["providers"]["convmixer_fast-auto"], record["providers"]["gemm-floor"]
    assert mine["img_per_s"] == pytest.approx(256 / 0.05) and mine["ms_per_batch"] == pytest.approx(50.0)
    assert mine["latency_ms"] == pytest.approx(70.0) and theirs["latency_ms"] == pytest.approx(45.0)
    assert mine["tflops"] == pytest.approx(flops["total"] * 256 / 0.05 / 1e12)
    assert theirs["tflops"] == pytest.approx(flops["pointwise"] * 256 / 0.04 / 1e12)
    assert mine["fraction_of_peak"] == pytest.approx(mine["tflops"] / 800.0) and 0.5 < mine["fraction_of_peak"] < 1
    assert mine["ratios"]["gemm-floor"] == pytest.approx(0.04 / 0.05)
    assert bench.workload_record(workload, [ours], peak_tflops=None)["providers"]["convmixer_fast-auto"][
        "fraction_of_peak"] is None


class FakeClock:
    """``bench.time`` standing in: each call of ``run`` lasts the next of ``seconds``."""

    def __init__(self, seconds):
        self.now, self.seconds = 0.0, iter(seconds)

    def perf_counter(self):
        return self.now

    def run(self):
        self.now += next(self.seconds)


def test_time_calls_takes_the_median_of_its_repeats(monkeypatch):
    # A warm-up call of 1 s: one call per repeat, MIN_REPEATS repeats; then one single call for latency.
    clock = FakeClock([1.0, 1.0, 2.0, 9.0, 4.0])
    monkeypatch.setattr(bench, "time", clock)
    timing = bench.time_calls(clock.run, "cpu", warmup=1, max_repeats=5, with_latency=True)
    assert timing.per_call_s == (1.0, 2.0, 9.0) and timing.calls_per_repeat == 1
    assert timing.median_s == 2.0 and timing.latency_s == 4.0  # not the mean, 4.0, nor the back-to-back time


def test_latency_is_the_median_of_single_calls(monkeypatch):
    clock = FakeClock([0.25, 2.0, 0.5])
    monkeypatch.setattr(bench, "time", clock)
    assert bench.latency(clock.run, "cpu", 0.08, max_calls=3) == 0.5  # three calls fit: not the fastest one


def test_cli_records_each_providers_fraction_of_the_peak_measured_in_the_run(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_measure_peaks", lambda workloads, device: {"fp32": 1e-6})
    path = tmp_path / "peak.json"
    code, _ = run_bench(*TINY, "--providers", "convmixer_fast-eager", "gemm-floor", "--json", str(path))
    result = json.loads(path.read_text())
    (record,) = result["workloads"]
    assert code == 0 and result["runs"][0]["matmul_peak_tflops"] == {"fp32": 1e-6} and record["peak_tflops"] == 1e-6
    for entry in record["providers"].values():
        assert entry["fraction_of_peak"] == pytest.approx(entry["tflops"] / 1e-6)


def test_matmul_peak_counts_two_flops_per_multiply_add(monkeypatch):
    monkeypatch.setattr(bench, "PEAK_GEMM_SIZE", 64)
    monkeypatch.setattr(bench, "time_calls", lambda run, device_type, **kwargs: bench.Timing(0.5, (0.5,), 1))
    assert bench.matmul_peak_tflops("fp32", "cpu") == pytest.approx(2 * 64**3 / 0.5 / 1e12)


def test_a_newer_partial_record_replaces_an_older_partial_one_on_merge():
    """Two cut-short runs of one workload: the later (it holds what the later run measured) is kept."""
    older = {"label": "w", "run": 0, "providers": {"a": {}}, "partial": True}
    newer = {"label": "w", "run": 0, "providers": {"a": {}, "b": {}}, "partial": True}
    existing = {"device": {"name": "d"}, "runs": [{}], "providers": {}, "workloads": [older]}
    new = {"device": {"name": "d"}, "runs": [{}], "providers": {}, "workloads": [newer]}
    assert bench.merge_results(existing, new)["workloads"] == [{**newer, "run": 1}]


def test_fixed_precision_peers_are_measured_once_and_each_dtype_gets_its_own_provider_run():
    """A peer of fixed precision serves every dtype of its (model, batch, image size); a provider in
    the workload's dtype is measured in each: the bf16 figure must never be the fp16 one's."""
    built = []

    def provider(name, **kwargs):
        def build(workload, cache):
            built.append((name, workload.dtype))
            return bench.Prepared(lambda: None)

        return bench.Provider(name, name, build, lambda workload: None, has_logits=False, **kwargs)

    workloads = bench.make_workloads("cpu", ["convmixer_cifar10"], [1], ["fp32", "bf16"], 8)
    records = list(bench.run_workloads(workloads, [provider("peer", fixed_dtype="fp32"), provider("ours")],
                                       warmup=0, max_repeats=1, peaks={}))
    assert built == [("peer", "fp32"), ("ours", "fp32"), ("ours", "bf16")]
    assert [r["providers"]["ours"]["precision"] for r in records] == ["fp32", "bf16"]
    assert [r["providers"]["peer"]["precision"] for r in records] == ["fp32", "fp32"]
