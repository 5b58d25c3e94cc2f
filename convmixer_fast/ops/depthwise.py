"""Depthwise block: ``Y = X + scale * act(dwconv_k(X) + bias) + shift`` (DESIGN.md §2, row 2).

``X`` is ``[B, H, W, C]`` NHWC tokens (fp32 / fp16 / bf16, contiguous), the depthwise weight is
``[k, k, C]`` (tap-major, channels contiguous) in the dtype of ``X``, ``bias`` / ``scale`` /
``shift`` are fp32 ``[C]``. Stride 1, torch's "same" padding: ``(k-1)//2`` before and ``k//2``
after, in both spatial dimensions (odd and even ``k``, ``1 <= k <= 31``). Accumulation and the
epilogue are fp32; the result is rounded once to the dtype of ``X`` at the store.

Kernel ``_depthwise_block_kernel`` — walking down the rows
----------------------------------------------------------
Grid ``(B * cdiv(H, TILE_H) * cdiv(W, TILE_W), cdiv(C, BLOCK_C))``. Each program owns an output
tile of ``TILE_H`` rows x ``TILE_W`` columns x ``BLOCK_C`` channels of one image, one channel per
thread (``BLOCK_C = 32 * num_warps``), and keeps in registers, as ``tl`` tuples of ``[BLOCK_C]``
fp32 tensors (each its own register): the ``k * k`` taps, converted once per program; ``k``
*slots* of ``TILE_W`` accumulators, one slot per output row in flight; and one input row of the
``TILE_W + k - 1`` halo columns.

It walks down the input rows ``r`` that feed the tile (a runtime loop). Each input row is loaded
and converted **once** and feeds every output it touches: before step ``r`` slot ``s`` holds
output row ``r + pad - (k - 1) + s``, which input row ``r`` reaches through kernel row
``k - 1 - s``, so the step is ``k * k * TILE_W`` FMAs (output column ``ox`` of slot ``s`` takes
input column ``ox + j`` times tap ``(k - 1 - s, j)``), all statically unrolled. Slot 0 is then
complete: it gets the epilogue and is stored, and the slots shift down by one (``tl`` tuple
renaming: the last FMA of each slot writes the register of the slot below, so the shift costs no
moves). New slots start at the conv bias. The next input row's loads are issued before the
current row's FMAs (register double buffering), which hides their latency behind ~650 FMAs.

Rows: the walk starts at the first input row in the image that feeds the tile and ends at the
last; output rows whose remaining kernel rows lie in the bottom padding are completed by a second
loop that only shifts and stores, so no FMA runs on a padding row. An interior tile walks
``TILE_H + k - 1`` rows for ``TILE_H`` output rows, so tall tiles waste least (``TILE_H = 32``
covers a 32x32 map: 32 steps and 4 store-only ones at k = 9). Columns: the halo columns outside
the image are masked loads (zeros), and their FMAs still run: with ``TILE_W = 8, k = 9`` on a
32-wide map ~7% of the FMAs. Outputs of the slots that lie above or below the image (the first
and last ``pad`` rows' partial sums that no store uses) are the same ~7% at k = 9.

What the compiled code does (bf16, k = 9, GELU, ``TILE_H = 32, TILE_W = 8, BLOCK_C = 128``, 4
warps, sm_90a, Triton 3.9): the step is 985 instructions, of them 648 ``FFMA`` for the taps and
56 more in the epilogue of its 8 outputs, 24 2-byte loads (16 halo columns, 8 residuals), ~100
``PRMT`` / ``SHF`` for the conversions and the zero fill of masked loads, 8 stores; 255
registers, no spills. ~131 instructions per output, against ~181-215 for the previous kernel
(its best config; ``benchmarks/NOTES.md`` §3). Up to ``k = 9`` no config spills; beyond it the taps
crowd the registers (``_prune_configs``).

The residual ``X`` at the output positions is re-read in the epilogue (the input row was loaded
``k - 1 - pad`` steps earlier: an L1 or L2 hit) and the epilogue ``x + (scale * act(acc) + shift)``
is fp32 (``acc`` started at the bias).
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from .._settings import TRITON_COMPILE_OPTIONS
from ._checks import MAX_KERNEL_SIZE, depthwise_block_outputs, epilogue_entry
from ._triton_utils import (
    ACTIVATION_CODES,
    KernelSpec,
    TRITON_DTYPE_NAMES,
    apply_activation,
    autotune,
    config_label,
    device_guard,
    epilogue_custom_op,
)

__all__ = ["depthwise_block", "kernel_specs", "CONFIGS", "MAX_KERNEL_SIZE"]

# Output tile TILE_H x TILE_W x BLOCK_C per program, one channel per thread (BLOCK_C = 32 x
# num_warps). Per thread: K x TILE_W accumulators, two input rows of TILE_W + K - 1 columns (the
# current and the prefetched one) and the K x K taps. The first config is the one the interpreter
# (and CONVMIXER_FAST_TRITON_AUTOTUNE=0, up to k = 9; the first of ``_prune_configs`` beyond) uses.
CONFIGS = [
    triton.Config({"TILE_H": 16, "TILE_W": 8, "BLOCK_C": 128}, num_warps=4, num_stages=1),
    triton.Config({"TILE_H": 32, "TILE_W": 8, "BLOCK_C": 128}, num_warps=4, num_stages=1),
    triton.Config({"TILE_H": 32, "TILE_W": 8, "BLOCK_C": 64}, num_warps=2, num_stages=1),
    triton.Config({"TILE_H": 16, "TILE_W": 8, "BLOCK_C": 64}, num_warps=2, num_stages=1),
    triton.Config({"TILE_H": 8, "TILE_W": 8, "BLOCK_C": 64}, num_warps=2, num_stages=1),
    triton.Config({"TILE_H": 16, "TILE_W": 4, "BLOCK_C": 128}, num_warps=4, num_stages=1),
]

# Compiled for sm_90a and sm_80, every config fits in 255 registers without spilling up to this
# kernel size (every named ConvMixer: k = 7 and 9). Beyond it the K x K taps crowd the registers
# and every config spills, TILE_W = 4 least (sm_90a, per thread: 24 bytes at k = 10, 528 at 12,
# 3.3 KB at 15): correct, but slow.
_MAX_K_WITHOUT_SPILLS = 9


def _prune_configs(configs, named_args, **kwargs):
    """All configs up to _MAX_K_WITHOUT_SPILLS, the narrowest tiles beyond it (fewest accumulators
    and input columns beside the taps). The autotuner passes only the first config under the
    interpreter, where registers do not matter: it is then kept whatever k."""
    k = kwargs.get("K", named_args.get("K"))
    if k <= _MAX_K_WITHOUT_SPILLS:
        return configs
    narrowest = min(c.kwargs["TILE_W"] for c in configs)
    return [c for c in configs if c.kwargs["TILE_W"] == narrowest]


@triton.jit
def _load_input_row(x_image, r, r_end, w0, W, C, channels, channel_mask,
                    K: tl.constexpr, TILE_W: tl.constexpr):
    """Input row ``r`` at columns ``w0 - pad .. w0 + TILE_W + K - 2``: ``TILE_W + K - 1`` fp32
    ``[BLOCK_C]``; zeros outside the image and for ``r >= r_end`` (the prefetch past the walk)."""
    PAD: tl.constexpr = (K - 1) // 2
    in_row = tl.zeros_like(channels) + r  # [BLOCK_C] (a block, not a scalar: see _store_output_row)
    row_mask = channel_mask & (in_row < r_end)  # [BLOCK_C]
    column_ptrs = x_image + (r * W + w0 - PAD) * C + channels  # [BLOCK_C], first halo column
    row = ()
    for cx in tl.static_range(TILE_W + K - 1):
        in_col = tl.zeros_like(channels) + (w0 + cx - PAD)  # [BLOCK_C]
        mask = row_mask & (in_col >= 0) & (in_col < W)
        row = row + (tl.load(column_ptrs, mask=mask, other=0.0).to(tl.float32),)  # [BLOCK_C]
        column_ptrs += C
    return row


@triton.jit
def _slot(acc, s, TILE_W: tl.constexpr):
    """Slot ``s`` of the accumulators: ``acc[s * TILE_W : (s + 1) * TILE_W]``."""
    slot = ()
    for ox in tl.static_range(TILE_W):
        slot = slot + (acc[s * TILE_W + ox],)
    return slot


@triton.jit
def _accumulate_slot(acc, s, row, taps, K: tl.constexpr, TILE_W: tl.constexpr):
    """Slot ``s``'s ``TILE_W`` accumulators plus input ``row`` under kernel row ``K - 1 - s``:
    output column ``ox`` takes input column ``ox + j`` times tap ``(K - 1 - s, j)``."""
    slot = _slot(acc, s, TILE_W)
    for j in tl.static_range(K):
        tap = taps[(K - 1 - s) * K + j]  # [BLOCK_C]
        updated = ()
        for ox in tl.static_range(TILE_W):
            updated = updated + (tl.fma(row[ox + j], tap, slot[ox]),)
        slot = updated
    return slot


@triton.jit
def _store_output_row(finished, o, h0, row_end, w0, x_image, out_image, W, C, channels,
                      channel_mask, scale, shift, ACTIVATION: tl.constexpr, TILE_W: tl.constexpr):
    """``out[o, w0 + ox] = x + scale * act(finished[ox]) + shift`` if ``h0 <= o < row_end`` (the
    accumulators started at the bias)."""
    if (o >= h0) & (o < row_end):
        offsets = (o * W + w0) * C + channels  # [BLOCK_C], output column w0
        for ox in tl.static_range(TILE_W):
            # The column as a [BLOCK_C] block rather than a scalar: the interpreter turns
            # (block & scalar) masks into int32, which tl.load rejects.
            out_col = tl.zeros_like(channels) + (w0 + ox)  # [BLOCK_C]
            mask = channel_mask & (out_col < W)
            residual = tl.load(x_image + offsets, mask=mask, other=0.0).to(tl.float32)
            y = residual + (apply_activation(finished[ox], ACTIVATION) * scale + shift)
            tl.store(out_image + offsets, y.to(out_image.dtype.element_ty), mask=mask)
            offsets += C


@autotune(
    CONFIGS,
    key=["B", "C", "H", "W", "K"],
    prune=_prune_configs,
)
@triton.jit
def _depthwise_block_kernel(
    x_ptr,  # [B, H, W, C] tokens, model dtype, contiguous
    weight_ptr,  # [K, K, C] depthwise taps, model dtype, contiguous
    bias_ptr,  # [C] fp32
    scale_ptr,  # [C] fp32 (BN scale)
    shift_ptr,  # [C] fp32 (BN shift)
    out_ptr,  # [B, H, W, C] model dtype
    B,  # images: only the autotune key (the best tile height depends on how many programs there are)
    H,
    W,
    C,
    K: tl.constexpr,  # kernel size (1..31), one specialisation per size
    ACTIVATION: tl.constexpr,  # 0 = GELU (erf), 1 = ReLU
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    PAD: tl.constexpr = (K - 1) // 2  # torch "same": (k-1)//2 before, k//2 after

    tile_id = tl.program_id(0)
    channel_block = tl.program_id(1)
    tiles_w = tl.cdiv(W, TILE_W)
    tiles_per_image = tl.cdiv(H, TILE_H) * tiles_w
    image = tile_id // tiles_per_image
    tile_in_image = tile_id % tiles_per_image
    h0 = (tile_in_image // tiles_w) * TILE_H  # first output row of the tile
    w0 = (tile_in_image % tiles_w) * TILE_W  # first output column of the tile

    channels = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C], one per thread
    channel_mask = channels < C  # [BLOCK_C]
    image_offset = image.to(tl.int64) * H * W * C  # int64: B * H * W * C may pass 2**31
    x_image = x_ptr + image_offset
    out_image = out_ptr + image_offset
    bias = tl.load(bias_ptr + channels, mask=channel_mask, other=0.0)  # [BLOCK_C] fp32
    scale = tl.load(scale_ptr + channels, mask=channel_mask, other=0.0)
    shift = tl.load(shift_ptr + channels, mask=channel_mask, other=0.0)

    taps = ()  # K * K fp32 [BLOCK_C], tap (i, j) at i * K + j, loaded once per program
    for t in tl.static_range(K * K):
        tap = tl.load(weight_ptr + t * C + channels, mask=channel_mask, other=0.0)
        taps = taps + (tap.to(tl.float32),)

    # Walk down the input rows; each is loaded and converted once and feeds the K output rows it
    # touches. Before step r, slot s (_slot: TILE_W accumulators) holds output row
    # r + PAD - (K - 1) + s, which input row r reaches through kernel row K - 1 - s.
    # After step r slot 0 is complete: it is stored and the slots shift down by one.
    row_end = tl.minimum(h0 + TILE_H, H)  # output rows [h0, row_end)
    r_begin = tl.maximum(h0 - PAD, 0)  # earlier input rows feed no output row of the tile
    r_stop = row_end + (K - 1 - PAD)  # step r_stop - 1 completes output row row_end - 1
    r_end = tl.minimum(r_stop, H)  # input rows past the image are zero padding: no FMAs
    fresh = (bias,) * TILE_W  # a new slot's accumulators start at the conv bias
    acc = fresh * K
    row = _load_input_row(x_image, r_begin, r_end, w0, W, C, channels, channel_mask, K, TILE_W)
    for r in range(r_begin, r_end):
        # The next row's loads go out before this row's FMAs (register double buffering).
        next_row = _load_input_row(x_image, r + 1, r_end, w0, W, C, channels, channel_mask, K, TILE_W)
        finished = _accumulate_slot(acc, 0, row, taps, K, TILE_W)
        shifted = ()
        for s in tl.static_range(1, K):
            shifted = shifted + _accumulate_slot(acc, s, row, taps, K, TILE_W)
        acc = shifted + fresh
        _store_output_row(finished, r + PAD - (K - 1), h0, row_end, w0, x_image, out_image, W, C,
                          channels, channel_mask, scale, shift, ACTIVATION, TILE_W)
        row = next_row
    # The last rows' remaining kernel rows read bottom padding: shift and store, no FMAs.
    for r in range(r_end, r_stop):
        finished = _slot(acc, 0, TILE_W)
        shifted = ()
        for s in tl.static_range(1, K):
            shifted = shifted + _slot(acc, s, TILE_W)
        acc = shifted + fresh
        _store_output_row(finished, r + PAD - (K - 1), h0, row_end, w0, x_image, out_image, W, C,
                          channels, channel_mask, scale, shift, ACTIVATION, TILE_W)


def _grid(B: int, H: int, W: int, C: int):
    return lambda meta: (
        B * triton.cdiv(H, meta["TILE_H"]) * triton.cdiv(W, meta["TILE_W"]),
        triton.cdiv(C, meta["BLOCK_C"]),
    )


def _launch(x, weight, bias, scale, shift, act, out) -> None:
    B, H, W, C = x.shape
    K = weight.shape[0]
    with device_guard(x):
        _depthwise_block_kernel[_grid(B, H, W, C)](
            x, weight, bias, scale, shift, out, B, H, W, C, K=K, ACTIVATION=ACTIVATION_CODES[act],
            **TRITON_COMPILE_OPTIONS,
        )


triton_depthwise_block = epilogue_custom_op(
    "triton_depthwise_block", _launch, "``out = x + scale * act(dwconv_k(x) + bias) + shift`` for ``x`` ``[B, H, W, C]``.", "x"
)


depthwise_block = epilogue_entry(
    "depthwise_block", depthwise_block_outputs, triton_depthwise_block,
    """``x + scale * act(dwconv_k(x) + bias) + shift`` on ``[B, H, W, C]`` tokens.

    ``weight`` is ``[k, k, C]`` (``1 <= k <= 31``) in the dtype of ``x``; ``bias``, ``scale`` and
    ``shift`` are fp32 ``[C]``; ``act`` is ``"gelu"`` or ``"relu"``. ``out`` (``[B, H, W, C]``,
    dtype of ``x``, must not overlap an input) is allocated when None. All tensors must be
    contiguous and on one device. Raises ``TypeError`` for a wrong dtype and ``ValueError`` for a
    wrong activation, shape, contiguity, device or an ``out`` that overlaps an input
    (``ops._checks``).
    """,
)


def kernel_specs() -> list[KernelSpec]:
    """The kernel at every config, bf16, 32x32 tokens, C=1536, for k=9 (GELU) and k=7 (ReLU)."""
    dtype = TRITON_DTYPE_NAMES[torch.bfloat16]
    signature = {
        "x_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}", "bias_ptr": "*fp32",
        "scale_ptr": "*fp32", "shift_ptr": "*fp32", "out_ptr": f"*{dtype}",
        "B": "i32", "H": "i32", "W": "i32", "C": "i32",
    }
    specs = []
    fn = _depthwise_block_kernel.fn  # the @triton.jit function under the autotuner
    for k, act in ((9, "gelu"), (7, "relu")):
        for config in CONFIGS:
            specs.append(
                KernelSpec(
                    kernel=f"depthwise_block_k{k}_{act}",
                    fn=fn,
                    signature=dict(signature),
                    constexprs={"K": k, "ACTIVATION": ACTIVATION_CODES[act], **config.kwargs},
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                    config=config_label(config),
                    divisible_by_16=("H", "W", "C"),
                )
            )
    return specs
