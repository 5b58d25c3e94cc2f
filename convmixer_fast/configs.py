"""Named ConvMixer configurations (timm names, DESIGN.md §1) and ``create_model``."""

from __future__ import annotations

import os

from .model import ConvMixer
from .weights import load_checkpoint, without_classifier

MODEL_CONFIGS: dict[str, dict] = {
    "convmixer_1536_20": dict(dim=1536, depth=20, kernel_size=9, patch_size=7, n_classes=1000, act_layer="gelu"),
    "convmixer_768_32": dict(dim=768, depth=32, kernel_size=7, patch_size=7, n_classes=1000, act_layer="relu"),
    "convmixer_1024_20_ks9_p14": dict(dim=1024, depth=20, kernel_size=9, patch_size=14, n_classes=1000, act_layer="gelu"),
    # locuslab/convmixer-cifar10 defaults (32x32 images); no published weights.
    "convmixer_cifar10": dict(dim=256, depth=8, kernel_size=5, patch_size=2, n_classes=10, act_layer="gelu"),
}
PRETRAINED_IN_TIMM = ("convmixer_1536_20", "convmixer_768_32", "convmixer_1024_20_ks9_p14")
# How timm's ImageNet weights of these configs expect their images (timm's ``_cfg`` in
# timm/models/convmixer.py; ``timm.data.resolve_model_data_config(model)`` reads it): without it
# timm's pipelines would crop 87.5% of the image instead of 96%.
IMAGENET_DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.96,
                        "crop_mode": "center", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    *,
    use_ema: bool | None = None,
    **overrides,
) -> ConvMixer:
    """A ``ConvMixer`` of a named configuration.

    ``checkpoint_path`` loads a local checkpoint (any layout, see ``load_checkpoint``; as in timm's
    ``create_model``, a training checkpoint's EMA weights where it has them, unless ``use_ema``
    says otherwise); ``pretrained=True`` fetches timm's ImageNet weights through timm and the
    Hugging Face hub (needs timm and network access). ``overrides`` replace constructor arguments
    (e.g. ``backend=``, ``num_classes=``). ``num_classes=0`` (no classifier: ``forward`` returns the
    features) loads the checkpoint's weights except its classifier's, as timm's ``pretrained=True``
    does. The ImageNet configs carry timm's data config (``pretrained_cfg``).
    """
    if not isinstance(name, str) or name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_CONFIGS)}")
    if pretrained and checkpoint_path is not None:
        raise ValueError("pass pretrained=True or checkpoint_path, not both")
    if use_ema is not None and checkpoint_path is None:
        raise ValueError("use_ema applies to checkpoint_path's file; pass checkpoint_path too")
    if "num_classes" in overrides:  # (timm's spelling; it replaces the config's n_classes)
        if "n_classes" in overrides:
            raise ValueError("pass n_classes or num_classes, not both")
        overrides["n_classes"] = overrides.pop("num_classes")
    if pretrained:
        return _from_timm(name, overrides)
    model = ConvMixer(**{**MODEL_CONFIGS[name], **overrides})
    if name in PRETRAINED_IN_TIMM:
        model.pretrained_cfg = dict(IMAGENET_DATA_CONFIG)
    if checkpoint_path is not None:
        state_dict = load_checkpoint(checkpoint_path, use_ema=use_ema)
        model.load_state_dict(state_dict if model.n_classes else without_classifier(state_dict))
    return model


def _from_timm(name: str, overrides: dict) -> ConvMixer:
    if name not in PRETRAINED_IN_TIMM:
        raise ValueError(f"no published pretrained weights for {name!r}; pass checkpoint_path=")
    try:
        import timm
    except Exception as error:  # ImportError, or a broken torchvision next to a CPU torch
        raise RuntimeError(
            f"pretrained=True needs timm (pip install timm) and network access to the Hugging Face hub "
            f"(importing timm failed: {error}); alternatively pass checkpoint_path= to a local file"
        ) from error
    options = {key: overrides.pop(key) for key in ("backend", "cuda_graphs") if key in overrides}
    head = {"num_classes" if key == "n_classes" else key: overrides.pop(key)
            for key in ("n_classes", "global_pool") if key in overrides}
    if overrides:
        raise ValueError("pretrained=True takes only backend=, cuda_graphs=, num_classes= and global_pool= as "
                         f"overrides, got {sorted(overrides)}")
    try:
        eager = timm.create_model(name, pretrained=True, **head)
    except Exception as error:  # network, hub or cache errors
        raise RuntimeError(
            f"timm could not load pretrained weights for {name!r}: {error}; "
            "check network access to the Hugging Face hub, or pass checkpoint_path= to a local file"
        ) from error
    return ConvMixer.from_eager(eager, **options)
