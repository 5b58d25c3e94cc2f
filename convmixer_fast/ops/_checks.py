"""Argument checks of the four fused ops, shared by every backend's entry (triton, cuda).

Each ``<op>_outputs`` function validates the arguments of one op and returns its output tensor(s):
the caller's ``out`` (checked) or a fresh allocation. Errors name the op, the argument, what was
expected and what came: ``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong shape,
device, layout or value. Pure PyTorch (no Triton, no ``_C``), no device synchronization.
"""

from __future__ import annotations

from typing import Callable

import torch

from .reference import ACTIVATIONS

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_KERNEL_SIZE = 31  # depthwise kernels 1..31 (the CUDA kernel's limit too)


class _Checker:
    """Checks for one op; every message starts with the op's name."""

    def __init__(self, op: str):
        self.op = op

    def fail(self, error: type[Exception], message: str):
        raise error(f"{self.op}: {message}")

    def tensor(self, name: str, t, *, shape=None, dtype=None, dtypes=None, device=None, contiguous=True) -> None:
        if not isinstance(t, torch.Tensor):
            self.fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if dtypes is not None and t.dtype not in dtypes:
            self.fail(TypeError, f"{name} must have a dtype in {_names(dtypes)}, got {t.dtype}")
        if dtype is not None and t.dtype != dtype:
            self.fail(TypeError, f"{name} must have dtype {dtype}, got {t.dtype}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            self.fail(ValueError, f"{name} must have shape {_shape(shape)}, got {_shape(t.shape)}")
        if device is not None and t.device != device:
            self.fail(ValueError, f"{name} must be on {device} (the device of the input), got {t.device}")
        if contiguous and not t.is_contiguous():
            self.fail(ValueError, f"{name} must be contiguous, got strides {t.stride()} for shape {_shape(t.shape)}")

    def expect(self, condition: bool, message: Callable[[], str]) -> None:
        """``message`` is formatted only on failure: under torch.compile with symbolic shapes an
        f-string of the shapes cannot be traced (the passing checks become guards)."""
        if not condition:
            self.fail(ValueError, message())

    def epilogue(self, bias, scale, shift, act, channels: int, device: torch.device) -> None:
        """bias / scale / shift: fp32 ``[channels]`` contiguous on ``device``; ``act`` a known activation."""
        for name, t in (("bias", bias), ("scale", scale), ("shift", shift)):
            self.tensor(name, t, shape=(channels,), dtype=torch.float32, device=device)
        if act not in ACTIVATIONS:
            self.fail(ValueError, f"act must be one of {ACTIVATIONS}, got {act!r}")

    def output(self, name: str, out, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``out`` checked against (shape, dtype, device, contiguous), or a fresh tensor when None."""
        if out is None:
            return torch.empty(shape, dtype=dtype, device=device)
        self.tensor(name, out, shape=shape, dtype=dtype, device=device)
        return out


def _names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def _shape(shape) -> str:
    return str(list(shape))


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """The first byte of ``t``'s elements and one past its last (any non-negative strides); an
    empty tensor spans nothing."""
    start = t.data_ptr()
    if t.is_contiguous():
        return start, start + t.nbytes
    if t.numel() == 0:
        return start, start
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + (last + 1) * t.element_size()


def check_apart(op: str, outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> None:
    """Each output must not overlap an input or an output before it: a kernel's programs read the
    inputs (the depthwise block: the halo of x) while others write, so an overlap is a silently wrong
    answer. Called where real pointers exist (inside the op, not at trace time under torch.compile),
    on tensors already checked to share a device; the cuda backend's C++ checks the same."""
    spans = [(name, _byte_span(t)) for name, t in inputs.items()]
    for out_name, out in outputs.items():
        out_start, out_end = _byte_span(out)
        for name, (start, end) in spans:
            if out_start < end and start < out_end:
                _Checker(op).fail(ValueError, f"{out_name} must not overlap {name}")
        spans.append((out_name, (out_start, out_end)))


def stem_outputs(image, weight, bias, scale, shift, act, out) -> torch.Tensor:
    """image ``[B, Cin, H, W]`` (fp32/fp16/bf16, any strides, H and W >= p), weight ``[C, Cin, p, p]``
    contiguous (the model dtype, any of the three); returns out ``[B, H//p, W//p, C]`` (weight dtype)."""
    check = _Checker("stem")
    check.tensor("image", image, dtypes=SUPPORTED_DTYPES, contiguous=False)
    check.expect(image.dim() == 4, lambda: f"image must be [B, Cin, H, W], got shape {_shape(image.shape)}")
    B, Cin, H, W = image.shape
    check.tensor("weight", weight, dtypes=SUPPORTED_DTYPES, device=image.device)
    check.expect(
        weight.dim() == 4 and weight.shape[1] == Cin and weight.shape[2] == weight.shape[3] and weight.shape[2] >= 1,
        lambda: f"weight must be [C, Cin, p, p] with Cin={Cin} (image.shape[1]) and square patches, p >= 1, "
        f"got shape {_shape(weight.shape)}",
    )
    C, _, patch, _ = weight.shape
    check.expect(H >= patch and W >= patch,
                 lambda: f"image H and W must be >= the patch size {patch}, got H={H}, W={W}")
    check.epilogue(bias, scale, shift, act, C, image.device)
    return check.output("out", out, (B, H // patch, W // patch, C), weight.dtype, image.device)


def depthwise_block_outputs(x, weight, bias, scale, shift, act, out) -> torch.Tensor:
    """x ``[B, H, W, C]`` tokens, weight ``[k, k, C]`` (1 <= k <= 31) in x's dtype; returns out
    (x's shape and dtype; see also ``check_apart``)."""
    check = _Checker("depthwise_block")
    check.tensor("x", x, dtypes=SUPPORTED_DTYPES)
    check.expect(x.dim() == 4, lambda: f"x must be [B, H, W, C] tokens, got shape {_shape(x.shape)}")
    B, H, W, C = x.shape
    check.expect(B > 0 and H > 0 and W > 0 and C > 0, lambda: f"x must be non-empty, got shape {_shape(x.shape)}")
    check.expect(H * W * C < 2**31, lambda: f"one image must have fewer than 2**31 elements, got H*W*C = {H * W * C}")
    check.tensor("weight", weight, dtype=x.dtype, device=x.device)
    check.expect(
        weight.dim() == 3 and weight.shape[0] == weight.shape[1] and weight.shape[2] == C
        and 1 <= weight.shape[0] <= MAX_KERNEL_SIZE,
        lambda: f"weight must be [k, k, C] with C={C} and 1 <= k <= {MAX_KERNEL_SIZE}, "
        f"got shape {_shape(weight.shape)}",
    )
    check.epilogue(bias, scale, shift, act, C, x.device)
    return check.output("out", out, x.shape, x.dtype, x.device)


def pointwise_outputs(y, weight, bias, scale, shift, act, out) -> torch.Tensor:
    """y ``[..., K]`` tokens, weight ``[N, K]`` in y's dtype; returns out ``[..., N]`` (y's dtype)."""
    check = _Checker("pointwise")
    check.tensor("y", y, dtypes=SUPPORTED_DTYPES)
    check.expect(y.dim() >= 1, lambda: "y must be [..., K] tokens, got a 0-d tensor")
    K = y.shape[-1]
    check.tensor("weight", weight, dtype=y.dtype, device=y.device)
    check.expect(weight.dim() == 2 and weight.shape[1] == K,
                 lambda: f"weight must be [N, K] with K={K} (y.shape[-1]), got shape {_shape(weight.shape)}")
    N = weight.shape[0]
    check.epilogue(bias, scale, shift, act, N, y.device)
    return check.output("out", out, (*y.shape[:-1], N), y.dtype, y.device)


def head_outputs(x, weight, bias, pooled, out) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[B, H, W, C]`` tokens (non-empty), weight ``[N, C]`` in x's dtype, bias fp32 ``[N]``;
    returns (pooled fp32 ``[B, C]`` workspace, out ``[B, N]`` in x's dtype)."""
    check = _Checker("head")
    check.tensor("x", x, dtypes=SUPPORTED_DTYPES)
    check.expect(x.dim() == 4, lambda: f"x must be [B, H, W, C] tokens, got shape {_shape(x.shape)}")
    B, H, W, C = x.shape
    check.expect(B > 0 and H > 0 and W > 0, lambda: f"x must be non-empty, got shape {_shape(x.shape)}")
    check.expect(H * W * C < 2**31, lambda: f"one image must have fewer than 2**31 elements, got H*W*C = {H * W * C}")
    check.tensor("weight", weight, dtype=x.dtype, device=x.device)
    check.expect(weight.dim() == 2 and weight.shape[1] == C and weight.shape[0] > 0,
                 lambda: f"weight must be [N, C] with C={C} and N >= 1, got shape {_shape(weight.shape)}")
    N = weight.shape[0]
    check.tensor("bias", bias, shape=(N,), dtype=torch.float32, device=x.device)
    pooled = check.output("pooled", pooled, (B, C), torch.float32, x.device)
    return pooled, check.output("out", out, (B, N), x.dtype, x.device)


def epilogue_entry(name: str, outputs: Callable, op: Callable, doc: str) -> Callable:
    """A backend's entry ``name(x, weight, bias, scale, shift, act, out=None) -> out`` for a kernel
    with the fused epilogue (stem, depthwise block, pointwise): ``outputs`` (``<op>_outputs``
    above) checks the arguments and returns ``out`` or a fresh one, ``op`` writes it."""

    def entry(x, weight, bias, scale, shift, act, out=None):
        out = outputs(x, weight, bias, scale, shift, act, out)
        op(x, weight, bias, scale, shift, act, out)
        return out

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = doc
    return entry
