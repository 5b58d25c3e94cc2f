"""Depthwise block: ``Y = X + scale * act(dwconv_k(X) + bias) + shift`` (DESIGN.md §2, row 2).

``X`` is ``[B, H, W, C]`` NHWC tokens (fp32 / fp16 / bf16, contiguous), the depthwise weight is
``[k, k, C]`` (tap-major, channels contiguous) in the dtype of ``X``, ``bias`` / ``scale`` /
``shift`` are fp32 ``[C]``. Stride 1, torch's "same" padding: ``(k-1)//2`` before and ``k//2``
after, in both spatial dimensions (odd and even ``k``, ``1 <= k <= 31``). Accumulation and the
epilogue are fp32; the result is rounded once to the dtype of ``X`` at the store.

Kernel ``_depthwise_block_kernel`` — tiling and reuse
-----------------------------------------------------
Grid ``(B * cdiv(H, TILE_H) * cdiv(W, TILE_W), cdiv(C, BLOCK_C))``. Each program owns an output
tile of ``TILE_H`` rows x ``TILE_W`` columns x ``BLOCK_C`` channels of one image. Its
accumulators are ``TILE_W`` fp32 tensors of shape ``[TILE_H, BLOCK_C]`` (one per output
column, held in a ``tl`` tuple, so each is its own set of registers; channels are the contiguous,
vectorized axis).

The work is a loop over the kernel rows ``i`` (a runtime loop, bounded to the rows whose input
rows touch the image, so a tile never even iterates over kernel rows that lie wholly in the zero
padding). For each ``i``, the ``TILE_W + k - 1`` input columns of the halo (``[TILE_H, BLOCK_C]``
each: the rows ``h0 + r + i - pad`` of one input column) are loaded **once** and each loaded column
is immediately accumulated into every output column it feeds: input column ``cx`` serves the
outputs ``ox = cx - j`` for the (statically known) taps ``j`` with ``0 <= ox < TILE_W``. The
column loop and the taps are unrolled at compile time (``k`` is a constexpr: one specialisation
per kernel size), so the sliding window is pure register renaming: no shuffles, no shared memory,
no selects. Horizontal reuse is therefore in registers: ``TILE_W + k - 1`` loads feed
``TILE_W * k`` FMAs per element of ``[TILE_H, BLOCK_C]`` (for ``TILE_W = 8, k = 9``: 16 loads
for 72 FMAs, instead of one load per FMA). Vertical reuse (the same input row used by the ``k``
kernel rows) is through L1: the halo tile of a program, e.g. ``(8 + 8) x (8 + 8) x 64`` bf16 =
32 KiB, stays resident in L1 across the ``i`` loop, so DRAM/L2 see each input about once per
program (plus the halo).

Padding: loads of input columns or rows outside the image are fully masked (predicated off, no
memory traffic) and contribute zero; kernel rows with no valid input row are skipped by the loop
bounds. The FMAs of the (statically unrolled) columns that fall in the left/right padding of a
border tile still execute on zeros: with ``TILE_W = 8, k = 9`` on a 32-wide map that is ~7% of the
FMAs; skipping them would need a runtime branch per column, which stops the compiler from
hoisting the column loads ahead of the FMAs.

What the compiled code does (bf16, k=9, ``TILE_H=TILE_W=8, BLOCK_C=64``, 4 warps, sm_90, with
the runtime's 16-byte alignment specialisation): each thread holds 4 contiguous channels of one
row (``LDG.E.64`` per input column), the kernel-row loop body has 288 ``FFMA`` (= 8 outputs x 9
taps x 4 channels, none wasted on duplication), 25 loads (16 columns + 9 tap vectors) and ~140
bf16->fp32 conversions (``SHF``/``PRMT``); 167 registers, no spills, no shared memory. About half
the issued instructions of the loop are FFMA: conversions and address arithmetic are the rest.
Without the alignment specialisation (``C % 16 != 0`` or unaligned tensors) the loads are scalar
16-bit and register pressure is higher; ``_prune_configs`` then keeps only the lean configs, as it
does for ``k > 9`` (more live taps). For ``k`` in the twenties and above even the lean configs
spill a little (k=31: ~12 local loads/stores per loop); no named ConvMixer uses such kernels.

The residual ``X`` at the output positions is re-read in the epilogue (an L1 hit: it is the centre
of the halo) and the epilogue ``x + scale * act(acc + bias) + shift`` is fp32
(``_triton_utils.fused_epilogue``).
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from ._checks import MAX_KERNEL_SIZE, check_depthwise_out_apart, depthwise_block_outputs, epilogue_entry
from ._triton_utils import (
    ACTIVATION_CODES,
    KernelSpec,
    TRITON_DTYPE_NAMES,
    autotune,
    config_label,
    device_guard,
    epilogue_custom_op,
    fused_epilogue,
)

__all__ = ["depthwise_block", "kernel_specs", "CONFIGS", "MAX_KERNEL_SIZE"]

# Output tile TILE_H x TILE_W x BLOCK_C per program. Per thread: TILE_W accumulators of
# TILE_H * BLOCK_C / (32 * num_warps) fp32 each, plus one input column in flight and the k tap
# vectors of the current kernel row. The first config is the one the interpreter uses.
CONFIGS = [
    triton.Config({"TILE_H": 8, "TILE_W": 8, "BLOCK_C": 64}, num_warps=4, num_stages=1),
    triton.Config({"TILE_H": 16, "TILE_W": 8, "BLOCK_C": 64}, num_warps=4, num_stages=1),
    triton.Config({"TILE_H": 8, "TILE_W": 8, "BLOCK_C": 128}, num_warps=8, num_stages=1),
    triton.Config({"TILE_H": 8, "TILE_W": 16, "BLOCK_C": 64}, num_warps=4, num_stages=1),
    triton.Config({"TILE_H": 16, "TILE_W": 8, "BLOCK_C": 128}, num_warps=8, num_stages=1),
    triton.Config({"TILE_H": 16, "TILE_W": 8, "BLOCK_C": 64}, num_warps=8, num_stages=1),
    triton.Config({"TILE_H": 32, "TILE_W": 4, "BLOCK_C": 64}, num_warps=4, num_stages=1),
]



def _elements_per_thread(config: triton.Config) -> int:
    """Elements of one [TILE_H, BLOCK_C] column tensor held by each thread."""
    kw = config.kwargs
    return kw["TILE_H"] * kw["BLOCK_C"] // (32 * config.num_warps)


def _prune_configs(configs, named_args, **kwargs):
    """Drop the register-hungry configs where they would spill.

    Compiled for sm_90 / sm_80, the configs holding 8 elements per thread per column (or 16
    output columns) fit in 255 registers for k <= 9 with channel-vectorized (16-byte) loads,
    which the JIT uses when C % 16 == 0 and the tensors are 16-byte aligned. For larger k (more
    taps live) or unvectorized loads they spill, so only the lean configs (4 elements per thread,
    TILE_W <= 8) stay. The first config is always lean, so the result is never empty.
    """
    k = kwargs.get("K", named_args.get("K"))
    aligned = named_args["C"] % 16 == 0 and all(
        named_args[name].data_ptr() % 16 == 0 for name in ("x_ptr", "weight_ptr", "out_ptr")
    )
    if k <= 9 and aligned:
        return configs
    return [c for c in configs if _elements_per_thread(c) <= 4 and c.kwargs["TILE_W"] <= 8]


@autotune(
    CONFIGS,
    key=["C", "H", "W", "K"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def _depthwise_block_kernel(
    x_ptr,  # [B, H, W, C] tokens, model dtype, contiguous
    weight_ptr,  # [K, K, C] depthwise taps, model dtype, contiguous
    bias_ptr,  # [C] fp32
    scale_ptr,  # [C] fp32 (BN scale)
    shift_ptr,  # [C] fp32 (BN shift)
    out_ptr,  # [B, H, W, C] model dtype
    H,
    W,
    C,
    K: tl.constexpr,  # kernel size (1..31), one specialisation per size
    ACTIVATION: tl.constexpr,  # 0 = GELU (erf), 1 = ReLU
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    PAD_TOP: tl.constexpr = (K - 1) // 2  # torch "same": (k-1)//2 before, k//2 after
    PAD_LEFT: tl.constexpr = (K - 1) // 2
    HALO_W: tl.constexpr = TILE_W + K - 1  # input columns that feed TILE_W output columns

    tile_id = tl.program_id(0)
    channel_block = tl.program_id(1)
    tiles_w = tl.cdiv(W, TILE_W)
    tiles_per_image = tl.cdiv(H, TILE_H) * tiles_w
    image = tile_id // tiles_per_image
    tile_in_image = tile_id % tiles_per_image
    h0 = (tile_in_image // tiles_w) * TILE_H  # first output row of the tile
    w0 = (tile_in_image % tiles_w) * TILE_W  # first output column of the tile

    rows = h0 + tl.arange(0, TILE_H)  # [TILE_H] output rows
    channels = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    channel_mask = channels < C  # [BLOCK_C]
    image_offset = image.to(tl.int64) * H * W * C  # int64: B * H * W * C may pass 2**31
    x_image = x_ptr + image_offset
    out_image = out_ptr + image_offset

    # TILE_W accumulators, one per output column: [TILE_H, BLOCK_C] fp32 each.
    acc = (tl.zeros([TILE_H, BLOCK_C], dtype=tl.float32),) * TILE_W

    # Kernel rows i whose input rows h0 + r + i - PAD_TOP (0 <= r < TILE_H) meet [0, H); the
    # others read only zero padding and are skipped.
    i_start = tl.maximum(PAD_TOP - h0 - (TILE_H - 1), 0)
    i_end = tl.minimum(H + PAD_TOP - h0, K)
    for i in range(i_start, i_end):
        in_rows = rows + (i - PAD_TOP)  # [TILE_H] input rows of kernel row i
        row_mask = ((in_rows >= 0) & (in_rows < H))[:, None] & channel_mask[None, :]
        row_ptrs = x_image + (in_rows * W)[:, None] * C + channels[None, :]  # [TILE_H, BLOCK_C]

        # The K taps of kernel row i: K vectors [1, BLOCK_C] fp32.
        taps = ()
        for j in tl.static_range(K):
            tap = tl.load(weight_ptr + (i * K + j) * C + channels, mask=channel_mask, other=0.0)
            taps = taps + (tap.to(tl.float32)[None, :],)

        # Slide over the HALO_W input columns: each is loaded once and feeds up to K outputs.
        for cx in tl.static_range(HALO_W):
            # The input column as a [1, 1] block rather than a scalar: the interpreter turns
            # (block & scalar) masks into int32, which tl.load rejects.
            in_col = tl.zeros([1, 1], dtype=tl.int32) + (w0 + (cx - PAD_LEFT))  # [1, 1]
            col_ok = (in_col >= 0) & (in_col < W)  # [1, 1]
            column = tl.load(row_ptrs + in_col * C, mask=row_mask & col_ok, other=0.0)
            column = column.to(tl.float32)  # [TILE_H, BLOCK_C]
            # Rebuild the accumulator tuple: output column ox gains column * tap (cx - ox) when
            # that tap exists; the choice is static, so this is register renaming, not selects.
            updated = ()
            # (cx - ox, the tap that carries input column cx to output column ox, is spelled out
            # rather than named: an assignment would turn the constexpr into a tensor.)
            for ox in tl.static_range(TILE_W):
                if (cx - ox >= 0) & (cx - ox < K):
                    updated = updated + (acc[ox] + column * taps[cx - ox],)
                else:
                    updated = updated + (acc[ox],)
            acc = updated

    bias = tl.load(bias_ptr + channels, mask=channel_mask, other=0.0)[None, :]  # [1, BLOCK_C]
    scale = tl.load(scale_ptr + channels, mask=channel_mask, other=0.0)[None, :]
    shift = tl.load(shift_ptr + channels, mask=channel_mask, other=0.0)[None, :]
    out_rows_mask = (rows < H)[:, None] & channel_mask[None, :]  # [TILE_H, BLOCK_C]
    for ox in tl.static_range(TILE_W):
        out_col = tl.zeros([1, 1], dtype=tl.int32) + (w0 + ox)  # [1, 1] (see col_ok above)
        offsets = (rows[:, None] * W + out_col) * C + channels[None, :]  # [TILE_H, BLOCK_C]
        mask = out_rows_mask & (out_col < W)
        residual = tl.load(x_image + offsets, mask=mask, other=0.0).to(tl.float32)
        y = residual + fused_epilogue(acc[ox], bias, scale, shift, ACTIVATION)
        tl.store(out_image + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)



def _grid(B: int, H: int, W: int, C: int):
    return lambda meta: (
        B * triton.cdiv(H, meta["TILE_H"]) * triton.cdiv(W, meta["TILE_W"]),
        triton.cdiv(C, meta["BLOCK_C"]),
    )


def _launch(x, weight, bias, scale, shift, act, out) -> None:
    # Checked here, not in the entry: pointers exist only at run time (not under torch.compile).
    check_depthwise_out_apart(x, out)
    B, H, W, C = x.shape
    K = weight.shape[0]
    with device_guard(x):
        _depthwise_block_kernel[_grid(B, H, W, C)](
            x, weight, bias, scale, shift, out, H, W, C, K=K, ACTIVATION=ACTIVATION_CODES[act]
        )


triton_depthwise_block = epilogue_custom_op(
    "triton_depthwise_block", _launch, "``out = x + scale * act(dwconv_k(x) + bias) + shift`` for ``x`` ``[B, H, W, C]``."
)


depthwise_block = epilogue_entry(
    "depthwise_block", depthwise_block_outputs, triton_depthwise_block,
    """``x + scale * act(dwconv_k(x) + bias) + shift`` on ``[B, H, W, C]`` tokens.

    ``weight`` is ``[k, k, C]`` (``1 <= k <= 31``) in the dtype of ``x``; ``bias``, ``scale`` and
    ``shift`` are fp32 ``[C]``; ``act`` is ``"gelu"`` or ``"relu"``. ``out`` (``[B, H, W, C]``,
    dtype of ``x``, must not overlap ``x``) is allocated when None. All tensors must be contiguous
    and on one device. Raises ``TypeError`` for a wrong dtype and ``ValueError`` for a wrong
    activation, shape, contiguity, device or an ``out`` that overlaps ``x`` (``ops._checks``).
    """,
)


def kernel_specs() -> list[KernelSpec]:
    """The kernel at every config, bf16, 32x32 tokens, C=1536, for k=9 (GELU) and k=7 (ReLU)."""
    dtype = TRITON_DTYPE_NAMES[torch.bfloat16]
    signature = {
        "x_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}", "bias_ptr": "*fp32",
        "scale_ptr": "*fp32", "shift_ptr": "*fp32", "out_ptr": f"*{dtype}",
        "H": "i32", "W": "i32", "C": "i32",
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
