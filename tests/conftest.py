"""Test set-up. Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter: it must be
switched on before anything imports triton, so it happens here, before test modules load."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws its random inputs from a fixed seed: failures reproduce."""
    torch.manual_seed(0)
