"""Backend resolution (convmixer_fast/backends): "auto" picks a backend per op, a named backend runs
every op or says why it cannot. A stand-in backend ("cuda" made available on CPU, running the eager
ops, without a pointwise kernel for the model) exercises the per-op choice on any machine."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

import convmixer_fast as cf
from convmixer_fast import backends
from convmixer_fast.backends import BACKENDS, OP_NAMES, resolve_ops

CPU = torch.device("cpu")


@pytest.fixture
def stand_in_cuda(monkeypatch):
    """"cuda" available on CPU, running the eager ops, with no pointwise kernel for width 16."""

    def no_pointwise_at_16(op, device, dtype, channels):
        return "no GEMM kernel for 16 channels" if op == "pointwise" and channels == 16 else None

    stand_in = dataclasses.replace(
        BACKENDS["cuda"], unavailable_reason=lambda device: None, load_ops=BACKENDS["eager"].load_ops,
        op_unsupported_reason=no_pointwise_at_16,
    )
    monkeypatch.setitem(BACKENDS, "cuda", stand_in)
    monkeypatch.setattr(backends, "AUTO_ORDER_DEFAULT", {op: ("cuda",) for op in OP_NAMES})  # eager: the fallback


def test_auto_chooses_per_op(stand_in_cuda):
    resolved = resolve_ops("auto", CPU, torch.float32, 16)
    assert resolved.names == ("cuda", "cuda", "eager", "cuda")
    assert resolved.label == "stem=cuda, depthwise_block=cuda, pointwise=eager, head=cuda"
    assert resolved.ops.pointwise is BACKENDS["eager"].load_ops().pointwise
    assert resolve_ops("auto", CPU, torch.float32, 24).label == "cuda"


def test_named_backend_that_lacks_an_op_says_so(stand_in_cuda):
    with pytest.raises(cf.BackendUnavailableError,
                       match="backend 'cuda' cannot run pointwise for a torch.float32 model of width 16 on cpu: "
                             "no GEMM kernel for 16 channels; backend='auto' picks another backend"):
        resolve_ops("cuda", CPU, torch.float32, 16)


def test_model_runs_a_per_op_mix(stand_in_cuda):
    from helpers import reference_model

    reference = reference_model(16, 2, 3, 2, 5)
    model = cf.ConvMixer.from_eager(reference)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_ops("tpu", CPU, torch.float32, 16)
    with pytest.raises(cf.BackendUnavailableError, match="backend 'cuda' cannot run on cpu"):
        resolve_ops("cuda", CPU, torch.float32, 16)
    assert resolve_ops("auto", CPU, torch.float32, 16).label == "eager"


def test_interpreted_triton_rounds_bf16_to_nearest_as_a_gpu():
    """conftest's fix of Triton's interpreter holds: a kernel storing fp32 into bf16 rounds to
    nearest even (torch's rounding, a GPU's), not toward zero as the interpreter did."""
    from convmixer_fast.ops._interpreter import is_interpreting

    if not is_interpreting():
        pytest.skip("Triton's interpreter is not in use")
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def store(source_ptr, out_ptr, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        tl.store(out_ptr + offsets, tl.load(source_ptr + offsets))  # fp32 -> bf16 at the store

    values = torch.randn(64) * 100
    out = torch.full((64,), float("nan"), dtype=torch.bfloat16)
    store[(1,)](values, out, BLOCK=64)
    assert torch.equal(out, values.to(torch.bfloat16))
    assert not torch.equal(out, (values.view(torch.int32) & ~0xFFFF).view(torch.float32).bfloat16())  # truncated


@pytest.mark.parametrize("value", [None, "", "0", "1", "true", "True", "ON", "yes", "y", "false", "off", "2", " 1"])
def test_the_interpreter_is_on_where_triton_takes_triton_interpret_as_on(monkeypatch, value):
    """``TRITON_INTERPRET=true`` runs Triton's interpreter as "1" does: read as off, the triton backend
    was refused on CPU and the interpreted bf16 GEMM took its broken bf16 dot (logits ~1e10 off)."""
    from convmixer_fast.ops._interpreter import is_interpreting

    if value is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", value)
    on = value is not None and value.lower() in ("1", "true", "on", "yes", "y")
    assert is_interpreting() is on
    assert (backends._triton_unavailable_reason(CPU) is None) is (on and importlib.util.find_spec("triton") is not None)
    knobs = getattr(pytest.importorskip("triton"), "knobs", None)
    if knobs is None:
        pytest.skip("this Triton has no knobs to compare with")
    assert knobs.runtime.interpret is on


def test_a_rocm_gpu_runs_the_eager_backend(monkeypatch):
    """A ROCm torch calls an AMD GPU "cuda", with a capability of 9.x (MI300) that passes the
    tensor-core check: the kernel backends, written for NVIDIA GPUs, say so and ``auto`` runs eager."""
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 4))
    monkeypatch.setattr(torch.version, "hip", "6.4.43482")
    assert "written for NVIDIA GPUs" in BACKENDS["triton"].unavailable_reason(gpu)
    assert BACKENDS["cuda"].unavailable_reason(gpu) is not None  # (or, without _C here, that reason)
    assert resolve_ops("auto", gpu, torch.bfloat16, 16, measure=False).label == "eager"
    with pytest.raises(cf.BackendUnavailableError, match=r"through ROCm \(HIP 6.4.43482\)"):
        resolve_ops("triton", gpu, torch.bfloat16, 16)


def test_a_gpu_without_bf16_tensor_cores_runs_the_eager_backend(monkeypatch):
    """A Turing GPU (sm_75, a T4 say) has no bf16 tensor cores: the kernel backends say so, and
    ``auto`` runs the eager ops there."""
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.version, "hip", None)
    assert BACKENDS["triton"].unavailable_reason(gpu) == (
        "needs compute capability >= 8.0 (bf16 tensor cores), this GPU has 7.5")
    assert resolve_ops("auto", gpu, torch.float16, 16, measure=False).label == "eager"
    with pytest.raises(cf.BackendUnavailableError, match=r"needs compute capability >= 8.0"):
        resolve_ops("triton", gpu, torch.float16, 16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert BACKENDS["triton"].unavailable_reason(gpu) is None
