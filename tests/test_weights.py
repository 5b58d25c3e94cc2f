"""Every state-dict layout, checkpoint files, from_eager, strict and non-strict errors."""

import pytest
import torch

import convmixer_fast as cf
from convmixer_fast.convert import check_same_logits
from convmixer_fast.weights import to_canonical
from helpers import TimmLikeConvMixer, one_liner_model, reference_model

DIM, DEPTH, K, P, N = 12, 2, 5, 3, 6


@pytest.fixture(scope="module")
def reference():
    return reference_model(DIM, DEPTH, K, P, N)


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 14, 16)


def _copy_weights(source_state, target):
    target.load_state_dict(dict(zip(target.state_dict(), source_state.values())))
    return target.eval()


def layouts(reference):
    """The same weights in every layout users hold."""
    sequential = reference.state_dict()
    timm = _copy_weights(sequential, TimmLikeConvMixer(DIM, DEPTH, K, P, num_classes=N)).state_dict()
    one_liner = _copy_weights(sequential, one_liner_model(DIM, DEPTH, K, P, N)).state_dict()
    return {
        "original": sequential,
        "timm": timm,
        "one-liner": one_liner,
        "dataparallel": {f"module.{k}": v for k, v in sequential.items()},
        "compiled-dataparallel": {f"module._orig_mod.{k}": v for k, v in timm.items()},
        "dataparallel-compiled": {f"_orig_mod.module.{k}": v for k, v in sequential.items()},  # compile(DDP(model))
        "ours": cf.ConvMixer.from_eager(reference).state_dict(),
    }


@pytest.mark.parametrize("layout", ["original", "timm", "one-liner", "dataparallel", "compiled-dataparallel",
                                    "dataparallel-compiled", "ours"])
def test_every_layout_gives_identical_logits(reference, image, layout):
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    result = model.load_state_dict(layouts(reference)[layout])
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("make_eager", [
    pytest.param(lambda ref: ref, id="original"),
    pytest.param(lambda ref: _copy_weights(ref.state_dict(), TimmLikeConvMixer(DIM, DEPTH, K, P, num_classes=N)), id="timm-like"),
    pytest.param(lambda ref: _copy_weights(ref.state_dict(), one_liner_model(DIM, DEPTH, K, P, N)), id="one-liner"),
])
def test_from_eager_detects_architecture(reference, image, make_eager):
    eager = make_eager(reference)
    model = cf.ConvMixer.from_eager(eager, backend="eager")
    assert model.config == dict(dim=DIM, depth=DEPTH, kernel_size=K, patch_size=P, n_classes=N, in_chans=3,
                                act_layer="gelu", global_pool="avg")
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=1e-5, atol=2e-5)


def test_from_eager_real_timm(image):
    timm = pytest.importorskip("timm")
    eager = timm.create_model("convmixer_768_32", pretrained=False, num_classes=N).eval()
    model = cf.ConvMixer.from_eager(eager, backend="eager")
    assert model.config["act_layer"] == "relu" and model.depth == 32
    x = torch.randn(1, 3, 35, 35)
    with torch.no_grad():
        torch.testing.assert_close(model(x), eager(x), rtol=1e-4, atol=1e-4)


def test_from_eager_copies_batchnorm_eps(image):
    """Each BatchNorm's own eps, to the BatchNorm in its place."""
    eager = reference_model(DIM, DEPTH, K, P, N)
    batchnorms = [module for module in eager.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    for index, module in enumerate(batchnorms):
        module.eps = 10.0 ** -index
    model = cf.ConvMixer.from_eager(eager, backend="eager")
    assert [m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == [m.eps for m in batchnorms]
    with torch.no_grad():
        torch.testing.assert_close(model(image), eager(image), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("to", [pytest.param(lambda m: m, id="fp32"), pytest.param(lambda m: m.half(), id="fp16")])
def test_from_eager_takes_synchronised_batchnorm(reference, image, to):
    """A model trained with SyncBatchNorm (convert_sync_batchnorm) computes in eval mode what
    BatchNorm2d computes: converted from its layers alike, each one's eps kept (fp16: from its
    layers alone, its outputs not compared)."""
    eager = torch.nn.SyncBatchNorm.convert_sync_batchnorm(reference_model(DIM, DEPTH, K, P, N)).eval()
    batchnorms = [m for m in eager.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(batchnorms) == 1 + 2 * DEPTH
    for index, module in enumerate(batchnorms):
        module.eps = 10.0 ** -(index + 1)
    eager = to(eager)
    model = cf.ConvMixer.from_eager(eager, backend="eager").float()
    assert [m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == [m.eps for m in batchnorms]
    with torch.no_grad():
        torch.testing.assert_close(model(image), eager.float()(image), rtol=1e-5, atol=2e-5)


def test_from_eager_refuses_pooling_other_than_the_mean(reference, image):
    """timm's global_pool="avgmax" keeps every shape and changes the logits (by 0.035 on a small
    timm model, before this was checked): it and every other non-average pooling are refused."""
    eager = _copy_weights(reference.state_dict(), TimmLikeConvMixer(DIM, DEPTH, K, P, num_classes=N,
                                                                    global_pool="avgmax"))
    assert not torch.allclose(eager(image), reference(image), atol=1e-3)  # (what would go wrong)
    with pytest.raises(cf.UnsupportedModelError, match="got global_pool with pool_type='avgmax'"):
        cf.ConvMixer.from_eager(eager)
    eager = reference_model(DIM, DEPTH, K, P, N)
    eager[3 + DEPTH] = torch.nn.AdaptiveMaxPool2d(1)
    with pytest.raises(cf.UnsupportedModelError, match="found AdaptiveMaxPool2d"):
        cf.ConvMixer.from_eager(eager)


class _OlderTimmLikeConvMixer(TimmLikeConvMixer):
    """timm's ConvMixer as older timm versions wrote it: its pooling as ``pooling``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pooling = self.global_pool
        del self.global_pool

    def forward(self, x):
        return self.head(self.pooling(self.blocks(self.stem(x))))


def test_from_eager_reads_older_timms_pooling():
    """The pool type of older timm's ``pooling`` is read too: its "avgmax" is refused in 16 bits,
    where the outputs are not compared, and its mean converts."""
    eager = _OlderTimmLikeConvMixer(DIM, DEPTH, K, P, num_classes=N, global_pool="avgmax").half()
    with pytest.raises(cf.UnsupportedModelError, match="got pooling with pool_type='avgmax'"):
        cf.ConvMixer.from_eager(eager)
    eager.pooling.pool_type = "avg"
    assert cf.ConvMixer.from_eager(eager).global_pool == "avg"


class _Mean(torch.nn.Module):
    """Global average pooling written in a forward (no pooling module to see)."""

    def forward(self, x):
        return x.mean((2, 3))


def _pooled_in_forward(eager):
    eager[3 + DEPTH], eager[4 + DEPTH] = _Mean(), torch.nn.Identity()
    return eager


@pytest.mark.parametrize("make_eager, n_classes", [
    pytest.param(lambda ref: ref[:-1], 0, id="pooling-module-without-a-classifier"),
    pytest.param(_pooled_in_forward, N, id="classifier-after-a-mean-in-a-forward"),
])
def test_from_eager_pools_with_a_pooling_module_or_before_a_classifier(image, make_eager, n_classes):
    """A module without a classifier pools where it holds an average pool; one with a classifier
    pools (its classifier takes [B, dim]) whether or not a module shows it."""
    eager = make_eager(reference_model(DIM, DEPTH, K, P, N))
    model = cf.ConvMixer.from_eager(eager, backend="eager")
    assert (model.n_classes, model.global_pool) == (n_classes, "avg")
    with torch.no_grad():
        torch.testing.assert_close(model(image), eager(image), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("global_pool", ["avgmax", "max", "catavgmax", ""])
def test_from_eager_refuses_real_timm_pooling_other_than_the_mean(global_pool):
    convmixer = pytest.importorskip("timm.models.convmixer")
    eager = convmixer.ConvMixer(DIM, DEPTH, K, P, num_classes=N, global_pool=global_pool)
    with pytest.raises(cf.UnsupportedModelError, match=f"pool_type={global_pool!r}"):
        cf.ConvMixer.from_eager(eager)
    fast_mean = convmixer.ConvMixer(DIM, DEPTH, K, P, num_classes=N, global_pool="fast")  # (a mean too)
    assert cf.ConvMixer.from_eager(fast_mean).depth == DEPTH


class _WithoutResidual(TimmLikeConvMixer):
    """A ConvMixer's layers, used without the residual: the module tree cannot tell."""

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block[1:](block[0].fn(x))
        return self.head(x.mean((2, 3)))


class _LogitsScaled(TimmLikeConvMixer):
    """Logits 1% off (a temperature in the forward, say): what the layers cannot show."""

    def forward(self, x):
        return 1.01 * super().forward(x)


class _Features(TimmLikeConvMixer):
    def forward(self, x):
        return {"logits": super().forward(x)}


class _Flattened(TimmLikeConvMixer):
    def forward(self, x):
        return super().forward(x).flatten()


def test_from_eager_holds_the_logits_to_the_modules(reference, image):
    """The layers of a ConvMixer used otherwise are refused (converted, a missing residual gave
    logits 1.4 off on a small model); a training-mode module converts and stays in training mode;
    the check leaves torch's random state alone and a caller's autocast out."""
    for variant, message in ((_WithoutResidual, r"logits differ from the converted model's by .* \(a residual left"),
                             (_LogitsScaled, r"logits differ from the converted model's by 9.9\de-03"),
                             (_Features, r"forward returned a dict for a \[2, 3, 19, 19\] image batch"),
                             (_Flattened, r"forward returned a tensor of shape \[12\] for a \[2, 3, 19, 19\] image "
                                          r"batch, not \[2, 6\] logits")):
        eager = _copy_weights(reference.state_dict(), variant(DIM, DEPTH, K, P, num_classes=N))
        with pytest.raises(cf.UnsupportedModelError, match=message):
            cf.ConvMixer.from_eager(eager)
    eager = _copy_weights(reference.state_dict(), TimmLikeConvMixer(DIM, DEPTH, K, P, num_classes=N)).train()
    model = cf.ConvMixer.from_eager(eager)
    assert eager.training and (model.backend, model.cuda_graphs) == ("auto", True)
    state = torch.get_rng_state()
    check_same_logits(eager, model)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model = cf.ConvMixer.from_eager(eager)
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=1e-5, atol=2e-5)


def test_from_eager_rejects_other_models():
    with pytest.raises(cf.UnsupportedModelError, match="Conv2d layers"):
        cf.ConvMixer.from_eager(torch.nn.Sequential(torch.nn.Linear(3, 4)))
    eager = reference_model(DIM, DEPTH, K, P, N)
    eager[3][0].fn[0].padding = (1, 1)
    with pytest.raises(cf.UnsupportedModelError, match="block 0: expected a depthwise Conv2d"):
        cf.ConvMixer.from_eager(eager)
    # A 16-bit module's outputs are not checked: the layers themselves must say everything.
    eager = reference_model(DIM, DEPTH, K, P, N).half()
    eager[3][1].padding = (1, 1)
    with pytest.raises(cf.UnsupportedModelError, match="block 0: expected a pointwise Conv2d"):
        cf.ConvMixer.from_eager(eager)
    with pytest.raises(cf.UnsupportedModelError, match="only the exact \\(erf\\) GELU"):
        cf.ConvMixer.from_eager(reference_model(DIM, DEPTH, K, P, N).apply(
            lambda m: setattr(m, "approximate", "tanh") if isinstance(m, torch.nn.GELU) else None))
    with pytest.raises(cf.UnsupportedModelError, match="kernel_size must be an integer in \\[1, 31\\], got 33"):
        cf.ConvMixer.from_eager(reference_model(DIM, 1, 33, P, N))
    with pytest.raises(cf.UnsupportedModelError, match=r"the module is torch.float64; the model runs float32, float16 "
                                                       r"or bfloat16: convert the module first \(module.float\(\), say\)"):
        cf.ConvMixer.from_eager(reference_model(DIM, DEPTH, K, P, N).double())


def _set(module, **attributes):
    for name, value in attributes.items():
        setattr(module, name, value)


def _replace(sequential, index, module):
    sequential[index] = module


def _keep_the_stem(sequential):
    del sequential[3:]


@pytest.mark.parametrize("change, message", [
    pytest.param(_keep_the_stem, r"found 1 Conv2d layers", id="only-a-stem"),
    pytest.param(lambda m: _replace(m, 4 + DEPTH, torch.nn.Sequential(torch.nn.Conv2d(DIM, DIM, 1), torch.nn.Flatten())),
                 r"found 6 Conv2d layers", id="a-conv-after-the-pooling"),
    pytest.param(lambda m: _set(m[0], stride=(1, 1)), r"the stem must be .* stride=\(1, 1\)\)$", id="stem-stride"),
    pytest.param(lambda m: _set(m[0], padding=(1, 1)), r"the stem must be .* padding=\(1, 1\)\)$", id="stem-padding"),
    pytest.param(lambda m: _set(m[0], bias=None), r"the stem must be .* bias=False\)$", id="stem-without-bias"),
    pytest.param(lambda m: _replace(m[4][0].fn, 0, torch.nn.Conv2d(DIM, DIM, 3, groups=DIM, padding="same")),
                 r"block 1: expected a depthwise Conv2d\(12, 12, 5, .* kernel_size=\(3, 3\)", id="depthwise-kernel"),
    pytest.param(lambda m: _set(m[3][0].fn[0], padding_mode="reflect"), r"block 0: expected a depthwise .*reflect",
                 id="depthwise-reflect-padding"),
    pytest.param(lambda m: _set(m[3][0].fn[0], dilation=(2, 2)), r"block 0: expected a depthwise .*dilation=\(2, 2\)",
                 id="depthwise-dilation"),
    pytest.param(lambda m: _replace(m[3], 1, torch.nn.Conv2d(DIM, DIM, 3, padding="same")),
                 r"block 0: expected a pointwise .*kernel_size=\(3, 3\)", id="pointwise-kernel"),
    pytest.param(lambda m: _replace(m[3], 1, torch.nn.Conv2d(DIM, DIM, 1, groups=2)),
                 r"block 0: expected a pointwise .*groups=2", id="pointwise-groups"),
    pytest.param(lambda m: _replace(m, 1, torch.nn.Sequential(torch.nn.GELU(), torch.nn.BatchNorm2d(DIM))),
                 r"expected 5 BatchNorm2d \(or SyncBatchNorm\) layers, found 6", id="extra-batchnorm"),
    pytest.param(lambda m: _replace(m, 2, torch.nn.BatchNorm2d(DIM, track_running_stats=False)),
                 r"must have affine=True and track_running_stats=True, got .*track_running_stats=False",
                 id="batchnorm-without-running-stats"),
    pytest.param(lambda m: _replace(m, 1, torch.nn.ReLU()), r"mixed activations \['gelu', 'relu'\]",
                 id="mixed-activations"),
    pytest.param(lambda m: _replace(m, 5 + DEPTH, torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.Linear(DIM, N))),
                 r"expected one nn.Linear classifier \(or none\), found 2", id="two-linears"),
    pytest.param(lambda m: _replace(m, 5 + DEPTH, torch.nn.Linear(DIM, N, bias=False)),
                 r"expected Linear\(12, n_classes, bias=True\), got .*bias=False", id="classifier-without-bias"),
])
def test_from_eager_refuses_other_layers_in_16_bits(change, message):
    """A 16-bit module's outputs are not compared: its layers alone must refuse what the model
    would not compute alike."""
    eager = reference_model(DIM, DEPTH, K, P, N)
    change(eager)
    with pytest.raises(cf.UnsupportedModelError, match=message):
        cf.ConvMixer.from_eager(eager.half())


@pytest.mark.parametrize("change", [
    pytest.param(lambda m: _set(m[0], padding="valid"), id="stem-valid"),
    pytest.param(lambda m: _set(m[3][1], padding="valid"), id="pointwise-valid"),
    pytest.param(lambda m: _set(m[3][1], padding="same"), id="pointwise-same"),
    pytest.param(lambda m: _set(m[3][0].fn[0], padding=(K // 2, K // 2)), id="depthwise-half-the-kernel"),
])
def test_from_eager_takes_each_spelling_of_no_or_same_padding(image, change):
    eager = reference_model(DIM, DEPTH, K, P, N)
    change(eager)
    model = cf.ConvMixer.from_eager(eager, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(model(image), eager(image), rtol=1e-5, atol=2e-5)


class _OwnNames(torch.nn.Module):
    """A ConvMixer written with names of its own."""

    def __init__(self):
        super().__init__()
        timm_like = TimmLikeConvMixer(DIM, DEPTH, K, P, num_classes=N)
        self.embed, self.mixer, self.classifier = timm_like.stem, timm_like.blocks, timm_like.head

    def forward(self, x):
        return self.classifier(self.mixer(self.embed(x)).mean((2, 3)))


def _batchnorm_before_activation(sequential):
    sequential[1], sequential[2] = sequential[2], sequential[1]
    return sequential


@pytest.mark.parametrize("make_eager, why", [
    pytest.param(_OwnNames, "unrecognised ConvMixer state-dict layout", id="own-names"),
    pytest.param(lambda: _batchnorm_before_activation(reference_model(DIM, DEPTH, K, P, N)),
                 "checkpoint keys '1.weight' and '7.weight' both map to 'head.weight'", id="batchnorm-first"),
])
def test_from_eager_refuses_layers_named_as_no_layout(make_eager, why):
    """from_eager copies the weights by their names: a module whose names fit no layout (its own,
    or the original's with layers in another order) is an UnsupportedModelError saying so."""
    with pytest.raises(cf.UnsupportedModelError, match=rf"copies their weights by name and its names fit none of timm's, "
                                                       rf"the original nn.Sequential's or the README one-liner's: {why}"):
        cf.ConvMixer.from_eager(make_eager())


class _Wrapper(torch.nn.Module):
    """A ConvMixer held as ``self.model`` (as a LightningModule holds it), or after a step."""

    def __init__(self, model, before=None):
        super().__init__()
        self.model, self.before = model, before

    def forward(self, x):
        return self.model(x if self.before is None else self.before(x))


class _Double(torch.nn.Module):
    def forward(self, x):
        return 2 * x


def test_from_eager_finds_the_convmixer_in_a_wrapper(reference, image):
    wrapper = _Wrapper(reference)  # in training mode, its ConvMixer in eval mode: both stay so
    fast = cf.ConvMixer.from_eager(wrapper, backend="eager")
    assert wrapper.training and not reference.training
    with torch.no_grad():
        torch.testing.assert_close(fast(image), reference(image), rtol=1e-4, atol=1e-5)
    with pytest.raises(cf.UnsupportedModelError, match="its logits differ from the converted model's"):
        cf.ConvMixer.from_eager(_Wrapper(reference, before=_Double()))
    headless = _Wrapper(TimmLikeConvMixer(DIM, DEPTH, K, P, num_classes=0))  # (its pool type read off the ConvMixer)
    assert cf.ConvMixer.from_eager(headless).global_pool == "avg"


@pytest.mark.parametrize("to, why", [(dict(dtype=torch.float16), "a torch.float16 module's outputs are not compared"),
                                     (dict(device="meta"), "a meta module has no outputs to compare")])
def test_from_eager_refuses_a_wrapper_whose_outputs_are_not_compared(to, why):
    wrapper = _Wrapper(reference_model(DIM, DEPTH, K, P, N), before=_Double()).to(**to)
    with pytest.raises(cf.UnsupportedModelError,
                       match=rf"_Wrapper's submodule 'model', and {why}.*from_eager\(module.model\)"):
        cf.ConvMixer.from_eager(wrapper)


@pytest.mark.parametrize("to", [dict(dtype=torch.float16), dict(dtype=torch.bfloat16), dict(device="meta")])
def test_from_eager_of_a_module_whose_outputs_are_not_compared(to):
    """16-bit and meta modules convert from their layers alone, to a model of their dtype and device
    holding their weights."""
    eager = reference_model(DIM, DEPTH, K, P, N).to(**to)
    model = cf.ConvMixer.from_eager(eager)
    assert (model.dim, model.depth, model.kernel_size, model.patch_size, model.n_classes) == (DIM, DEPTH, K, P, N)
    assert (model.head.weight.dtype, model.head.weight.device) == (eager[-1].weight.dtype, eager[-1].weight.device)
    if eager[-1].weight.device.type != "meta":
        assert _same_weights(model.state_dict(), to_canonical(eager.state_dict()).tensors)


@pytest.mark.parametrize("suffix, wrapper", [(".pth", None), (".pth.tar", "state_dict"), (".pt", "model"), (".safetensors", None)])
def test_checkpoint_files(reference, image, tmp_path, suffix, wrapper):
    path = tmp_path / f"weights{suffix}"
    state = layouts(reference)["timm"]
    if suffix == ".safetensors":
        safetensors = pytest.importorskip("safetensors.torch")
        safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        import argparse

        torch.save({wrapper: state, "epoch": 3, "args": argparse.Namespace(lr=0.1)} if wrapper else state, path)
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    model.load_state_dict(cf.load_checkpoint(path))
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=1e-5, atol=2e-5)
    assert cf.create_model("convmixer_cifar10", checkpoint_path=path, dim=DIM, depth=DEPTH, kernel_size=K,
                           patch_size=P, n_classes=N).head.weight.shape == (N, DIM)


@pytest.fixture
def ema_checkpoints(tmp_path):
    """(plain weights, EMA weights, files): timm's train.py saves "state_dict" and "state_dict_ema"
    ("both"); "ema_only" holds "model_ema" alone; "plain" a bare state dict; "two_emas" both EMA
    entries (timm takes "state_dict_ema"'s); "no_ema" a "model_ema" of None (a script that saves
    the entry whether or not it kept an EMA) next to "model"."""
    plain, ema = reference_model(DIM, DEPTH, K, P, N, seed=1), reference_model(DIM, DEPTH, K, P, N, seed=2)
    files = {name: tmp_path / f"{name}.pth.tar" for name in ("both", "ema_only", "plain", "two_emas", "no_ema")}
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict(), "epoch": 3}, files["both"])
    torch.save({"model_ema": ema.state_dict()}, files["ema_only"])
    torch.save(plain.state_dict(), files["plain"])
    torch.save({"model_ema": plain.state_dict(), "state_dict_ema": ema.state_dict()}, files["two_emas"])
    torch.save({"model_ema": None, "model": plain.state_dict()}, files["no_ema"])
    return plain.state_dict(), ema.state_dict(), files


def _same_weights(loaded: dict, expected: dict) -> bool:
    return loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_training_checkpoints_with_ema_weights(ema_checkpoints, tmp_path):
    """By default the EMA weights where a file has them (timm's rule), else the plain ones;
    use_ema=True / False insist on one kind and say what the file holds instead."""
    plain, ema, files = ema_checkpoints
    for name, use_ema, expected in (("both", None, ema), ("both", True, ema), ("both", False, plain),
                                    ("ema_only", None, ema), ("ema_only", True, ema),
                                    ("plain", None, plain), ("plain", False, plain),
                                    ("two_emas", None, ema), ("two_emas", True, ema), ("no_ema", None, plain)):
        assert _same_weights(cf.load_checkpoint(files[name], use_ema=use_ema), expected), (name, use_ema)
    model = cf.create_model("convmixer_cifar10", checkpoint_path=files["both"], dim=DIM, depth=DEPTH,
                            kernel_size=K, patch_size=P, n_classes=N)
    assert torch.equal(model.head.weight, ema[f"{3 + DEPTH + 2}.weight"])
    model = cf.create_model("convmixer_cifar10", checkpoint_path=files["both"], use_ema=False, dim=DIM,
                            depth=DEPTH, kernel_size=K, patch_size=P, n_classes=N)
    assert torch.equal(model.head.weight, plain[f"{3 + DEPTH + 2}.weight"])

    with pytest.raises(cf.CheckpointError, match=r"holds only EMA weights \(under 'model_ema'\): "
                                                 r"load_checkpoint\(path\) or use_ema=True takes them"):
        cf.load_checkpoint(files["ema_only"], use_ema=False)
    with pytest.raises(cf.CheckpointError, match="holds no EMA weights .* its entries: 0.weight, 0.bias"):
        cf.load_checkpoint(files["plain"], use_ema=True)
    safetensors_file = tmp_path / "plain.safetensors"
    safetensors_file.write_bytes(b"")  # (refused before it is read)
    with pytest.raises(cf.CheckpointError, match="is a safetensors file, which holds one set of weights"):
        cf.load_checkpoint(safetensors_file, use_ema=True)
    with pytest.raises(ValueError, match="use_ema must be None .*, True or False, got 'yes'"):
        cf.load_checkpoint(files["both"], use_ema="yes")
    with pytest.raises(ValueError, match="use_ema applies to checkpoint_path's file"):
        cf.create_model("convmixer_cifar10", use_ema=True)


def test_checkpoint_weights_are_the_ones_timm_loads(ema_checkpoints):
    """The default picks what timm's create_model(checkpoint_path=) and load_checkpoint pick."""
    timm_models = pytest.importorskip("timm.models")
    _, _, files = ema_checkpoints
    for path in files.values():
        assert _same_weights(cf.load_checkpoint(path), timm_models.load_state_dict(str(path))), path.name


def test_checkpoint_file_errors(reference, tmp_path):
    with pytest.raises(cf.CheckpointError, match="checkpoint file not found"):
        cf.load_checkpoint(tmp_path / "missing.pth")
    snapshot = tmp_path / "snapshot"  # a Hugging Face snapshot folder, say
    snapshot.mkdir()
    with pytest.raises(cf.CheckpointError, match=r"snapshot is a folder; pass the checkpoint file in it \(it holds "
                                                 r"none of \.safetensors, \.pth"):
        cf.load_checkpoint(snapshot)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    with pytest.raises(cf.CheckpointError, match=r"snapshot is a folder; pass the checkpoint file in it: model.safetensors$"):
        cf.load_checkpoint(snapshot)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(cf.CheckpointError, match=r"could not read checkpoint .*bad.pth \(12 bytes; truncated or not a "
                                                 r"torch.save file\?\): \w+") as error:
        cf.load_checkpoint(bad)
    assert "weights_only=False" not in str(error.value)  # (it would not help)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(cf.CheckpointError, match=r"empty.pth is empty \(0 bytes\)"):
        cf.load_checkpoint(tmp_path / "empty.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(cf.CheckpointError, match=r"Unsupported global(.|\n)*weights_only=False\) unpickles"):
        cf.load_checkpoint(tmp_path / "module.pth")
    save_file = pytest.importorskip("safetensors.torch").save_file
    whole = tmp_path / "whole.safetensors"
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, whole)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(cf.CheckpointError, match=r"could not read safetensors file .*truncated.safetensors \([\d,]+ "
                                                 r"bytes; truncated or not safetensors\?\): SafetensorError"):
        cf.load_checkpoint(truncated)
    blob = tmp_path / "0123abcd"  # (a Hugging Face cache keeps its files as blobs/<hash>)
    blob.write_bytes(whole.read_bytes())
    assert _same_weights(cf.load_checkpoint(blob), reference.state_dict())


def test_checkpoint_files_holding_other_objects(reference, tmp_path):
    """A pickled module is unwrapped to its weights (weights_only=False only); a file holding
    something else, or a path of bytes, is refused naming what it holds."""
    torch.save(reference, tmp_path / "whole_model.pth")
    assert _same_weights(cf.load_checkpoint(tmp_path / "whole_model.pth", weights_only=False), reference.state_dict())
    torch.save(list(reference.state_dict().values()), tmp_path / "tensors.pth")
    with pytest.raises(cf.CheckpointError, match=r"tensors.pth holds a list, not a state dict"):
        cf.load_checkpoint(tmp_path / "tensors.pth")
    with pytest.raises(cf.CheckpointError, match=r"checkpoint path must be a str or os.PathLike of str, got b'"):
        cf.load_checkpoint(bytes(tmp_path / "tensors.pth"))


def test_checkpoint_read_errors_say_what_is_missing(reference, tmp_path, monkeypatch):
    import builtins
    import os

    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)

    def unreadable(name):
        raise PermissionError(13, "Permission denied", name)

    with monkeypatch.context() as patch:  # (chmod 0 does not stop root)
        patch.setattr(os.path, "getsize", unreadable)
        with pytest.raises(cf.CheckpointError, match=r"could not read checkpoint .*weights.pth: .*Permission denied"):
            cf.load_checkpoint(path)
    pytest.importorskip("safetensors.torch").save_file(
        {key: value.contiguous() for key, value in reference.state_dict().items()}, tmp_path / "w.safetensors")
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    with pytest.raises(cf.CheckpointError, match=r"reading .*w.safetensors needs the safetensors package: pip install"):
        cf.load_checkpoint(tmp_path / "w.safetensors")


def test_state_dicts_that_are_not_names_to_tensors(reference):
    """What load_checkpoint returns for a checkpoint whose weights sit under an unknown entry, a
    list, a non-str key: refused naming the entry and what it holds."""
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    with pytest.raises(cf.CheckpointError, match=r"expected a state dict \(a mapping of names to tensors\), got list"):
        model.load_state_dict(list(reference.state_dict().items()))
    with pytest.raises(cf.CheckpointError, match=r"expected a state dict of str -> Tensor, got entry 'weights' -> dict "
                                                 r"\(a training checkpoint with its weights under 'weights'\? pass "
                                                 r"checkpoint\['weights'\]; load_checkpoint unwraps 'state_dict_ema'"):
        model.load_state_dict({"weights": dict(reference.state_dict()), "epoch": 3})
    with pytest.raises(cf.CheckpointError, match=r"got entry 0 -> Tensor"):
        model.load_state_dict({**reference.state_dict(), 0: torch.zeros(1)})


def test_two_checkpoint_keys_for_one_weight_are_refused(reference):
    """Two keys that would load into the same weight (the original layout reads any ``N.weight`` as
    the classifier's): refused naming both, not loaded from whichever came last."""
    state = reference.state_dict()
    head = f"{5 + DEPTH}.weight"
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    with pytest.raises(cf.CheckpointError, match=rf"checkpoint keys '{head}' and '99.weight' both map to 'head.weight'"):
        model.load_state_dict({**state, "99.weight": torch.zeros_like(state[head])})


def test_two_checkpoint_keys_for_one_weight_under_prefixes_are_refused(reference):
    """"module.0.weight" (a DataParallel save) beside "0.weight": both name the stem's weight once
    the prefix is stripped; refused naming both, not one silently dropped."""
    state = reference.state_dict()
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    merged = {**{f"module.{key}": value for key, value in state.items()}, "0.weight": torch.zeros_like(state["0.weight"])}
    with pytest.raises(cf.CheckpointError,
                       match=r"checkpoint keys 'module.0.weight' and '0.weight' both map to 'stem.0.weight'"):
        model.load_state_dict(merged)


def test_checkpoints_without_num_batches_tracked_load_strictly(reference, image):
    """BatchNorm's num_batches_tracked (not used in eval mode) is absent from some checkpoints."""
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    state = {key: value for key, value in reference.state_dict().items() if not key.endswith("num_batches_tracked")}
    result = model.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=1e-5, atol=2e-5)


def test_weights_must_be_real_floating_point(reference):
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    quantized = {key: (value * 10).to(torch.int8) for key, value in reference.state_dict().items()}
    with pytest.raises(cf.CheckpointError, match=r"weights must be floating point .*\n  stem.0.weight \(checkpoint "
                                                 r"key '0.weight'\): torch.int8(.|\n)*dequantizing"):
        model.load_state_dict(quantized)
    complex_weights = {key: value.to(torch.complex64) if value.is_floating_point() else value
                       for key, value in reference.state_dict().items()}
    with pytest.raises(cf.CheckpointError, match=r"weights must be floating point .*\n  stem.0.weight \(checkpoint "
                                                 r"key '0.weight'\): torch.complex64"):
        model.load_state_dict(complex_weights)
    model.load_state_dict({key: value.double() for key, value in reference.state_dict().items()})  # (a cast)


def test_shape_mismatch_names_key_and_both_shapes(reference):
    model = cf.ConvMixer(DIM + 4, DEPTH, K, P, N)
    with pytest.raises(cf.CheckpointError) as error:
        model.load_state_dict(reference.state_dict(), strict=False)  # shapes raise even when not strict
    message = str(error.value)
    assert "stem.0.weight (checkpoint key '0.weight'): checkpoint (12, 3, 3, 3), model (16, 3, 3, 3)" in message
    assert message.endswith("\nthe checkpoint looks like a different architecture: dim=12 (model: 16)")


def test_strict_and_non_strict_missing_unexpected(reference, image):
    state = dict(reference.state_dict())
    del state["3.0.fn.0.weight"]
    state["99.extra"] = torch.zeros(1)
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    with pytest.raises(cf.CheckpointError, match=r"missing keys \(1\): blocks.0.0.fn.0.weight") as error:
        model.load_state_dict(state)
    assert "unexpected keys (1): 99.extra" in str(error.value)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["blocks.0.0.fn.0.weight"] and result.unexpected_keys == ["99.extra"]


def test_depth_mismatch_is_explained(reference):
    with pytest.raises(cf.CheckpointError, match="depth=2 \\(model: 3\\)"):
        cf.ConvMixer(DIM, DEPTH + 1, K, P, N).load_state_dict(reference.state_dict())


def test_unrecognised_layout():
    with pytest.raises(cf.CheckpointError, match="unrecognised ConvMixer state-dict layout"):
        cf.ConvMixer(DIM, DEPTH, K, P, N).load_state_dict({"encoder.weight": torch.zeros(1)})


def test_a_block_key_without_an_index_is_unexpected(reference):
    model = cf.ConvMixer(DIM, DEPTH, K, P, N, backend="eager")
    state = {**model.state_dict(), "blocks.norm.weight": torch.ones(DIM)}
    assert model.load_state_dict(state, strict=False).unexpected_keys == ["blocks.norm.weight"]
    with pytest.raises(cf.CheckpointError, match=r"unexpected keys \(1\): blocks.norm.weight"):
        model.load_state_dict(state)
