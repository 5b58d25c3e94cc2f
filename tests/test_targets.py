"""``bench --targets``: the project's performance targets judged on a saved result (built here by hand)."""

import copy
import json

import pytest

from convmixer_fast import bench, targets
from convmixer_fast.__main__ import main


def entry(img_per_s, batch, status="ok", fraction_of_peak=None, latency_ms=None):
    ms_per_batch = batch / img_per_s * 1e3
    return {"status": status, "reason": None if status == "ok" else "why", "img_per_s": img_per_s,
            "ms_per_batch": ms_per_batch, "fraction_of_peak": fraction_of_peak,
            "latency_ms": ms_per_batch if latency_ms is None else latency_ms}


def workload(model, batch, providers):
    record = {"label": f"{model} bf16 batch {batch} 224px", "model": model, "batch": batch, "image_size": 224,
              "dtype": "bf16",
              "providers": {name: entry(rate, batch, **extra) for name, (rate, extra) in providers.items()}}
    return with_ratios(record)


def with_ratios(record):
    """``record`` with each provider's ``ratios`` as ``bench`` derives them (after any edit)."""
    for provider in record["providers"].values():
        provider.pop("ratios", None)
    bench.add_ratios(record["providers"])
    return record


def meeting_result():
    """A result where every target holds, by a margin."""
    return {
        "schema": 1, "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}, "providers": {},
        "runs": [{"versions": {"torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0"}, "commit": "0123456789abc",
                  "dirty": False, "date": "2026-11-21"}],
        "workloads": [
            workload("convmixer_1536_20", 256, {"convmixer_fast-auto": (5000, {"fraction_of_peak": 0.6}),
                                                "eager-amp": (1000, {}), "torch-compile": (1200, {}),
                                                "gemm-floor": (6000, {})}),
            workload("convmixer_1536_20", 1, {"convmixer_fast-auto": (2000, {}), "eager-amp": (300, {}),
                                              "gemm-floor": (3000, {})}),
            workload("convmixer_768_32", 256, {"convmixer_fast-auto": (9000, {}), "eager-fp32": (500, {}),
                                               "eager-amp": (2000, {}), "eager-channels-last": (1500, {}),
                                               "torch-compile": (2500, {})}),
            workload("convmixer_1024_20_ks9_p14", 256, {"convmixer_fast-auto": (30000, {}), "eager-amp": (9000, {}),
                                                        "eager-channels-last": (5000, {}),
                                                        "torch-compile": (6000, {})}),
        ],
    }


def verdicts_by_label(result):
    return {verdict.target.label(): verdict for verdict in targets.evaluate(result)}


def test_every_target_passes_where_the_result_meets_it():
    verdicts = verdicts_by_label(meeting_result())
    assert len(verdicts) == len(targets.TARGETS) and all(v.passed for v in verdicts.values())
    assert verdicts["convmixer_1536_20 b256 bf16: time over gemm-floor's"].value == pytest.approx(1.2)
    assert verdicts["convmixer_1536_20 b1 bf16: eager-amp's latency over ours"].value == pytest.approx(2000 / 300)
    assert verdicts["convmixer_1536_20 b256 bf16: fraction of the bf16 matmul peak"].value == 0.6
    best = verdicts["convmixer_768_32 b256 bf16: img/s over best peer's"]
    assert best.against == "torch-compile" and best.value == pytest.approx(9000 / 2500)


def test_a_miss_says_by_how_much_and_what_cannot_be_judged_never_passes():
    result = meeting_result()
    b256, b1, m768, _ = result["workloads"]
    b256["providers"]["gemm-floor"] = entry(5000 * 1.4, 256)  # ours takes 1.4x the GEMMs' time
    b256["providers"]["convmixer_fast-auto"]["fraction_of_peak"] = None
    b1["providers"]["convmixer_fast-auto"]["status"] = "wrong"
    m768["providers"]["torch-compile"]["status"] = "wrong"  # a wrong peer is timed: its speed counts
    del result["workloads"][3]
    for record in result["workloads"]:
        with_ratios(record)
    verdicts = verdicts_by_label(result)
    miss = verdicts["convmixer_1536_20 b256 bf16: time over gemm-floor's"]
    assert miss.status == "MISS" and miss.value == pytest.approx(1.4)
    assert verdicts["convmixer_1536_20 b256 bf16: img/s over eager-amp's"].passed
    peak = verdicts["convmixer_1536_20 b256 bf16: fraction of the bf16 matmul peak"]
    assert peak.status == "no matmul peak in the result"
    assert verdicts["convmixer_1536_20 b1 bf16: latency over gemm-floor's"].status == "convmixer_fast-auto WRONG"
    best = verdicts["convmixer_768_32 b256 bf16: img/s over best peer's"]
    assert best.passed and best.against == "torch-compile" and best.wrong_peers == ("torch-compile",)
    missing = verdicts["convmixer_1024_20_ks9_p14 b256 bf16: img/s over best peer's"]
    assert missing.status == "workload not in the result"
    assert sum(v.passed for v in verdicts.values()) == 3  # the eager-amp, torch-compile and best-peer rows


@pytest.mark.parametrize("status", ["error", "skipped", None])
def test_best_peer_not_judged_unless_every_peer_was_timed(status):
    """A torch-compile that failed, ran out of memory, was skipped or is missing may be the fastest
    peer (DESIGN.md §3: 2.7x eager-amp on 768/32): the slower peers left must not make a PASS."""
    result = meeting_result()
    record = result["workloads"][2]
    if status is None:
        del record["providers"]["torch-compile"]
    else:
        record["providers"]["torch-compile"]["status"] = status
    with_ratios(record)
    verdict = verdicts_by_label(result)["convmixer_768_32 b256 bf16: img/s over best peer's"]
    assert not verdict.passed and verdict.value is None and verdict.status.startswith("best peer unknown: torch-compile")


def test_batch_1_is_judged_on_latency_with_the_hosts_work_included():
    """Back to back our calls may hide the host's work per call behind the GPU's; one call at a time
    they do not: 2000 img/s is 0.5 ms per call, but 1.0 ms waited for is 3x gemm-floor's 0.333."""
    result = meeting_result()
    b1 = result["workloads"][1]
    b1["providers"]["convmixer_fast-auto"]["latency_ms"] = 1.0
    verdicts = verdicts_by_label(result)
    floor = verdicts["convmixer_1536_20 b1 bf16: latency over gemm-floor's"]
    assert floor.status == "MISS" and floor.value == pytest.approx(3.0)
    amp = verdicts["convmixer_1536_20 b1 bf16: eager-amp's latency over ours"]
    assert amp.status == "MISS" and amp.value == pytest.approx((1 / 300 * 1e3) / 1.0)
    del b1["providers"]["gemm-floor"]["latency_ms"]  # a result from before latency was measured
    assert verdicts_by_label(result)["convmixer_1536_20 b1 bf16: latency over gemm-floor's"].status == \
        "no latency in the result"


def test_missing_comparison_provider_is_named():
    result = meeting_result()
    del result["workloads"][0]["providers"]["torch-compile"]
    with_ratios(result["workloads"][0])
    verdict = verdicts_by_label(result)["convmixer_1536_20 b256 bf16: img/s over torch-compile's"]
    assert verdict.status == "torch-compile not in the result" and verdict.value is None


def test_cli_prints_the_table_and_exits_1_unless_all_pass(tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(meeting_result()))
    assert main(["bench", "--targets", str(path)]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA H100 80GB HBM3" in out and "commit 0123456789" in out
    assert f"{len(targets.TARGETS)} of {len(targets.TARGETS)} targets pass" in out
    failing = copy.deepcopy(meeting_result())
    failing["workloads"][0]["providers"]["eager-amp"] = entry(2000, 256)  # ours only 2.5x eager-amp
    with_ratios(failing["workloads"][0])
    path.write_text(json.dumps(failing))
    assert main(["bench", "--targets", str(path)]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if "over eager-amp's" in line and "b256" in line)
    assert row.endswith("MISS") and "2.50x" in row
    assert main(["bench", "--targets", str(tmp_path / "missing.json")]) == 2


def test_rows_name_their_run_where_a_merged_result_holds_several(tmp_path, capsys):
    """A file that ``bench --merge`` added a later run to: each row says which run measured its
    workload (a single run's table stays as it was)."""
    path = tmp_path / "result.json"
    result = meeting_result()
    for record in result["workloads"]:
        record["run"] = 0
    path.write_text(json.dumps(result))
    main(["bench", "--targets", str(path)])
    assert "[run of" not in capsys.readouterr().out
    result["runs"].append({**result["runs"][0], "commit": "fedcba9876543", "date": "2026-11-23"})
    result["workloads"][0]["run"] = 1  # 1536/20 at batch 256 measured again
    path.write_text(json.dumps(result))
    main(["bench", "--targets", str(path)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("convmixer_")]
    assert len(rows) == len(targets.TARGETS)
    for row in rows:
        expected = ("[run of 2026-11-23, commit fedcba9876]" if row.startswith("convmixer_1536_20 b256")
                    else "[run of 2026-11-21, commit 0123456789]")
        assert row.endswith(expected), row


def test_the_targets_are_the_issues():
    """Issue 6's bounds, providers, batches and units, one row each: a looser constant would pass a MISS."""
    rows = {(t.model, t.batch, t.kind, t.against, t.latency): (t.bound, t.dtype, t.image_size)
            for t in targets.TARGETS}
    assert rows == {
        ("convmixer_1536_20", 256, "speedup", "eager-amp", False): (4.0, "bf16", 224),
        ("convmixer_1536_20", 256, "speedup", "torch-compile", False): (4.0, "bf16", 224),
        ("convmixer_1536_20", 256, "peak", None, False): (0.5, "bf16", 224),
        ("convmixer_1536_20", 256, "time", "gemm-floor", False): (1.35, "bf16", 224),
        ("convmixer_1536_20", 1, "time", "gemm-floor", True): (2.0, "bf16", 224),
        ("convmixer_1536_20", 1, "speedup", "eager-amp", True): (5.0, "bf16", 224),
        ("convmixer_768_32", 256, "speedup", targets.BEST_PEER, False): (3.0, "bf16", 224),
        ("convmixer_1024_20_ks9_p14", 256, "speedup", targets.BEST_PEER, False): (3.0, "bf16", 224),
    } and len(targets.TARGETS) == len(rows)
    assert targets.OURS == "convmixer_fast-auto"


def result_at(scale):
    """A result whose every figure is ``scale`` times its target's bound: 1 exactly at it, above 1
    better than required, below 1 worse (each bound applied by hand, in the target's own units)."""
    result = meeting_result()
    b256, b1, m768, m1024 = result["workloads"]
    b256["providers"] = workload("convmixer_1536_20", 256, {
        "convmixer_fast-auto": (1000 * scale, {"fraction_of_peak": 0.5 * scale}), "eager-amp": (250, {}),
        "torch-compile": (250, {}), "gemm-floor": (1350, {})})["providers"]
    b1["providers"]["convmixer_fast-auto"]["latency_ms"] = 1.0 / scale
    b1["providers"]["eager-amp"]["latency_ms"] = 5.0
    b1["providers"]["gemm-floor"]["latency_ms"] = 0.5
    for record in (m768, m1024):
        record["providers"]["convmixer_fast-auto"]["img_per_s"] = 3 * scale * max(
            e["img_per_s"] for name, e in record["providers"].items() if name in targets.PEERS)
        with_ratios(record)
    return result


def test_a_figure_exactly_at_its_bound_passes_and_one_just_short_misses():
    at = verdicts_by_label(result_at(1.0))
    assert all(v.status == "PASS" and v.value == pytest.approx(v.target.bound) for v in at.values()), at
    short = verdicts_by_label(result_at(0.99))
    assert all(v.status == "MISS" for v in short.values()), short
    assert all(v.passed for v in verdicts_by_label(result_at(1.01)).values())


def test_an_opt_in_peer_that_ran_and_failed_leaves_the_best_peer_unknown():
    """torch-compile-max-autotune is opt-in, but where it ran it may be the fastest peer."""
    result = meeting_result()
    record = result["workloads"][2]
    record["providers"]["torch-compile-max-autotune"] = entry(100000, 256, status="error")
    del record["providers"]["torch-compile-max-autotune"]["img_per_s"]  # (bench times no error)
    with_ratios(record)
    verdict = verdicts_by_label(result)["convmixer_768_32 b256 bf16: img/s over best peer's"]
    assert not verdict.passed and verdict.status.startswith("best peer unknown: torch-compile-max-autotune")


@pytest.mark.parametrize("peer", ["eager-fp32", "torch-compile-max-autotune"])
def test_a_wrong_peers_speed_counts_and_the_row_names_it(peer):
    """bench times a peer whose logits failed its check (on a GPU eager-fp32's convolutions run in
    TF32): the speed its users get, so the fastest of them is the best peer; OURS WRONG is no figure."""
    result = meeting_result()
    record = result["workloads"][2]
    record["providers"][peer] = entry(4500, 256, status="wrong")
    with_ratios(record)
    verdict = verdicts_by_label(result)["convmixer_768_32 b256 bf16: img/s over best peer's"]
    assert verdict.against == peer and verdict.status == "MISS" and verdict.value == pytest.approx(2.0)
    assert verdict.wrong_peers == (peer,)
    assert f"MISS ({peer} WRONG: timed, speed counted)" in targets.format_verdicts([verdict])
    amp = result["workloads"][0]["providers"]["eager-amp"]
    amp["status"] = "wrong"
    assert verdicts_by_label(result)["convmixer_1536_20 b256 bf16: img/s over eager-amp's"].wrong_peers == ("eager-amp",)
    record["providers"]["convmixer_fast-auto"]["status"] = "wrong"
    ours = verdicts_by_label(result)["convmixer_768_32 b256 bf16: img/s over best peer's"]
    assert ours.value is None and ours.status == "convmixer_fast-auto WRONG"


def test_a_wrong_peer_without_figures_leaves_the_best_peer_unknown():
    """Results from before bench timed a WRONG provider hold no figures for it: unknown, not ignored."""
    result = meeting_result()
    record = result["workloads"][2]
    record["providers"]["torch-compile"]["status"] = "wrong"
    del record["providers"]["torch-compile"]["img_per_s"]
    with_ratios(record)
    verdict = verdicts_by_label(result)["convmixer_768_32 b256 bf16: img/s over best peer's"]
    assert verdict.value is None and verdict.status == "best peer unknown: torch-compile WRONG"


def test_a_faster_opt_in_peer_is_the_best_peer():
    result = meeting_result()
    record = result["workloads"][2]
    record["providers"]["torch-compile-max-autotune"] = entry(4500, 256)
    with_ratios(record)
    verdict = verdicts_by_label(result)["convmixer_768_32 b256 bf16: img/s over best peer's"]
    assert verdict.against == "torch-compile-max-autotune" and verdict.status == "MISS"
    assert verdict.value == pytest.approx(2.0)


def test_targets_read_only_their_dtype_and_image_size():
    """A merged result holds the same model and batch in fp16 and at other image sizes: a figure from
    one of those (here listed first, each missing every target) must not stand in for bf16 at 224."""
    result = meeting_result()
    others = []
    for record in result["workloads"]:
        for change in ({"dtype": "fp16"}, {"image_size": 256}):
            other = {**copy.deepcopy(record), **change}
            for name, provider in other["providers"].items():
                if name == "convmixer_fast-auto":
                    provider.update(img_per_s=1.0, fraction_of_peak=0.01, latency_ms=1e6)
            others.append(with_ratios(other))
    result["workloads"] = others + result["workloads"]
    verdicts = verdicts_by_label(result)
    assert all(v.passed for v in verdicts.values()), verdicts


def test_a_partial_record_gives_its_figures_but_passes_nothing():
    """A bench cut short saves its workload as "partial" after each provider: the figures it holds
    are shown, each row says the run stopped early, and none passes (the targets ask for one
    complete run), not even one whose providers were all reached."""
    result = meeting_result()
    b256 = result["workloads"][0]
    b256["partial"] = True
    del b256["providers"]["gemm-floor"]
    with_ratios(b256)
    verdicts = verdicts_by_label(result)
    amp = verdicts["convmixer_1536_20 b256 bf16: img/s over eager-amp's"]
    assert amp.value == pytest.approx(5.0) and amp.status == f"PASS; {targets.PARTIAL}" and not amp.passed
    floor = verdicts["convmixer_1536_20 b256 bf16: time over gemm-floor's"]
    assert floor.value is None and floor.status == f"gemm-floor not in the result; {targets.PARTIAL}"
    partial = [v for v in verdicts.values() if v.target.batch == 256 and v.target.model == "convmixer_1536_20"]
    assert len(partial) == 4 and not any(v.passed for v in partial)
    assert all(v.passed for v in verdicts.values() if v not in partial)
    assert "4 of 8 targets pass" in targets.format_verdicts(list(verdicts.values()))
