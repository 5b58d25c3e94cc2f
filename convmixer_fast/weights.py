"""State-dict layouts and checkpoint files (DESIGN.md §1).

``convmixer_fast.ConvMixer`` keeps timm's module names (``stem.0``, ``blocks.{j}.0.fn.0``, ``head``),
its *canonical* layout. Three layouts are recognised and renamed to it:

- ``timm``:       ``stem.0.*``, ``stem.2.*``, ``blocks.{j}.0.fn.{0,2}.*``, ``blocks.{j}.{1,3}.*``, ``head.*``
- ``original``:   the repo's ``nn.Sequential``: ``0.*``, ``2.*``, ``{3+j}.0.fn.{0,2}.*``,
                  ``{3+j}.{1,3}.*``, ``{5+depth}.*``
- ``one-liner``:  the repo README's nested version: ``0.{0,2}.*``, ``{1+j}.0.0.{0,2}.*``,
                  ``{1+j}.1.{0,2}.*``, ``{3+depth}.*``

with any number of ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefixes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import dataclass

import torch

_PREFIXES = ("module.", "_orig_mod.")
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


class CheckpointError(RuntimeError):
    """A state dict or checkpoint file that does not fit the model."""


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern
    rename: object  # (match) -> canonical key


def _rules(layout: str) -> list[_Rule]:
    def r(pattern, rename):
        return _Rule(re.compile(pattern + r"$"), rename)

    if layout == "timm":
        return [r(r"((stem|blocks|head)\..+)", lambda m: m.group(1))]
    if layout == "original":
        return [
            r(rf"0\.{_PARAM}", lambda m: f"stem.0.{m.group(1)}"),
            r(rf"2\.{_PARAM}", lambda m: f"stem.2.{m.group(1)}"),
            r(rf"(\d+)\.0\.fn\.([02])\.{_PARAM}",
              lambda m: f"blocks.{int(m.group(1)) - 3}.0.fn.{m.group(2)}.{m.group(3)}"),
            r(rf"(\d+)\.([13])\.{_PARAM}",
              lambda m: f"blocks.{int(m.group(1)) - 3}.{m.group(2)}.{m.group(3)}"),
            r(r"(\d+)\.(weight|bias)", lambda m: f"head.{m.group(2)}"),
        ]
    if layout == "one-liner":
        return [
            r(rf"0\.([02])\.{_PARAM}", lambda m: f"stem.{m.group(1)}.{m.group(2)}"),
            r(rf"(\d+)\.0\.0\.([02])\.{_PARAM}",
              lambda m: f"blocks.{int(m.group(1)) - 1}.0.fn.{m.group(2)}.{m.group(3)}"),
            r(rf"(\d+)\.1\.([02])\.{_PARAM}",
              lambda m: f"blocks.{int(m.group(1)) - 1}.{1 if m.group(2) == '0' else 3}.{m.group(3)}"),
            r(r"(\d+)\.(weight|bias)", lambda m: f"head.{m.group(2)}"),
        ]
    raise AssertionError(layout)


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def detect_layout(keys) -> str:
    """``"timm"``, ``"original"`` or ``"one-liner"`` for prefix-stripped keys; CheckpointError else."""
    keys = set(keys)
    if any(k.startswith(("stem.", "blocks.", "head.")) for k in keys):
        return "timm"
    if "0.0.weight" in keys:
        return "one-liner"
    if "0.weight" in keys:
        return "original"
    sample = ", ".join(sorted(keys)[:5]) or "(empty)"
    raise CheckpointError(
        "unrecognised ConvMixer state-dict layout: expected keys like 'stem.0.weight' (timm), "
        f"'0.weight' (original nn.Sequential) or '0.0.weight' (README one-liner); got {sample}"
    )


@dataclass(frozen=True)
class CanonicalStateDict:
    """A state dict renamed to the canonical layout, remembering each key's original name."""

    tensors: dict[str, torch.Tensor]
    source_keys: dict[str, str]  # canonical key -> key as it was in the user's dict
    unmatched: list[str]  # user's keys that fit no rule of the layout
    layout: str

    def describe(self, key: str) -> str:
        source = self.source_keys.get(key, key)
        return key if source == key else f"{key} (checkpoint key {source!r})"


def to_canonical(state_dict) -> CanonicalStateDict:
    """Rename any recognised layout to the canonical (timm) one."""
    if not hasattr(state_dict, "items"):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    stripped = []  # (key without prefixes, key, tensor): a list, so keys alike once stripped both reach
    for key, value in state_dict.items():  # the check below ("module.0.weight" beside "0.weight")
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            nested = (f" (a training checkpoint with its weights under {key!r}? pass checkpoint[{key!r}]; "
                      f"load_checkpoint unwraps {', '.join(map(repr, EMA_WRAPPERS + CHECKPOINT_WRAPPERS))})"
                      if isinstance(key, str) and hasattr(value, "items") else "")
            raise CheckpointError(
                f"expected a state dict of str -> Tensor, got entry {key!r} -> {type(value).__name__}{nested}"
            )
        stripped.append((_strip_prefixes(key), key, value))
    layout = detect_layout(name for name, _, _ in stripped)
    rules = _rules(layout)
    tensors, source_keys, unmatched = {}, {}, []
    for key, source, value in stripped:
        for rule in rules:
            match = rule.pattern.match(key)
            if match:
                canonical = rule.rename(match)
                if canonical in tensors:
                    raise CheckpointError(
                        f"checkpoint keys {source_keys[canonical]!r} and {source!r} both map to {canonical!r}"
                    )
                tensors[canonical], source_keys[canonical] = value, source
                break
        else:
            unmatched.append(source)
    return CanonicalStateDict(tensors, source_keys, unmatched, layout)


def infer_config(tensors: dict[str, torch.Tensor]) -> dict:
    """Architecture read off a canonical state dict (keys present only); empty if unreadable."""
    config = {}
    stem = tensors.get("stem.0.weight")
    if stem is not None and stem.ndim == 4:
        config.update(dim=stem.shape[0], in_chans=stem.shape[1], patch_size=stem.shape[-1])
    blocks = {int(k.split(".")[1]) for k in tensors if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    config["depth"] = len(blocks)
    dw = tensors.get("blocks.0.0.fn.0.weight")
    if dw is not None and dw.ndim == 4:
        config["kernel_size"] = dw.shape[-1]
    head = tensors.get("head.weight")
    if head is not None and head.ndim == 2:
        config["n_classes"] = head.shape[0]
    return config


def without_classifier(state_dict) -> dict[str, torch.Tensor]:
    """The state dict (any layout) without its classifier's weights, canonical keys (keys that fit
    no rule kept as they were, for ``load_state_dict`` to report): what a model without a
    classifier loads, as timm's ``num_classes=0`` leaves the pretrained classifier out."""
    canonical = to_canonical(state_dict)
    kept = {key: value for key, value in canonical.tensors.items() if not key.startswith("head.")}
    return {**kept, **{key: state_dict[key] for key in canonical.unmatched}}


CHECKPOINT_WRAPPERS = ("state_dict", "model")  # where training checkpoints keep the weights
EMA_WRAPPERS = ("state_dict_ema", "model_ema")  # ... and their exponential moving average (timm: the former)
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".ckpt")  # named to a folder's caller


def _looks_like_safetensors(path: str, size: int) -> bool:
    """Whether the file of ``size`` bytes starts as a safetensors file does (its header's length as
    a little-endian u64, then the JSON header's ``{``), whatever its name: a Hugging Face cache
    keeps its files as ``blobs/<hash>``."""
    with open(path, "rb") as file:
        start = file.read(9)
    return len(start) == 9 and start[8:9] == b"{" and 0 < int.from_bytes(start[:8], "little") < size


def load_checkpoint(path: str | os.PathLike, *, weights_only: bool = True,
                    use_ema: bool | None = None) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.safetensors`` file into a state dict on the CPU.

    A training checkpoint's weights are unwrapped from its entries: its EMA weights
    (``"state_dict_ema"`` as timm's train.py saves them, or ``"model_ema"``) or its plain ones
    (``"state_dict"`` or ``"model"``). ``use_ema=None`` (the default) follows timm's
    ``create_model(checkpoint_path=)`` / ``load_checkpoint``: the EMA weights where the file has
    them, else the plain ones; ``use_ema=True`` requires the EMA weights and ``False`` the plain
    ones, raising ``CheckpointError`` where the file lacks them. Pickled files are read with
    ``torch.load(weights_only=True)`` (argparse.Namespace entries, as timm's training checkpoints
    carry, are allowed); pass ``weights_only=False`` only for files you trust. Pass the result to
    ``ConvMixer.load_state_dict`` (any layout of this module's docstring).
    """
    if use_ema is not None and not isinstance(use_ema, bool):
        raise ValueError(f"use_ema must be None (as timm: EMA weights where present), True or False, got {use_ema!r}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise CheckpointError(f"checkpoint path must be a str or os.PathLike of str, got {path!r}")
    if os.path.isdir(path):  # (a Hugging Face snapshot folder, say)
        try:
            files = sorted(name for name in os.listdir(path) if name.endswith(CHECKPOINT_SUFFIXES))
        except OSError:  # (not listable: the message names none)
            files = []
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file in it"
                              + (f": {', '.join(files[:5])}" if files else " (it holds none of "
                                 f"{', '.join(CHECKPOINT_SUFFIXES)})"))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        size = os.path.getsize(path)
        safetensors_file = path.endswith(".safetensors") or _looks_like_safetensors(path, size)
    except OSError as error:  # (permissions, say)
        raise CheckpointError(f"could not read checkpoint {path}: {error}") from error
    if safetensors_file and use_ema:
        raise CheckpointError(f"{path} is a safetensors file, which holds one set of weights: no EMA entry "
                              "(load it without use_ema=True)")
    if size == 0:
        raise CheckpointError(f"checkpoint file {path} is empty (0 bytes)")
    if safetensors_file:
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise CheckpointError(f"reading {path} needs the safetensors package: pip install safetensors") from error
        try:
            return load_file(path, device="cpu")
        except Exception as error:  # SafetensorError: a truncated download, a file of another format
            raise CheckpointError(f"could not read safetensors file {path} ({size:,} bytes; truncated or not "
                                  f"safetensors?): {type(error).__name__}: {error}") from error
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        refused_by_weights_only = weights_only and "Unsupported global" in str(error)  # (a class it holds)
        unreadable = not refused_by_weights_only and isinstance(error, (pickle.UnpicklingError, EOFError, OSError,
                                                                        RuntimeError, KeyError, ValueError))
        raise CheckpointError(
            f"could not read checkpoint {path} ({size:,} bytes"
            + ("; truncated or not a torch.save file?)" if unreadable else ")")
            + f": {type(error).__name__}: {error}"
            + ("\n(if you trust this file, load_checkpoint(path, weights_only=False) unpickles anything)"
               if refused_by_weights_only else "")
        ) from error
    if isinstance(checkpoint, dict):
        def first_entry(names):  # the first of names whose entry is a dict, or None
            return next((name for name in names if isinstance(checkpoint.get(name), dict)), None)

        ema, plain = first_entry(EMA_WRAPPERS), first_entry(CHECKPOINT_WRAPPERS)
        if use_ema is True and ema is None:
            raise CheckpointError(f"{path} holds no EMA weights (an entry {' or '.join(EMA_WRAPPERS)}); its "
                                  f"entries: {', '.join(map(str, list(checkpoint)[:10]))}")
        if use_ema is False and plain is None and ema is not None:
            raise CheckpointError(f"{path} holds only EMA weights (under {ema!r}): "
                                  "load_checkpoint(path) or use_ema=True takes them")
        if ema is not None and use_ema is not False:
            return checkpoint[ema]
        return checkpoint[plain] if plain is not None else checkpoint
    if isinstance(checkpoint, torch.nn.Module):
        return checkpoint.state_dict()
    raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
