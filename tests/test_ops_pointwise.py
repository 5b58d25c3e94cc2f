"""Fused pointwise GEMM of every kernel backend (triton: ``ops/pointwise.py``, cuda:
``csrc/kernels/pointwise*``) against ``pointwise_reference``."""


import pytest
import torch

from helpers import DEVICE, ON_GPU_ONLY, skip_module_unless_triton_runs  # noqa: E402
skip_module_unless_triton_runs()

from convmixer_fast.ops import pointwise as pw  # noqa: E402
from convmixer_fast.ops.reference import ACTIVATIONS, pointwise_reference  # noqa: E402


# (dtype, atol, rtol): outputs are O(1); 16-bit tolerances allow one rounding of the output plus
# the different fp32 summation order.
DTYPES = [
    pytest.param(torch.float32, 1e-4, 1e-4, id="fp32"),
    pytest.param(torch.float16, 4e-3, 4e-3, id="fp16"),
    pytest.param(torch.bfloat16, 3e-2, 2e-2, id="bf16"),
]

# (leading token dims, K, N): M = prod(leading) odd and not a multiple of any block; N, K odd too.
SHAPES = [
    pytest.param((1, 5, 7), 48, 48, id="b1-5x7-k48-n48"),
    pytest.param((2, 9, 9), 200, 37, id="b2-9x9-k200-n37"),
    pytest.param((3, 3, 11), 16, 16, id="b3-3x11-k16-n16"),
    pytest.param((2, 5, 7), 37, 200, id="b2-5x7-k37-n200"),
    pytest.param((13,), 64, 24, id="2d-m13-k64-n24"),
    pytest.param((3, 33, 31), 1536, 1536, id="b3-33x31-k1536-n1536", marks=ON_GPU_ONLY),
    pytest.param((7, 16, 16), 768, 1032, id="b7-16x16-k768-n1032", marks=ON_GPU_ONLY),
]


def skip_unless_cuda_gemm_runs(backend, dtype, N, K):
    """The CUDA GEMM covers float16/bfloat16 with N, K multiples of 8 (auto uses triton otherwise)."""
    if backend.name == "cuda" and not (dtype != torch.float32 and N % 8 == 0 and K % 8 == 0):
        pytest.skip(f"no CUDA GEMM kernel for {dtype}, N={N}, K={K} (see test_cuda_rejects_unsupported_gemm)")


def make_inputs(lead, K, N, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(*lead, K, generator=gen).to(dtype)
    weight = (torch.randn(N, K, generator=gen) / K**0.5).to(dtype)
    bias = torch.randn(N, generator=gen) * 0.5
    scale = torch.rand(N, generator=gen) + 0.5
    shift = torch.randn(N, generator=gen) * 0.5
    return [t.to(DEVICE) for t in (y, weight, bias, scale, shift)]


def nan_out(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("lead, K, N", SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_matches_reference(kernel_backend, lead, K, N, act, dtype, atol, rtol):
    skip_unless_cuda_gemm_runs(kernel_backend, dtype, N, K)
    y, weight, bias, scale, shift = make_inputs(lead, K, N, dtype)
    out = nan_out((*lead, N), dtype)
    result = kernel_backend.load_ops().pointwise(y, weight, bias, scale, shift, act, out=out)
    assert result is out
    expected = pointwise_reference(y, weight, bias, scale, shift, act)
    assert result.dtype == dtype and result.shape == expected.shape
    assert not result.isnan().any()
    torch.testing.assert_close(result, expected, atol=atol, rtol=rtol)


def test_allocates_output(kernel_backend):
    y, weight, bias, scale, shift = make_inputs((2, 3, 5), 24, 40, torch.float16)
    result = kernel_backend.load_ops().pointwise(y, weight, bias, scale, shift, "gelu")
    assert result.shape == (2, 3, 5, 40) and result.dtype == torch.float16 and result.is_contiguous()
    expected = pointwise_reference(y, weight, bias, scale, shift, "gelu")
    torch.testing.assert_close(result, expected, atol=4e-3, rtol=4e-3)


@pytest.mark.parametrize("config", pw.CONFIGS, ids=[pw.config_label(c) for c in pw.CONFIGS])
def test_every_config(config):
    """Each autotune config on a shape spanning several tiles (N and M not multiples of a block)."""
    lead, K, N = (300,), 80, 300
    y, weight, bias, scale, shift = make_inputs(lead, K, N, torch.float16, seed=1)
    out = nan_out((*lead, N), torch.float16)
    pw._launch(y, weight, bias, scale, shift, "gelu", out, config=config)
    expected = pointwise_reference(y, weight, bias, scale, shift, "gelu")
    torch.testing.assert_close(out, expected, atol=4e-3, rtol=4e-3)


def test_grouped_order_many_row_tiles():
    """More row tiles than GROUP_M, with a short last group: every tile written exactly once."""
    config = pw.triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}, num_warps=4)
    y, weight, bias, scale, shift = make_inputs((1100,), 40, 37, torch.float32, seed=2)
    out = nan_out((1100, 37), torch.float32)
    pw._launch(y, weight, bias, scale, shift, "relu", out, config=config)
    expected = pointwise_reference(y, weight, bias, scale, shift, "relu")
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_empty_tokens(kernel_backend, dtype):
    skip_unless_cuda_gemm_runs(kernel_backend, dtype, 8, 16)
    y, weight, bias, scale, shift = make_inputs((0,), 16, 8, dtype)
    assert kernel_backend.load_ops().pointwise(y, weight, bias, scale, shift, "gelu").shape == (0, 8)


def test_tf32_follows_torch_flag():
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert pw.dot_precision(torch.float32) == "ieee"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert pw.dot_precision(torch.float32) == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert pw.dot_precision(torch.bfloat16) == "tf32"


def test_opcheck(kernel_backend):
    dtype = torch.float16 if kernel_backend.name == "cuda" else torch.float32
    y, weight, bias, scale, shift = make_inputs((1, 3, 5), 24, 16, dtype)
    out = torch.empty(1, 3, 5, 16, device=DEVICE, dtype=dtype)
    op = getattr(torch.ops.convmixer_fast, f"{kernel_backend.name}_pointwise").default
    torch.library.opcheck(op, (y, weight, bias, scale, shift, "gelu", out))


def test_kernel_specs():
    specs = pw.kernel_specs()
    assert len(specs) == len(pw.CONFIGS)
    assert all(s.fn is pw.pointwise_kernel and s.signature["y_ptr"] == "*bf16" for s in specs)


def test_entry_checks_arguments():
    """The entry runs the shared checks (ops/_checks.py, tested in test_op_checks.py) first."""
    y, weight, bias, scale, shift = make_inputs((2, 3), 16, 8, torch.float16)
    with pytest.raises(TypeError, match="pointwise: weight must have dtype torch.float16"):
        pw.pointwise(y, weight.float(), bias, scale, shift, "gelu")


def test_cuda_rejects_unsupported_gemm(kernel_backend):
    if kernel_backend.name != "cuda":
        pytest.skip("the CUDA GEMM's shape rules")
    y, weight, bias, scale, shift = make_inputs((2, 3), 36, 8, torch.float16)
    with pytest.raises(ValueError, match="no CUDA GEMM kernel for torch.float16, N=8, K=36"):
        kernel_backend.load_ops().pointwise(y, weight, bias, scale, shift, "gelu")
