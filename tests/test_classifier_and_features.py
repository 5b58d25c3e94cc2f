"""timm's classifier and feature API: no classifier (``num_classes=0``, ``global_pool=""``),
``reset_classifier``, a head assigned by hand, ``forward_intermediates``, ``prune_intermediate_layers``;
against the reference model's layers and, where timm is installed, timm's own ConvMixer. On CPU
(the API does not depend on the device; the triton backend where Triton's interpreter runs it),
and the CUDA graphs of a model without a classifier on a GPU."""

import pytest
import torch
from torch import nn

import convmixer_fast as cf
from convmixer_fast.backends import BACKENDS
from convmixer_fast.weights import without_classifier
from helpers import TimmLikeConvMixer, reference_model

DIM, DEPTH, K, P, N = 12, 3, 5, 3, 6
MODEL_BACKENDS = ["eager", "triton"]
TOLERANCE = dict(rtol=1e-5, atol=2e-5)  # fp32, the folded computation against the eager layers


@pytest.fixture(scope="module")
def reference():
    return reference_model(DIM, DEPTH, K, P, N)


@pytest.fixture
def image():
    return torch.randn(2, 3, 14, 16)  # a partial patch in each direction


def block_output(reference, index, x):
    """The reference's output of block ``index`` (its layers: stem conv, act, BN, then the blocks)."""
    return reference[: 3 + index + 1](x)


def pooled_features(reference, x):
    return reference[:-1](x)  # up to the pooling and flattening, without the classifier


def skip_unless_runs_on_cpu(backend: str) -> None:
    reason = BACKENDS[backend].unavailable_reason(torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"{backend} backend: {reason}")


def headless(reference, backend="eager", global_pool="avg"):
    model = cf.ConvMixer(DIM, DEPTH, K, P, num_classes=0, global_pool=global_pool, backend=backend)
    model.load_state_dict(without_classifier(reference.state_dict()))
    return model


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_without_a_classifier_forward_returns_the_features(reference, image, backend):
    """num_classes=0: the pooled features [B, dim] (timm's embedding); with global_pool="" the map
    [B, dim, H/p, W/p]; forward_head gives the same from forward_features; empty batches too."""
    skip_unless_runs_on_cpu(backend)
    model = headless(reference, backend)
    assert isinstance(model.get_classifier(), nn.Identity) and model.n_classes == model.num_classes == 0
    unpooled = headless(reference, backend, global_pool="")
    with torch.no_grad():
        features = model(image)
        assert features.shape == (2, DIM)
        torch.testing.assert_close(features, pooled_features(reference, image), **TOLERANCE)
        torch.testing.assert_close(model.forward_head(model.forward_features(image)), features, **TOLERANCE)
        feature_map = unpooled(image)
        assert feature_map.shape == (2, DIM, 4, 5)
        torch.testing.assert_close(feature_map, block_output(reference, DEPTH - 1, image), **TOLERANCE)
        assert model(image[:0]).shape == (0, DIM) and unpooled(image[:0]).shape == (0, DIM, 4, 5)


def test_head_settings_are_checked():
    with pytest.raises(ValueError, match="global_pool must be 'avg'.*got 'max'"):
        cf.ConvMixer(DIM, DEPTH, K, P, num_classes=0, global_pool="max")
    with pytest.raises(ValueError, match="takes no classifier: pass num_classes=0 with it, not 6"):
        cf.ConvMixer(DIM, DEPTH, K, P, num_classes=N, global_pool="")
    with pytest.raises(ValueError, match="n_classes must be an integer >= 0, got -1"):
        cf.ConvMixer(DIM, DEPTH, K, P, num_classes=-1)
    assert cf.ConvMixer(DIM, DEPTH, K, P, global_pool="fast").global_pool == "avg"  # (timm's fast mean)


def test_create_model_without_a_classifier_leaves_the_checkpoints_out(reference, image, tmp_path, monkeypatch):
    """As timm's pretrained=True with num_classes=0: the checkpoint's classifier is not loaded (it
    would not fit); num_classes replaces a config's n_classes (cifar10's 10 included)."""
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)  # the original layout: its classifier is "{5 + depth}.*"
    config = dict(dim=DIM, depth=DEPTH, kernel_size=K, patch_size=P, n_classes=N, act_layer="gelu")
    monkeypatch.setitem(cf.configs.MODEL_CONFIGS, "tiny", config)
    model = cf.create_model("tiny", checkpoint_path=path, num_classes=0, backend="eager")
    assert cf.create_model("convmixer_cifar10", num_classes=100).n_classes == 100
    with pytest.raises(ValueError, match="pass n_classes or num_classes, not both"):
        cf.create_model("tiny", n_classes=3, num_classes=3)
    with pytest.raises(cf.CheckpointError, match="shape mismatch"):
        cf.create_model("tiny", checkpoint_path=path, num_classes=N + 1)
    torch.save({**reference.state_dict(), "99.extra": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(cf.CheckpointError, match=r"unexpected keys \(1\): 99.extra"):  # (still reported)
        cf.create_model("tiny", checkpoint_path=tmp_path / "extra.pth", num_classes=0)
    with torch.no_grad():
        torch.testing.assert_close(model(image), pooled_features(reference, image), **TOLERANCE)


def test_reset_classifier(reference, image):
    """timm's reset_classifier: none (0), or a new nn.Linear on the model's device and dtype,
    frozen; its weights loaded next give those logits; bad settings leave the model as it was."""
    model = cf.ConvMixer.from_eager(reference, backend="eager")
    with torch.no_grad():
        features = pooled_features(reference, image)
        model(image)  # (prepared: the reset must drop it)
        model.reset_classifier(0)
        torch.testing.assert_close(model(image), features, **TOLERANCE)
        model.reset_classifier(4)
        head = model.get_classifier()
        assert isinstance(head, nn.Linear) and head.out_features == 4 and not head.weight.requires_grad
        assert model.n_classes == model.num_classes == 4 and model.global_pool == "avg"
        head.weight.copy_(torch.randn(4, DIM))
        torch.testing.assert_close(model(image), features @ head.weight.T + head.bias, **TOLERANCE)
        for bad, message in (((3, ""), "takes no classifier"), ((0, "max"), "global_pool must be"),
                             ((-2,), "n_classes must be an integer >= 0")):
            with pytest.raises(ValueError, match=message):
                model.reset_classifier(*bad)
        assert model.get_classifier() is head
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(image), block_output(reference, DEPTH - 1, image), **TOLERANCE)


def test_a_head_assigned_after_a_forward_is_used(reference, image):
    """``model.head = ...`` (timm users' classifier surgery) after the weights were prepared: the new
    head gives the logits (before, the prepared old head kept giving its own, silently)."""
    model = cf.ConvMixer.from_eager(reference, backend="eager")
    features = pooled_features(reference, image)
    with torch.no_grad():
        model(image)
        new_head = nn.Linear(DIM, 3)
        model.head = new_head
        assert model.n_classes == 3 and not new_head.weight.requires_grad
        torch.testing.assert_close(model(image), new_head(features), **TOLERANCE)
        model.head = nn.Identity()
        torch.testing.assert_close(model(image), features, **TOLERANCE)
    for bad in (nn.Linear(DIM + 1, 3), nn.Linear(DIM, 3, bias=False), nn.Conv2d(DIM, 3, 1), None):
        with pytest.raises(ValueError, match=rf"model.head must be nn.Linear\({DIM}, n_classes\) with a bias"):
            model.head = bad


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_forward_intermediates_are_the_blocks_outputs(reference, image, backend):
    """As timm's: the picked blocks' outputs in block order (each a fresh tensor, not a reused
    buffer a later block overwrites), and the final map (the last picked block's with stop_early)."""
    skip_unless_runs_on_cpu(backend)
    model = cf.ConvMixer.from_eager(reference, backend=backend)
    with torch.no_grad():
        blocks = [block_output(reference, index, image) for index in range(DEPTH)]
        final, intermediates = model.forward_intermediates(image)
        torch.testing.assert_close(final, blocks[-1], **TOLERANCE)
        assert len(intermediates) == DEPTH
        for output, expected in zip(intermediates, blocks):
            torch.testing.assert_close(output, expected, **TOLERANCE)
        for indices, picked in ((2, [1, 2]), ([0, -1], [0, 2]), ([2, 0, 0], [0, 2]), ((1,), [1])):
            only = model.forward_intermediates(image, indices=indices, intermediates_only=True)
            assert len(only) == len(picked)
            for output, index in zip(only, picked):
                torch.testing.assert_close(output, blocks[index], **TOLERANCE)
        final, _ = model.forward_intermediates(image, indices=[0], stop_early=True)
        torch.testing.assert_close(final, blocks[0], **TOLERANCE)
        final, empty = model.forward_intermediates(image[:0], indices=2)
        assert final.shape == (0, DIM, 4, 5) and [e.shape for e in empty] == [(0, DIM, 4, 5)] * 2
    assert model.feature_info == [dict(num_chs=DIM, reduction=P, module=f"blocks.{i}") for i in range(DEPTH)]


def test_forward_intermediates_checks_its_arguments(reference, image):
    model = cf.ConvMixer.from_eager(reference, backend="eager")
    for indices, message in ((0, "asks for the last 0 blocks; the model has 3"), (4, "last 4 blocks"),
                             ([3], "block index 3 is outside the model's 3 blocks"), ([-4], "index -4"),
                             ([], "picks no block"), (["1"], "block index '1'"),
                             (True, "indices must be None, an int .* got True"), (2.0, "got 2.0")):
        with pytest.raises(ValueError, match=message):
            model.forward_intermediates(image, indices=indices)
    assert len(model.forward_intermediates(image, indices={0, 2}, intermediates_only=True)) == 2  # (any iterable)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        model.forward_intermediates(image, output_fmt="NHWC")
    with pytest.raises(cf.InputError):
        model.forward_intermediates(image[0])


def test_prune_intermediate_layers(reference, image):
    """timm's pruning for feature extraction: the blocks past the last picked one and the
    classifier go; forward then returns that block's map."""
    model = cf.ConvMixer.from_eager(reference, backend="eager")
    with torch.no_grad():
        model(image)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        assert model.depth == len(model.blocks) == 2 and model.n_classes == 0 and model.global_pool == ""
        assert not any(key.startswith(("blocks.2.", "head.")) for key in model.state_dict())
        torch.testing.assert_close(model(image), block_output(reference, 1, image), **TOLERANCE)
        with pytest.raises(ValueError, match="nn.Sequential of at least one block"):
            model.blocks = nn.Sequential()


@pytest.mark.parametrize("num_classes, global_pool", [(0, "avg"), (0, "")])
def test_from_eager_without_a_classifier(reference, image, num_classes, global_pool):
    """A timm-like module with num_classes=0 (and global_pool="") converts to the same features;
    the conversion leaves torch's random state alone (the model is built on the meta device)."""
    eager = TimmLikeConvMixer(DIM, DEPTH, K, P, num_classes=num_classes, global_pool=global_pool)
    eager.load_state_dict(without_classifier(reference.state_dict()))
    state = torch.get_rng_state()
    model = cf.ConvMixer.from_eager(eager.eval(), backend="eager")
    assert torch.equal(torch.get_rng_state(), state)
    assert (model.n_classes, model.global_pool) == (0, global_pool)
    with torch.no_grad():
        torch.testing.assert_close(model(image), eager(image), **TOLERANCE)
    plain = reference[: 3 + DEPTH]  # the original nn.Sequential cut before its pooling: the map
    assert cf.ConvMixer.from_eager(plain, backend="eager").global_pool == ""


@pytest.mark.parametrize("num_classes, global_pool", [(0, "avg"), (0, ""), (N, "fast")])
def test_real_timm_heads(image, num_classes, global_pool):
    """timm's ConvMixer with and without a classifier and pooling converts to the same outputs."""
    convmixer = pytest.importorskip("timm.models.convmixer")
    eager = convmixer.ConvMixer(DIM, DEPTH, K, P, num_classes=num_classes, global_pool=global_pool).eval()
    model = cf.ConvMixer.from_eager(eager, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(model(image), eager(image), **TOLERANCE)
        torch.testing.assert_close(model.forward_head(model.forward_features(image), pre_logits=True),
                                   eager.forward_head(eager.forward_features(image), pre_logits=True), **TOLERANCE)
    model.reset_classifier(0, "")
    eager.reset_classifier(0, "")
    with torch.no_grad():
        torch.testing.assert_close(model(image), eager(image), **TOLERANCE)


def test_real_timm_feature_extraction(image):
    """timm's feature wrapper (what features_only=True builds) around our model gives timm's
    features: it calls prune_intermediate_layers and forward_intermediates."""
    timm_models = pytest.importorskip("timm.models")
    from timm.models._features import FeatureGetterNet

    eager = timm_models.convmixer.ConvMixer(DIM, DEPTH, K, P, num_classes=N).eval()
    model = cf.ConvMixer.from_eager(eager, backend="eager")
    ours, theirs = FeatureGetterNet(model, out_indices=(0, 1)), FeatureGetterNet(eager, out_indices=(0, 1))
    assert ours.feature_info.channels() == theirs.feature_info.channels() == [DIM, DIM]
    with torch.no_grad():
        for output, expected in zip(ours(image), theirs(image), strict=True):
            torch.testing.assert_close(output, expected, **TOLERANCE)
    assert model.depth == 2 and isinstance(model.head, nn.Identity)


@pytest.mark.parametrize("global_pool", ["avg", ""])
def test_export_without_a_classifier(reference, image, global_pool):
    model = headless(reference, global_pool=global_pool)
    with torch.no_grad():
        exported = torch.export.export(model, (image,)).module()
        torch.testing.assert_close(exported(image), model(image), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("global_pool", ["avg", ""])
def test_graphs_replay_the_features_on_a_gpu(reference, global_pool):
    """A model without a classifier is captured and replayed like one with (its static output the
    features), giving the uncaptured forward's features."""
    model = headless(reference, backend="auto", global_pool=global_pool).cuda()
    images = [torch.randn(2, 3, 14, 16, device="cuda") for _ in range(3)]
    with torch.no_grad():
        outputs = [model(x) for x in images]  # warm-up, capture, replay
        model.cuda_graphs = False
        for output, x in zip(outputs, images):
            torch.testing.assert_close(output, model(x), rtol=0, atol=0)
    assert model._graphs


def test_forward_head_refuses_a_feature_map_of_another_dtype_or_device(reference, image):
    """A feature map in a dtype that is neither the model's nor the compute dtype, or on another
    device, is an InputError, whichever of the two is wrong (not converted or run elsewhere)."""
    model = cf.ConvMixer.from_eager(reference, backend="eager")
    with torch.no_grad():
        features = model.forward_features(image)
        for wrong in (features.double(), features.half(), features.to("meta")):
            with pytest.raises(cf.InputError, match=r"feature map is torch\.float\d+ on (cpu|meta), the model is "
                                                    r"torch.float32 on cpu"):
                model.forward_head(wrong)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the compute dtype is taken too
            assert model.forward_head(features.bfloat16()).dtype == torch.bfloat16
