"""``pytest benchmarks/`` (benchmarks/conftest.py and test_throughput.py) without timing anything:
the workloads and providers it runs, what it skips and why, a wrong provider failing before it is
timed, and what a right one hands pytest-benchmark."""

import importlib.util
import types
from pathlib import Path

import pytest
import torch

from convmixer_fast import bench

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if not BENCHMARKS.is_dir():
    pytest.skip(f"no benchmarks/ beside the tests ({BENCHMARKS})", allow_module_level=True)
TINY = bench.Workload("convmixer_cifar10", 2, 8, "fp32", "cpu")


def load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def conftest():
    return load("conftest")


@pytest.fixture(scope="module")
def throughput():
    pytest.importorskip("pytest_benchmark")
    return load("test_throughput")


class Metafunc:
    """What ``pytest_generate_tests`` reads of pytest's metafunc (command-line ``options``) and the
    parametrization it asks for."""

    def __init__(self, options: dict, fixturenames=("benchmark", "workload", "provider")):
        self.config = types.SimpleNamespace(getoption=options.get)
        self.fixturenames = list(fixturenames)
        self.parametrized = None

    def parametrize(self, argnames, argvalues, ids):
        self.parametrized = argnames, argvalues, ids


@pytest.mark.parametrize("options, workloads", [
    ({"bench_device": "cpu"}, [(bench.CPU_MODEL, bench.CPU_BATCH, 32, bench.CPU_DTYPE)]),
    ({"bench_device": "cuda"}, [(model, 64, 224, "bf16") for model in bench.IMAGENET_MODELS]),
    ({"bench_device": "cpu", "bench_model": ["convmixer_768_32"], "bench_batch": [1, 4], "bench_dtype": ["fp16"],
      "bench_image_size": 64}, [("convmixer_768_32", batch, 64, "fp16") for batch in (1, 4)]),
], ids=["cpu-defaults", "gpu-defaults", "options"])
def test_each_workload_runs_every_provider(conftest, options, workloads):
    metafunc = Metafunc(options)
    conftest.pytest_generate_tests(metafunc)
    argnames, pairs, ids = metafunc.parametrized
    providers = [provider.name for provider in bench.all_providers()]
    assert argnames == ("workload", "provider")
    assert [((w.model, w.batch, w.image_size, w.dtype), w.device, p.name) for w, p in pairs] == [
        (workload, options["bench_device"], provider) for workload in workloads for provider in providers]
    assert ids == [f"{w.slug}-{p.name}" for w, p in pairs] and len(set(ids)) == len(ids)


def test_only_tests_of_a_workload_are_parametrized(conftest):
    metafunc = Metafunc({"bench_device": "cpu"}, fixturenames=("benchmark",))
    conftest.pytest_generate_tests(metafunc)
    assert metafunc.parametrized is None


def test_a_provider_pattern_that_matches_none_is_a_usage_error_at_collection(conftest):
    metafunc = Metafunc({"bench_device": "cpu", "bench_provider": ["eager-fp32", "no-such-*"]})
    with pytest.raises(pytest.UsageError, match="no provider matches no-such-"):
        conftest.pytest_generate_tests(metafunc)
    assert metafunc.parametrized is None


def provider(name: str, run, reason=None, opt_in=False) -> bench.Provider:
    return bench.Provider(name, name, lambda workload, cache: bench.Prepared(run), lambda workload: reason,
                          opt_in=opt_in)


@pytest.mark.parametrize("selected, opt_in, reason, skip", [
    (set(), False, None, "not selected: add --bench-provider stand-in$"),
    (set(), True, None, r"not selected: add --bench-provider stand-in \(opt-in\)"),
    ({"stand-in"}, False, "no GPU here", "no GPU here"),
])
def test_unselected_and_unavailable_providers_skip_saying_why(throughput, selected, opt_in, reason, skip):
    def run():
        raise AssertionError("a skipped provider ran")

    with pytest.raises(pytest.skip.Exception, match=skip):
        throughput.test_throughput(None, TINY, provider("stand-in", run, reason, opt_in), selected, None)


class Benchmark:
    """pytest-benchmark's ``benchmark`` fixture as ``measure`` uses it; ``pedantic`` calls the timed
    function once, after noting ``"timed"`` in ``events``."""

    def __init__(self, events: list):
        self.events, self.group, self.extra_info, self.rounds = events, None, {}, None

    def pedantic(self, target, rounds, iterations):
        self.rounds = rounds
        self.events.append("timed")
        target()


def test_a_wrong_provider_fails_before_it_is_timed(throughput):
    events = []
    wrong = provider("wrong", lambda: torch.zeros(TINY.batch, 10))
    with pytest.raises(AssertionError, match=f"WRONG: wrong on {TINY.label}: max rel err 1 > tolerance"):
        throughput.test_throughput(Benchmark(events), TINY, wrong, {"wrong"}, bench.InputCache())
    assert events == []


def test_a_right_provider_is_timed_synchronized_with_its_workloads_figures(throughput, monkeypatch):
    cache, events = bench.InputCache(), []
    logits = cache.get(TINY).logits
    right = provider("right", lambda: events.append("run") or logits)
    monkeypatch.setattr(bench, "_synchronize", lambda device_type: events.append("synchronize"))
    benchmark = Benchmark(events)
    throughput.test_throughput(benchmark, TINY, right, {"right"}, cache)
    assert events[events.index("timed"):] == ["timed", "run", "synchronize"]
    assert benchmark.group == TINY.label and 1 <= benchmark.rounds <= bench.CPU_REPEATS
    flops = bench.flops_per_image(TINY.config, TINY.image_size)["total"]
    assert benchmark.extra_info == {"precision": "fp32", "batch": 2, "flops_per_batch": 2 * flops, "compile_s": None,
                                    "max_rel_err": 0.0}
