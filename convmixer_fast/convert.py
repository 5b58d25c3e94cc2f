"""Reading the architecture off an eager ConvMixer module (for ``ConvMixer.from_eager``).

Works on the module tree, not on names, so the original ``nn.Sequential``, the README one-liner,
timm's ``ConvMixer`` and ``convmixer_fast.reference`` are all understood. The tree cannot show what
the module's ``forward`` does with its layers (a residual left out, layers in another order), so
the converted model's logits (features, without a classifier) are then held to the module's
(``check_same_logits``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .ops._checks import SUPPORTED_DTYPES


class UnsupportedModelError(ValueError):
    """An eager module that is not a ConvMixer this engine can reproduce exactly."""


# A ConvMixer's BatchNorms as a module may hold them: a model trained with synchronised BatchNorm
# (nn.SyncBatchNorm.convert_sync_batchnorm) computes, in eval mode, what BatchNorm2d computes.
BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(message)


def _activation(module: nn.Module) -> str:
    from .model import activation_name

    acts = [m for m in module.modules() if isinstance(m, (nn.GELU, nn.ReLU))]
    _check(bool(acts), "found no nn.GELU / nn.ReLU activation: not a ConvMixer this engine supports")
    try:
        names = {activation_name(m) for m in acts}
    except ValueError as error:  # (the tanh GELU)
        raise UnsupportedModelError(str(error)) from None
    _check(len(names) == 1, f"mixed activations {sorted(names)}: ConvMixer uses one throughout")
    return names.pop()


def _global_pool(module: nn.Module, n_classes: int) -> str:
    """The module's pooling as ``ConvMixer``'s ``global_pool`` (``model.check_global_pool``
    judges it): timm's ConvMixer (the module, or the one a wrapper holds) names it in
    ``global_pool.pool_type`` (``pooling`` in older timm), where "avgmax", "max", ... would give
    other numbers; a max pool anywhere is refused too. Otherwise a classifier sees the mean (the
    logits check holds it to that), and a module without one pools if it holds an average pool."""
    from .model import check_global_pool

    pool, convmixer = None, _convmixer(module)[1]
    for attribute in ("global_pool", "pooling"):
        pool_type = getattr(getattr(convmixer, attribute, None), "pool_type", None)
        if isinstance(pool_type, str):
            try:
                pool = check_global_pool(pool_type, n_classes)
            except ValueError as error:
                raise UnsupportedModelError(f"only average pooling (or none, without a classifier) is supported, "
                                            f"got {attribute} with pool_type={pool_type!r}: {error}") from None
            break
    max_pools = [type(m).__name__ for m in module.modules() if "MaxPool" in type(m).__name__]
    _check(not max_pools, f"only average pooling is supported, found {', '.join(max_pools)}")
    if pool is not None:
        return pool
    averaging = n_classes or any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)) for m in module.modules())
    return "avg" if averaging else ""


def describe_eager(module: nn.Module) -> tuple[dict, list[float]]:
    """``(ConvMixer constructor kwargs, eps of every BatchNorm in order)`` of an eager ConvMixer."""
    from .model import check_architecture

    _check(isinstance(module, nn.Module), f"expected an nn.Module, got {type(module).__name__}")
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in module.modules() if isinstance(m, BATCHNORMS)]
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    _check(len(convs) >= 3 and len(convs) % 2 == 1,
           f"expected a stem conv and (depthwise, pointwise) conv pairs, found {len(convs)} Conv2d layers")
    dtype = next(module.parameters()).dtype  # (the converted model's)
    _check(dtype in SUPPORTED_DTYPES, f"the module is {dtype}; the model runs float32, float16 or bfloat16: convert "
           "the module first (module.float(), say)")
    depth = (len(convs) - 1) // 2
    stem, pairs = convs[0], [(convs[1 + 2 * j], convs[2 + 2 * j]) for j in range(depth)]
    dim, in_chans = stem.out_channels, stem.in_channels
    p = stem.kernel_size[0]
    _check(stem.kernel_size == (p, p) and stem.stride == (p, p) and stem.padding in ((0, 0), "valid")
           and stem.groups == 1 and stem.dilation == (1, 1) and stem.bias is not None,
           f"the stem must be Conv2d(in, dim, p, stride=p, bias=True) without padding, got {stem}")
    k = pairs[0][0].kernel_size[0]
    for j, (dw, pw) in enumerate(pairs):
        same = dw.padding == "same" or (k % 2 == 1 and dw.padding == (k // 2, k // 2))
        _check(dw.in_channels == dw.out_channels == dw.groups == dim and dw.kernel_size == (k, k)
               and dw.stride == (1, 1) and dw.dilation == (1, 1) and same and dw.bias is not None
               and dw.padding_mode == "zeros",
               f"block {j}: expected a depthwise Conv2d({dim}, {dim}, {k}, groups={dim}, padding='same', bias=True), got {dw}")
        _check(pw.in_channels == pw.out_channels == dim and pw.kernel_size == (1, 1) and pw.groups == 1
               and pw.stride == (1, 1) and pw.padding in ((0, 0), "valid", "same") and pw.bias is not None,
               f"block {j}: expected a pointwise Conv2d({dim}, {dim}, 1, bias=True), got {pw}")
    _check(len(bns) == 1 + 2 * depth,
           f"expected {1 + 2 * depth} BatchNorm2d (or SyncBatchNorm) layers, found {len(bns)}")
    for bn in bns:
        _check(bn.affine and bn.track_running_stats,
               f"a BatchNorm must have affine=True and track_running_stats=True, got {bn}")
    _check(len(linears) <= 1, f"expected one nn.Linear classifier (or none), found {len(linears)}")
    n_classes = linears[0].out_features if linears else 0  # 0: the features, as timm's num_classes=0 gives
    # (The pooling before the classifier's width: timm's "catavgmax" doubles it.)
    global_pool = _global_pool(module, n_classes)
    if linears:
        head = linears[0]
        _check(head.in_features == dim and head.out_features >= 1 and head.bias is not None,
               f"expected Linear({dim}, n_classes, bias=True), got {head}")
    sizes = dict(dim=dim, depth=depth, kernel_size=k, patch_size=p, n_classes=n_classes, in_chans=in_chans)
    try:
        check_architecture(**sizes)
    except ValueError as error:  # (a kernel past MAX_KERNEL_SIZE)
        raise UnsupportedModelError(str(error)) from None
    return dict(sizes, act_layer=_activation(module), global_pool=global_pool), [bn.eps for bn in bns]


def convmixer_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the innermost submodule of ``module`` that holds all its convolutions,
    BatchNorms and linears, the one with a ConvMixer's names: ``module``'s own for a ConvMixer, the
    ConvMixer's where a wrapper holds it (``self.model``; a ``Sequential`` after a preprocessing
    step, which ``check_same_logits`` then finds). A wrapper whose outputs cannot be checked (16-bit,
    meta) is refused: what its forward adds would go unseen."""
    root_name, root = _convmixer(module)
    if root is not module and not _outputs_checkable(module):
        first = next(module.parameters())
        why = ("a meta module has no outputs to compare" if first.device.type == "meta" else
               f"a {first.dtype} module's outputs are not compared (float32 only)")
        raise UnsupportedModelError(
            f"the ConvMixer is {type(module).__name__}'s submodule {root_name!r}, and {why}: what the wrapper's "
            f"forward does besides would go unseen; pass the ConvMixer itself (from_eager(module.{root_name}))")
    return root.state_dict()


def _convmixer(module: nn.Module) -> tuple[str, nn.Module]:
    """``(name, submodule)`` of the innermost submodule of ``module`` that holds all its
    convolutions, BatchNorms and linears (``("", module)`` for a ConvMixer)."""
    layers = {id(m) for m in module.modules() if isinstance(m, (nn.Conv2d, *BATCHNORMS, nn.Linear))}
    root_name, root = "", module
    for name, submodule in module.named_modules():  # outer before inner: the last to hold them all
        if layers <= {id(m) for m in submodule.modules()}:
            root_name, root = name, submodule
    return root_name, root


def _outputs_checkable(module: nn.Module) -> bool:
    """Whether ``check_same_logits`` compares the module's outputs: fp32 modules with values. A
    16-bit module's own rounding would need a looser tolerance than the errors it is for."""
    first = next(module.parameters())
    return first.dtype == torch.float32 and first.device.type != "meta"


# check_same_logits's bound on |logits - module's| / max |module's|. On CPU the folded fp32
# computation is about 1e-6 off (measured on small models); where the module's convolutions may run
# in TF32 (cuDNN's default on a GPU: 10 mantissa bits) the bound is verify's TF32 model tolerance. A
# residual left out was 0.98 off (tests/test_weights.py).
SAME_LOGITS_TOLERANCE = {"fp32": 1e-3, "tf32": 5e-2}


def check_same_logits(module: nn.Module, model) -> None:
    """UnsupportedModelError unless the ConvMixer ``model`` converted from ``module`` gives its
    logits (or its features, without a classifier), within ``SAME_LOGITS_TOLERANCE``, on a random
    batch of 2 images of k + 1 patches a side plus a pixel (the depthwise kernel's whole extent, a
    partial patch). Run on the module's device, in eval mode (each submodule's mode is restored),
    without autocast, through the ``eager`` backend, leaving torch's random state alone. fp32
    modules with values only (``_outputs_checkable``)."""
    from . import _tf32
    from .backends.eager import has_autocast
    from .verify import errors

    if not _outputs_checkable(module):
        return
    first = next(module.parameters())
    side = (model.kernel_size + 1) * model.patch_size + 1
    image = torch.randn(2, model.in_chans, side, side, generator=torch.Generator().manual_seed(0)).to(first.device)
    # The module's convolutions may run in TF32 (cuDNN's default on a GPU), the model's matmuls too.
    tf32 = first.device.type == "cuda" and _tf32.any_allowed()
    tolerance = SAME_LOGITS_TOLERANCE["tf32" if tf32 else "fp32"]
    no_autocast = (torch.autocast(first.device.type, enabled=False)
                   if has_autocast(first.device.type) else contextlib.nullcontext())
    # Each submodule's own mode, restored one by one: module.train(mode) would set them all alike.
    modes, settings = [(m, m.training) for m in module.modules()], (model.backend, model.cuda_graphs)
    model.backend, model.cuda_graphs = "eager", False
    try:
        module.eval()
        with torch.no_grad(), no_autocast:
            expected, output = module(image), model(image)
    finally:
        for submodule, training in modes:
            submodule.training = training
        model.backend, model.cuda_graphs = settings
    what = "logits" if model.n_classes else "features"
    _check(isinstance(expected, torch.Tensor) and expected.shape == output.shape,
           f"the module's forward returned {_describe(expected)} for a [2, {model.in_chans}, {side}, {side}] "
           f"image batch, not {list(output.shape)} {what}")
    _, relative = errors(output, expected)
    _check(relative <= tolerance,
           f"the module's layers match a ConvMixer's, but its {what} differ from the converted model's by "
           f"{relative:.2e} of their largest (tolerance {tolerance:.0e}) on a random image batch: its forward "
           "computes something else (a residual left out, layers in another order, extra operations?)")


def _describe(value) -> str:
    return f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
