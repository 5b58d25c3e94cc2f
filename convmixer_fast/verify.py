"""``python -m convmixer_fast verify``: every kernel of a backend against its reference.

Layer by layer, each kernel and the reference of ``ops.reference`` get identical inputs (the
reference's output of the previous step), so a row shows that kernel's own error; a last row
compares the whole model's logits with the fp32 eager reference model (``convmixer_fast.reference``)
holding the same trained-looking random weights (``testing.randomize_weights_``).

Errors are reported as ``max |out - ref|`` and that divided by ``max |ref|``; a row fails past the
relative tolerance of its dtype (``KERNEL_TOLERANCE`` per kernel, ``model_tolerance`` end to end).
The 16-bit tolerances are a few units in the last place of the output format: kernels round once
to the output dtype, the model compounds that over 2*depth + 2 steps. fp32 on a GPU gets TF32's
where either TF32 switch is on: the kernels follow the matmul switch, the references'
convolutions (and the reference model's) cuDNN's, which torch leaves on.

End to end the rounding is amplified by the depth: the random weights make a chaotic network
(a relative perturbation of 1e-3 of the stem's output grows ~1.25x per block of ConvMixer-1536/20
and saturates near 0.7 by the end of ConvMixer-768/32), so that PyTorch itself, running the model
in bf16 (its ops rounding to bf16 where the kernels do), is 0.14 (1536/20) and 0.21 (768/32) from
the fp32 logits: past ``MODEL_TOLERANCE``'s 0.1, and a fixed tolerance above them would let many
bugs through on the shallower networks. So the model's
tolerance is ``MODEL_TOLERANCE`` or ``EAGER_ERROR_FACTOR`` times the error of the eager backend in
the same dtype, whichever is larger: the kernels lose at most a few times what the dtype itself
loses on that network (torch's autocast came to up to 1.8x the eager backend's error: 0.39 on
768/32 in bf16; measured on the CPU machine, batch 4, 224 px). The eager backend shares
``prepare_params`` with the kernels, so its error counts only up to ``PLAIN_ERROR_CAP`` times that
of plain PyTorch (the reference module cast to the dtype). In bf16 on the CPU machine plain
PyTorch's error was 0.86-1.25x the eager backend's: 0.047 against 0.040 (CIFAR config, batch 8,
32 px), 0.154 against 0.123 (1024/20 p14, batch 2, 224 px), 0.252 against 0.292 (768/32, batch 1,
224 px).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass

import torch

from ._tf32 import any_allowed
from .backends import BACKENDS, resolve_ops
from .model import ACTIVATION_LAYERS, ConvMixer
from .reference import ConvMixerReference
from .testing import randomize_weights_

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
KERNEL_TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}
MODEL_TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}
EAGER_ERROR_FACTOR = 3.0  # the model's logits against the eager backend's error in their dtype
PLAIN_ERROR_CAP = 2.0  # the eager backend's error counts up to this times plain PyTorch's in the dtype
TF32_TOLERANCE = 5e-3  # fp32 on a GPU where torch allows TF32 (``tolerances``)


@dataclass(frozen=True)
class Row:
    step: str
    max_abs: float
    max_rel: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance  # False for NaN


def tolerances(dtype: torch.dtype, device: torch.device, tf32: bool | None = None) -> tuple[float, float]:
    """(per-kernel, whole-model) relative tolerance for ``dtype`` on ``device``; ``tf32``: whether fp32
    math may run in TF32 there (default: where either switch allows it; the kernels follow the
    matmul one, the references' convolutions cuDNN's)."""
    if tf32 is None:
        tf32 = any_allowed()
    if dtype == torch.float32 and device.type == "cuda" and tf32:
        return TF32_TOLERANCE, 10 * TF32_TOLERANCE
    return KERNEL_TOLERANCE[dtype], MODEL_TOLERANCE[dtype]


def model_tolerance(floor: float, eager_error: float, plain_error: float) -> float:
    """The whole-model tolerance: ``floor`` (``MODEL_TOLERANCE`` or TF32's) or ``EAGER_ERROR_FACTOR``
    times ``eager_error``, the eager backend's relative error in the same dtype, if larger. That
    error counts up to ``PLAIN_ERROR_CAP`` times ``plain_error`` (``plain_torch_error``: no
    convmixer_fast code), so a bug the eager backend shares with the kernels (in ``prepare_params``,
    for one dtype, say) cannot raise the yardstick it is judged by. A NaN error leaves ``floor``
    (``eager_error``) or no cap (``plain_error``)."""
    yardstick = eager_error if math.isnan(plain_error) else min(eager_error, PLAIN_ERROR_CAP * plain_error)
    return floor if math.isnan(yardstick) else max(floor, EAGER_ERROR_FACTOR * yardstick)


def plain_torch_error(reference: torch.nn.Module, image: torch.Tensor, dtype: torch.dtype,
                      reference_logits: torch.Tensor) -> float:
    """The relative error of plain PyTorch in ``dtype`` against ``reference_logits``: the fp32
    ``reference`` module copied and cast to ``dtype``, on ``image`` rounded to it. NaN (no cap in
    ``model_tolerance``) for float32, where that copy is the reference itself, and where it cannot
    run (out of memory, say: warned; the model under test is not blamed for it)."""
    if dtype == torch.float32:
        return math.nan
    try:
        plain = copy.deepcopy(reference).to(dtype)
        with torch.inference_mode():
            return errors(plain(image.to(dtype)), reference_logits)[1]
    except Exception as error:  # (a yardstick that cannot be had leaves the eager backend's alone)
        warnings.warn(f"verify: plain PyTorch could not run the reference in {dtype} ({type(error).__name__}: "
                      f"{error}); the tolerance counts the eager backend's error uncapped", stacklevel=2)
        return math.nan


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(``max |out - ref|``, that divided by ``max |ref|``), in fp32; NaN anywhere gives NaN."""
    diff = (out.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    return diff, diff / scale if scale > 0 else diff


def _row(step: str, out: torch.Tensor, ref: torch.Tensor, tolerance: float) -> Row:
    return Row(step, *errors(out, ref), tolerance)


@torch.no_grad()
def verify_model(model: ConvMixer, reference: torch.nn.Module, image: torch.Tensor, backend: str) -> list[Row]:
    """Rows for each kernel of ``backend`` on ``model`` (its device and dtype) and for its logits
    ("auto": the backend it measures fastest for each op, as the model runs it)."""
    device, dtype = model.head.weight.device, model.head.weight.dtype
    kernel_tol, model_tol = tolerances(dtype, device)
    ops = resolve_ops(backend, device, dtype, model.dim, measure=True).ops
    ref_ops = BACKENDS["eager"].load_ops()
    params = model._prepared_params()
    act = params.act
    rows = []

    def step(name, op_name, *args, **kwargs):
        out = getattr(ops, op_name)(*args, **kwargs)
        ref = getattr(ref_ops, op_name)(*args, **kwargs)
        rows.append(_row(name, out, ref, kernel_tol))
        return ref

    x = step("stem", "stem", image, params.stem.weight, *params.stem.epilogue, act)
    for index, block in enumerate(params.blocks):
        y = step(f"block {index} depthwise", "depthwise_block", x, block.depthwise.weight, *block.depthwise.epilogue, act)
        x = step(f"block {index} pointwise", "pointwise", y, block.pointwise.weight, *block.pointwise.epilogue, act)
    step("head", "head", x, params.head_folded.weight, params.head_folded.bias)

    reference_logits = reference(image.float())
    eager_logits, logits = (_logits(model, name, image) for name in ("eager", backend))
    plain_error = plain_torch_error(reference, image, dtype, reference_logits)
    tolerance = model_tolerance(model_tol, errors(eager_logits, reference_logits)[1], plain_error)
    rows.append(_row("eager backend logits vs fp32 reference", eager_logits, reference_logits, tolerance))
    rows.append(_row("model logits vs fp32 reference", logits, reference_logits, tolerance))
    return rows


def _logits(model: ConvMixer, backend: str, image: torch.Tensor) -> torch.Tensor:
    previous, model.backend = model.backend, backend
    try:
        return model(image)
    finally:
        model.backend = previous


def build_reference(config: dict, device: torch.device, image_size: int, seed: int = 0) -> ConvMixerReference:
    """The fp32 reference model of a config (``configs.MODEL_CONFIGS`` entry) on ``device``, with
    random trained-looking weights for images of ``image_size``."""
    arch = {k: v for k, v in config.items() if k != "act_layer"}
    activation = ACTIVATION_LAYERS[config.get("act_layer", "gelu")]
    model = ConvMixerReference(**arch, activation=activation).to(device)
    return randomize_weights_(model, image_size=image_size, seed=seed)


def build_pair(config: dict, dtype: torch.dtype, device: torch.device, image_size: int, seed: int = 0):
    """(ConvMixer in ``dtype``, fp32 reference nn.Sequential) with the same random trained-looking
    weights for images of ``image_size``."""
    reference = build_reference(config, device, image_size, seed)
    return ConvMixer.from_eager(reference).to(dtype=dtype), reference


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'step':<34} {'max abs err':>12} {'max rel err':>12} {'tolerance':>10}  ok"]
    for row in rows:
        lines.append(f"{row.step:<34} {row.max_abs:>12.3e} {row.max_rel:>12.3e} {row.tolerance:>10.1e}  "
                     f"{'yes' if row.ok else 'NO'}")
    return "\n".join(lines)


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [{**asdict(row), "ok": row.ok} for row in rows]
