"""TF32: the package reads torch's switch whichever way a program set it (``convmixer_fast._tf32``).

torch 2.9+ raises on reading a legacy flag (``allow_tf32``) once the new ``fp32_precision`` API has
set it; a model, the fp32 GEMMs' dot precision and the tools read the switch through ``_tf32``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from convmixer_fast import _tf32
from helpers import reference_model

NEW_API = getattr(torch.backends.cudnn, "conv", None) is not None  # torch >= 2.9


def set_legacy(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on


def set_matmul_precision(on: bool) -> None:
    torch.set_float32_matmul_precision("high" if on else "highest")


def set_per_op(on: bool) -> None:
    torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"


def set_default_of_all(on: bool) -> None:
    torch.backends.fp32_precision = "tf32" if on else "ieee"
    torch.backends.cuda.matmul.fp32_precision = "none"  # unset: the default of all applies


WAYS = [set_legacy, set_matmul_precision]
if NEW_API:
    WAYS += [set_per_op, set_default_of_all]


@pytest.mark.parametrize("way", WAYS, ids=lambda way: way.__name__)
def test_the_matmul_switch_reads_back_however_it_was_set(restored_tf32, way):
    from convmixer_fast.ops import pointwise

    for on in (True, False, True):
        way(on)
        assert _tf32.matmul_allows_tf32() is on
        assert pointwise.dot_precision(torch.float32) == ("tf32" if on else "ieee")
        assert pointwise.dot_precision(torch.bfloat16) == "tf32"  # (16-bit operands: always tensor cores)


@pytest.mark.skipif(not NEW_API, reason="torch < 2.9 has no fp32_precision")
def test_the_cudnn_switch_reads_back_however_it_was_set(restored_tf32):
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    assert not _tf32.cudnn_conv_allows_tf32()
    torch.backends.cudnn.allow_tf32 = True
    assert _tf32.cudnn_conv_allows_tf32()


@pytest.mark.parametrize("matmul, conv", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("way", WAYS, ids=lambda way: way.__name__)
def test_tf32_off_turns_both_off_and_sets_them_back(restored_tf32, way, matmul, conv):
    """Whatever way the matmul switch was set, and cuDNN's either way. (Not asked: the legacy cuDNN
    flag, which raises where cuDNN's RNN switch, unset under the default of all, differs.)"""
    way(matmul)
    torch.backends.cudnn.allow_tf32 = conv
    if NEW_API:  # (the legacy setter writes "none" for off, which the default of all makes "tf32")
        torch.backends.cudnn.conv.fp32_precision = "tf32" if conv else "ieee"
    with _tf32.tf32_off():
        assert _tf32.switches() == (False, False)
        assert not torch.backends.cuda.matmul.allow_tf32  # the legacy flag reads back too
    assert _tf32.switches() == (matmul, conv)
    assert torch.backends.cuda.matmul.allow_tf32 is matmul


@pytest.mark.skipif(not NEW_API, reason="torch < 2.9 has no fp32_precision")
def test_an_unset_matmul_switch_is_torchs_default_off(restored_tf32):
    torch.backends.fp32_precision = "none"
    torch.backends.cuda.matmul.fp32_precision = "none"
    assert not _tf32.matmul_allows_tf32()


@dataclasses.dataclass(slots=True)
class LegacyBackend:
    """A torch < 2.9 cuBLAS or cuDNN switch: ``allow_tf32`` only (``fp32_precision``, ``conv``: AttributeError)."""

    allow_tf32: bool


def test_a_torch_without_fp32_precision_reads_and_sets_the_legacy_flags(monkeypatch):
    matmul, cudnn = LegacyBackend(True), LegacyBackend(False)
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    assert _tf32.switches() == (True, False)
    with _tf32.tf32_off():
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False) == _tf32.switches()
    assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, False) == _tf32.switches()


@pytest.mark.skipif(not NEW_API, reason="torch < 2.9 has no fp32_precision")
def test_a_model_runs_with_tf32_set_the_new_way(restored_tf32, monkeypatch):
    """The graph signature holds the TF32 switch: read the legacy way, it raised on every GPU call
    once a program had set ``fp32_precision``. (The CPU model takes the graph path here: the
    capture itself is a GPU test's.)"""
    import convmixer_fast as cf

    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend="eager")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        monkeypatch.setattr(cf.ConvMixer, "_graphs_apply", lambda self, image: True)
        monkeypatch.setattr(cf.ConvMixer, "_capture", lambda self, image: None)  # (a failed capture)
        set_per_op(True)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("on", [False, True], ids=["tf32-off", "tf32-on"])
def test_the_fp32_triton_gemms_launch_with_the_switchs_dot_precision(restored_tf32, monkeypatch, on):
    """What the stem and pointwise kernels are launched with, not just what ``dot_precision`` says:
    the interpreter ignores ``input_precision``, so a launch that dropped it would pass every CPU
    test of the ops."""
    from helpers import DEVICE

    from convmixer_fast.backends import BACKENDS

    reason = BACKENDS["triton"].unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(reason)
    from convmixer_fast.ops import pointwise, stem

    launched = []

    def recording(run):
        def recorded(*args, **kwargs):
            launched.append(kwargs["DOT_PRECISION"])
            return run(*args, **kwargs)
        return recorded

    for tuner in (pointwise._pointwise_tuned["pointer"], stem._stem_tuned):
        monkeypatch.setattr(tuner, "run", recording(tuner.run))
    set_legacy(on)
    epilogue = [torch.zeros(8, device=DEVICE), torch.ones(8, device=DEVICE), torch.zeros(8, device=DEVICE)]
    pointwise.pointwise(torch.randn(3, 16, device=DEVICE), torch.randn(8, 16, device=DEVICE), *epilogue, "relu")
    stem.stem(torch.randn(1, 3, 4, 4, device=DEVICE), torch.randn(8, 3, 2, 2, device=DEVICE), *epilogue, "relu")
    assert launched == ["tf32" if on else "ieee"] * 2


@pytest.mark.parametrize("matmul, conv", [(False, False), (True, False), (False, True)])
def test_a_gpus_fp32_model_tolerance_is_tf32s_where_either_switch_allows_it(restored_tf32, matmul, conv):
    """The eager peers' convolutions run in cuDNN's TF32 even where matmuls may not (and the
    reverse): ``bench`` holds fp32 logits on a GPU to TF32's tolerance where either switch is on."""
    from convmixer_fast import bench, verify

    _tf32._set(matmul, conv)
    expected = 10 * verify.TF32_TOLERANCE if matmul or conv else verify.MODEL_TOLERANCE[torch.float32]
    assert bench.model_tolerance("fp32", "cuda", 0.0, 0.0) == expected


@pytest.mark.parametrize("matmul, conv", [(False, False), (False, True), (True, False)])
def test_a_gpus_fp32_logits_under_tf32_are_held_to_fp16s_tolerance_where_that_is_wider(restored_tf32, matmul, conv):
    """TF32 keeps fp16's significand: eager-fp32, whose cuDNN convolutions use it by default, may
    lose on the network what fp16 does, which can be more than TF32's fixed floor; with TF32 off, fp32's
    own tolerance holds. (A stand-in cache: the yardsticks of each dtype given, no GPU needed.)"""
    from convmixer_fast import bench, verify

    class Yardsticks:
        logits = torch.linspace(-1.0, 1.0, 10).reshape(2, 5)
        errors = {"fp32": (1e-7, float("nan")), "fp16": (0.03, 0.03)}

        def get(self, workload):
            return self

        def dtype_errors(self, workload, dtype):
            return self.errors[dtype]

    _tf32._set(matmul, conv)
    workload = bench.Workload("convmixer_cifar10", 2, 32, "bf16", "cuda")
    provider = next(p for p in bench.all_providers() if p.name == "eager-fp32")
    check = bench.check_logits(provider, bench.Prepared(lambda: Yardsticks.logits * 1.07), workload, Yardsticks())
    assert check.max_rel_err == pytest.approx(0.07)
    if matmul or conv:  # fp16's: 3x the eager backend's 0.03, past TF32's floor of 0.05
        assert check.ok and check.tolerance == pytest.approx(verify.EAGER_ERROR_FACTOR * 0.03)
    else:
        assert not check.ok and check.tolerance == verify.MODEL_TOLERANCE[torch.float32]
