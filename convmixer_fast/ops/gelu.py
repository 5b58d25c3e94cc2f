"""The GELU every kernel evaluates: the exact (erf) form ``z * Phi(z)``, Phi the standard normal
CDF (not the tanh approximation), in 8 fp32 instructions instead of the ~24 of
``0.5 * z * (1 + erf(z / sqrt(2)))``::

    gelu(z) = fma(-|z|, q, max(z, 0)),   q = Phi(-|z|) ~= 2 ** P(|z|)

which is ``z * (1 - q)`` for z >= 0 and ``z * q`` for z < 0. P is a degree-5 polynomial (the
coefficients below, lowest power first) fit to ``log2 Phi(-t)`` on [0, 5.6] by weighted minimax on
the error of q (``tools/fit_gelu.py``): 5 FFMA, one SFU exponential (``ex2.approx.ftz.f32``, 2 ulp)
in the CUDA and Triton kernels, one FMNMX and the last FFMA. P decreases on all of [0, inf) (its
derivative has no real root) and is below ``log2 Phi(-5.6) = -26.5`` past 5.6, so there q < 1.1e-8
and falls to 0 (exactly, once P < -126 in the kernels' flush-to-zero exponential, or the fp32
Horner sum overflows to -inf: |z| > ~11.4). Why degree 5: the fits of degree 6 and 7 end in a
positive coefficient (P turns back up past the fit interval, which would take a clamp), and degree 8
(11 instructions, 2^-22.59 |z|) buys 1.4 bits the 16-bit outputs cannot hold and fp32 barely sees.

Accuracy, over every finite fp32 z with |z| >= 1e-30 (all 2^32 checked on the host, with the
exponential's result exact and moved 2 ulp either way): ``|gelu(z) - z Phi(z)| <= ERROR * |z|``
with ERROR = 2^-21.44 (exact exponential), 2^-21.22 / 2^-21.21 (+2 / -2 ulp), the larger figure of
two checks that agree to 0.01: ``tools/fit_gelu.py check`` (each fma a float64 sum rounded once)
and a one-off C program (fmaf), which also found the textbook formula in fp32 with glibc's erff
at ``2**-23.14 * |z|``. That is a few fp32 ulp, and a thousand times or more below the rounding of
a float16 or bfloat16 output. ``tests/test_gelu.py`` checks the bound ``GELU_ERROR_BOUND * |z|`` on
a sweep of fp32 values and holds the CUDA kernels' copy of the coefficients
(``csrc/kernels/common.cuh``) equal to these. z = +-inf or NaN gives NaN.
"""

import math

import torch

GELU_LOG2_PHI_COEFFICIENTS = (
    -1.00000083,
    -1.15108311,
    -0.459276885,
    -0.0525376946,
    0.00738701085,
    -0.000518822053,
)
# |gelu(z) - z Phi(z)| <= GELU_ERROR_BOUND * |z| for every finite fp32 z with |z| >= 1e-30.
GELU_ERROR_BOUND = 2.0**-21


def gelu_as_kernels(z: torch.Tensor, exp2_error_ulps: int = 0) -> torch.Tensor:
    """The kernels' GELU of fp32 ``z``, step by step in fp32 on any device: each fma as a float64
    product and sum rounded once to fp32 (the product of two fp32 is exact in float64; the double
    rounding can differ from a true fma by 1 ulp, rarely), and the exponential correctly rounded,
    then moved ``exp2_error_ulps`` ulp (the SFU's 2-ulp error is +-2)."""
    if z.dtype != torch.float32:
        raise TypeError(f"gelu_as_kernels takes float32, got {z.dtype}")

    def fma(a, b, c):
        return (a.double() * b.double() + c).float()

    t = z.abs()
    log2_q = torch.full_like(t, GELU_LOG2_PHI_COEFFICIENTS[-1])
    for coefficient in reversed(GELU_LOG2_PHI_COEFFICIENTS[:-1]):
        log2_q = fma(log2_q, t, coefficient)
    q = torch.exp2(log2_q.double()).float()
    toward = torch.full_like(q, math.inf if exp2_error_ulps > 0 else 0.0)
    for _ in range(abs(exp2_error_ulps)):
        q = torch.nextafter(q, toward)
    return fma(-t, q, z.clamp(min=0.0))


def fp32_from_patterns(start: int, stop: int, stride: int) -> torch.Tensor:
    """The fp32 values of the bit patterns ``start, start + stride, ... < stop`` (in [0, 2^32)) that
    are finite with |z| >= 1e-30: the domain of the bound above."""
    bits = torch.arange(start, stop, stride, dtype=torch.int64)
    z = (bits - (bits >= 1 << 31).long() * (1 << 32)).int().view(torch.float32)  # as int32 bit patterns
    return z[torch.isfinite(z) & (z.abs() >= 1e-30)]


def gelu_exact(z: torch.Tensor) -> torch.Tensor:
    """``z * Phi(z)`` in float64 (the truth the bound above is measured against)."""
    z = z.double()
    return z * 0.5 * torch.special.erfc(-z * math.sqrt(0.5))
