"""The argument checks every backend entry runs (``convmixer_fast/ops/_checks.py``): each bad
argument raises the documented error naming the op, the argument, what was expected and what came.
Pure PyTorch: runs everywhere. (Each backend's own entry is shown to use them in test_ops_*.py and
test_cuda_glue.py.)"""

from __future__ import annotations

import pytest
import torch

from convmixer_fast.ops import _checks

F16, F32 = torch.float16, torch.float32


def _epilogue(channels):
    return dict(bias=torch.zeros(channels), scale=torch.ones(channels), shift=torch.zeros(channels))


def _call(outputs_fn, base: dict, changes: dict):
    args = dict(base)
    args.update({k: (v(args) if callable(v) else v) for k, v in changes.items()})
    return outputs_fn(**args)


STEM = dict(image=torch.randn(1, 3, 8, 8), weight=torch.randn(8, 3, 2, 2, dtype=F16), **_epilogue(8), act="relu",
            out=None)
DEPTHWISE = dict(x=torch.randn(1, 4, 5, 6), weight=torch.randn(3, 3, 6), **_epilogue(6), act="gelu", out=None)
POINTWISE = dict(y=torch.randn(2, 3, 16, dtype=F16), weight=torch.randn(8, 16, dtype=F16), **_epilogue(8),
                 act="gelu", out=None)
HEAD = dict(x=torch.randn(2, 3, 3, 8, dtype=F16), weight=torch.randn(5, 8, dtype=F16), bias=torch.zeros(5),
            pooled=None, out=None)

CASES = [
    # stem
    ("stem", dict(image=lambda a: a["image"].int()), TypeError, "stem: image must have a dtype in float32"),
    ("stem", dict(image="pixels"), TypeError, "image must be a torch.Tensor, got str"),
    ("stem", dict(image=lambda a: a["image"][0]), ValueError, r"image must be \[B, Cin, H, W\], got shape \[3, 8, 8\]"),
    ("stem", dict(image=lambda a: a["image"][:, :, :1]), ValueError, "H and W must be >= the patch size 2, got H=1"),
    ("stem", dict(weight=lambda a: a["weight"][..., :1].contiguous()), ValueError, "square patches"),
    ("stem", dict(weight=lambda a: a["weight"][..., :0, :0].contiguous()), ValueError, "square patches, p >= 1"),
    ("stem", dict(weight=lambda a: a["weight"][:, :2].contiguous()), ValueError, r"Cin=3 \(image.shape\[1\]\)"),
    ("stem", dict(weight=lambda a: a["weight"].transpose(2, 3)), ValueError, "weight must be contiguous"),
    ("stem", dict(weight=lambda a: a["weight"].double()), TypeError, "weight must have a dtype in"),
    ("stem", dict(bias=lambda a: a["bias"][:5]), ValueError, r"bias must have shape \[8\], got \[5\]"),
    ("stem", dict(scale=lambda a: a["scale"].half()), TypeError, "scale must have dtype torch.float32, got torch.float16"),
    ("stem", dict(act="gelu_tanh"), ValueError, "act must be one of"),
    ("stem", dict(out=torch.empty(1, 4, 4, 8)), TypeError, "out must have dtype torch.float16, got torch.float32"),
    ("stem", dict(out=torch.empty(1, 8, 8, 8, dtype=F16)), ValueError, r"out must have shape \[1, 4, 4, 8\]"),
    # depthwise
    ("depthwise", dict(act="tanh"), ValueError, "depthwise_block: act must be one of"),
    ("depthwise", dict(x=lambda a: a["x"][0]), ValueError, r"x must be \[B, H, W, C\] tokens"),
    ("depthwise", dict(x=lambda a: a["x"].double()), TypeError, "x must have a dtype in float32, float16, bfloat16"),
    ("depthwise", dict(x=lambda a: a["x"][:, :, :0]), ValueError, "x must be non-empty"),
    ("depthwise", dict(weight=lambda a: a["weight"][:, :2].contiguous()), ValueError, r"weight must be \[k, k, C\]"),
    ("depthwise", dict(weight=lambda a: a["weight"][..., :5].contiguous()), ValueError, r"\[k, k, C\] with C=6"),
    ("depthwise", dict(weight=torch.zeros(32, 32, 6)), ValueError, "1 <= k <= 31"),
    ("depthwise", dict(weight=lambda a: a["weight"].half()), TypeError, "weight must have dtype torch.float32"),
    ("depthwise", dict(bias=lambda a: a["bias"].half()), TypeError, "bias must have dtype torch.float32"),
    ("depthwise", dict(shift=lambda a: a["shift"][None]), ValueError, r"shift must have shape \[6\]"),
    ("depthwise", dict(out=torch.empty(1, 4, 5, 7)), ValueError, r"out must have shape \[1, 4, 5, 6\]"),
    ("depthwise", dict(x=lambda a: a["x"].transpose(1, 2).contiguous().transpose(1, 2)), ValueError,
     "x must be contiguous"),
    ("depthwise", dict(out=torch.empty(1, 5, 4, 6).transpose(1, 2)), ValueError, "out must be contiguous"),
    # pointwise
    ("pointwise", dict(y=lambda a: a["y"].long()), TypeError, "pointwise: y must have a dtype in"),
    ("pointwise", dict(y=lambda a: a["y"][0, 0, 0]), ValueError, "y must be"),
    ("pointwise", dict(y=lambda a: a["y"].transpose(0, 1)), ValueError, "y must be contiguous"),
    ("pointwise", dict(weight=lambda a: a["weight"].float()), TypeError, "weight must have dtype torch.float16"),
    ("pointwise", dict(weight=lambda a: a["weight"][:, :8].contiguous()), ValueError, r"\[N, K\] with K=16"),
    ("pointwise", dict(weight=lambda a: a["weight"].t().contiguous().t()), ValueError, "weight must be contiguous"),
    ("pointwise", dict(scale=lambda a: a["scale"][:4]), ValueError, r"scale must have shape \[8\], got \[4\]"),
    ("pointwise", dict(out=torch.empty(2, 3, 8)), TypeError, "out must have dtype torch.float16"),
    ("pointwise", dict(out=torch.empty(2, 8, dtype=F16)), ValueError, r"out must have shape \[2, 3, 8\]"),
    # head
    ("head", dict(x=lambda a: a["x"].reshape(2, 9, 8)), ValueError, r"head: x must be \[B, H, W, C\]"),
    ("head", dict(x=lambda a: a["x"].double()), TypeError, "x must have a dtype in"),
    ("head", dict(x=lambda a: a["x"][:0]), ValueError, "x must be non-empty"),
    ("head", dict(x=lambda a: a["x"].transpose(1, 2)), ValueError, "x must be contiguous"),
    ("head", dict(weight=lambda a: a["weight"][:, :7].contiguous()), ValueError, r"\[N, C\] with C=8"),
    ("head", dict(weight=lambda a: a["weight"].float()), TypeError, "weight must have dtype torch.float16"),
    ("head", dict(bias=lambda a: a["bias"][:4]), ValueError, r"bias must have shape \[5\]"),
    ("head", dict(bias=lambda a: a["bias"].half()), TypeError, "bias must have dtype torch.float32"),
    ("head", dict(pooled=torch.empty(2, 9)), ValueError, r"pooled must have shape \[2, 8\]"),
    ("head", dict(pooled=torch.empty(2, 8, dtype=F16)), TypeError, "pooled must have dtype torch.float32"),
    ("head", dict(out=torch.empty(2, 4, dtype=F16)), ValueError, r"out must have shape \[2, 5\]"),
    ("head", dict(out=torch.empty(2, 5)), TypeError, "out must have dtype torch.float16"),
    ("head", dict(weight=torch.empty(0, 8, dtype=F16), bias=torch.zeros(0)), ValueError, r"N >= 1, got shape \[0, 8\]"),
]
OPS = {
    "stem": (_checks.stem_outputs, STEM),
    "depthwise": (_checks.depthwise_block_outputs, DEPTHWISE),
    "pointwise": (_checks.pointwise_outputs, POINTWISE),
    "head": (_checks.head_outputs, HEAD),
}


@pytest.mark.parametrize("op, changes, error, match", CASES, ids=[f"{c[0]}-{c[3][:40]}" for c in CASES])
def test_bad_argument_raises(op, changes, error, match):
    outputs_fn, base = OPS[op]
    with pytest.raises(error, match=match):
        _call(outputs_fn, base, changes)


@pytest.mark.parametrize("op, argument", [(op, argument) for op, (_, base) in OPS.items()
                                          for argument in base if argument not in ("act", "image", "x", "y")])
def test_wrong_device_names_both(op, argument):
    """Every tensor argument but the input (whose device is the one expected), outputs included."""
    outputs_fn, base = OPS[op]
    if base[argument] is None:  # an output: one of the right shape and dtype, on the wrong device
        allocated = outputs_fn(**base)
        allocated = dict(zip(("pooled", "out"), allocated)) if op == "head" else {"out": allocated}
        change = torch.empty_like(allocated[argument], device="meta")
    else:
        change = base[argument].to("meta")
    with pytest.raises(ValueError, match=rf"{argument} must be on cpu \(the device of the input\), got meta"):
        _call(outputs_fn, base, {argument: change})


def test_outputs_allocated_with_the_right_shape_and_dtype():
    assert _checks.stem_outputs(**STEM).shape == (1, 4, 4, 8) and _checks.stem_outputs(**STEM).dtype == F16
    assert _checks.depthwise_block_outputs(**DEPTHWISE).shape == (1, 4, 5, 6)
    assert _checks.pointwise_outputs(**POINTWISE).shape == (2, 3, 8)
    pooled, out = _checks.head_outputs(**HEAD)
    assert pooled.shape == (2, 8) and pooled.dtype == F32 and out.shape == (2, 5) and out.dtype == F16


def test_given_outputs_are_returned():
    out = torch.empty(1, 4, 5, 6)
    assert _checks.depthwise_block_outputs(**dict(DEPTHWISE, out=out)) is out


@pytest.mark.parametrize("outputs_fn, base", [
    (_checks.depthwise_block_outputs, dict(DEPTHWISE, weight=torch.empty(3, 3, 1, device="meta"),
                                           **{k: torch.empty(1, device="meta") for k in ("bias", "scale", "shift")})),
    (_checks.head_outputs, dict(HEAD, weight=torch.empty(5, 1, device="meta", dtype=F16),
                                bias=torch.empty(5, device="meta"))),
], ids=["depthwise_block", "head"])
def test_an_image_of_2_31_elements_is_rejected(outputs_fn, base):
    # The kernels index one image with 32-bit ints. Meta tensors: the check runs, nothing is allocated.
    dtype = base["weight"].dtype
    x = torch.empty(1, 46341, 46341, 1, device="meta", dtype=dtype)
    with pytest.raises(ValueError, match=r"one image must have fewer than 2\*\*31 elements, got H\*W\*C = 2147488281"):
        outputs_fn(**{**base, "x": x})


@pytest.mark.parametrize("offset", [0, 7], ids=["same", "partial"])
def test_outputs_overlapping_inputs_or_each_other_rejected(offset):
    x = DEPTHWISE["x"]
    storage = torch.zeros(2 * x.numel())
    with pytest.raises(ValueError, match="depthwise_block: out must not overlap x"):
        _checks.check_apart("depthwise_block", {"out": storage[offset: offset + x.numel()].view_as(x)},
                            {"x": storage[: x.numel()].view_as(x)})
    weight = torch.zeros(64)
    with pytest.raises(ValueError, match="head: out must not overlap pooled"):
        _checks.check_apart("head", {"pooled": weight[:8], "out": weight[offset: offset + 8]}, {})
    _checks.check_apart("depthwise_block", {"out": torch.empty_like(x)}, {"x": x, "weight": weight})
    _checks.check_apart("stem", {"out": storage[:0]}, {"image": storage})  # nothing written: no overlap


def test_a_strided_input_spans_its_gaps():
    """A cropped image spans more bytes than it holds: an ``out`` in its gaps' range still overlaps."""
    storage = torch.zeros(4, 3, 8, 8)
    image = storage[:, :, :4, :4]
    with pytest.raises(ValueError, match="stem: out must not overlap image"):
        _checks.check_apart("stem", {"out": storage[1, 0, 6]}, {"image": image})
    _checks.check_apart("stem", {"out": torch.empty(8)}, {"image": image})
