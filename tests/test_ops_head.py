"""Head (global average pool + classifier) of every kernel backend (triton: ``ops/head.py``, cuda:
``csrc/kernels/head.cu``) against ``head_reference``."""


import pytest
import torch

from helpers import DEVICE, ON_GPU_ONLY, skip_module_unless_triton_runs  # noqa: E402
skip_module_unless_triton_runs()

from convmixer_fast._settings import TRITON_COMPILE_OPTIONS  # noqa: E402
from convmixer_fast.ops import head as head_module  # noqa: E402
from convmixer_fast.ops.head import (  # noqa: E402
    CLASSIFIER_CONFIGS,
    POOL_CONFIGS,
    head,
    kernel_specs,
)
from convmixer_fast.ops.reference import head_reference  # noqa: E402


# (atol, rtol) per dtype: fp32 accumulation throughout, one rounding of the logits.
DTYPES = [
    pytest.param(torch.float32, 1e-4, 1e-4, id="fp32"),
    pytest.param(torch.float16, 2e-3, 2e-3, id="fp16"),
    pytest.param(torch.bfloat16, 1.6e-2, 1.6e-2, id="bf16"),
]

SHAPES = [  # B, H, W, C, N
    pytest.param(1, 7, 5, 37, 11, id="b1-odd"),
    pytest.param(3, 9, 11, 53, 10, id="b3-odd"),
    pytest.param(1, 1, 1, 3, 1, id="b1-1x1"),
    pytest.param(2, 16, 16, 96, 33, id="b2-mult"),
    pytest.param(3, 13, 3, 130, 129, id="b3-wide"),
    pytest.param(9, 32, 32, 1536, 1000, id="b9-model", marks=ON_GPU_ONLY),
]


def make_inputs(B, H, W, C, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, W, C, generator=g).to(dtype)
    x += torch.rand(1, 1, 1, C, generator=g).to(dtype)  # per-channel offsets: means are not ~0
    weight = (torch.randn(N, C, generator=g) / C**0.5).to(dtype)
    bias = torch.randn(N, generator=g)
    return x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("B, H, W, C, N", SHAPES)
def test_head_matches_reference(kernel_backend, B, H, W, C, N, dtype, atol, rtol):
    x, weight, bias = make_inputs(B, H, W, C, N, dtype)
    pooled = torch.full((B, C), float("nan"), device=DEVICE)
    out = torch.full((B, N), float("nan"), device=DEVICE, dtype=dtype)

    result = kernel_backend.load_ops().head(x, weight, bias, pooled=pooled, out=out)

    assert result is out
    torch.testing.assert_close(pooled, x.float().mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    expected = head_reference(x, weight, bias)
    torch.testing.assert_close(result, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_head_allocates_outputs(kernel_backend, dtype, atol, rtol):
    x, weight, bias = make_inputs(2, 5, 6, 40, 7, dtype, seed=1)
    logits = kernel_backend.load_ops().head(x, weight, bias)
    assert logits.shape == (2, 7) and logits.dtype == dtype and logits.device == x.device
    torch.testing.assert_close(logits, head_reference(x, weight, bias), atol=atol, rtol=rtol)


def test_head_opcheck(kernel_backend):
    x, weight, bias = make_inputs(2, 3, 5, 19, 6, torch.float32, seed=2)
    pooled = torch.empty(2, 19, device=DEVICE)
    out = torch.empty(2, 6, device=DEVICE)
    op = getattr(torch.ops.convmixer_fast, f"{kernel_backend.name}_head").default
    torch.library.opcheck(op, (x, weight, bias, pooled, out))


def test_head_rejects_outputs_overlapping_the_classifier(kernel_backend):
    """The classifier reads the weight and bias after the pool has written pooled."""
    x, weight, bias = make_inputs(2, 3, 3, 8, 8, torch.float32, seed=3)
    with pytest.raises(ValueError, match="head: pooled must not overlap weight"):
        kernel_backend.load_ops().head(x, weight, bias, pooled=weight[:2])
    storage = torch.zeros(24, device=DEVICE)
    bias = storage[:8].copy_(bias)
    with pytest.raises(ValueError, match="head: out must not overlap bias"):
        kernel_backend.load_ops().head(x, weight, bias, out=storage[4:20].view(2, 8))


def test_entry_checks_arguments():
    """The entry runs the shared checks (ops/_checks.py, tested in test_op_checks.py) first."""
    x, weight, bias = make_inputs(2, 3, 3, 8, 5, torch.float16, seed=3)
    with pytest.raises(ValueError, match=r"head: bias must have shape \[5\]"):
        head(x, weight, bias[:4])


# Each autotune config (the autotuner runs only the first in the tests), on a shape that spans
# several channel, token, image and class blocks, none of them whole.
CONFIG_SHAPE = (19, 11, 13, 150, 70)  # B, H, W, C, N


@pytest.mark.parametrize("config", POOL_CONFIGS, ids=[str(i) for i in range(len(POOL_CONFIGS))])
def test_every_pool_config(config):
    import triton

    B, H, W, C, N = CONFIG_SHAPE
    x, _, _ = make_inputs(B, H, W, C, N, torch.float16, seed=3)
    pooled = torch.full((B, C), float("nan"), device=DEVICE)
    head_module._head_pool_kernel.fn[(B, triton.cdiv(C, config.kwargs["BLOCK_C"]))](
        x, pooled, B, H * W, C, num_warps=config.num_warps, num_stages=config.num_stages, **config.kwargs,
        **TRITON_COMPILE_OPTIONS)
    torch.testing.assert_close(pooled, x.float().mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", CLASSIFIER_CONFIGS, ids=[str(i) for i in range(len(CLASSIFIER_CONFIGS))])
def test_every_classifier_config(config):
    import triton

    B, H, W, C, N = CONFIG_SHAPE
    x, weight, bias = make_inputs(B, H, W, C, N, torch.float16, seed=3)
    pooled = x.float().mean(dim=(1, 2))
    out = torch.full((B, N), float("nan"), device=DEVICE, dtype=torch.float16)
    grid = (triton.cdiv(B, config.kwargs["BLOCK_B"]), triton.cdiv(N, config.kwargs["BLOCK_N"]))
    head_module._head_classifier_kernel.fn[grid](
        pooled, weight, bias, out, B, N, C, num_warps=config.num_warps, num_stages=config.num_stages,
        **config.kwargs, **TRITON_COMPILE_OPTIONS)
    torch.testing.assert_close(out, head_reference(x, weight, bias), atol=2e-3, rtol=2e-3)


def test_kernel_specs_cover_every_config():
    specs = kernel_specs()
    pool = [s for s in specs if s.kernel == "head_pool"]
    classifier = [s for s in specs if s.kernel == "head_classifier"]
    assert len(pool) == len(POOL_CONFIGS) and len(classifier) == len(CLASSIFIER_CONFIGS)
    assert len({s.config for s in pool}) == len(pool)
    for spec in specs:
        assert spec.signature and all(t != "constexpr" for t in spec.signature.values())
        assert "*bf16" in spec.signature.values()
