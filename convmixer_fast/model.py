"""The drop-in ``ConvMixer``: an ``nn.Module`` with timm's module names, run by fused backends.

Inference only. The module holds ordinary ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` layers
(so ``.to()``, ``.half()``, ``state_dict()`` behave as usual); ``forward`` runs the folded
computation of DESIGN.md §2 on the parameters prepared by ``prepare.prepare_params``, cached per
device and dtype and re-prepared when any parameter or buffer changes (``.to()``, ``load_state_dict``,
in-place edits: detected through the tensors' version counters; ``stem``, ``blocks`` or ``head``
replaced on the model: ``__setattr__``; a tensor or layer assigned inside them: torch's
registration hooks, ``_layer_changed``, which also refuses one that does not fit; blocks deleted or
inserted, and a BatchNorm's ``eps`` set: ``_prepared_params``).

Input policy: a 4-D NCHW float image batch (float32 / float16 / bfloat16 / float64, converted to
the compute dtype as the stem reads it) on the model's device, ``in_chans`` channels, H and W at
least ``patch_size`` (rows/columns past the last whole patch are ignored, like the strided conv).
Values are not scanned: NaN / Inf propagate to the logits as in the eager model (a scan would cost
a pass and a host-device sync per call).

Autocast: the compute dtype, that of the kernels and the outputs, is the model dtype, except that
an fp32 model called under ``torch.autocast`` to float16 / bfloat16 on the input's device type
computes in that dtype (as an eager model's convolutions and matmuls would): its weights are
prepared a second time, rounded once to it, and kept beside the fp32 set. A 16-bit model keeps its
own dtype.

CUDA graphs (``cuda_graphs=True``, the default): on a CUDA device ``forward`` runs the first call
with a new input signature (shape, strides, dtype, device, compute dtype, in fp32 the TF32
switches) as usual: the warm-up that compiles, autotunes and measures ``auto``'s choices. The second call with it captures the whole
forward in a CUDA graph (after one more warm-up run on a side stream, on the allocations the graph
will own); that call and every later one copy the input into the graph's static input, replay, and
return a copy of the static output, so a returned tensor is never overwritten by a later call. Up to
``MAX_CACHED_SHAPES`` graphs are kept (least recently used dropped, after the last replay's
stream has finished with them); a signature whose graph was dropped is not captured again (it runs
uncaptured: with more signatures in turn than graphs kept, capturing anew on each return would
cost more than the graphs save), and any change of the parameters drops them all, and what was
seen. Switching ``cuda_graphs`` off releases the graphs. Not captured: ``forward_features`` /
``forward_head``, calls under torch.compile or torch.jit.trace (on fresh allocations: a trace
would keep a buffer as a constant), and calls made while the caller is capturing a graph itself:
they are simply recorded into it, on fresh allocations from the caller's graph pool (not the
model's reusable buffers); such a graph reads the prepared parameters, which a parameter change
replaces, so capture it again after one. Call the model once before capturing it yourself: on a
first call the capture would also record the parameters' preparation (each replay repeats it:
nothing recorded is kept for later calls) and run each kernel's first config and each op's first
``auto`` backend, untimed (timing is impossible during a capture). A capture of the model's own
that fails warns and switches graphs off for the model (``cuda_graphs = False``): a failed capture
can leave torch's allocator unfit for another.

Threads and streams: a model may be called from several threads and on several CUDA streams. Its
shared state (prepared parameters, ``auto``'s choices, activation buffers, graphs) is used under
one lock per model, held while a call queues its work (the GPU still overlaps the calls' kernels).
Activation buffers are kept per CUDA stream, so calls on different streams never share them; a
graph's static input and output are shared, so a replay on another stream than the previous one
first waits for that stream's queued work. The per-call cost on one stream is a lock and a stream
lookup. Copies (``copy.deepcopy``, pickling, ``torch.save(model)``) carry the parameters and
settings, none of these caches; so do ``nn.DataParallel``'s replicas.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn

from . import _tf32
from .backends import BackendOps, ResolvedOps, check_backend_name, resolve_ops
from .backends.eager import has_autocast
from .ops._checks import MAX_KERNEL_SIZE
from .prepare import PreparedParams, prepare_params
from .reference import ConvMixerReference, Residual
from .weights import CheckpointError, infer_config, to_canonical

ACTIVATION_LAYERS = {"gelu": nn.GELU, "relu": nn.ReLU}
IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)  # a caller's autocast to these reaches an fp32 model
AVERAGING_POOL_TYPES = ("avg", "fast", "fastavg")  # timm's global_pool values (any case) taking the mean
MAX_CACHED_SHAPES = 8  # activation buffers and CUDA graphs kept for this many input shapes each
# (least recently used dropped)
MAX_SEEN_SIGNATURES = 1024  # input signatures remembered as seen (warm, or their graph dropped)


class InputError(ValueError):
    """An input the model cannot take (shape, channels, dtype, device)."""


class InferenceOnlyError(RuntimeError):
    """Training mode or autograd was asked of the inference-only model."""


def activation_name(act_layer) -> str:
    """"gelu" / "relu" from a name, an nn.Module class / factory or instance (exact-erf GELU only)."""
    if isinstance(act_layer, str):
        name = act_layer.lower()
        if name not in ACTIVATION_LAYERS:
            raise ValueError(f"act_layer must be one of {tuple(ACTIVATION_LAYERS)}, got {act_layer!r}")
        return name
    expected = f"act_layer must be nn.GELU, nn.ReLU, 'gelu' or 'relu', got {act_layer!r}"
    module = act_layer
    if callable(act_layer) and not isinstance(act_layer, nn.Module):  # a class or factory of modules
        try:
            module = act_layer()
        except TypeError as error:  # a function such as F.gelu, a module class that needs arguments
            raise ValueError(f"{expected} (calling it with no arguments raised: {error})") from error
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise ValueError(f"only the exact (erf) GELU is supported, got GELU(approximate={module.approximate!r})")
        return "gelu"
    if isinstance(module, nn.ReLU):
        return "relu"
    raise ValueError(expected)


def _first_ten(items: list[str], separator: str) -> str:
    """The first ten of ``items`` joined by ``separator``, then "..." where there are more."""
    return separator.join(items[:10]) + (" ..." if len(items) > 10 else "")


def _integer(value) -> int | None:
    """``value`` as a Python int where it is an integer of any type (a NumPy integer, say), not a
    bool; else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_architecture(**sizes: int) -> dict[str, int]:
    """The given architecture sizes (``ConvMixer``'s ``dim``, ``depth``, ``kernel_size``,
    ``patch_size``, ``n_classes``, ``in_chans``) as Python ints: any integer type is taken (a NumPy
    integer, say; not a bool or a float). ValueError naming the first the model cannot take
    (``n_classes=0``: no classifier, as timm's ``num_classes=0``)."""
    checked = {}
    for name, value in sizes.items():
        low, high = (0 if name == "n_classes" else 1), (MAX_KERNEL_SIZE if name == "kernel_size" else None)
        number = _integer(value)
        if number is None or number < low or (high and number > high):
            expected = f"in [{low}, {high}]" if high else f">= {low}"
            raise ValueError(f"{name} must be an integer {expected}, got {value!r}")
        checked[name] = number
    return checked


def check_global_pool(global_pool, n_classes: int) -> str:
    """timm's ``global_pool`` as the model keeps it: "avg" (the mean over positions; timm's "fast"
    and "fastavg" are the same mean) or "" (no pooling: the feature map, which takes no
    classifier). ValueError for anything else (timm's max pools give other numbers) or for "" with
    a classifier."""
    if isinstance(global_pool, str) and global_pool.lower() in AVERAGING_POOL_TYPES:
        return "avg"
    if global_pool != "":
        raise ValueError(f"global_pool must be 'avg' (the mean over positions, as the ConvMixer paper) or '' "
                         f"(none, with num_classes=0), got {global_pool!r}")
    if n_classes:
        raise ValueError(f"global_pool='' leaves the [B, dim, H, W] feature map, which takes no classifier: "
                         f"pass num_classes=0 with it, not {n_classes}")
    return ""


class _Buffers(NamedTuple):
    """Preallocated activations for one input shape: two alternating token maps, pooling workspace."""

    tokens: tuple[torch.Tensor, torch.Tensor]  # [B, Hp, Wp, C] each
    pooled: torch.Tensor | None  # [B, C] fp32 (None without a classifier: the head's workspace)


class _CapturedForward(NamedTuple):
    """``forward`` captured for one input signature: replay after copying into ``image``."""

    graph: "torch.cuda.CUDAGraph"
    image: torch.Tensor  # static input, the signature's shape / strides / dtype
    output: torch.Tensor  # static output: the logits (or the features, without a classifier)


class _Run(NamedTuple):
    """What ``ConvMixer._tokens`` computed, and what the head needs."""

    tokens: torch.Tensor  # [B, Hp, Wp, C] the last block's output, a fresh tensor
    kept: list[torch.Tensor]  # [B, Hp, Wp, C] the outputs of the blocks asked for, fresh tensors
    params: PreparedParams
    ops: BackendOps
    pooled: torch.Tensor | None  # [B, C] fp32 pooling workspace, or None: allocate


# What the model remembers of an input signature without a graph (``ConvMixer._signatures``).
_WARM = "warm"  # seen once: the next call captures
_DROPPED = "dropped"  # its graph was dropped to keep MAX_CACHED_SHAPES: it runs uncaptured


def _capturing(x: torch.Tensor) -> bool:
    """Whether a CUDA graph is being captured (by the caller) on the current stream of ``x``'s device:
    then the forward allocates afresh, into the caller's graph pool, instead of reusing the model's
    buffers (which a later call may free under that graph). False while torch.compile traces."""
    return (x.device.type == "cuda" and not torch.compiler.is_compiling()
            and torch.cuda.is_current_stream_capturing())


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The 16-bit dtype the caller's autocast asks for on ``device_type``, or None."""
    if not has_autocast(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype in AUTOCAST_DTYPES else None


def _traced() -> bool:
    """Whether torch.compile or torch.jit.trace is recording the forward: then it runs on fresh
    allocations without the model's buffers or graphs (a trace would keep a buffer as a constant
    and write every later call's activations into it; a graph replay is no traceable op)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _remember(cache: OrderedDict, key, value, bound: int = MAX_CACHED_SHAPES) -> list:
    """Put ``key`` in the per-shape ``cache`` as its most recent entry, dropping the least recent
    beyond ``bound``; the dropped ``(key, value)`` pairs."""
    cache[key] = value
    cache.move_to_end(key)
    dropped = []
    while len(cache) > bound:
        dropped.append(cache.popitem(last=False))
    return dropped


_EPS = operator.attrgetter("eps")  # a BatchNorm's, which each preparation reads: the staleness key holds them
_TRAINING = operator.attrgetter("training")


def _layer_signature(layer: nn.Module) -> str:
    """What a model takes as given of one of its layers, for the check that a layer put in another's
    place is alike: its type and settings (``extra_repr``: a convolution's geometry, the GELU's
    form), not a BatchNorm's eps (read at each preparation) or momentum (no effect in eval mode)."""
    settings = "" if isinstance(layer, nn.modules.batchnorm._BatchNorm) else layer.extra_repr()
    return f"{type(layer).__name__}({settings})"


def _layers(module: nn.Module) -> dict[str, str | tuple[int, ...]]:
    """Each layer's signature under its name ("" for ``module`` itself) and each state-dict
    tensor's shape under its key: two modules with equal ``_layers`` compute alike."""
    layers: dict[str, str | tuple[int, ...]] = {name: _layer_signature(layer) for name, layer in module.named_modules()}
    return layers | {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


@functools.cache
def _architecture_layers(dim: int, kernel_size: int, patch_size: int, in_chans: int, activation: str) -> tuple[dict, dict]:
    """``_layers`` of the stem and of a block of an architecture, as the original defines them."""
    with torch.device("meta"):
        original = ConvMixerReference(dim, 1, kernel_size, patch_size, 1, in_chans=in_chans,
                                      activation=ACTIVATION_LAYERS[activation])
    return _layers(nn.Sequential(*original[:3])), _layers(original[3])


# id() of every layer of a ConvMixer -> (a weak reference to the layer, the models that hold it,
# weakly; a layer may have left a model since: ``ConvMixer._layer_changed`` looks). Keyed by id, so
# that the global hooks never hash a module of someone else's (a __hash__ may fail, or be slow).
# torch's global registration hooks call ``_registered`` for every parameter, buffer or child module
# assigned to any module in the process.
_HOLDERS: dict[int, tuple[weakref.ref, weakref.WeakSet]] = {}


def _hold(layer: nn.Module, model: nn.Module) -> None:
    """Record ``model`` as holding ``layer`` (``_HOLDERS``); the entry goes when the layer dies."""
    key = id(layer)
    entry = _HOLDERS.get(key)
    if entry is None or entry[0]() is not layer:
        def forget(dead: weakref.ref, key: int = key) -> None:
            if _HOLDERS.get(key, (None,))[0] is dead:
                del _HOLDERS[key]

        entry = _HOLDERS[key] = (weakref.ref(layer, forget), weakref.WeakSet())
    entry[1].add(model)


@functools.cache
def _install_registration_hooks() -> None:
    """Once per process, at the first ConvMixer built (importing the package installs nothing)."""
    from torch.nn.modules import module as nn_module

    nn_module.register_module_parameter_registration_hook(functools.partial(_registered, "parameter"))
    nn_module.register_module_buffer_registration_hook(functools.partial(_registered, "buffer"))
    nn_module.register_module_module_registration_hook(functools.partial(_registered, "module"))


def _registered(kind: str, module: nn.Module, name: str, value) -> None:
    """torch's registration hook: ``value`` (a parameter, buffer or module, by ``kind``) is about
    to be assigned as ``module.<name>``. A layer of a ConvMixer tells the models holding it."""
    entry = _HOLDERS.get(id(module))
    if entry is None or entry[0]() is not module:
        return
    for model in list(entry[1]):
        model._layer_changed(kind, module, name, value)


class ConvMixer(nn.Module):
    """ConvMixer (Trockman & Kolter) for inference: same parameters, same logits, fused kernels.

    Args follow the original repo (``n_classes``) and timm (``num_classes``, ``in_chans``,
    ``act_layer``, ``global_pool``). ``n_classes=0`` builds no classifier (``head`` is
    ``nn.Identity``, as timm's ``num_classes=0``): ``forward`` then returns the pooled features
    ``[B, dim]``, or with ``global_pool=""`` the feature map ``[B, dim, H//p, W//p]``
    (``check_global_pool``). ``backend`` is "auto" (per op, the fastest backend available for the
    input's device and the model's dtype, measured per shape), "triton", "cuda" or "eager" (see
    ``convmixer_fast.backends``). ``cuda_graphs``: replay ``forward`` from a CUDA graph per input
    shape on a GPU (module docstring); an attribute, switchable at any time. Parameters are frozen
    (``requires_grad=False``).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        kernel_size: int = 9,
        patch_size: int = 7,
        n_classes: int = 1000,
        *,
        in_chans: int = 3,
        act_layer=nn.GELU,
        backend: str = "auto",
        cuda_graphs: bool = True,
        num_classes: int | None = None,
        global_pool: str = "avg",
    ):
        super().__init__()
        if num_classes is not None:
            if n_classes not in (1000, num_classes):
                raise ValueError(f"n_classes={n_classes} and num_classes={num_classes} disagree; pass one")
            n_classes = num_classes
        dim, depth, kernel_size, patch_size, n_classes, in_chans = check_architecture(
            dim=dim, depth=depth, kernel_size=kernel_size, patch_size=patch_size, n_classes=n_classes, in_chans=in_chans
        ).values()
        self._global_pool = check_global_pool(global_pool, n_classes)
        self.dim, self.kernel_size, self.patch_size = dim, kernel_size, patch_size
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = dim  # (timm's names: the classifier's input width)
        self.activation = activation_name(act_layer)
        self.backend = check_backend_name(backend)
        self.cuda_graphs = cuda_graphs
        # timm's data config of the weights (input size, interpolation, crop, mean / std), which
        # timm.data.resolve_model_data_config reads: set by create_model for the ImageNet configs,
        # copied by from_eager from a timm module; empty (timm's defaults) otherwise.
        self.pretrained_cfg: dict = {}
        act = ACTIVATION_LAYERS[self.activation]

        self.stem = nn.Sequential(nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), act(), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    Residual(
                        nn.Sequential(
                            nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"), act(), nn.BatchNorm2d(dim)
                        )
                    ),
                    nn.Conv2d(dim, dim, kernel_size=1),
                    act(),
                    nn.BatchNorm2d(dim),
                )
                for _ in range(depth)
            ]
        )
        self.head = nn.Linear(dim, n_classes) if n_classes else nn.Identity()
        self.requires_grad_(False)
        self.eval()
        self._reset_runtime_state()
        _install_registration_hooks()
        self._hold_layers(self)

    _RUNTIME_STATE = ("_lock", "_loading", "_prepared", "_weight_tensors", "_versioned_tensors", "_batchnorms",
                      "_weight_blocks", "_activation_buffers", "_resolved_ops", "_graphs", "_signatures",
                      "_replay_stream")

    @property
    def cuda_graphs(self) -> bool:
        """Whether ``forward`` replays a CUDA graph per input signature on a GPU (module docstring);
        switched off, the graphs already captured are released."""
        return self._cuda_graphs

    @cuda_graphs.setter
    def cuda_graphs(self, enabled: bool) -> None:
        if enabled not in (True, False):  # (0, 1 and NumPy's bools are)
            raise ValueError(f"cuda_graphs must be True or False, got {enabled!r}")
        self._cuda_graphs = bool(enabled)
        if not enabled and "_lock" in self.__dict__:
            with self._lock:
                self._drop_graphs()

    def _reset_runtime_state(self) -> None:
        """The caches derived from the parameters and the calls made (``_RUNTIME_STATE``): never
        copied or pickled (``__getstate__``), rebuilt empty."""
        self._lock = threading.RLock()  # held while a call uses the shared state below
        self._loading = False  # inside load_state_dict
        # ((sum of weight versions, BatchNorm eps values), compute dtype -> params): the model dtype's,
        # and an autocast dtype's
        self._prepared: tuple[tuple, dict[torch.dtype, PreparedParams]] | None = None
        self._weight_tensors: list[torch.Tensor] | None = None  # every parameter and buffer
        self._versioned_tensors: list[torch.Tensor] | None = None  # those with a version counter
        self._batchnorms: list[nn.Module] | None = None  # every BatchNorm: the preparation reads its eps
        self._weight_blocks: tuple[nn.Module, ...] = ()  # the blocks they were gathered from
        # (B, Hp, Wp, compute dtype, device, CUDA stream) -> buffers
        self._activation_buffers: OrderedDict[tuple, _Buffers] = OrderedDict()
        self._resolved_ops: dict[tuple, ResolvedOps] = {}  # (backend, device, dtype) -> ops
        self._graphs: OrderedDict[tuple, _CapturedForward] = OrderedDict()  # input signature -> its graph
        self._signatures: OrderedDict[tuple, str] = OrderedDict()  # signature without a graph -> _WARM / _DROPPED
        self._replay_stream: torch.cuda.Stream | None = None  # where the last graph replay was queued

    def __prepare_scriptable__(self):  # torch.jit.script calls this first
        raise TypeError(
            "convmixer_fast.ConvMixer cannot be compiled by TorchScript (torch.jit.script): its forward "
            "chooses kernels in Python. Use torch.jit.trace(model, example_images), torch.export.export "
            "or torch.compile instead"
        )

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for name in self._RUNTIME_STATE:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:  # copy.deepcopy, unpickling
        super().__setstate__(state)
        self._reset_runtime_state()
        _install_registration_hooks()
        self._hold_layers(self)

    def _replicate_for_data_parallel(self):
        """``nn.DataParallel``'s replica (a shallow copy, given its device's parameters next): its own
        caches, not the original's (prepared on another device, under another lock)."""
        replica = super()._replicate_for_data_parallel()
        replica._reset_runtime_state()
        return replica

    def __setattr__(self, name: str, value) -> None:
        """A submodule replaced after construction is seen: timm's classifier surgery
        (``model.head = nn.Linear(dim, n)``, or ``nn.Identity()`` for none) or fewer blocks
        (``model.blocks = model.blocks[:n]``); ``n_classes`` and ``depth`` are read off them. The new
        module is frozen, and the prepared parameters and graphs are dropped. A new ``stem`` or
        ``blocks`` must have the layers it replaces. (Changes inside the layers: ``_layer_changed``.)"""
        # (Not while __init__ builds them, nor while nn.DataParallel's replicate assigns a replica's
        # children, before their parameters: the replica's caches start empty.)
        replaced = "_lock" in self.__dict__ and name in self._modules and not self.__dict__.get("_is_replica")
        if replaced and name == "head":
            self._check_classifier(value)
        if replaced and name == "blocks" and not (isinstance(value, nn.Sequential) and len(value) >= 1):
            raise ValueError(f"model.blocks must be an nn.Sequential of at least one block, got {value!r}")
        if replaced and name in ("stem", "blocks"):
            self._check_same_layers(name, value)
        super().__setattr__(name, value)
        if replaced:
            if isinstance(value, nn.Module):
                self._take_in(value)
            self._invalidate_prepared()

    def _check_same_layers(self, name: str, value) -> None:
        """ValueError unless a module assigned to ``model.stem`` has the layers of the model's stem,
        or each block of one assigned to ``model.blocks`` those of its blocks."""
        stem_layers, block_layers = self._architecture_layers()
        if name == "stem":
            self._check_alike("model.stem", stem_layers, value)
        else:
            for index, block in enumerate(value):
                self._check_alike(f"block {index} of model.blocks", block_layers, block)

    def _architecture_layers(self) -> tuple[dict, dict]:
        """``_layers`` of this model's stem and of each of its blocks, as built."""
        return _architecture_layers(self.dim, self.kernel_size, self.patch_size, self.in_chans, self.activation)

    def _check_layers(self) -> None:
        """ValueError unless the stem, every block and the head have the layers of the model's
        architecture, each tensor set: run before each preparation, it catches what changed
        unseen since the last (a parameter set to None, a layer deleted inside a block) before
        ``prepare_params`` reads it. (Not in ``nn.DataParallel``'s replicas, whose layers hold
        their tensors as plain attributes: those of the original, which its own forward checks.)"""
        if self.__dict__.get("_is_replica"):
            return
        self._check_same_layers("stem", self.stem)
        self._check_same_layers("blocks", self.blocks)
        self._check_classifier(self.head)

    def _check_alike(self, what: str, expected_layers: dict, found) -> None:
        """ValueError unless ``found``, put in the place of ``what``, has the layers
        ``expected_layers`` (``_layers``: their types and settings, the shapes of their tensors):
        the model's architecture (dim, kernel and patch size, activation), which it does not read
        off them."""
        found_layers = _layers(found) if isinstance(found, nn.Module) else {"": type(found).__name__}
        differs = next((f"{key or 'the module'}: expected {expected_layers.get(key, 'none')}, got "
                        f"{found_layers.get(key, 'none')}" for key in [*expected_layers, *found_layers]
                        if expected_layers.get(key) != found_layers.get(key)), None)
        if differs:
            raise ValueError(
                f"{what} must have the layers it replaces, which the model was built with (dim={self.dim}, "
                f"kernel_size={self.kernel_size}, patch_size={self.patch_size}, in_chans={self.in_chans}, "
                f"act={self.activation}); {differs}")

    def _take_in(self, module: nn.Module) -> None:
        """A module that joins the model after construction: frozen, its layers held."""
        module.requires_grad_(False)
        self._hold_layers(module)

    def _hold_layers(self, module: nn.Module) -> None:
        """Register ``module``'s layers as this model's (``_HOLDERS``), ``module`` itself included
        unless it is the model."""
        for layer in module.modules():
            if layer is not self:
                _hold(layer, self)

    def _layer_changed(self, kind: str, layer: nn.Module, name: str, value) -> None:
        """``value``, a ``kind`` ("parameter", "buffer" or "module"), is about to be assigned as
        ``layer.<name>`` (torch's registration hook, through ``_registered``): a Parameter swapped
        in (``model.head.weight = nn.Parameter(...)``), a buffer, a layer replaced
        (``model.stem[0] = ...``) or a block appended (``model.blocks.append(...)``). A tensor must
        have the shape of the one it replaces, a layer the layers of the one it replaces (a block
        those of the model's blocks); no tensor or layer is added elsewhere or removed. The new
        tensor or layer is frozen, then stored under the model's lock (torch stores it again
        after its hooks: a forward on another thread in between would otherwise prepare the old
        one) and the prepared parameters and graphs are dropped, as for any change. (Blocks
        deleted or inserted, which pass no hook, ``_prepared_params`` sees. Not seen until the
        next preparation: a parameter set to None or a layer deleted inside ``stem`` or a block,
        which ``_check_layers`` then refuses. Not seen at all: an edit through ``.data``, tensors
        swapped in by ``torch.func.functional_call`` once the weights are prepared: copy into the
        tensors in place, or use ``load_state_dict``.)"""
        if self._loading and kind != "module":  # load_state_dict checked the shapes; it drops the caches once
            return
        path = next((path for path, module in self.named_modules() if module is layer), None)
        if path is None:  # it has left this model
            return
        where = f"model.{path}.{name}"
        store = {"parameter": layer._parameters, "buffer": layer._buffers, "module": layer._modules}[kind]
        old = store.get(name)
        if kind == "module":
            if layer is self.blocks and value is not None:
                self._check_alike(where, self._architecture_layers()[1], value)
            elif old is None or value is None:
                raise ValueError(f"{where}: a ConvMixer's layers are set at construction, and none is added "
                                 f"or removed (got {value!r} for {old!r}); build the ConvMixer you need")
            else:
                self._check_alike(where, _layers(old), value)
            if value is not None:
                self._take_in(value)
        else:
            if name not in store:
                raise ValueError(f"{where}: a ConvMixer's layers take no tensor but their own; build the "
                                 "ConvMixer you need")
            if old is not None and (value is None or tuple(value.shape) != tuple(old.shape)):
                got = None if value is None else f"shape {tuple(value.shape)}"
                raise ValueError(f"{where}: expected a tensor of shape {tuple(old.shape)}, got {got}")
            # (into a slot set to None before: checked against the architecture at the next preparation)
            if isinstance(value, nn.Parameter) and value.is_leaf:
                value.requires_grad_(False)
        with self._lock:
            store[name] = value
            self._invalidate_prepared()

    def _check_classifier(self, head) -> None:
        """ValueError unless a module assigned to ``model.head`` is ``nn.Linear(dim, n >= 1)`` with
        a bias (and the pooling takes a classifier) or ``nn.Identity()`` (no classifier)."""
        if isinstance(head, nn.Identity):
            return
        if isinstance(head, nn.Linear) and head.in_features == self.dim and head.out_features >= 1 \
                and head.bias is not None:
            check_global_pool(self._global_pool, head.out_features)
            return
        raise ValueError(f"model.head must be nn.Linear({self.dim}, n_classes) with a bias, or nn.Identity() "
                         f"for none, got {head!r}")

    @property
    def n_classes(self) -> int:
        """The classifier's outputs; 0 without one (``head`` is ``nn.Identity``)."""
        return self.head.out_features if isinstance(self.head, nn.Linear) else 0

    num_classes = n_classes  # (timm's name)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, depth={self.depth}, kernel_size={self.kernel_size}, patch_size={self.patch_size}, "
            f"n_classes={self.n_classes}, in_chans={self.in_chans}, act={self.activation!r}, "
            f"global_pool={self._global_pool!r}, backend={self.backend!r}, cuda_graphs={self.cuda_graphs}"
        )

    @property
    def config(self) -> dict:
        """The constructor arguments that define the architecture."""
        return dict(dim=self.dim, depth=self.depth, kernel_size=self.kernel_size, patch_size=self.patch_size,
                    n_classes=self.n_classes, in_chans=self.in_chans, act_layer=self.activation,
                    global_pool=self._global_pool)

    # ------------------------------------------------------------------ timm's classifier and feature API
    @property
    def global_pool(self) -> str:
        """"avg" (the mean over positions) or "" (none: ``forward`` returns the feature map);
        ``reset_classifier`` changes it."""
        return self._global_pool

    @property
    def feature_info(self) -> list[dict]:
        """timm's description of what ``forward_intermediates`` returns: each block's output."""
        return [dict(num_chs=self.dim, reduction=self.patch_size, module=f"blocks.{index}")
                for index in range(self.depth)]

    def get_classifier(self) -> nn.Module:
        """The classifier: ``nn.Linear(dim, n_classes)``, or ``nn.Identity()`` without one."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """As timm's: a new classifier of ``num_classes`` outputs (``nn.Linear``'s random
        initialisation, on the model's device and dtype: load its weights next), none for 0;
        ``global_pool`` as in the constructor (None: unchanged)."""
        num_classes = check_architecture(n_classes=num_classes)["n_classes"]
        pool = check_global_pool(self._global_pool if global_pool is None else global_pool, num_classes)
        head = (nn.Linear(self.dim, num_classes, device=self._param_device, dtype=self._param_dtype)
                if num_classes else nn.Identity())
        with self._lock:
            self._global_pool = pool
            self.head = head  # (__setattr__: the prepared parameters are dropped)

    def _block_indices(self, indices) -> list[int]:
        """The blocks ``indices`` picks, as timm's ``feature_take_indices``: None all, an int n the
        last n, a sequence those (negative ones counted from the end); ValueError outside."""
        depth = self.depth
        if indices is None:
            indices = depth
        if _integer(indices) is not None:
            indices = _integer(indices)
            if not 1 <= indices <= depth:
                raise ValueError(f"indices={indices} asks for the last {indices} blocks; the model has {depth}")
            return list(range(depth - indices, depth))
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
            raise ValueError(f"indices must be None, an int (the last n blocks) or a sequence of block "
                             f"indices, got {indices!r}")
        picked = []
        for given in indices:
            index = _integer(given)
            if index is None or not -depth <= index < depth:
                raise ValueError(f"block index {given!r} is outside the model's {depth} blocks "
                                 f"(0 to {depth - 1}, or -{depth} to -1 from the end)")
            picked.append(index % depth)
        if not picked:
            raise ValueError("indices picks no block")
        return picked

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """As timm's: the outputs of the blocks ``indices`` picks (None: all; an int n: the last n;
        a sequence: those, negative ones from the end), in block order, each
        ``[B, dim, H//p, W//p]`` (NCHW shape, channels_last memory, the compute dtype). Returns them
        alone with ``intermediates_only``, else ``(final feature map, them)``: ``forward_features``'
        map, or with ``stop_early`` the last picked block's. ``norm`` has nothing to apply:
        ConvMixer has no final norm."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' (ConvMixer's feature maps), got {output_fmt!r}")
        picked = self._block_indices(indices)
        self._check_input(x)
        depth = max(picked) + 1 if stop_early else self.depth
        if x.shape[0] == 0:
            final, intermediates = self._empty_tokens(x), [self._empty_tokens(x) for _ in set(picked)]
        else:
            with self._exclusive():
                run = self._tokens(x, fold_last_bn=False, preallocated=not _capturing(x), keep=picked, depth=depth)
            final, intermediates = run.tokens, run.kept
        intermediates = [tokens.permute(0, 3, 1, 2) for tokens in intermediates]
        return intermediates if intermediates_only else (final.permute(0, 3, 1, 2), intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """As timm's: drop the blocks after the last one ``indices`` picks (as in
        ``forward_intermediates``) and, with ``prune_head``, the classifier and pooling
        (``reset_classifier(0, "")``); returns the picked indices. (No norm to prune.)"""
        picked = self._block_indices(indices)
        with self._lock:
            self.blocks = self.blocks[: max(picked) + 1]
            if prune_head:
                self.reset_classifier(0, "")
        return picked

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_eager(cls, module: nn.Module, *, backend: str = "auto", cuda_graphs: bool = True) -> "ConvMixer":
        """Convert an eager ConvMixer (the original ``nn.Sequential``, its README one-liner, a timm
        ``ConvMixer`` or ``convmixer_fast.reference``; with or without a classifier and pooling, as
        timm's ``num_classes=0`` / ``global_pool=""``): architecture detected, weights copied, on
        the module's device and dtype, and (for an fp32 module) its outputs checked against the
        module's on a small random batch (``convert.check_same_logits``). Anything else (another
        pooling than the mean, such as timm's ``global_pool="avgmax"``; other layer shapes; a
        forward that uses the layers otherwise, e.g. without the residual) raises
        ``UnsupportedModelError``."""
        from .convert import UnsupportedModelError, check_same_logits, convmixer_state_dict, describe_eager

        config, eps = describe_eager(module)
        with torch.device("meta"):  # no random initialisation (the module's weights replace it; torch's RNG stays)
            model = cls(**config, backend=backend, cuda_graphs=cuda_graphs)
        first = next(module.parameters())
        model.to(dtype=first.dtype).to_empty(device=first.device)
        for bn, value in zip((m for m in model.modules() if isinstance(m, nn.BatchNorm2d)), eps):
            bn.eps = value
        try:
            model.load_state_dict(convmixer_state_dict(module))
        except CheckpointError as error:  # (layers of a ConvMixer, named otherwise or in another order)
            raise UnsupportedModelError(
                "the module's layers are a ConvMixer's, but from_eager copies their weights by name and its names "
                f"fit none of timm's, the original nn.Sequential's or the README one-liner's: {error}") from None
        data_config = getattr(module, "pretrained_cfg", None)
        model.pretrained_cfg = dict(data_config) if isinstance(data_config, dict) else {}
        check_same_logits(module, model)
        return model

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load any layout of ``convmixer_fast.weights`` (timm, original, one-liner; ``module.``
        prefixes). Shape mismatches always raise ``CheckpointError`` naming the key and both
        shapes; missing / unexpected keys raise when ``strict`` and are returned otherwise."""
        canonical = to_canonical(state_dict)
        expected = super().state_dict(keep_vars=True)
        given = canonical.tensors
        missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
        unexpected = [canonical.source_keys[k] for k in given if k not in expected] + canonical.unmatched
        mismatched = [
            f"  {canonical.describe(k)}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
            for k, v in given.items()
            if k in expected and v.shape != expected[k].shape
        ]
        hint = self._config_hint(infer_config(given))
        if mismatched:
            raise CheckpointError("shape mismatch loading the state dict:\n" + "\n".join(mismatched) + hint)
        not_real_floats = [  # copy_ would cast them silently: quantized ints, masks, complex values
            f"  {canonical.describe(k)}: {v.dtype}" for k, v in given.items()
            if k in expected and expected[k].is_floating_point() and (not v.is_floating_point() or v.is_complex())
        ]
        if not_real_floats:
            raise CheckpointError("the checkpoint's weights must be floating point (float32, float16, bfloat16, "
                                  "float64), got:\n" + _first_ten(not_real_floats, "\n")
                                  + "\n(a quantized checkpoint needs dequantizing first)")
        if strict and (missing or unexpected):
            lines = []
            if missing:
                lines.append(f"missing keys ({len(missing)}): {_first_ten(missing, ', ')}")
            if unexpected:
                lines.append(f"unexpected keys ({len(unexpected)}): {_first_ten(unexpected, ', ')}")
            raise CheckpointError(f"state dict ({canonical.layout} layout) does not fit the model:\n  "
                                  + "\n  ".join(lines) + hint + "\n(strict=False loads the keys that fit)")
        with self._lock:  # (atomic for the model's other threads)
            self._loading = True  # (assign=True: the registration hooks need not look at each tensor)
            try:
                result = super().load_state_dict({k: v for k, v in given.items() if k in expected}, strict=False,
                                                 assign=assign)
            finally:
                self._loading = False
            self._invalidate_prepared()
        if assign:
            self.requires_grad_(False)
        return type(result)(missing, unexpected)

    def _config_hint(self, found: dict) -> str:
        ours = self.config
        differ = {k: v for k, v in found.items() if k in ours and ours[k] != v}
        if not differ:
            return ""
        said = ", ".join(f"{k}={v} (model: {ours[k]})" for k, v in differ.items())
        return f"\nthe checkpoint looks like a different architecture: {said}"

    # ------------------------------------------------------------------ preparation
    def _invalidate_prepared(self) -> None:
        with self._lock:
            self._prepared = None
            self._weight_tensors = self._versioned_tensors = self._batchnorms = None
            self._drop_shape_caches()  # now, not at the next forward: they hold device memory

    def _drop_shape_caches(self) -> None:
        """The activation buffers, graphs and signatures seen: they belong to the previous prepared
        parameters. (The last replay's stream stays: a new graph's first replay elsewhere still
        waits for it.)"""
        self._activation_buffers.clear()
        self._drop_graphs()
        self._signatures.clear()

    def _drop_graphs(self) -> None:
        """Release every graph, once the last replay is done with it."""
        if self._graphs:
            self._wait_for_replays()
            self._graphs.clear()

    def _wait_for_replays(self) -> None:
        """Before a graph is released: the last replay's stream done with it (a graph's static input
        was allocated on the stream of its capture, which may reuse the memory at once, while a
        replay queued on another stream may still be reading it)."""
        if self._replay_stream is not None:
            self._replay_stream.synchronize()

    def _apply(self, fn, *args, **kwargs):  # .to(), .half(), .cuda(), ... replace the tensors
        result = super()._apply(fn, *args, **kwargs)
        self._invalidate_prepared()
        return result

    def _prepared_params(self, dtype: torch.dtype | None = None) -> PreparedParams:
        """Prepared operands with weights in ``dtype`` (default: the model's), recomputed after
        ``.to()`` / ``load_state_dict`` or an in-place edit.

        In-place edits are seen through the tensors' version counters, which only grow: their sum
        changes whenever any of them does (one pass over a cached list, no per-tensor key). Tensors
        created under ``torch.inference_mode()`` have no version counter: in-place edits of those
        are not seen (``load_state_dict`` and ``.to()`` still refresh everything). Tensors and
        layers assigned are seen as they are assigned (``_layer_changed``); blocks deleted or
        inserted (``del model.blocks[i]``, ``insert``: no hook sees them) here, by the blocks the
        tensors were gathered from. A BatchNorm's ``eps`` (an attribute: no hook sees it set) is
        part of the staleness key beside the version sum, and a BatchNorm put in training mode on its
        own (``model.training`` stays False) is refused at each call. Each preparation first checks
        the layers (``_check_layers``).
        """
        if torch.compiler.is_compiling():
            return prepare_params(self, dtype)  # traced into the graph; no Python-side cache
        blocks = tuple(self.blocks._modules.values())
        gathered = self._weight_tensors is None or blocks != self._weight_blocks
        if gathered:
            self._check_layers()
            parameters = [t for _, t in self.named_parameters()]
            if not all(isinstance(t, nn.Parameter) for t in parameters):
                # (what torch.func.functional_call swaps in: kept, they would stay after it restores)
                raise RuntimeError(
                    "a parameter of the model is a plain tensor, written into a layer's _parameters (as "
                    "torch.func.functional_call does): convmixer_fast.ConvMixer runs the weights it prepared from "
                    "its own parameters and does not support functional_call; load others with load_state_dict"
                )
            self._weight_tensors = parameters + [
                t for name, t in self.named_buffers() if not name.endswith("num_batches_tracked")
            ]
            self._versioned_tensors = [t for t in self._weight_tensors if not t.is_inference()]
            self._batchnorms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            self._weight_blocks = blocks
            self._prepared = None
        tensors = self._weight_tensors
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            raise InferenceOnlyError(
                "convmixer_fast.ConvMixer is inference-only but some parameters require grad; "
                "call model.requires_grad_(False) (gradients would not flow through the fused kernels)"
            )
        if any(map(_TRAINING, self._batchnorms)):  # (set on the layer itself: model.training stays False)
            name = next(name for name, m in self.named_modules() if m.training and m in self._batchnorms)
            raise InferenceOnlyError(f"convmixer_fast.ConvMixer is inference-only but its layer {name} is in training "
                                     f"mode (its batch statistics would be used); call model.eval()")
        version = (sum(t._version for t in self._versioned_tensors), tuple(map(_EPS, self._batchnorms)))
        dtype = dtype or self._param_dtype
        stale = self._prepared is None or self._prepared[0] != version
        if stale and not gathered:
            self._check_layers()
        if (stale or dtype not in self._prepared[1]) and _capturing(tensors[0]):
            self._check_uniform(tensors)  # the caller's capture: prepared into its graph, at each replay
            return prepare_params(self, dtype)
        if stale:
            self._check_uniform(tensors)
            self._prepared = (version, {})
            self._drop_shape_caches()
        prepared = self._prepared[1]
        if dtype not in prepared:
            prepared[dtype] = prepare_params(self, dtype)
        return prepared[dtype]

    def _check_uniform(self, tensors) -> None:
        devices = {t.device for t in tensors}
        dtypes = {t.dtype for t in tensors}
        if len(devices) > 1 or len(dtypes) > 1:
            raise RuntimeError(
                f"the model's parameters are spread over devices {sorted(map(str, devices))} / dtypes "
                f"{sorted(map(str, dtypes))}; move the whole model with model.to(device, dtype)"
            )
        (dtype,) = dtypes
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise RuntimeError(f"model dtype must be float32, float16 or bfloat16, got {dtype}")

    @property
    def _param_device(self) -> torch.device:
        return self.stem[0].weight.device

    @property
    def _param_dtype(self) -> torch.dtype:
        return self.stem[0].weight.dtype

    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype the kernels run in and the outputs come in: the model's; for an fp32 model
        under the caller's autocast to float16 / bfloat16 on ``device``'s type, that dtype (as an
        eager model's convolutions and matmuls would)."""
        if self._param_dtype == torch.float32:
            return _autocast_dtype(device.type) or torch.float32
        return self._param_dtype

    # ------------------------------------------------------------------ forward
    def _require_eval(self) -> None:
        if self.training:
            raise InferenceOnlyError("convmixer_fast.ConvMixer is inference-only: call model.eval()")

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a torch.Tensor image batch, got {type(x).__name__}")
        if x.layout != torch.strided or x.is_nested:
            raise InputError(f"expected a dense (strided) image tensor, got a {'nested' if x.is_nested else x.layout} "
                             "one; pass x.to_dense()")
        if x.dim() != 4:
            raise InputError(f"expected a 4-D NCHW image batch [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            nhwc = " (it looks NHWC: use x.permute(0, 3, 1, 2))" if x.shape[-1] == self.in_chans else ""
            raise InputError(f"expected {self.in_chans} input channels in dim 1 (NCHW), got shape {tuple(x.shape)}{nhwc}")
        if x.shape[2] < self.patch_size or x.shape[3] < self.patch_size:
            raise InputError(
                f"image {x.shape[2]}x{x.shape[3]} is smaller than the patch size {self.patch_size}"
            )
        if x.dtype not in IMAGE_DTYPES:
            raise InputError(
                f"expected a floating-point image ({', '.join(str(d) for d in IMAGE_DTYPES)}), got {x.dtype}; "
                "convert and normalise it first (e.g. x.float() / 255)"
            )
        if x.device != self._param_device:
            if self._param_device.type == "meta":  # (.to() cannot copy out of a meta tensor)
                how = (f"materialise it with model.to_empty(device={str(x.device)!r}), then load its weights "
                       "(load_state_dict / load_checkpoint)")
            else:
                how = f"move one (model.to({str(x.device)!r}) or x.to({str(self._param_device)!r}))"
            raise InputError(f"input is on {x.device} but the model is on {self._param_device}; {how}")
        self._refuse_grad(x, "input")

    @staticmethod
    def _refuse_grad(x: torch.Tensor, what: str) -> None:
        if torch.is_grad_enabled() and x.requires_grad:
            raise InferenceOnlyError(
                f"convmixer_fast.ConvMixer is inference-only and the {what} requires grad; "
                "run it under torch.no_grad() / torch.inference_mode() or pass x.detach()"
            )

    def _resolve_ops(self, device: torch.device, dtype: torch.dtype | None = None) -> ResolvedOps:
        """The ops of each step for the compute ``dtype`` (default: the model's), resolved once per
        (backend, device, dtype): availability probes are host work that does not belong in every
        forward. "auto" measures where it has a choice, except while torch.compile or torch.jit.trace
        records (there, the first candidate of each op: timing runs do not belong in a recording)."""
        dtype = dtype or self._param_dtype
        if _traced():  # (torch.compile: resolved at trace time, through assume_constant_result)
            return resolve_ops(self.backend, device, dtype, self.dim)
        key = (self.backend, device, dtype)
        resolved = self._resolved_ops.get(key)
        if resolved is None:
            resolved = self._resolved_ops[key] = resolve_ops(*key, self.dim, measure=True)
        return resolved

    def backend_label(self) -> str:
        """Which backend runs each op on the model's device: "triton", or per op
        ("stem=triton, pointwise=cuda (measured), ..."); measured choices show once a forward ran."""
        with self._lock:
            return self._resolve_ops(self._param_device).label

    def _exclusive(self):
        """The model's lock (module docstring), or nothing while torch.compile traces."""
        return contextlib.nullcontext() if torch.compiler.is_compiling() else self._lock

    def _buffer_key(self, image: torch.Tensor, dtype: torch.dtype) -> tuple:
        B, _, H, W = image.shape
        stream = torch.cuda.current_stream(image.device).cuda_stream if image.device.type == "cuda" else None
        return (B, H // self.patch_size, W // self.patch_size, dtype, self._param_device, stream)

    def _buffers_for(self, image: torch.Tensor, resolved: ResolvedOps, dtype: torch.dtype) -> _Buffers | None:
        if not resolved.preallocates or _traced():
            return None
        key = self._buffer_key(image, dtype)
        buffers = self._activation_buffers.get(key)
        if buffers is None:
            shape = key[:3] + (self.dim,)  # allocated on the key's stream, used only there
            tokens = tuple(torch.empty(shape, dtype=dtype, device=self._param_device) for _ in range(2))
            pooled = (torch.empty(key[0], self.dim, dtype=torch.float32, device=self._param_device)
                      if self.n_classes else None)
            buffers = _Buffers(tokens, pooled)
        _remember(self._activation_buffers, key, buffers)
        return buffers

    def _tokens(self, image: torch.Tensor, fold_last_bn: bool, preallocated: bool = True, keep=(),
                depth: int | None = None) -> _Run:
        """Stem and the first ``depth`` blocks (default: all) on a checked, non-empty image: the
        final NHWC token map, the outputs of the blocks in ``keep``, and what the head needs.
        ``preallocated=False``: every activation freshly allocated (what a CUDA graph captures:
        its allocations then belong to the graph's private memory pool)."""
        self._require_eval()
        dtype = self._compute_dtype(image.device)
        params = self._prepared_params(dtype)
        resolved = self._resolve_ops(image.device, dtype)
        ops = resolved.ops
        if image.dtype == torch.float64:
            image = image.to(dtype)
        buffers = self._buffers_for(image, resolved, dtype) if preallocated else None
        a, b = buffers.tokens if buffers is not None else (None, None)
        act = params.act
        x = ops.stem(image, params.stem.weight, *params.stem.epilogue, act, out=a)
        blocks = params.blocks_for(fold_last_bn)[:depth]
        kept = []
        for index, block in enumerate(blocks):
            y = ops.depthwise_block(x, block.depthwise.weight, *block.depthwise.epilogue, act, out=b)
            # The last block and those kept write fresh tensors: the caller keeps them, buffers get reused.
            out = a if index < len(blocks) - 1 and index not in keep else None
            x = ops.pointwise(y, block.pointwise.weight, *block.pointwise.epilogue, act, out=out)
            if index in keep:
                kept.append(x)
        pooled = buffers.pooled if buffers is not None else None
        return _Run(x, kept, params, ops, pooled)

    def _empty_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[0, Hp, Wp, C]`` token map of an empty image batch, in the compute dtype, after the
        checks of a non-empty batch that need no prepared parameters (eval mode; one dtype and
        device): nothing shared is touched, so no lock is taken."""
        self._require_eval()
        self._check_uniform(list(self.parameters()))
        shape = (0, x.shape[2] // self.patch_size, x.shape[3] // self.patch_size, self.dim)
        return x.new_empty(shape, dtype=self._compute_dtype(x.device))

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The features of NHWC ``tokens`` ``[B, Hp, Wp, C]`` a model without a classifier returns:
        their mean ``[B, C]`` (summed in fp32, rounded once), or with ``global_pool=""`` the map
        itself, ``[B, C, Hp, Wp]`` (NCHW shape, channels_last memory)."""
        if not self._global_pool:
            return tokens.permute(0, 3, 1, 2)
        return tokens.mean(dim=(1, 2), dtype=torch.float32).to(tokens.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` float images -> ``[B, n_classes]`` logits in the compute dtype
        (the model's; under autocast, see ``_compute_dtype``); without a classifier
        (``n_classes=0``), the features ``_pool`` gives."""
        self._check_input(x)
        if x.shape[0] == 0:
            tokens = self._empty_tokens(x)
            return tokens.new_empty((0, self.n_classes)) if self.n_classes else self._pool(tokens)
        with self._exclusive():
            if self._graphs_apply(x):
                return self._graphed_forward(x)
            return self._outputs(x, preallocated=not _capturing(x))

    def _outputs(self, x: torch.Tensor, preallocated: bool = True) -> torch.Tensor:
        """``forward``'s result for a checked, non-empty image batch."""
        if not self.n_classes:
            return self._pool(self._tokens(x, fold_last_bn=False, preallocated=preallocated).tokens)
        run = self._tokens(x, fold_last_bn=True, preallocated=preallocated)
        return run.ops.head(run.tokens, run.params.head_folded.weight, run.params.head_folded.bias, pooled=run.pooled)

    # ------------------------------------------------------------------ CUDA graphs
    def _graphs_apply(self, x: torch.Tensor) -> bool:
        return self.cuda_graphs and x.device.type == "cuda" and not _traced() and not _capturing(x)

    def _graphed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` through the CUDA graph of ``x``'s signature (module docstring)."""
        self._require_eval()
        dtype = self._compute_dtype(x.device)
        self._prepared_params(dtype)  # a parameter change drops the graphs before the lookup
        key = (tuple(x.shape), x.stride(), x.dtype, x.device, self.backend, dtype, _tf32.switches_for(dtype))
        captured = self._graphs.get(key)
        if captured is not None:
            self._graphs.move_to_end(key)
        else:
            seen = self._signatures.get(key)
            if seen is None:  # first call: the warm-up
                _remember(self._signatures, key, _WARM, MAX_SEEN_SIGNATURES)
            else:
                self._signatures.move_to_end(key)
            if seen != _WARM:
                return self._outputs(x)
            captured = self._capture(x)
            if captured is None:
                return self._outputs(x)
            del self._signatures[key]
            if len(self._graphs) >= MAX_CACHED_SHAPES:
                self._wait_for_replays()
            for dropped, _ in _remember(self._graphs, key, captured):
                _remember(self._signatures, dropped, _DROPPED, MAX_SEEN_SIGNATURES)
            self._activation_buffers.pop(self._buffer_key(x, dtype), None)  # the graph has its own
        if x.device.type == "cuda":
            stream = torch.cuda.current_stream(x.device)
            if self._replay_stream is not None and self._replay_stream != stream:
                # The static input and output are the previous replay's until its stream gets there.
                stream.wait_stream(self._replay_stream)
            self._replay_stream = stream
        captured.image.copy_(x)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(self, x: torch.Tensor) -> _CapturedForward | None:
        """``_outputs`` on fresh allocations, warmed up on a side stream, then captured on it (on
        ``x``'s GPU: torch's default capture stream belongs to whichever GPU was current first).
        None where the capture failed: it warns, and switches graphs off for the model."""
        with torch.inference_mode(False):  # a normal tensor: later calls copy into it in any mode
            image = torch.empty_like(x)  # same strides
        image.copy_(x)
        with torch.cuda.device(x.device):
            caller_stream = torch.cuda.current_stream()
            stream = torch.cuda.Stream()
            stream.wait_stream(caller_stream)
            with torch.cuda.stream(stream):
                self._outputs(image, preallocated=False)
            caller_stream.wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: other threads' allocations or syncs do not break this capture.
                with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                    output = self._outputs(image, preallocated=False)
            except Exception as error:
                torch.cuda.set_stream(caller_stream)  # (left on the capture stream when capture_end raises)
                # Not tried again: torch's allocator may still route this stream's allocations to
                # the failed graph's pool (capture_end raises before it stops), and the next
                # capture's empty_cache would then fail an internal assert.
                self.cuda_graphs = False
                warnings.warn(
                    f"convmixer_fast: capturing the forward in a CUDA graph failed for input {tuple(x.shape)} "
                    f"{x.dtype}; CUDA graphs are now off for this model (model.cuda_graphs = False), which "
                    f"runs its kernels without one: {error}"
                )
                return None
        return _CapturedForward(graph, image, output)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before pooling, ``[B, dim, H//p, W//p]`` (NCHW shape, channels_last memory)."""
        self._check_input(x)
        if x.shape[0] == 0:
            return self._empty_tokens(x).permute(0, 3, 1, 2)
        with self._exclusive():
            tokens = self._tokens(x, fold_last_bn=False, preallocated=not _capturing(x)).tokens
        return tokens.permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool a ``[B, dim, H, W]`` feature map (in the model dtype or the compute dtype)
        and classify it, in the compute dtype; ``pre_logits`` or no classifier: the features
        ``forward`` would give without one (``_pool``)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"expected a [B, {self.dim}, H, W] feature map, got {shape}")
        self._require_eval()
        self._refuse_grad(x, "feature map")
        dtype = self._compute_dtype(self._param_device)
        if x.device != self._param_device or x.dtype not in (self._param_dtype, dtype):
            raise InputError(
                f"feature map is {x.dtype} on {x.device}, the model is {self._param_dtype} on {self._param_device}"
                + (f" (computing in {dtype} under autocast)" if dtype != self._param_dtype else "")
            )
        tokens = x.permute(0, 2, 3, 1).to(dtype).contiguous()
        if pre_logits or not self.n_classes:
            return self._pool(tokens)
        with self._exclusive():
            params = self._prepared_params(dtype)
            ops = self._resolve_ops(x.device, dtype).ops
            return ops.head(tokens, params.head.weight, params.head.bias)
