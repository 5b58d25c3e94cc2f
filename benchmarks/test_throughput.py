"""Throughput of every provider on each workload, through pytest-benchmark.

One benchmark group per workload (its label) compares the providers. Before timing, each
provider's logits are checked against the fp32 reference model (a wrong provider fails its test
and is not timed). Unavailable providers skip with the reason. Timing: pytest-benchmark's clock
around synchronized calls (``bench.synchronized``), rounds and calls per round sized as the bench
command sizes its repeats (``bench.plan_repeats``); pytest-benchmark's OPS column times the batch
size is img/s (``extra_info`` has the batch and FLOPs).
"""

import pytest

pytest.importorskip("pytest_benchmark", reason="pytest benchmarks/ needs pytest-benchmark (pip install pytest-benchmark)")

import torch  # noqa: E402

from convmixer_fast import bench  # noqa: E402


def test_throughput(benchmark, workload, provider, selected_providers, input_cache):
    if provider.name not in selected_providers:
        pytest.skip(f"not selected: add --bench-provider {provider.name}"
                    + (" (opt-in)" if provider.opt_in else ""))
    reason = provider.unavailable_reason(workload)
    if reason is not None:
        pytest.skip(reason)
    on_gpu = workload.device_type == "cuda"
    with bench.cudnn_benchmark(on_gpu):
        prepared = provider.build(workload, input_cache)
        measure(benchmark, workload, provider, input_cache, prepared,
                max_repeats=bench.GPU_REPEATS if on_gpu else bench.CPU_REPEATS)


def measure(benchmark, workload, provider, input_cache, prepared, max_repeats):
    """Check the logits, then time ``prepared`` with pytest-benchmark (under inference mode)."""
    with torch.inference_mode():
        check = bench.check_logits(provider, prepared, workload, input_cache)
        assert check is None or check.ok, (f"WRONG: {provider.name} on {workload.label}: max rel err "
                                           f"{check.max_rel_err:.3g} > tolerance {check.tolerance:.3g}")
        call_seconds = bench.warm_up(prepared.run, workload.device_type, bench.WARMUP_CALLS)
        rounds, calls = bench.plan_repeats(call_seconds, max_repeats)
        benchmark.group = workload.label
        benchmark.extra_info.update(
            precision=provider.precision(workload),
            batch=workload.batch,
            flops_per_batch=bench.flops_per_image(workload.config, workload.image_size)[provider.flops_part]
            * workload.batch,
            compile_s=prepared.compile_s,
            max_rel_err=check.max_rel_err if check else None,
        )
        benchmark.pedantic(bench.synchronized(prepared.run, workload.device_type), rounds=rounds, iterations=calls)
