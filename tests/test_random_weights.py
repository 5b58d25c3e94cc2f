"""``testing.randomize_weights_``: the trained-looking random weights that the model-level tests,
``verify`` and the benchmarks hold the kernels to. BatchNorm layers that are not identities (which
would hide folding bugs), their statistics those of the activations at the image size the model
runs at (else the activations grow block after block), the same weights for the same seed."""

import pytest
import torch
from torch import nn

import convmixer_fast as cf
from convmixer_fast.reference import ConvMixerReference
from convmixer_fast.testing import randomize_weights_

CONFIG = (16, 3, 7, 2, 5)  # dim, depth, kernel, patch, classes: a wide kernel on 8x8 tokens, much of it padding
IMAGE_SIZE = 16
MODELS = {"reference": ConvMixerReference, "convmixer_fast": cf.ConvMixer}


@pytest.fixture(params=list(MODELS))
def make_model(request):
    """A fresh model of ``CONFIG``, each kind ``randomize_weights_`` takes (a reference or a ConvMixer)."""
    return lambda: MODELS[request.param](*CONFIG)


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]


def test_batchnorm_statistics_are_the_activations_at_the_calibrated_size(make_model):
    """On fresh images of the calibrated size, every BatchNorm's input normalized by its running
    statistics has mean ~0 and variance ~1."""
    model = randomize_weights_(make_model(), image_size=IMAGE_SIZE)
    layers = nn.Sequential(model.stem, model.blocks) if isinstance(model, cf.ConvMixer) else model
    normalized = []

    def record(bn, inputs, output):
        scale = (bn.running_var + bn.eps).rsqrt()
        normalized.append((inputs[0] - bn.running_mean[:, None, None]) * scale[:, None, None])

    hooks = [bn.register_forward_hook(record) for bn in batchnorms(layers)]
    with torch.no_grad():
        layers(torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE))
    for hook in hooks:
        hook.remove()
    assert len(normalized) == 1 + 2 * CONFIG[1]
    for z in normalized:
        assert abs(z.mean()) < 0.1 and 0.8 < z.var((0, 2, 3)).mean() < 1.25


def test_the_weights_look_trained_and_the_model_is_left_for_inference(make_model):
    model = make_model()
    bns = batchnorms(model)
    bns[0].momentum = 0.3  # a caller's, kept
    randomize_weights_(model, image_size=IMAGE_SIZE)
    assert not any(module.training for module in model.modules())
    assert [bn.momentum for bn in bns] == [0.3] + [0.1] * (len(bns) - 1)
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):  # uniform, a unit variance out for a unit variance in
            bound = (3 / layer.weight[0].numel()) ** 0.5
            assert 0.8 * bound < layer.weight.abs().max() <= bound and layer.bias.abs().min() > 0
    for bn in bns:
        assert bn.weight.std() > 0.1 and bn.bias.std() > 0.05


def test_the_weights_depend_on_the_seed_alone(make_model):
    """Randomized again with another seed, a model holds what a fresh one gets with that seed: no
    earlier weight or statistic stays (the calibration's cumulative average starts over)."""
    again = randomize_weights_(randomize_weights_(make_model(), image_size=IMAGE_SIZE, seed=1),
                               image_size=IMAGE_SIZE, seed=2)
    fresh, other = (randomize_weights_(make_model(), image_size=IMAGE_SIZE, seed=seed) for seed in (2, 1))
    assert again.state_dict().keys() == fresh.state_dict().keys()
    assert all(torch.equal(again.state_dict()[name], tensor) for name, tensor in fresh.state_dict().items())
    assert not torch.equal(next(other.parameters()), next(fresh.parameters()))
