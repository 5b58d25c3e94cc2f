"""Workloads and providers of ``pytest benchmarks/`` (pytest-benchmark; see benchmarks/README.md).

Each test is one (workload, provider) pair; the pairs come workload by workload, so the shared
reference model and input batch of a workload are built once. Defaults: on a GPU the three ImageNet
configs at batch 64 in bf16; on CPU the small CPU workload of ``python -m convmixer_fast bench``.
"""

import pytest
import torch

from convmixer_fast import bench
from convmixer_fast.configs import MODEL_CONFIGS

GPU_DEFAULT_BATCHES = (64,)
GPU_DEFAULT_DTYPES = ("bf16",)


def pytest_addoption(parser):
    group = parser.getgroup("convmixer_fast", "convmixer_fast benchmark workloads")
    group.addoption("--bench-model", action="append", choices=list(MODEL_CONFIGS),
                    help="model config (repeatable; default: the three ImageNet configs on a GPU, "
                    f"{bench.CPU_MODEL} on CPU)")
    group.addoption("--bench-batch", action="append", type=int,
                    help=f"batch size (repeatable; default: {GPU_DEFAULT_BATCHES[0]} on a GPU, {bench.CPU_BATCH} on CPU)")
    group.addoption("--bench-dtype", action="append", choices=("fp32", "fp16", "bf16"),
                    help=f"convmixer_fast's dtype (repeatable; default: {GPU_DEFAULT_DTYPES[0]} on a GPU, "
                    f"{bench.CPU_DTYPE} on CPU)")
    group.addoption("--bench-image-size", type=int, help="default: 224 (32 for patch size <= 2)")
    group.addoption("--bench-device", help="default: cuda if available, else cpu")
    group.addoption("--bench-provider", action="append",
                    help="provider name or shell pattern (repeatable; default: all but the opt-in ones)")


def _device(config) -> str:
    return config.getoption("bench_device") or ("cuda" if torch.cuda.is_available() else "cpu")


def pytest_generate_tests(metafunc):
    if "workload" not in metafunc.fixturenames:
        return
    config = metafunc.config
    device = _device(config)
    models, batches, dtypes = bench.default_plan(device)
    if device.startswith("cuda"):
        batches, dtypes = GPU_DEFAULT_BATCHES, GPU_DEFAULT_DTYPES
    workloads = bench.make_workloads(
        device,
        config.getoption("bench_model") or models,
        config.getoption("bench_batch") or batches,
        config.getoption("bench_dtype") or dtypes,
        config.getoption("bench_image_size"),
    )
    provider_names(config)  # (a --bench-provider that matches none: a usage error before anything runs)
    providers = bench.all_providers()
    pairs = [(workload, provider) for workload in workloads for provider in providers]
    metafunc.parametrize(("workload", "provider"), pairs,
                         ids=[f"{workload.slug}-{provider.name}" for workload, provider in pairs])


def provider_names(config) -> set[str]:
    """Names of the providers to run (``--bench-provider``; default: all but the opt-in ones)."""
    try:
        return {p.name for p in bench.select_providers(bench.all_providers(), config.getoption("bench_provider"))}
    except ValueError as error:
        raise pytest.UsageError(str(error)) from error


@pytest.fixture(scope="session")
def selected_providers(pytestconfig) -> set[str]:
    return provider_names(pytestconfig)


@pytest.fixture(scope="session")
def input_cache() -> bench.InputCache:
    """The current workload's reference model, input batch, reference logits and converted
    convmixer_fast model, shared by its providers."""
    return bench.InputCache(seed=0)
