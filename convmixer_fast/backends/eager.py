"""The ``eager`` backend: the references of ``ops.reference`` (plain PyTorch, NHWC tokens).

Runs on every device torch runs on; it is also what ``verify`` compares the kernels with.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ..ops import reference
from . import BackendOps


@torch.compiler.assume_constant_result  # (torch 2.11's dynamo cannot trace the C function)
def has_autocast(device_type: str) -> bool:
    """Whether ``device_type`` has autocast at all ("meta", say, has not)."""
    return torch.amp.is_autocast_available(device_type)


def _writing_into_out(reference_fn):
    """The reference with the backends' ``out=`` (and, for the head, unused ``pooled=``) keywords,
    computed in its operands' dtypes as the kernels are: a caller's autocast does not reach it (it
    would turn an fp32 model's convolutions and matmuls into 16-bit ones, and ``auto``'s reference
    for judging the kernels with them)."""

    @functools.wraps(reference_fn)
    def op(*args, out=None, pooled=None):
        device_type = args[0].device.type
        autocasting = has_autocast(device_type) and torch.is_autocast_enabled(device_type)
        with torch.autocast(device_type, enabled=False) if autocasting else contextlib.nullcontext():
            result = reference_fn(*args)
        return result if out is None else out.copy_(result)

    return op


OPS = BackendOps(
    stem=_writing_into_out(reference.stem_reference),
    depthwise_block=_writing_into_out(reference.depthwise_block_reference),
    pointwise=_writing_into_out(reference.pointwise_reference),
    head=_writing_into_out(reference.head_reference),
)
