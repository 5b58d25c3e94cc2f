"""The drop-in model with the eager backend against the reference model; nn.Module behaviour."""

import copy
import io
import sys

import pytest
import torch

import convmixer_fast as cf
from convmixer_fast.configs import MODEL_CONFIGS, PRETRAINED_IN_TIMM
from helpers import DYNAMIC_IMAGE, reference_model

CONFIGS = [  # dim, depth, kernel, patch, classes, act, image H, W
    pytest.param(16, 2, 3, 2, 10, "gelu", 12, 12, id="small-k3-p2"),
    pytest.param(24, 3, 9, 7, 7, "gelu", 30, 23, id="k9-p7-ragged"),
    pytest.param(20, 2, 7, 7, 1000, "relu", 29, 35, id="k7-relu"),
    pytest.param(13, 2, 4, 3, 5, "gelu", 11, 16, id="odd-dim-even-k"),
    pytest.param(8, 1, 1, 1, 3, "relu", 5, 4, id="k1-p1"),
]


@pytest.mark.parametrize("dim, depth, k, p, n, act, H, W", CONFIGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_eager_backend_matches_reference(dim, depth, k, p, n, act, H, W, batch):
    reference = reference_model(dim, depth, k, p, n, act=act, seed=dim + k)
    model = cf.ConvMixer.from_eager(reference, backend="eager")
    assert (model.dim, model.depth, model.kernel_size, model.patch_size, model.n_classes, model.activation) == (dim, depth, k, p, n, act)
    x = torch.randn(batch, 3, H, W)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=2e-5)
        features = model.forward_features(x)
        torch.testing.assert_close(features, reference[: 3 + depth](x), rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(model.forward_head(features), expected, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features.mean((2, 3)))


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_low_precision_close_to_fp32_reference(dtype, tol):
    reference = reference_model(32, 3, 5, 4, 10)
    model = cf.ConvMixer.from_eager(reference, backend="eager").to(dtype)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        out = model(x)
        expected = reference(x)
    assert out.dtype == dtype
    assert (out.float() - expected).abs().max() <= tol * expected.abs().max()


def test_input_dtypes_are_read_as_the_model_dtype():
    model = cf.ConvMixer.from_eager(reference_model(16, 1, 3, 2, 4), backend="eager")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(model(x.double()), expected)
        torch.testing.assert_close(model(x.half()), model(x.half().float()))
        torch.testing.assert_close(model(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)), expected)


def test_prepared_params_follow_weight_changes():
    reference = reference_model(16, 2, 3, 2, 4)
    model = cf.ConvMixer.from_eager(reference, backend="eager")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        model.blocks[1][3].running_var.mul_(4)  # an in-place edit of a BN buffer
        reference[4][3].running_var.mul_(4)
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=2e-5)
        assert not torch.allclose(model(x), before)
        model.load_state_dict(reference_model(16, 2, 3, 2, 4, seed=7).state_dict())
        torch.testing.assert_close(model(x), reference_model(16, 2, 3, 2, 4, seed=7)(x), rtol=1e-5, atol=2e-5)


def test_module_behaviour():
    model = cf.ConvMixer(16, 2, 3, 2, 5)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    half = model.half()
    assert half is model and model.head.weight.dtype == torch.float16
    model.bfloat16().float()
    again = cf.ConvMixer(16, 2, 3, 2, 5)
    again.load_state_dict(model.state_dict())
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert cf.ConvMixer(8, 1, num_classes=7).n_classes == 7
    assert cf.ConvMixer(8, 1, act_layer="relu").activation == "relu"


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_copies_and_pickles_carry_parameters_not_caches(backend):
    """``copy.deepcopy`` and ``torch.save(model)`` after a forward: the copy has the parameters and
    settings, none of the caches (kernel entries, buffers, graphs, the lock cannot be pickled)."""
    if backend == "triton":
        pytest.importorskip("triton")
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend=backend, cuda_graphs=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        saved = io.BytesIO()
        torch.save(model, saved)
        saved.seek(0)
        copies = [copy.deepcopy(model), torch.load(saved, weights_only=False)]
        for clone in copies:
            assert clone._prepared is None and not clone._resolved_ops and not clone._activation_buffers
            assert (clone.backend, clone.cuda_graphs) == (backend, False)
            torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)
            clone.head.bias.add_(1.0)  # its own parameters
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_meta_models_give_shapes_and_load_weights_by_assignment(backend):
    """A model on the meta device (shape inference, FLOP counters, building before loading)
    forwards meta tensors; built there, ``load_state_dict(assign=True)`` makes it a working model."""
    with torch.device("meta"):
        model = cf.ConvMixer(16, 2, 3, 2, 5, backend=backend)
    x = torch.randn(2, 3, 11, 9)
    with torch.no_grad():
        assert model(x.to("meta")).shape == (2, 5)
        assert model.forward_features(x.to("meta")).shape == (2, 16, 5, 4)
        reference = reference_model(16, 2, 3, 2, 5)
        model.load_state_dict(reference.state_dict(), assign=True)
        assert {t.device.type for t in model.state_dict().values()} == {"cpu"}
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=2e-5)


def test_data_parallel_replicas_have_their_own_caches():
    """``nn.DataParallel`` shallow-copies the module per GPU: a replica must not use the original's
    prepared parameters (another device's), buffers or lock."""
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend="eager")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        replica = model._replicate_for_data_parallel()
        assert replica._prepared is None and replica._lock is not model._lock
        assert replica._resolved_ops is not model._resolved_ops and replica._graphs is not model._graphs
        torch.testing.assert_close(replica(x), expected, rtol=0, atol=0)


def test_data_parallel_replicate_builds_working_replicas(monkeypatch):
    """``nn.DataParallel``'s ``replicate`` assigns each replica's children before their parameters:
    the checks of a replaced head, stem or blocks must let it (they raised on the bare head). The
    broadcast to GPUs is replaced by copies, so it runs on the CPU."""
    replicate = sys.modules["torch.nn.parallel.replicate"]
    monkeypatch.setattr(replicate, "_broadcast_coalesced_reshape",
                        lambda tensors, devices, detach=False: [[t.clone() for t in tensors] for _ in devices])
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend="eager")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        replicas = replicate.replicate(model, [0, 1])
        for replica in replicas:
            assert replica._lock is not model._lock
            torch.testing.assert_close(replica(x), expected, rtol=0, atol=0)


def test_empty_batch():
    model = cf.ConvMixer(8, 1, 3, 2, 4, backend="eager")
    assert model(torch.randn(0, 3, 8, 8)).shape == (0, 4)
    assert model.forward_features(torch.randn(0, 3, 8, 9)).shape == (0, 8, 4, 4)


def test_constructor_rejects_bad_configs():
    with pytest.raises(ValueError, match="kernel_size must be an integer in \\[1, 31\\], got 33"):
        cf.ConvMixer(8, 1, kernel_size=33)
    with pytest.raises(ValueError, match="depth must be an integer >= 1, got 0"):
        cf.ConvMixer(8, 0)
    with pytest.raises(ValueError, match="n_classes=10 and num_classes=5 disagree"):
        cf.ConvMixer(8, 1, 3, 2, 10, num_classes=5)
    with pytest.raises(ValueError, match="exact \\(erf\\) GELU"):
        cf.ConvMixer(8, 1, act_layer=lambda: torch.nn.GELU(approximate="tanh"))
    with pytest.raises(ValueError, match="act_layer must be one of"):
        cf.ConvMixer(8, 1, act_layer="silu")
    with pytest.raises(ValueError, match="backend must be one of"):
        cf.ConvMixer(8, 1, backend="tpu")
    with pytest.raises(ValueError, match=r"act_layer must be nn.GELU, .* got <built-in function gelu> \(calling it"):
        cf.ConvMixer(8, 1, act_layer=torch.nn.functional.gelu)  # a function, not a module class
    with pytest.raises(ValueError, match="cuda_graphs must be True or False, got 'no'"):
        cf.ConvMixer(8, 1, cuda_graphs="no")
    assert cf.ConvMixer(8, 1, cuda_graphs=0).cuda_graphs is False  # (0 / 1, as bools are)
    with pytest.raises(ValueError, match="dim must be an integer >= 1, got 8.0"):
        cf.ConvMixer(8.0, 1)
    with pytest.raises(ValueError, match="depth must be an integer >= 1, got True"):
        cf.ConvMixer(8, True)


def test_sizes_of_any_integer_type_are_taken_as_ints():
    """NumPy integers (a config read from an array or a sweep) are integers: kept as Python ints."""
    np = pytest.importorskip("numpy")
    model = cf.ConvMixer(np.int64(8), np.int32(1), np.uint8(3), np.int16(2), np.int64(4), backend="eager")
    sizes = (model.dim, model.depth, model.kernel_size, model.patch_size, model.n_classes)
    assert sizes == (8, 1, 3, 2, 4) and all(type(size) is int for size in sizes)
    assert model(torch.randn(1, 3, 4, 4)).shape == (1, 4)
    model.reset_classifier(np.int64(3))
    assert type(model.n_classes) is int and model.n_classes == 3
    assert len(model.forward_intermediates(torch.randn(1, 3, 4, 4), indices=[np.int64(0)], intermediates_only=True)) == 1
    model.prune_intermediate_layers(np.int64(1))


def test_a_stem_or_blocks_assigned_must_have_the_layers_they_replace():
    """The model reads dim, kernel and patch size off its config, not off a new stem or blocks: one
    of other shapes is refused at the assignment (it used to fail in the forward, or for a stem of
    another patch size, run with the old one); fewer blocks are fine."""
    model = cf.ConvMixer(8, 2, 3, 4, 5, backend="eager")
    with pytest.raises(ValueError, match=r"model.stem must have the layers it replaces, .*patch_size=4.*; 0: expected "
                                         r"Conv2d\(3, 8, kernel_size=\(4, 4\), stride=\(4, 4\)\), got Conv2d\(3, 8, "
                                         r"kernel_size=\(2, 2\), stride=\(2, 2\)\)"):
        model.stem = cf.ConvMixer(8, 2, 3, 2, 5).stem
    with pytest.raises(ValueError, match=r"model.stem .*; the module: expected Sequential\(\), got Identity\(\)"):
        model.stem = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"block 0 of model.blocks .*; 0.fn.0: expected Conv2d\(8, 8, .*groups=8\), "
                                         r"got Conv2d\(16, 16, .*groups=16\)"):
        model.blocks = cf.ConvMixer(16, 2, 3, 4, 5).blocks
    with pytest.raises(ValueError, match=r"block 0 of model.blocks .*act=gelu\); 0.fn.1: expected GELU\(approximate='none'\), "
                                         r"got ReLU\(\)"):  # (the model would have run its GELU)
        model.blocks = cf.ConvMixer(8, 2, 3, 4, 5, act_layer=torch.nn.ReLU).blocks
    model.blocks = model.blocks[:1]
    model.stem = cf.ConvMixer(8, 2, 3, 4, 5).stem
    assert model.depth == 1 and model(torch.randn(1, 3, 16, 16)).shape == (1, 5)


def _logits_of_its_layers(model, x):
    """The logits of a ConvMixer built afresh with ``model``'s depth, classes, state dict and
    BatchNorm eps values."""
    rebuilt = cf.ConvMixer(model.dim, model.depth, model.kernel_size, model.patch_size, model.n_classes,
                           backend="eager")
    rebuilt.load_state_dict(model.state_dict())
    batchnorms = [m for m in rebuilt.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    originals = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for rebuilt_bn, bn in zip(batchnorms, originals, strict=True):
        rebuilt_bn.eps = bn.eps
    return rebuilt(x)


def _random_weights_(model):
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            tensor.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("change", [
    pytest.param(lambda m: setattr(m.head, "weight", torch.nn.Parameter(torch.randn(5, 8))), id="parameter-swapped"),
    pytest.param(lambda m: setattr(m.stem[0], "bias", torch.nn.Parameter(torch.randn(8))), id="stem-bias-swapped"),
    pytest.param(lambda m: setattr(m.blocks[1][3], "running_var", torch.rand(8) + 2), id="buffer-assigned"),
    pytest.param(lambda m: m.stem.__setitem__(0, torch.nn.Conv2d(3, 8, 4, stride=4)), id="layer-replaced"),
    pytest.param(lambda m: m.blocks.__setitem__(1, _random_weights_(copy.deepcopy(m.blocks[2]))), id="block-replaced"),
    pytest.param(lambda m: setattr(m.blocks[1][0].fn[2], "eps", 0.25), id="batchnorm-eps-set"),
    pytest.param(lambda m: setattr(m.blocks[2][3], "eps", 0.25), id="last-batchnorm-eps-set"),  # (folded into the head)
    pytest.param(lambda m: m.blocks.__delitem__(1), id="block-deleted"),
    pytest.param(lambda m: m.blocks.pop(-1), id="block-popped"),
    pytest.param(lambda m: m.blocks.append(_random_weights_(copy.deepcopy(m.blocks[0]))), id="block-appended"),
    pytest.param(lambda m: m.blocks.insert(0, _random_weights_(copy.deepcopy(m.blocks[0]))), id="block-inserted"),
    pytest.param(lambda m: (m.blocks.__delitem__(1), m.blocks.insert(1, _random_weights_(copy.deepcopy(m.blocks[0])))),
                 id="block-deleted-and-inserted"),  # (the same depth; insert passes no hook)
])
def test_tensors_and_layers_assigned_inside_the_model_are_seen(change):
    """A change made after the first forward, inside the stem, blocks or head, gives the logits of
    the layers as they now are. (Each used to return the logits of the prepared parameters from
    before: torch's registration hooks now tell the model.)"""
    torch.manual_seed(0)
    model = _random_weights_(cf.ConvMixer(8, 3, 3, 4, 5, backend="eager"))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        change(model)
        after = model(x)
        torch.testing.assert_close(after, _logits_of_its_layers(model, x), rtol=0, atol=0)
        model.blocks[0][3].running_var.mul_(2)  # an in-place edit after it, in a block that may be new
        torch.testing.assert_close(model(x), _logits_of_its_layers(model, x), rtol=0, atol=0)
    assert not torch.equal(after, before)
    assert not any(tensor.requires_grad for tensor in model.parameters())  # what came in is frozen too


@pytest.mark.parametrize("change, message", [
    (lambda m: setattr(m.head, "weight", torch.nn.Parameter(torch.zeros(7, 8))),
     r"model.head.weight: expected a tensor of shape \(5, 8\), got shape \(7, 8\)"),
    (lambda m: setattr(m.blocks[0][3], "running_mean", None),
     r"model.blocks.0.3.running_mean: expected a tensor of shape \(8,\), got None"),
    (lambda m: m.stem.__setitem__(0, torch.nn.Conv2d(1, 8, 4, stride=4)),  # a grayscale stem
     r"model.stem.0 must have the layers it replaces, .*in_chans=3.*; the module: expected Conv2d\(3, 8, "),
    (lambda m: m.blocks[0].__setitem__(2, torch.nn.ReLU()),
     r"model.blocks.0.2 .*act=gelu\); the module: expected GELU\(approximate='none'\), got ReLU\(\)"),
    (lambda m: m.blocks[0][0].fn.__setitem__(0, torch.nn.Conv2d(8, 8, 3, groups=8)),  # no padding
     r"model.blocks.0.0.fn.0 .*; the module: expected Conv2d\(8, 8, .*padding=same, groups=8\), got "),
    (lambda m: m.blocks.append(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1))),
     r"model.blocks.3 must have the layers it replaces, .*; 0: expected Residual\(\), got Conv2d"),
    (lambda m: m.blocks[0].append(torch.nn.Dropout()),
     r"model.blocks.0.4: a ConvMixer's layers are set at construction, and none is added or removed"),
    (lambda m: setattr(m.stem[2], "extra_scale", torch.nn.Parameter(torch.ones(8))),
     r"model.stem.2.extra_scale: a ConvMixer's layers take no tensor but their own"),
])
def test_a_tensor_or_layer_that_does_not_fit_is_refused_where_it_is_assigned(change, message):
    model = cf.ConvMixer(8, 3, 3, 4, 5, backend="eager")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        with pytest.raises(ValueError, match=message):
            change(model)
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # nothing changed


def test_a_block_inserted_unlike_the_others_is_refused_at_the_next_forward():
    """``insert`` writes past torch's hooks: the next forward sees other blocks and checks them."""
    model = cf.ConvMixer(8, 2, 3, 4, 5, backend="eager")
    x = torch.randn(1, 3, 16, 16)
    model(x)
    model.blocks.insert(0, torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1)))
    with pytest.raises(ValueError, match=r"block 0 of model.blocks must have the layers it replaces, .*; 0: expected "
                                         r"Residual\(\), got Conv2d"):
        model(x)


def test_an_assignment_is_seen_by_a_forward_running_while_torch_stores_it():
    """The model stores an assigned tensor itself, under its lock, before torch does after its
    hooks: a forward on another thread in between (here: a hook of the caller's, which runs after
    the model's) already sees the new tensor, and its preparation is not kept past the assignment."""
    from torch.nn.modules import module as nn_module

    model = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager")
    x = torch.randn(1, 3, 16, 16)
    seen = []
    handle = nn_module.register_module_parameter_registration_hook(
        lambda module, name, value: seen.append(model(x)) if module is model.head else None)
    try:
        with torch.no_grad():
            model(x)
            model.head.bias = torch.nn.Parameter(model.head.bias + 100)
            after = model(x)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], after, rtol=0, atol=0)
    torch.testing.assert_close(after, _logits_of_its_layers(model, x), rtol=0, atol=0)


def test_functional_call_is_refused_where_it_would_be_kept():
    """torch.func.functional_call writes tensors into the layers past torch's hooks: a model
    preparing its weights during one refuses (it would have kept them after the call)."""
    model = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad(), pytest.raises(RuntimeError, match="does not support functional_call"):
        torch.func.functional_call(model, {"head.bias": model.head.bias + 100}, (x,))


def test_a_parameter_set_to_none_is_refused_at_the_next_preparation():
    """``conv.bias = None`` passes no hook: the next preparation (after any change) refuses it
    with the layer it found, where prepare_params used to fail with an AttributeError."""
    model = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager")
    model.stem[0].bias = None
    with pytest.raises(ValueError, match=r"model.stem must have the layers it replaces, .*; 0: expected Conv2d\(3, 8, "
                                         r"kernel_size=\(4, 4\), stride=\(4, 4\)\), got .*bias=False\)"):
        model(torch.randn(1, 3, 16, 16))


def test_copies_see_changes_to_their_own_layers_only():
    """A deep copy or an unpickled model holds its own layers; a layer taken out of a model may be
    changed freely."""
    torch.manual_seed(0)
    model = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager")
    x = torch.randn(1, 3, 16, 16)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    copies = [copy.deepcopy(model), torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)]
    with torch.no_grad():
        before = model(x)
        for duplicate in copies:
            duplicate(x)
            duplicate.head.bias = torch.nn.Parameter(duplicate.head.bias + 1)
            torch.testing.assert_close(duplicate(x), before + 1)
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
        old_head = model.head
        model.head = torch.nn.Linear(8, 3)
        old_head.weight = torch.nn.Parameter(torch.zeros(2, 2))  # not the model's any more
        assert model(x).shape == (1, 3)


def test_the_registration_hooks_leave_other_modules_alone():
    """The hooks see every module of the process once a ConvMixer exists: others' assignments go
    through untouched, and the hooks never hash them (an eq dataclass's __hash__ is None; this
    one's fails until __init__ has set what it reads)."""
    cf.ConvMixer(8, 1, 3, 4, 5)

    class Unhashable(torch.nn.Module):
        __hash__ = None

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2))
            self.layer = torch.nn.Linear(2, 3)

    class HashedByName(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 3)
            self.name = "hashed by name"

        def __hash__(self):
            return hash(self.name)

    module = Unhashable()
    module.weight = torch.nn.Parameter(torch.ones(7))  # (a ConvMixer's layer would refuse the shape)
    assert module.weight.shape == (7,) and module.weight.requires_grad and module.layer.out_features == 3
    assert HashedByName().layer.out_features == 3


def test_create_model_configs():
    model = cf.create_model("convmixer_768_32", backend="eager")
    assert (model.dim, model.depth, model.kernel_size, model.patch_size, model.activation) == (768, 32, 7, 7, "relu")
    assert cf.create_model("convmixer_cifar10").n_classes == 10
    assert set(MODEL_CONFIGS) >= {"convmixer_1536_20", "convmixer_768_32", "convmixer_1024_20_ks9_p14", "convmixer_cifar10"}
    with pytest.raises(ValueError, match="unknown model 'convmixer_9'"):
        cf.create_model("convmixer_9")
    with pytest.raises(ValueError, match=r"unknown model \['convmixer_cifar10'\]; known: "):
        cf.create_model(["convmixer_cifar10"])
    with pytest.raises(ValueError, match="no published pretrained weights"):
        cf.create_model("convmixer_cifar10", pretrained=True)
    assert model.pretrained_cfg["crop_pct"] == 0.96 and cf.create_model("convmixer_cifar10").pretrained_cfg == {}


@pytest.mark.parametrize("name", PRETRAINED_IN_TIMM)
def test_timm_resolves_the_data_config_of_timm_s_model(name):
    """timm's pipelines (resolve_model_data_config) preprocess for our model as for timm's: the
    named ImageNet configs and a model converted from timm's carry its data config."""
    timm = pytest.importorskip("timm")
    eager = timm.create_model(name, pretrained=False)
    expected = timm.data.resolve_model_data_config(eager)
    assert timm.data.resolve_model_data_config(cf.create_model(name)) == expected
    assert timm.data.resolve_model_data_config(cf.ConvMixer.from_eager(eager)) == expected


def test_create_model_pretrained_without_timm_says_why(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(RuntimeError, match="pretrained=True needs timm"):
        cf.create_model("convmixer_1536_20", pretrained=True)


def test_create_model_pretrained_goes_through_timm(monkeypatch):
    """pretrained=True asks timm for the named model (num_classes / global_pool in timm's spelling)
    and converts it with the backend options; other overrides, a checkpoint_path too, and timm's
    failures (network, hub) are refused saying what to do. A stand-in for timm: no network here."""
    import types

    from helpers import TimmLikeConvMixer

    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        if kwargs.get("num_classes") == 404:
            raise OSError("could not reach huggingface.co")
        return TimmLikeConvMixer(16, 2, 3, 2, **kwargs).eval()

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = cf.create_model("convmixer_768_32", pretrained=True, num_classes=5, backend="eager", cuda_graphs=False)
    assert calls == [("convmixer_768_32", True, {"num_classes": 5})]
    assert (model.dim, model.n_classes, model.backend, model.cuda_graphs) == (16, 5, "eager", False)
    assert cf.create_model("convmixer_768_32", pretrained=True, n_classes=0, global_pool="").n_classes == 0
    assert calls[-1] == ("convmixer_768_32", True, {"num_classes": 0, "global_pool": ""})
    with pytest.raises(ValueError, match=r"pretrained=True takes only backend=, .* got \['depth', 'dim'\]"):
        cf.create_model("convmixer_768_32", pretrained=True, dim=8, depth=1)
    with pytest.raises(RuntimeError, match=r"timm could not load pretrained weights for 'convmixer_768_32': could not "
                                           r"reach huggingface.co; .*pass checkpoint_path="):
        cf.create_model("convmixer_768_32", pretrained=True, num_classes=404)
    with pytest.raises(ValueError, match="pass pretrained=True or checkpoint_path, not both"):
        cf.create_model("convmixer_768_32", pretrained=True, checkpoint_path="weights.pth")
    assert len(calls) == 3  # (the overrides and checkpoint_path refused before timm is asked)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_a_callers_autocast_runs_an_fp32_model_in_its_dtype(backend):
    """Under autocast to bfloat16 an fp32 model computes (kernels, logits, features) in bfloat16, as
    the eager model's convolutions and matmuls would, from a second set of prepared weights; the
    fp32 set and its logits are untouched. A 16-bit model keeps its dtype; other autocast dtypes
    leave an fp32 model alone."""
    if backend == "triton":
        pytest.importorskip("triton")
    reference = reference_model(16, 2, 3, 2, 5)
    model = cf.ConvMixer.from_eager(reference, backend=backend)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            features = model.forward_features(x)
            pooled_logits = model.forward_head(features)
            empty = model(x[:0])
        assert logits.dtype == features.dtype == pooled_logits.dtype == empty.dtype == torch.bfloat16
        assert set(model._prepared[1]) == {torch.float32, torch.bfloat16}
        assert model._prepared[1][torch.bfloat16].blocks[0].pointwise.weight.dtype == torch.bfloat16
        bf16_error = (logits.float() - expected).abs().max() / expected.abs().max()
        assert 0 < bf16_error <= 2e-2, bf16_error  # bf16 arithmetic: off fp32 by a few bf16 ulp
        torch.testing.assert_close(pooled_logits, logits, rtol=2e-2, atol=2e-2)
        assert torch.equal(model(x), expected)  # autocast off again: the fp32 path, bit for bit
        with torch.autocast("cpu", dtype=torch.float16):
            assert model.bfloat16()(x).dtype == torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            assert model.float()(x).dtype == torch.float32


def test_autocast_under_torch_compile():
    """The compiled model follows the caller's autocast too (dynamo guards on it: no stale graph)."""
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend="eager")
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected_bf16, logits_bf16 = model(x), compiled(x)
        expected, logits = model(x), compiled(x)
    assert logits_bf16.dtype == torch.bfloat16 and logits.dtype == torch.float32
    torch.testing.assert_close(logits_bf16, expected_bf16, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_compile_export_and_trace_eager_backend():
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 4), backend="eager")
    x, other = torch.randn(2, 3, 10, 10), torch.randn(3, 3, 13, 8)
    with torch.no_grad():
        expected, other_expected = model(x), model(other)
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled(other), other_expected, rtol=1e-5, atol=1e-5)  # symbolic sizes
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected, rtol=1e-5, atol=1e-5)
        exported = torch.export.export(model, (x,), dynamic_shapes=(DYNAMIC_IMAGE,))
        torch.testing.assert_close(exported.module()(other), other_expected, rtol=1e-5, atol=1e-5)
        traced = torch.jit.trace(model, (x,))
        torch.testing.assert_close(traced(other), other_expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match=r"cannot be compiled by TorchScript \(torch.jit.script\).*torch.jit.trace"):
        torch.jit.script(torch.nn.Sequential(model))  # (a model inside a scripted module too)


def test_prepared_operands_are_contiguous_and_16_byte_aligned():
    """Parameters loaded as views into a larger buffer may start anywhere; kernels need 16 bytes."""
    from convmixer_fast.prepare import kernel_operand

    view = torch.randn(100)[1:33]
    assert view.data_ptr() % 16 != 0
    operand = kernel_operand(view)
    assert operand.data_ptr() % 16 == 0 and operand.is_contiguous() and torch.equal(operand, view)
    aligned = torch.randn(4, 8)
    assert kernel_operand(aligned) is not None and kernel_operand(aligned).data_ptr() == aligned.data_ptr()


def test_model_built_under_inference_mode_runs():
    with torch.inference_mode():
        reference = reference_model(16, 1, 3, 2, 4)
        model = cf.ConvMixer.from_eager(reference, backend="eager")
        x = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_an_image_of_exactly_one_patch_is_taken():
    """The smallest image the model takes is one patch (a 1x1 token map), as the strided conv does;
    one row or column more than a whole number of patches is ignored."""
    reference = reference_model(16, 2, 3, 4, 5)
    model = cf.ConvMixer.from_eager(reference, backend="eager")
    with torch.no_grad():
        for x in (torch.randn(2, 3, 4, 4), torch.randn(1, 3, 4, 9), torch.randn(1, 3, 7, 4)):
            torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=2e-5)
        assert model.forward_features(torch.randn(1, 3, 4, 7)).shape == (1, 16, 1, 1)


def test_a_parameter_set_to_none_after_a_forward_is_refused_at_the_next_preparation():
    """After a forward the layers are gathered already: ``conv.bias = None`` is still refused with
    the layer found (not prepare_params' AttributeError) once a change makes the weights stale."""
    model = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model(x)
        model.stem[0].bias = None
        model.stem[0].weight.mul_(2)  # an in-place edit: the next forward prepares anew
        with pytest.raises(ValueError, match=r"model.stem must have the layers it replaces, .*; 0: expected "
                                             r"Conv2d\(3, 8, kernel_size=\(4, 4\), stride=\(4, 4\)\), got .*bias=False\)"):
            model(x)


def test_a_dtype_round_trip_after_a_forward_prepares_the_rounded_weights():
    """``.half().float()`` replaces each tensor's data (``_apply``, no version bump) and comes back
    to the dtype whose prepared set exists: the model must prepare the rounded weights anew."""
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend="eager")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        model.half().float()  # every weight rounded to fp16
        rounded = cf.ConvMixer(16, 2, 3, 2, 5, backend="eager")
        rounded.load_state_dict(model.state_dict())
        after = model(x)
        torch.testing.assert_close(after, rounded(x), rtol=0, atol=0)
    assert not torch.equal(after, before)


def test_activation_buffers_are_kept_for_the_most_recent_shapes_only():
    """A preallocating backend's activation buffers are kept per input shape for MAX_CACHED_SHAPES
    shapes, the least recently used dropped: a server seeing many batch sizes does not hold memory
    for each of them."""
    pytest.importorskip("triton")
    from convmixer_fast import model as model_module

    bound = model_module.MAX_CACHED_SHAPES
    model = cf.ConvMixer.from_eager(reference_model(8, 1, 1, 2, 3), backend="triton")
    with torch.no_grad():
        model(torch.randn(1, 3, 2, 2))
        for batch in range(2, bound + 3):
            model(torch.randn(batch, 3, 2, 2))
        model(torch.randn(1, 3, 2, 2))  # the least recent, used again: kept, the next least recent dropped
    assert [key[0] for key in model._activation_buffers] == [*range(4, bound + 3), 1]


def test_features_of_a_16_bit_model_come_in_its_dtype():
    """Pooled in fp32 and rounded once: the features of a model without a classifier (and
    ``pre_logits``) come in the compute dtype, as the logits do, close to the fp32 reference's."""
    from convmixer_fast.weights import without_classifier

    reference = reference_model(16, 2, 3, 2, 5)
    model = cf.ConvMixer(16, 2, 3, 2, num_classes=0, backend="eager")
    model.load_state_dict(without_classifier(reference.state_dict()))
    model.bfloat16()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        features = model(x)
        assert features.dtype == torch.bfloat16
        torch.testing.assert_close(features.float(), reference[:-1](x), rtol=5e-2, atol=5e-2)
        assert model.forward_head(model.forward_features(x), pre_logits=True).dtype == torch.bfloat16
        with_head = cf.ConvMixer.from_eager(reference, backend="eager")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert with_head.forward_head(with_head.forward_features(x), pre_logits=True).dtype == torch.bfloat16
