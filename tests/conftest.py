"""Test set-up. Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter: it must be
switched on before anything imports triton, so it happens here, before test modules load; likewise
the switch that keeps the Triton kernels to their first autotune config."""

import importlib.util
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU the Triton kernels run their first autotune config: the results do not depend on it, the
# compile time does (each config has its own test_every_config case).
os.environ.setdefault("CONVMIXER_FAST_TRITON_AUTOTUNE", "0")
# The eager references in true fp32 on a GPU too: cuDNN's convolutions default to TF32 there (10
# mantissa bits, about 1e-3 relative), far past the fp32 tolerances (1e-4) the kernels are held to;
# the kernels themselves follow torch.backends.cuda.matmul.allow_tf32, off by default.
torch.backends.cudnn.allow_tf32 = False


import pytest  # noqa: E402

from convmixer_fast.ops._interpreter import is_interpreting  # noqa: E402


@pytest.hookimpl(optionalhook=True)  # (a hook of pytest-xdist, the test extra's; absent, unused)
def pytest_xdist_auto_num_workers(config):
    """``pytest -n auto`` (README): a worker per CPU core this process may run on, at most 8, since
    on a GPU machine every worker holds a CUDA context of its own on the one GPU (``.ci/gpu test``
    runs 8). ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still decides where set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, 8)


def _interpreter_rounds_bf16_to_nearest() -> None:
    """Triton's interpreter (``InterpreterBuilder.cast_impl``, triton 3.9) casts fp32 to bf16 by
    truncation, where a GPU rounds to nearest even: a bf16 kernel's outputs then sit up to an ulp
    low in magnitude in half the elements or more, and a small model's errors grow 3 to 5 times
    (measured on this project's CPU machine), which the bf16 tolerances would have to hide. The
    cast is made torch's round to nearest even, what the kernels compute on a GPU: with it the
    interpreted bf16 kernels match the references but for rare 1-ulp ties of the summation order."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    truncating = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.tensor(src.data, dtype=torch.float32).to(torch.bfloat16)
            return interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return truncating(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_impl


if is_interpreting() and importlib.util.find_spec("triton") is not None:
    _interpreter_rounds_bf16_to_nearest()  # (without triton, the triton tests skip)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws its random inputs from a fixed seed: failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _seeded_module():
    """Likewise a module's fixtures, which are set up before ``_seeded``: under pytest-xdist a
    worker runs the modules in no fixed order, so the random state they found would vary."""
    torch.manual_seed(0)


@pytest.fixture
def restored_tf32():
    """The TF32 switches as they were in effect once the test ends, set consistently both ways."""
    from convmixer_fast import _tf32

    saved = _tf32.switches()
    yield
    if getattr(torch.backends.cudnn, "conv", None) is not None:  # torch >= 2.9: the default of all unset
        torch.backends.fp32_precision = "none"
    _tf32._set(*saved)


@pytest.fixture
def gpu_tolerances(monkeypatch, restored_tf32):
    """``verify.tolerances`` as on a GPU (where fp32 may run in TF32), the tensors staying on the
    CPU; the TF32 switches restored after the test."""
    from convmixer_fast import verify

    cpu_tolerances = verify.tolerances
    monkeypatch.setattr(verify, "tolerances", lambda dtype, device, tf32=None: cpu_tolerances(
        dtype, torch.device("cuda"), tf32))


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
