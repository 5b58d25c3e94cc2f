"""The fused depthwise block of every kernel backend (triton: ``ops/depthwise.py``, cuda:
``csrc/kernels/depthwise_{block,band}*``, each of its two algorithms) against the fp32 reference.

Runs on a GPU, or on the CPU under ``TRITON_INTERPRET=1``; skipped otherwise. Shapes are small and
deliberately odd (not multiples of any tile; kernels larger than the map, so the halo is mostly
padding) to keep the interpreter fast and hit every edge.
"""

from __future__ import annotations

import pytest
import torch

from helpers import DEVICE, ON_GPU_ONLY, skip_module_unless_triton_runs

skip_module_unless_triton_runs()
# The reference's conv2d warns about padding="same" with even kernels (it pads a copy): expected.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

from convmixer_fast._settings import TRITON_COMPILE_OPTIONS  # noqa: E402
from convmixer_fast.ops import depthwise as dw  # noqa: E402
from convmixer_fast.ops._triton_utils import ACTIVATION_CODES  # noqa: E402
from convmixer_fast.ops.reference import depthwise_block_reference  # noqa: E402


# Per-dtype tolerances: the kernel and the reference both compute in fp32 and round once, so they
# differ by fp32 reassociation plus at most about one ulp of the output dtype.
DTYPES = [
    pytest.param(torch.float32, 1e-4, 1e-4, id="fp32"),
    pytest.param(torch.float16, 1e-2, 1e-2, id="fp16"),
    pytest.param(torch.bfloat16, 2e-2, 3e-2, id="bf16"),
]


def make_inputs(B, H, W, C, k, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, W, C, generator=gen).to(dtype)
    weight = (torch.randn(k, k, C, generator=gen) / k).to(dtype)  # conv output stays O(1)
    bias = torch.randn(C, generator=gen) * 0.5
    scale = torch.rand(C, generator=gen) + 0.5
    shift = torch.randn(C, generator=gen) * 0.5
    return [t.to(DEVICE) for t in (x, weight, bias, scale, shift)]


def nan_like(x):
    return torch.full_like(x, float("nan"))


def check(out, x, weight, bias, scale, shift, act, atol, rtol):
    expected = depthwise_block_reference(x, weight, bias, scale, shift, act)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.isnan(out).any(), "unwritten (NaN) outputs"
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=rtol)


# (B, H, W, C, k): odd maps, odd channel counts, kernels larger than the map, batch 1 and 2.
CASES = [
    pytest.param(3, 32, 32, 1544, 9, marks=ON_GPU_ONLY),
    pytest.param(2, 31, 33, 776, 7, marks=ON_GPU_ONLY),
    pytest.param(5, 16, 16, 1024, 9, marks=ON_GPU_ONLY),
    (1, 1, 1, 1, 1),
    (2, 5, 7, 3, 3),
    (1, 9, 9, 40, 9),
    (2, 3, 17, 40, 4),
    (1, 5, 7, 33, 15),
    (2, 9, 5, 3, 6),
    (1, 3, 17, 1, 7),
    (1, 11, 10, 67, 2),
]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("B, H, W, C, k", CASES)
def test_matches_reference(kernel_backend, B, H, W, C, k, dtype, atol, rtol):
    act = "gelu" if (H + k) % 2 else "relu"  # both activations across the cases
    x, weight, bias, scale, shift = make_inputs(B, H, W, C, k, dtype, seed=H * 100 + k)
    out = nan_like(x)
    result = kernel_backend.load_ops().depthwise_block(x, weight, bias, scale, shift, act, out=out)
    assert result is out
    check(out, x, weight, bias, scale, shift, act, atol, rtol)


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize("k", list(range(1, 16)))
def test_every_kernel_size(kernel_backend, k, act):
    """Odd and even k from 1 to 15 on a 5x7 map: 'same' padding is (k-1)//2 before, k//2 after."""
    x, weight, bias, scale, shift = make_inputs(1, 5, 7, 3, k, torch.float32, seed=k)
    out = kernel_backend.load_ops().depthwise_block(x, weight, bias, scale, shift, act)  # out allocated by the entry
    check(out, x, weight, bias, scale, shift, act, 1e-4, 1e-4)


def test_largest_kernel_size(kernel_backend):
    k = dw.MAX_KERNEL_SIZE
    x, weight, bias, scale, shift = make_inputs(1, 3, 5, 2, k, torch.float32, seed=31)
    out = kernel_backend.load_ops().depthwise_block(x, weight, bias, scale, shift, "gelu", out=torch.empty_like(x))
    check(out, x, weight, bias, scale, shift, "gelu", 1e-4, 1e-4)


@pytest.mark.parametrize("config", dw.CONFIGS, ids=[str(i) for i in range(len(dw.CONFIGS))])
def test_every_config(config):
    """Each autotune config (the autotuner runs only the first under the interpreter), on a map
    taller than most tiles, so that interior row tiles start and end inside the image."""
    B, H, W, C, k, act = 1, 37, 10, 67, 4, "gelu"
    x, weight, bias, scale, shift = make_inputs(B, H, W, C, k, torch.float32, seed=5)
    out = nan_like(x)
    dw._depthwise_block_kernel.fn[dw._grid(B, H, W, C)(config.kwargs)](
        x, weight, bias, scale, shift, out, B, H, W, C, K=k, ACTIVATION=ACTIVATION_CODES[act],
        num_warps=config.num_warps, num_stages=config.num_stages, **config.kwargs, **TRITON_COMPILE_OPTIONS,
    )
    check(out, x, weight, bias, scale, shift, act, 1e-4, 1e-4)


def test_opcheck(kernel_backend):
    x, weight, bias, scale, shift = make_inputs(1, 3, 5, 4, 3, torch.float32, seed=1)
    out = torch.empty_like(x)
    op = getattr(torch.ops.convmixer_fast, f"{kernel_backend.name}_depthwise_block").default
    torch.library.opcheck(op, (x, weight, bias, scale, shift, "relu", out))


def test_entry_checks_arguments():
    """The entry runs the shared checks (ops/_checks.py, tested in test_op_checks.py) first."""
    x, weight, bias, scale, shift = make_inputs(1, 4, 5, 6, 3, torch.float32, seed=2)
    with pytest.raises(ValueError, match="depthwise_block: act must be one of"):
        dw.depthwise_block(x, weight, bias, scale, shift, "tanh")


def test_op_rejects_out_overlapping_x(kernel_backend):
    x, weight, bias, scale, shift = make_inputs(1, 4, 5, 6, 3, torch.float32, seed=2)
    with pytest.raises(ValueError, match="out must not overlap x"):
        kernel_backend.load_ops().depthwise_block(x, weight, bias, scale, shift, "gelu", out=x)


def test_kernel_specs():
    specs = dw.kernel_specs()
    assert len(specs) == 2 * len(dw.CONFIGS)
    for spec in specs:
        assert spec.signature["x_ptr"] == "*bf16" and spec.constexprs["K"] in (7, 9)
        assert set(spec.signature) | set(spec.constexprs) == set(spec.fn.arg_names)


def test_prune_configs():
    """Every config up to k = 9 (none spills there: test_inspect), the narrowest tiles beyond."""
    for k in range(1, dw._MAX_K_WITHOUT_SPILLS + 1):
        assert dw._prune_configs(dw.CONFIGS, {}, K=k) == dw.CONFIGS
    for k in range(dw._MAX_K_WITHOUT_SPILLS + 1, dw.MAX_KERNEL_SIZE + 1):
        kept = dw._prune_configs(dw.CONFIGS, {}, K=k)
        assert kept and all(c.kwargs["TILE_W"] == 4 for c in kept), k
    assert dw._prune_configs(dw.CONFIGS[:1], {"K": 31}) == dw.CONFIGS[:1]  # autotuning off: the first


# The cuda backend's two depthwise kernels (backends/cuda.py DEPTHWISE_ALGORITHMS), each on its own:
# the band kernel's tiles are 16 or 32 rows / columns (picked per image size), its channel blocks 16.
# (B, H, W, C, k): the model shapes, every band k (1..9, odd and even), maps that are not multiples
# of a tile, narrower or shorter than 16, smaller than the kernel; C a multiple of 8 (the band
# kernel's requirement), with a last channel block half past C.
ALGORITHM_CASES = [
    (2, 32, 32, 1536, 9), (3, 16, 16, 1024, 9), (1, 33, 17, 24, 7), (2, 17, 47, 40, 5), (1, 9, 40, 8, 3),
    (1, 5, 7, 16, 1), (2, 20, 35, 32, 2), (1, 31, 31, 56, 4), (1, 3, 50, 8, 6), (1, 47, 3, 24, 8),
    (1, 2, 2, 16, 9),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuda kernels need a GPU")
@pytest.mark.parametrize("algorithm", ["direct", "band"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[1:])
@pytest.mark.parametrize("B, H, W, C, k", ALGORITHM_CASES)
def test_cuda_algorithms(B, H, W, C, k, dtype, atol, rtol, algorithm):
    from convmixer_fast.backends import BACKENDS

    reason = BACKENDS["cuda"].unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"cuda backend: {reason}")
    entry = BACKENDS["cuda"].load_variants()["depthwise_block"][algorithm]
    act = "gelu" if (H + k) % 2 else "relu"
    x, weight, bias, scale, shift = make_inputs(B, H, W, C, k, dtype, seed=H * 100 + k)
    out = nan_like(x)
    entry(x, weight, bias, scale, shift, act, out=out)
    check(out, x, weight, bias, scale, shift, act, atol, rtol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuda kernels need a GPU")
@pytest.mark.parametrize("change, what", [
    (lambda a: [t.float() if t.dtype == torch.bfloat16 else t for t in a], "torch.float32"),
    (lambda a: [a[0], torch.zeros(11, 11, 16, dtype=torch.bfloat16, device=DEVICE), *a[2:]], "k=11"),
    (lambda a: [a[0][..., :12].contiguous(), a[1][..., :12].contiguous(), *(t[:12] for t in a[2:])], "C=12"),
])
def test_band_refuses_what_it_cannot_run(change, what):
    from convmixer_fast.backends import BACKENDS

    if BACKENDS["cuda"].unavailable_reason(DEVICE) is not None:
        pytest.skip("cuda backend unavailable")
    args = change(make_inputs(1, 8, 8, 16, 3, torch.bfloat16))
    band = BACKENDS["cuda"].load_variants()["depthwise_block"]["band"]
    with pytest.raises(ValueError, match=f"algorithm 'band' needs float16/bfloat16 tokens.*{what}"):
        band(*args, "gelu")
    direct = BACKENDS["cuda"].load_variants()["depthwise_block"]["direct"]
    check(direct(*args, "gelu"), *args, "gelu", 1e-2 if what != "torch.float32" else 1e-4, 3e-2)
