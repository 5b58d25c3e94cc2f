"""Fused pointwise GEMM (``ops/pointwise.py``) against ``pointwise_reference``."""


import pytest
import torch

from helpers import DEVICE, skip_module_unless_triton_runs  # noqa: E402
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
]


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
def test_matches_reference(lead, K, N, act, dtype, atol, rtol):
    y, weight, bias, scale, shift = make_inputs(lead, K, N, dtype)
    out = nan_out((*lead, N), dtype)
    result = pw.pointwise(y, weight, bias, scale, shift, act, out=out)
    assert result is out
    expected = pointwise_reference(y, weight, bias, scale, shift, act)
    assert result.dtype == dtype and result.shape == expected.shape
    assert not result.isnan().any()
    torch.testing.assert_close(result, expected, atol=atol, rtol=rtol)


def test_allocates_output():
    y, weight, bias, scale, shift = make_inputs((2, 3, 5), 24, 40, torch.float16)
    result = pw.pointwise(y, weight, bias, scale, shift, "gelu")
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


def test_empty_tokens():
    y, weight, bias, scale, shift = make_inputs((0,), 16, 8, torch.float32)
    assert pw.pointwise(y, weight, bias, scale, shift, "gelu").shape == (0, 8)


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


def test_opcheck():
    y, weight, bias, scale, shift = make_inputs((1, 3, 5), 24, 16, torch.float32)
    out = torch.empty(1, 3, 5, 16, device=DEVICE)
    torch.library.opcheck(
        torch.ops.convmixer_fast.triton_pointwise.default, (y, weight, bias, scale, shift, "gelu", out)
    )


def test_kernel_specs():
    specs = pw.kernel_specs()
    assert len(specs) == len(pw.CONFIGS)
    assert all(s.fn is pw.pointwise_kernel and s.signature["y_ptr"] == "*bf16" for s in specs)


def _bad(**changes):
    y, weight, bias, scale, shift = make_inputs((2, 3), 16, 8, torch.float16)
    args = dict(y=y, weight=weight, bias=bias, scale=scale, shift=shift, act="gelu", out=None)
    args.update({k: (v(args) if callable(v) else v) for k, v in changes.items()})
    return args


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(y=lambda a: a["y"].long()), TypeError, "y must have dtype"),
        (dict(y=lambda a: a["y"].transpose(0, 1)), ValueError, "y must be contiguous"),
        (dict(y="tokens"), TypeError, "y must be a torch.Tensor"),
        (dict(weight=lambda a: a["weight"].float()), TypeError, "weight must have dtype torch.float16"),
        (dict(weight=lambda a: a["weight"][:, :8].contiguous()), ValueError, r"weight must have shape \[N, 16\]"),
        (dict(weight=lambda a: a["weight"].t().contiguous().t()), ValueError, "weight must be contiguous"),
        (dict(bias=lambda a: a["bias"].half()), TypeError, "bias must have dtype torch.float32"),
        (dict(scale=lambda a: a["scale"][:4]), ValueError, r"scale must have shape \(8,\)"),
        (dict(shift=lambda a: a["shift"][None]), ValueError, "shift must have shape"),
        (dict(act="silu"), ValueError, "act must be one of"),
        (dict(out=lambda a: torch.empty(2, 3, 8, device=DEVICE)), TypeError, "out must have dtype"),
        (dict(out=lambda a: torch.empty(2, 8, dtype=torch.float16, device=DEVICE)), ValueError, "out must have shape"),
        (dict(out=lambda a: torch.empty(2, 8, 3, dtype=torch.float16, device=DEVICE).transpose(1, 2)), ValueError,
         "out must be contiguous"),
    ],
)
def test_bad_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        pw.pointwise(**_bad(**changes))


def test_wrong_device():
    y, weight, bias, scale, shift = make_inputs((2, 3), 16, 8, torch.float32)
    with pytest.raises(ValueError, match="must be on device"):
        pw.pointwise(y, weight.to("meta"), bias, scale, shift, "gelu")
