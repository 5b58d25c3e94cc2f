"""Test set-up. Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter: it must be
switched on before anything imports triton, so it happens here, before test modules load; likewise
the switch that keeps the Triton kernels to their first autotune config."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU the Triton kernels run their first autotune config: the results do not depend on it, the
# compile time does (each config has its own test_every_config case).
os.environ.setdefault("CONVMIXER_FAST_TRITON_AUTOTUNE", "0")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws its random inputs from a fixed seed: failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture(params=("triton", "cuda"))
def kernel_backend(request):
    """Each kernel backend (``Backend``: ``.name``, ``.load_ops()``), skipped with the reason where it
    cannot run on the test device: the op tests hold every backend to the same references."""
    from helpers import DEVICE

    from convmixer_fast.backends import BACKENDS

    backend = BACKENDS[request.param]
    reason = backend.unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"{backend.name} backend: {reason}")
    return backend
