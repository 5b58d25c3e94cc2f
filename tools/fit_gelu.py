"""Fit the GELU polynomial of convmixer_fast/ops/gelu.py, or check its error bound.

    python tools/fit_gelu.py fit [--degree 5] [--clamp 5.6]
        prints the fp32 coefficients of P (lowest power first): P(t) ~= log2 Phi(-t) on [0, clamp],
        weighted minimax on the error of q = 2^P (Lawson's iteration on Chebyshev nodes); each
        coefficient is rounded to fp32 in turn and the higher ones refit around it.
    python tools/fit_gelu.py check [--stride 1]
        max |gelu(z) - z Phi(z)| / |z| of ops/gelu.py's coefficients over every stride-th fp32 bit
        pattern (finite, |z| >= 1e-30), with the exponential exact and 2 ulp either way
        (stride 1: all 2^32, about an hour on one core).

Needs numpy and torch. Run by hand when the polynomial changes; tests/test_gelu.py checks the bound
on a sparser sweep.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from convmixer_fast.ops.gelu import GELU_ERROR_BOUND, fp32_from_patterns, gelu_as_kernels, gelu_exact  # noqa: E402


def log2_phi_of_minus(t: np.ndarray) -> np.ndarray:
    """log2 Phi(-t) in float64."""
    return np.log2(0.5 * torch.special.erfc(torch.from_numpy(t) * math.sqrt(0.5)).numpy())


def fit(degree: int, clamp: float, nodes: int = 4000, iterations: int = 200) -> list[float]:
    t = (1.0 - np.cos(np.linspace(0.0, np.pi, nodes))) / 2.0 * clamp
    target = log2_phi_of_minus(t)
    weight = 2.0**target * math.log(2.0)  # error of q per unit error of log2 q
    basis = np.vander(t / clamp, degree + 1, increasing=True)  # [nodes, degree + 1], scaled powers
    rounded = np.zeros(degree + 1)  # fp32 coefficients so far, in scaled units
    coefficients = []
    for k in range(degree + 1):
        free = basis[:, k:]
        residual_target = target - basis[:, :k] @ rounded[:k]
        lawson = np.full(nodes, 1.0 / nodes)
        for _ in range(iterations):
            row_weight = np.sqrt(lawson) * weight
            solution, *_ = np.linalg.lstsq(free * row_weight[:, None], residual_target * row_weight, rcond=None)
            lawson *= np.abs(weight * (free @ solution - residual_target))
            lawson /= lawson.sum()
        coefficient = float(np.float32(solution[0] / clamp**k))
        rounded[k] = coefficient * clamp**k
        coefficients.append(coefficient)
    error = np.max(np.abs(weight * (basis @ rounded - target)))
    print(f"max error of q on the nodes: 2^{math.log2(error):.2f}", file=sys.stderr)
    return coefficients


def check(stride: int, chunk: int = 1 << 24) -> None:
    worst = {ulps: (0.0, 0.0) for ulps in (0, 2, -2)}
    for start in range(0, 1 << 32, chunk * stride):
        z = fp32_from_patterns(start, min(start + chunk * stride, 1 << 32), stride)
        if z.numel() == 0:  # a chunk of infinities and NaNs
            continue
        truth = gelu_exact(z)
        for ulps in worst:
            ratio = (gelu_as_kernels(z, ulps).double() - truth).abs() / z.double().abs()
            at = int(ratio.argmax())
            if ratio[at] > worst[ulps][0]:
                worst[ulps] = (float(ratio[at]), float(z[at]))
    for ulps, (ratio, z) in worst.items():
        print(f"exp2 {ulps:+d} ulp: max |err| / |z| = 2^{math.log2(ratio):.2f} at z = {z:.9g}")
    bound = max(ratio for ratio, _ in worst.values())
    print(f"bound GELU_ERROR_BOUND = 2^{math.log2(GELU_ERROR_BOUND):.2f}: {'holds' if bound <= GELU_ERROR_BOUND else 'FAILS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit_parser = sub.add_parser("fit")
    fit_parser.add_argument("--degree", type=int, default=5)
    fit_parser.add_argument("--clamp", type=float, default=5.6)
    check_parser = sub.add_parser("check")
    check_parser.add_argument("--stride", type=int, default=1)
    args = parser.parse_args()
    if args.command == "fit":
        print(",\n".join(f"{c:.9g}" for c in fit(args.degree, args.clamp)))
    else:
        check(args.stride)


if __name__ == "__main__":
    main()
