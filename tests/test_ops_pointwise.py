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


def test_op_rejects_out_overlapping_an_input(kernel_backend):
    """Other programs read the weight and the epilogue vectors while one writes its tile of out."""
    y, weight, bias, scale, shift = make_inputs((2, 3), 8, 8, torch.float16)
    pointwise = kernel_backend.load_ops().pointwise
    with pytest.raises(ValueError, match="pointwise: out must not overlap weight"):
        pointwise(y, weight, bias, scale, shift, "gelu", out=weight.view(-1)[:48].view(2, 3, 8))
    with pytest.raises(ValueError, match="pointwise: out must not overlap y"):
        pointwise(y, weight, bias, scale, shift, "gelu", out=y)


TMA_CONFIGS = [c for c in pw.CONFIGS if c.kwargs["TMA"]]


def skip_without_tma(y, weight):
    if not pw.tma_loads_apply(y, weight):
        pytest.skip("TMA configs run on GPUs with a TMA unit (compute capability 9.0 and later)")


@pytest.mark.parametrize("config", pw.CONFIGS, ids=[pw.config_label(c) for c in pw.CONFIGS])
def test_every_config(config):
    """Each autotune config on a shape spanning several tiles (N and M not multiples of a block)."""
    lead, K, N = (300,), 80, 300
    y, weight, bias, scale, shift = make_inputs(lead, K, N, torch.float16, seed=1)
    if config.kwargs["TMA"]:
        skip_without_tma(y, weight)
    out = nan_out((*lead, N), torch.float16)
    pw._launch(y, weight, bias, scale, shift, "gelu", out, config=config)
    expected = pointwise_reference(y, weight, bias, scale, shift, "gelu")
    torch.testing.assert_close(out, expected, atol=4e-3, rtol=4e-3)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[1:])
@pytest.mark.parametrize("config", TMA_CONFIGS, ids=[pw.config_label(c) for c in TMA_CONFIGS])
def test_tma_configs_past_the_tensor_ends(config, dtype, atol, rtol):
    """The persistent TMA configs where the TMA unit fills past M, N and K with zeros (none a
    multiple of its block; K a multiple of 8, as a descriptor's row pitch needs) and each program
    walks several tiles (``persistent_programs``: 3 under the interpreter)."""
    lead, K, N = (3, 7, 17), 72, 200
    y, weight, bias, scale, shift = make_inputs(lead, K, N, dtype, seed=3)
    skip_without_tma(y, weight)
    out = nan_out((*lead, N), dtype)
    pw._launch(y, weight, bias, scale, shift, "relu", out, config=config)
    expected = pointwise_reference(y, weight, bias, scale, shift, "relu")
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)


def test_tma_loads_apply_only_where_a_descriptor_can_describe_the_operands():
    y, weight, *_ = make_inputs((5, 7), 80, 24, torch.float16)
    has_tma = y.device.type == "cpu" or torch.cuda.get_device_capability()[0] >= 9  # interpreter, or Hopper+
    assert pw.tma_loads_apply(y, weight) == has_tma
    assert pw.tma_loads_apply(y.bfloat16(), weight.bfloat16()) == has_tma
    assert not pw.tma_loads_apply(y.float(), weight.float())  # TMA configs are for 16-bit operands
    y36, weight36, *_ = make_inputs((5, 7), 36, 24, torch.float16)
    assert not pw.tma_loads_apply(y36, weight36)  # rows of 72 bytes: not a multiple of 16
    shifted = torch.empty(1 + y.numel(), dtype=y.dtype, device=DEVICE)[1:].view(y.shape)  # 2 bytes past 16
    assert not pw.tma_loads_apply(shifted.copy_(y), weight)


def test_misaligned_tokens_run_without_tma():
    """Tokens 2 bytes past a 16-byte boundary: the op (autotuned) takes the configs without TMA and
    is right; a TMA config forced on them says why it cannot run."""
    y, weight, bias, scale, shift = make_inputs((9, 11), 64, 40, torch.float16, seed=4)
    shifted = torch.empty(1 + y.numel(), dtype=y.dtype, device=DEVICE)[1:].view(y.shape).copy_(y)
    out = nan_out((9, 11, 40), torch.float16)
    pw.pointwise(shifted, weight, bias, scale, shift, "gelu", out=out)
    torch.testing.assert_close(out, pointwise_reference(y, weight, bias, scale, shift, "gelu"), atol=4e-3, rtol=4e-3)
    with pytest.raises(ValueError, match="a TMA config needs float16/bfloat16 operands, 16-byte aligned"):
        pw._launch(shifted, weight, bias, scale, shift, "gelu", out, config=TMA_CONFIGS[0])


@pytest.mark.parametrize("kind", ["pointer", "tma"])
def test_variants_run_one_form_each(kind):
    """The triton backend's variants of the op (what ``bench-ops`` times as "triton:pointer" and
    "triton:tma"): each autotuned over its own form of config, checked and allocating as the op."""
    from convmixer_fast.backends import BACKENDS

    variant = BACKENDS["triton"].load_variants()["pointwise"][kind]
    y, weight, bias, scale, shift = make_inputs((3, 5, 7), 64, 40, torch.bfloat16, seed=5)
    if kind == "tma":
        skip_without_tma(y, weight)
    out = nan_out((3, 5, 7, 40), torch.bfloat16)
    assert variant(y, weight, bias, scale, shift, "gelu", out=out) is out
    torch.testing.assert_close(out, pointwise_reference(y, weight, bias, scale, shift, "gelu"), atol=3e-2, rtol=2e-2)
    if kind == "tma":
        with pytest.raises(ValueError, match="a TMA config needs float16/bfloat16 operands"):
            variant(y.float(), weight.float(), bias, scale, shift, "gelu")


def test_tma_scratch_allocator_is_torchs_and_the_callers_stays():
    """The allocator Triton asks for a TMA launch's descriptor memory is torch's on the launch
    device (``_with_torch_scratch``), set in a copy of the caller's context: a TMA launch neither
    uses nor replaces the caller's own setting."""
    from triton.runtime import _allocation  # the allocator's context variable (no public getter)

    def callers_allocator(size, alignment, stream):
        raise AssertionError("the caller's allocator was used")

    y, weight, bias, scale, shift = make_inputs((5, 7), 64, 40, torch.float16, seed=6)
    skip_without_tma(y, weight)
    token = _allocation._allocator.set(callers_allocator)
    try:
        out = nan_out((5, 7, 40), torch.float16)
        pw._launch(y, weight, bias, scale, shift, "gelu", out, config=TMA_CONFIGS[-1])
        torch.testing.assert_close(out, pointwise_reference(y, weight, bias, scale, shift, "gelu"), atol=4e-3, rtol=4e-3)
        assert _allocation._allocator.get() is callers_allocator
        seen = []
        pw.contextvars.copy_context().run(
            pw._with_torch_scratch, y.device, lambda: seen.append(_allocation._allocator.get()(256, 128, None))
        )
        assert seen[0].device == y.device and seen[0].numel() == 256
        assert _allocation._allocator.get() is callers_allocator
    finally:
        _allocation._allocator.reset(token)


def test_grouped_order_many_row_tiles():
    """More row tiles than GROUP_M, with a short last group: every tile written exactly once."""
    config = pw.triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4, "TMA": False}, num_warps=4)
    y, weight, bias, scale, shift = make_inputs((1100,), 40, 37, torch.float32, seed=2)
    out = nan_out((1100, 37), torch.float32)
    pw._launch(y, weight, bias, scale, shift, "relu", out, config=config)
    expected = pointwise_reference(y, weight, bias, scale, shift, "relu")
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton autotunes on a GPU only")
def test_fp32_is_tuned_apart_under_each_tf32_setting(restored_tf32):
    """An fp32 GEMM runs on the tensor cores under TF32 and on the FMA units without: the
    autotuner keys its choice on the dot precision (``GEMM_AUTOTUNE_KEY``), so a config chosen
    under one setting of torch's switch is not reused under the other."""
    from convmixer_fast import _tf32

    y, weight, bias, scale, shift = make_inputs((3, 7, 9), 64, 40, torch.float32, seed=3)
    precision_at = pw.GEMM_AUTOTUNE_KEY.index("DOT_PRECISION")
    for matmul in (True, False):
        _tf32._set(matmul, False)
        result = pw.pointwise(y, weight, bias, scale, shift, "gelu")
        expected = pointwise_reference(y, weight, bias, scale, shift, "gelu")
        tolerance = 5e-3 if matmul else 1e-4  # (the reference's matmul follows the switch too)
        torch.testing.assert_close(result, expected, atol=tolerance, rtol=tolerance)
    keys = [key for key in pw._pointwise_tuned["pointer"].cache if tuple(key[:3]) == (189, 40, 64)]
    assert sorted(key[precision_at] for key in keys) == ["ieee", "tf32"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_empty_tokens(kernel_backend, dtype):
    skip_unless_cuda_gemm_runs(kernel_backend, dtype, 8, 16)
    y, weight, bias, scale, shift = make_inputs((0,), 16, 8, dtype)
    assert kernel_backend.load_ops().pointwise(y, weight, bias, scale, shift, "gelu").shape == (0, 8)


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


H100_SHARED_MEMORY = 232_448  # bytes per block (Triton's max_shared_mem), H100 SXM and H200
CONSUMER_SHARED_MEMORY = 101_376  # 99 KB: RTX 3090 / 4090 (sm_86, sm_89)


@pytest.mark.parametrize("limit", [H100_SHARED_MEMORY, CONSUMER_SHARED_MEMORY])
@pytest.mark.parametrize("element_size", [2, 4], ids=["16-bit", "fp32"])
def test_configs_that_fit_the_gpus_shared_memory(limit, element_size):
    """On a GPU the autotuner times, and with autotuning off runs, only configs whose operand
    stages fit; where none does (fp32 at ~100 KB) the least, with fewer stages or a shorter K tile."""
    fitting = pw.configs_that_fit(pw.CONFIGS, element_size, limit)
    assert fitting and all(pw.shared_memory_bytes(c, element_size) <= limit for c in fitting)
    fits = [c for c in pw.CONFIGS if pw.shared_memory_bytes(c, element_size) <= limit]
    assert fitting == (fits or fitting[:1])
    if (element_size, limit) == (4, H100_SHARED_MEMORY):  # 5 of the 7 pointer configs do not fit in fp32
        assert sum(not c.kwargs["TMA"] for c in fitting) == 2 and pw.CONFIGS[0] not in fitting
    if element_size == 2 and limit == H100_SHARED_MEMORY:
        assert fitting == pw.CONFIGS


def test_a_config_shrinks_no_further_than_two_stages_and_k_16():
    (config,) = pw.configs_that_fit(pw.CONFIGS, 4, 1_000)
    assert (config.num_stages, config.kwargs["BLOCK_K"]) == (2, 16)
