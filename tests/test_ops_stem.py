"""Fused stem (patchify + GEMM + epilogue) of every kernel backend (triton: ``ops/stem.py``, cuda:
``csrc/kernels/stem*``) against ``stem_reference``."""


import pytest
import torch

from helpers import DEVICE, ON_GPU_ONLY, skip_module_unless_triton_runs  # noqa: E402
skip_module_unless_triton_runs()

from convmixer_fast.ops import stem as stem_op  # noqa: E402
from convmixer_fast.ops._triton_utils import config_label  # noqa: E402
from convmixer_fast.ops.reference import ACTIVATIONS, stem_reference  # noqa: E402


# (weight = model dtype, atol, rtol); outputs are O(1).
DTYPES = [
    pytest.param(torch.float32, 1e-4, 1e-4, id="fp32"),
    pytest.param(torch.float16, 4e-3, 4e-3, id="fp16"),
    pytest.param(torch.bfloat16, 3e-2, 2e-2, id="bf16"),
]
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 2e-2)}

# (B, Cin, H, W, p, C): H, W mostly not multiples of p; odd token counts and channel counts.
SHAPES = [
    pytest.param(1, 3, 15, 23, 7, 37, id="b1-c3-15x23-p7-n37"),
    pytest.param(2, 1, 10, 7, 3, 48, id="b2-c1-10x7-p3-n48"),
    pytest.param(3, 3, 5, 9, 2, 16, id="b3-c3-5x9-p2-n16"),
    pytest.param(2, 3, 9, 9, 3, 200, id="b2-c3-9x9-p3-n200"),
    pytest.param(1, 3, 7, 7, 7, 24, id="b1-c3-7x7-p7-one-token"),
    pytest.param(3, 3, 230, 224, 7, 264, id="b3-c3-230x224-p7-n264", marks=ON_GPU_ONLY),
    pytest.param(2, 3, 224, 227, 14, 1032, id="b2-c3-224x227-p14-n1032", marks=ON_GPU_ONLY),
]


def make_inputs(B, Cin, H, W, p, C, image_dtype, weight_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(B, Cin, H, W, generator=gen).to(image_dtype)
    weight = (torch.randn(C, Cin, p, p, generator=gen) / (Cin * p * p) ** 0.5).to(weight_dtype)
    bias = torch.randn(C, generator=gen) * 0.5
    scale = torch.rand(C, generator=gen) + 0.5
    shift = torch.randn(C, generator=gen) * 0.5
    return [t.to(DEVICE) for t in (image, weight, bias, scale, shift)]


def nan_out(B, H, W, p, C, dtype):
    return torch.full((B, H // p, W // p, C), float("nan"), dtype=dtype, device=DEVICE)


def check(backend, image, weight, bias, scale, shift, act, out=None):
    atol, rtol = TOLERANCES[weight.dtype]
    result = backend.load_ops().stem(image, weight, bias, scale, shift, act, out=out)
    if out is not None:
        assert result is out
    expected = stem_reference(image, weight, bias, scale, shift, act)
    assert result.dtype == weight.dtype and result.shape == expected.shape and result.is_contiguous()
    assert not result.isnan().any()
    torch.testing.assert_close(result, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("B, Cin, H, W, p, C", SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_matches_reference(kernel_backend, B, Cin, H, W, p, C, act, dtype, atol, rtol):
    image, weight, bias, scale, shift = make_inputs(B, Cin, H, W, p, C, dtype, dtype)
    check(kernel_backend, image, weight, bias, scale, shift, act, out=nan_out(B, H, W, p, C, dtype))


@pytest.mark.parametrize(
    "image_dtype, weight_dtype",
    [
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.bfloat16),
    ],
    ids=["fp32-img-bf16", "fp32-img-fp16", "bf16-img-fp32", "fp16-img-bf16"],
)
def test_image_dtype_differs_from_weight(kernel_backend, image_dtype, weight_dtype):
    B, Cin, H, W, p, C = 2, 3, 11, 8, 3, 40
    image, weight, bias, scale, shift = make_inputs(B, Cin, H, W, p, C, image_dtype, weight_dtype, seed=3)
    check(kernel_backend, image, weight, bias, scale, shift, "gelu", out=nan_out(B, H, W, p, C, weight_dtype))


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "nhwc_permuted", "expanded_batch"])
def test_non_contiguous_image(kernel_backend, layout):
    B, Cin, H, W, p, C = 2, 3, 9, 10, 3, 37
    image, weight, bias, scale, shift = make_inputs(B, Cin, H + 2, 2 * W + 1, p, C, torch.float32, torch.float16)
    if layout == "channels_last":
        image = image[:, :, :H, :W].contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        image = image[:, :, 1 : H + 1, 1::2]  # offset storage, stride 2 along W
    elif layout == "nhwc_permuted":
        image = image[:, :, :H, :W].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    else:
        image = image[:1, :, :H, :W].expand(B, -1, -1, -1)  # batch stride 0
    assert image.shape == (B, Cin, H, W) and not image.is_contiguous()
    check(kernel_backend, image, weight, bias, scale, shift, "relu", out=nan_out(B, H, W, p, C, torch.float16))


def test_allocates_output(kernel_backend):
    image, weight, bias, scale, shift = make_inputs(1, 3, 8, 8, 4, 16, torch.float32, torch.bfloat16)
    check(kernel_backend, image, weight, bias, scale, shift, "gelu")


@pytest.mark.parametrize("config", stem_op.CONFIGS, ids=[config_label(c) for c in stem_op.CONFIGS])
def test_every_config(config):
    """Each autotune config on a shape spanning several tiles (K = 147 is masked)."""
    B, Cin, H, W, p, C = 2, 3, 70, 63, 7, 300
    image, weight, bias, scale, shift = make_inputs(B, Cin, H, W, p, C, torch.float32, torch.float16, seed=4)
    out = nan_out(B, H, W, p, C, torch.float16)
    stem_op._launch(image, weight, bias, scale, shift, "gelu", out, config=config)
    expected = stem_reference(image, weight, bias, scale, shift, "gelu")
    torch.testing.assert_close(out, expected, atol=4e-3, rtol=4e-3)


def test_opcheck(kernel_backend):
    image, weight, bias, scale, shift = make_inputs(1, 3, 7, 9, 3, 16, torch.float32, torch.float32)
    out = torch.empty(1, 2, 3, 16, device=DEVICE)
    op = getattr(torch.ops.convmixer_fast, f"{kernel_backend.name}_stem").default
    torch.library.opcheck(op, (image, weight, bias, scale, shift, "gelu", out))


def test_kernel_specs():
    specs = stem_op.kernel_specs()
    assert len(specs) == len(stem_op.CONFIGS)
    assert all(s.fn is stem_op.stem_kernel and s.signature["weight_ptr"] == "*bf16" for s in specs)


def test_entry_checks_arguments():
    """The entry runs the shared checks (ops/_checks.py, tested in test_op_checks.py) first."""
    image, weight, bias, scale, shift = make_inputs(1, 3, 8, 8, 2, 8, torch.float32, torch.float16)
    with pytest.raises(ValueError, match="stem: act must be one of"):
        stem_op.stem(image, weight, bias, scale, shift, "gelu_tanh")
