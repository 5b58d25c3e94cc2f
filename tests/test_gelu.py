"""The GELU every kernel evaluates (ops/gelu.py): its error bound against z * Phi(z) on a sweep of
fp32 values, the CUDA kernels' copy of its polynomial (csrc/kernels/common.cuh) equal to the
Python one, and the Triton ``gelu`` (ops/_triton_utils.py) within the bound on its own."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from helpers import DEVICE, skip_module_unless_triton_runs

from convmixer_fast._settings import TRITON_COMPILE_OPTIONS
from convmixer_fast.ops.gelu import (
    GELU_ERROR_BOUND,
    GELU_LOG2_PHI_COEFFICIENTS,
    fp32_from_patterns,
    gelu_as_kernels,
    gelu_exact,
)

COMMON_CUH = os.path.join(os.path.dirname(__file__), "..", "csrc", "kernels", "common.cuh")


def fp32_sweep(stride: int) -> torch.Tensor:
    """Every stride-th fp32 bit pattern that is finite with |z| >= 1e-30 (all binades and signs),
    plus a dense grid of [-8, 8] where the polynomial works."""
    return torch.cat([fp32_from_patterns(0, 1 << 32, stride), torch.linspace(-8.0, 8.0, 200_001)])


def worst_relative_error(got: torch.Tensor, z: torch.Tensor) -> float:
    """max |got - z Phi(z)| / |z| over z != 0."""
    nonzero = z != 0
    return float(((got.double() - gelu_exact(z)).abs()[nonzero] / z.double().abs()[nonzero]).max())


@pytest.mark.parametrize("exp2_error_ulps", [0, 2, -2])
def test_error_bound_holds_on_a_sweep_of_fp32(exp2_error_ulps):
    z = fp32_sweep(stride=4099)
    assert worst_relative_error(gelu_as_kernels(z, exp2_error_ulps), z) <= GELU_ERROR_BOUND


def test_polynomial_decreases_past_its_fit_interval():
    """P has no stationary point on [0, inf): q = 2^P(|z|) falls monotonically to 0 past the fit
    interval [0, 5.6] instead of turning back up."""
    derivative = np.polynomial.Polynomial(GELU_LOG2_PHI_COEFFICIENTS).deriv()
    assert all(root.real < 0 for root in derivative.roots() if abs(root.imag) < 1e-9)
    assert derivative(0.0) < 0


def test_special_values():
    z = torch.tensor([0.0, -0.0, 1e-38, -1e-38, 13.0, -13.0, 3.4e38, -3.4e38])
    got = gelu_as_kernels(z)
    assert got[:2].eq(0).all() and got[2] > 0 and got[3] < 0
    assert got[4] == 13.0 and got[5] == 0  # q = 2^P rounds to 0 past |z| ~ 12 (~11.4 with ftz)
    assert got[6] == z[6] and got[7] == 0  # the Horner sum overflows to -inf, q = 0
    assert gelu_as_kernels(torch.tensor([float("nan"), float("inf"), float("-inf")])).isnan().all()


def test_cuda_copy_of_the_polynomial_matches():
    source = open(COMMON_CUH).read()
    degree = re.search(r"constexpr int kDegree = (\d+);", source)
    found = re.search(r"kLog2PhiCoefficients\[kDegree \+ 1\] = \{[^\n]*\n([^}]*)\}", source)
    assert degree and found, "common.cuh no longer declares kDegree and kLog2PhiCoefficients"
    cuda = [float(c.strip().rstrip("f")) for c in found.group(1).split(",")]
    assert int(degree.group(1)) + 1 == len(cuda) == len(GELU_LOG2_PHI_COEFFICIENTS)
    as_fp32 = lambda values: torch.tensor(values, dtype=torch.float32).tolist()  # noqa: E731
    assert as_fp32(cuda) == as_fp32(GELU_LOG2_PHI_COEFFICIENTS)


try:  # the Triton gelu's own test below, where Triton is installed
    import triton
    import triton.language as tl

    from convmixer_fast.ops._triton_utils import gelu as triton_gelu
except ImportError:
    triton = None
else:

    @triton.jit
    def gelu_kernel(z_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
        mask = offsets < n
        tl.store(out_ptr + offsets, triton_gelu(tl.load(z_ptr + offsets, mask=mask)), mask=mask)


def test_triton_gelu_within_the_bound():
    skip_module_unless_triton_runs()
    z = fp32_sweep(stride=65537).to(DEVICE)
    out = torch.full_like(z, float("nan"))
    gelu_kernel[(triton.cdiv(z.numel(), 1024),)](z, out, z.numel(), BLOCK=1024, **TRITON_COMPILE_OPTIONS)
    # (2^-21.44 |z| under Triton 3.9's interpreter; 3.6's rounds tl.fma's product and sum
    # separately: 2^-21.38 |z| there.)
    assert worst_relative_error(out.cpu(), z.cpu()) <= GELU_ERROR_BOUND
