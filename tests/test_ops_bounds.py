"""Three properties each kernel backend's four ops owe beyond matching the reference within the op
tests' tolerances, on odd sizes that span several tiles of the first config (the one the
interpreter and CONVMIXER_FAST_TRITON_AUTOTUNE=0 run) in every blocked dimension:

- **Rounded once.** A 16-bit output is the fp32 result rounded once: within half a unit in the last
  place of the dtype, plus what fp32 summation in another order may move (``fp32_slack``), of the
  reference computed in fp32 on the CPU and left unrounded. The op tests' tolerances (several
  16-bit steps) cannot see a second rounding of an intermediate (the branch before the residual,
  the accumulator before the epilogue, the bias in the model dtype); this can.
- **In bounds.** Every operand lies in the middle of a NaN-filled buffer and every output between
  two sentinel regions: an op writes its outputs and nothing beside them (a store whose mask was
  dropped writes past the end; a GPU does not fault there as the interpreter may), and reads
  nothing beside its operands (a load whose mask was dropped brings NaN into the result).
- **Past 2**31 elements** (GPU only: 4 to 9 GB a case). A batch whose largest tensor (the input or
  a token output) holds more than 2**31 elements: the last image's result is that of the image alone
  (an offset in 32-bit arithmetic would wrap and read or write another image's place).
"""

from __future__ import annotations

import pytest
import torch

from helpers import DEVICE, ON_GPU_ONLY, skip_module_unless_triton_runs  # noqa: E402
skip_module_unless_triton_runs()

from convmixer_fast.ops.reference import (  # noqa: E402
    depthwise_block_reference,
    head_reference,
    pointwise_reference,
    stem_reference,
)

SIXTEEN_BIT = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7}
SMALLEST_ULP_EXPONENT = {torch.float16: -24, torch.bfloat16: -133}  # of the subnormals
# Elements either side of each operand and output: more than a whole tile row past an output's end
# (a store without its row mask writes up to BLOCK_M - 1 rows of N beyond it: 255 x 136 here), and
# 16-byte aligned for every dtype.
GUARD = 1 << 16
SENTINEL = 1536.0  # exact in every dtype; no output of these inputs comes near it


def _epilogue_vectors(C: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(C, generator=gen) * 0.5, torch.rand(C, generator=gen) + 0.5,
            torch.randn(C, generator=gen) * 0.5]


# op -> (inputs in ``dtype``, the op's epilogue act or None, outputs' (shape, dtype) by keyword,
# the reference, the number of terms each output sums). Sizes against the first configs:
# - stem, 128x128x32 tiles: M = 2*9*11 = 198, N = 136, K = 3*4*4 = 48;
# - depthwise, 16x8 pixels x 128 channels: 17 x 9 x 136 with k = 5 (~9 s a call in the
#   interpreter; 4x that at 37 x 10 x 200 with k = 9);
# - pointwise, 128x128x64 tiles: M = 162, N = 136, K = 200;
# - head: pool 64 positions x 32 channels, classifier 16 x 32 x 32: B = 3, 9 x 11 = 99 positions,
#   C = 53, N = 37.
def _stem(dtype, gen):
    image = torch.randn(2, 3, 37, 45, generator=gen).to(dtype)  # (rows / columns past the last patch: ignored)
    weight = (torch.randn(136, 3, 4, 4, generator=gen) / 48**0.5).to(dtype)
    return [image, weight, *_epilogue_vectors(136, gen)], "gelu", {"out": ((2, 9, 11, 136), dtype)}, stem_reference, 48


def _depthwise_block(dtype, gen):
    x = torch.randn(1, 17, 9, 136, generator=gen).to(dtype)
    weight = (torch.randn(5, 5, 136, generator=gen) / 5).to(dtype)
    return [x, weight, *_epilogue_vectors(136, gen)], "gelu", {"out": ((1, 17, 9, 136), dtype)}, \
        depthwise_block_reference, 5 * 5 + 2


def _pointwise(dtype, gen):
    y = torch.randn(2, 9, 9, 200, generator=gen).to(dtype)
    weight = (torch.randn(136, 200, generator=gen) / 200**0.5).to(dtype)
    return [y, weight, *_epilogue_vectors(136, gen)], "relu", {"out": ((2, 9, 9, 136), dtype)}, pointwise_reference, 200


def _head(dtype, gen):
    x = torch.randn(3, 9, 11, 53, generator=gen).to(dtype)
    weight = (torch.randn(37, 53, generator=gen) / 53**0.5).to(dtype)
    return [x, weight, torch.randn(37, generator=gen)], None, \
        {"pooled": ((3, 53), torch.float32), "out": ((3, 37), dtype)}, head_reference, 9 * 11 + 53


CASES = {"stem": _stem, "depthwise_block": _depthwise_block, "pointwise": _pointwise, "head": _head}


def _in_nan(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the test device, in the middle of a NaN-filled buffer."""
    buffer = torch.full((GUARD + tensor.numel() + GUARD,), float("nan"), dtype=tensor.dtype, device=DEVICE)
    inside = buffer[GUARD:GUARD + tensor.numel()].view(tensor.shape)
    inside.copy_(tensor)
    return inside


def _between_sentinels(shape, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(a NaN-filled output of ``shape``, the buffer around it, SENTINEL either side)."""
    numel = torch.Size(shape).numel()
    buffer = torch.full((GUARD + numel + GUARD,), SENTINEL, dtype=dtype, device=DEVICE)
    inside = buffer[GUARD:GUARD + numel].view(shape)
    inside.fill_(float("nan"))
    return inside, buffer


def _run(backend, op: str, dtype: torch.dtype):
    """(the op's outputs by name, each output's buffer, its fp32 reference unrounded, the sum of
    absolute values of its terms, how many terms) for ``op``'s case in ``dtype``."""
    tensors, act, output_specs, reference, terms = CASES[op](dtype, torch.Generator().manual_seed(0))
    outputs, buffers = {}, {}
    for name, (shape, out_dtype) in output_specs.items():
        outputs[name], buffers[name] = _between_sentinels(shape, out_dtype)
    acts = () if act is None else (act,)
    result = getattr(backend.load_ops(), op)(*[_in_nan(t) for t in tensors], *acts, **outputs)
    assert result is outputs["out"]
    return outputs, buffers, *_fp32_result(reference, tensors, act), terms


def _fp32_result(reference, tensors: list[torch.Tensor], act: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``reference`` on ``tensors`` on the CPU in fp32 (no TF32 in a GPU convolution), unrounded;
    the same of the absolute values with ReLU, the identity there: each output's sum of the
    absolute values of its terms)."""
    exact = reference(*[t.float() for t in tensors], *(() if act is None else (act,)))
    magnitude = reference(*[t.float().abs() for t in tensors], *(() if act is None else ("relu",)))
    return exact, magnitude


def fp32_slack(magnitude: torch.Tensor, terms: int) -> torch.Tensor:
    """How far fp32 results of ``terms`` summed terms (and an fp32 epilogue) may lie apart for two
    summation orders, the kernel's and the reference's: each within ``terms`` roundings of
    2^-24 of ``magnitude`` (the sum of the terms' absolute values; the GELU's error, 2^-21.2 of its
    argument, is under four of them), doubled for the two, doubled again for the tensor cores'
    accumulation, which may truncate rather than round."""
    return (terms + 4) * 2.0**-22 * magnitude


def _ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The dtype's unit in the last place at each of ``values`` (fp32)."""
    _, exponent = torch.frexp(values)  # values = m * 2^exponent, 0.5 <= |m| < 1
    exponent = (exponent - 1 - MANTISSA_BITS[dtype]).clamp(min=SMALLEST_ULP_EXPONENT[dtype])
    return torch.ldexp(torch.ones_like(values), exponent)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
@pytest.mark.parametrize("op", CASES)
def test_a_16bit_output_is_the_fp32_result_rounded_once(kernel_backend, op, dtype):
    outputs, _, exact, magnitude, terms = _run(kernel_backend, op, dtype)
    out = outputs["out"].float().cpu()
    assert not out.isnan().any()
    ulp = _ulp(torch.maximum(exact.abs(), out.abs()), dtype)
    excess = ((out - exact).abs() - fp32_slack(magnitude, terms)) / ulp
    worst = int(excess.argmax())
    assert excess.max() <= 0.5, (
        f"{op} {dtype}: {float(excess.max()):.2f} ulp from the fp32 result beyond fp32's own slack (at most 0.5: "
        f"rounded once); at flat index {worst}: kernel {float(out.flatten()[worst])!r}, "
        f"fp32 {float(exact.flatten()[worst])!r}")


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), *SIXTEEN_BIT[1:]])
@pytest.mark.parametrize("op", CASES)
def test_an_op_writes_its_outputs_and_reads_its_operands_only(kernel_backend, op, dtype):
    outputs, buffers, exact, magnitude, terms = _run(kernel_backend, op, dtype)
    for name, buffer in buffers.items():
        around = torch.cat([buffer[:GUARD], buffer[-GUARD:]])
        changed = int((around != SENTINEL).sum())
        assert changed == 0, f"{op} {dtype}: {changed} elements written beside {name} (the sentinel regions)"
        assert not outputs[name].isnan().any(), f"{op} {dtype}: {name} has NaN (unwritten, or read beside an operand)"
    out = outputs["out"].float().cpu()
    rounding = 0.5 * _ulp(exact.abs(), dtype) if dtype != torch.float32 else 0.0
    assert ((out - exact).abs() <= fp32_slack(magnitude, terms) + 2 * rounding).all()


@ON_GPU_ONLY
@pytest.mark.parametrize("op", CASES)
def test_the_last_image_of_a_batch_past_2_31_elements(kernel_backend, op):
    tensors, act, output_specs, reference, terms = CASES[op](torch.bfloat16, torch.Generator().manual_seed(0))
    image = tensors[0][-1:]  # [1, ...]: the batch's last image; every other image zero
    token_outputs = [shape for shape, _ in output_specs.values() if len(shape) > 2]
    per_image = [image.numel()] + [torch.Size(shape[1:]).numel() for shape in token_outputs]
    batch = 2**31 // max(per_image) + 1
    batched = torch.zeros((batch, *image.shape[1:]), dtype=image.dtype, device=DEVICE)
    batched[-1:] = image.to(DEVICE)
    others = [t.to(DEVICE) for t in tensors[1:]]
    result = getattr(kernel_backend.load_ops(), op)(batched, *others, *(() if act is None else (act,)))
    last = result[-1:].float().cpu()
    del result
    del batched
    torch.cuda.empty_cache()  # (the other test workers on this GPU need the room)
    exact, magnitude = _fp32_result(reference, [image, *tensors[1:]], act)
    assert ((last - exact).abs() <= fp32_slack(magnitude, terms) + _ulp(exact.abs(), torch.bfloat16)).all()
