"""Bad inputs raise clear errors naming what was expected and what came."""

import pytest
import torch

import convmixer_fast as cf
from convmixer_fast.backends import BackendUnavailableError


@pytest.fixture(scope="module")
def model():
    return cf.ConvMixer(8, 1, 3, 4, 5, backend="eager")


@pytest.mark.parametrize("x, error, match", [
    (torch.randn(3, 16, 16), cf.InputError, r"expected a 4-D NCHW image batch \[B, 3, H, W\], got shape \(3, 16, 16\)"),
    (torch.randn(1, 4, 16, 16), cf.InputError, r"expected 3 input channels in dim 1 \(NCHW\), got shape \(1, 4, 16, 16\)"),
    (torch.randn(1, 16, 16, 3), cf.InputError, r"it looks NHWC"),
    (torch.randn(1, 3, 3, 16), cf.InputError, r"image 3x16 is smaller than the patch size 4"),
    (torch.randint(0, 255, (1, 3, 16, 16)), cf.InputError, r"expected a floating-point image .* got torch.int64"),
    (torch.randn(1, 3, 16, 16, dtype=torch.complex64), cf.InputError, r"got torch.complex64"),
    ([[1.0]], cf.InputError, r"expected a torch.Tensor image batch, got list"),
    (torch.randn(1, 3, 16, 16).to_sparse(), cf.InputError, r"expected a dense \(strided\) image tensor, got a torch.sparse_coo one"),
])
def test_bad_input(model, x, error, match):
    with pytest.raises(error, match=match):
        model(x)


def test_empty_batches_get_the_checks_of_the_others():
    model = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager").train()
    with pytest.raises(cf.InferenceOnlyError, match="call model.eval"):
        model(torch.randn(0, 3, 16, 16))
    with pytest.raises(RuntimeError, match="model dtype must be float32, float16 or bfloat16, got torch.float64"):
        model.eval().double().forward_features(torch.randn(0, 3, 16, 16))


def test_input_on_other_device(model):
    x = torch.randn(1, 3, 16, 16, device="meta")
    with pytest.raises(cf.InputError, match=r"input is on meta but the model is on cpu; move one \(model.to\('meta'\)"):
        model(x)


def test_a_meta_model_is_told_how_to_get_weights():
    """A model built under torch.device("meta") has no values to move: the error names to_empty and
    loading the weights, the way that works, and that way gives the logits of the weights."""
    weights = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager").eval()
    with torch.device("meta"):
        model = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager").eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(cf.InputError, match=r"model is on meta; materialise it with model.to_empty\(device='cpu'\)"):
        model(x)
    model.to_empty(device="cpu").load_state_dict(weights.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), weights(x))


def test_training_and_grad_are_refused(model):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(cf.InferenceOnlyError, match="input requires grad"):
        model(x.requires_grad_())
    model.train()
    try:
        with pytest.raises(cf.InferenceOnlyError, match="call model.eval"):
            model(torch.randn(1, 3, 16, 16))
    finally:
        model.eval()
    model.head.weight.requires_grad_(True)
    try:
        with pytest.raises(cf.InferenceOnlyError, match="some parameters require grad"):
            model(torch.randn(1, 3, 16, 16))
        with torch.no_grad():
            model(torch.randn(1, 3, 16, 16))  # fine without autograd
    finally:
        model.head.weight.requires_grad_(False)


@pytest.mark.parametrize("after_a_forward", [False, True])
def test_a_batchnorm_in_training_mode_is_refused(after_a_forward):
    """``model.blocks[0][3].train()`` leaves ``model.training`` False, but the eager model would
    normalise with that layer's batch statistics: an error naming the layer, not eval-mode logits."""
    model = cf.ConvMixer(8, 2, 3, 4, 5, backend="eager")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x) if after_a_forward else None
        model.blocks[1][3].train()
        with pytest.raises(cf.InferenceOnlyError, match=r"its layer blocks\.1\.3 is in training mode .*call model.eval"):
            model(x)
        with pytest.raises(cf.InferenceOnlyError, match=r"blocks\.1\.3"):
            model.forward_features(x)
        model.eval()
        if expected is not None:
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        else:
            model(x)


def test_forward_head_is_inference_only_too(model):
    """forward_head's classifier is a fused kernel too: a feature map that wants gradients, or
    training mode, raise as forward does (the triton backend would return logits without grad_fn)."""
    features = torch.randn(2, 8, 4, 4)
    with pytest.raises(cf.InferenceOnlyError, match="feature map requires grad"):
        model.forward_head(features.requires_grad_())
    model.train()
    try:
        with pytest.raises(cf.InferenceOnlyError, match="call model.eval"):
            model.forward_head(features.detach())
    finally:
        model.eval()
    with torch.no_grad():
        assert model.forward_head(features).shape == (2, 5)


def test_nan_propagates(model):
    x = torch.randn(1, 3, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        assert torch.isnan(model(x)).any()


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = cf.ConvMixer(8, 1, 3, 4, 5, backend="triton")
    with pytest.raises(BackendUnavailableError, match="backend 'triton' cannot run on cpu: .*TRITON_INTERPRET=1"):
        model(torch.randn(1, 3, 16, 16))


def test_mixed_model_dtypes_are_refused():
    model = cf.ConvMixer(8, 1, 3, 4, 5, backend="eager")
    model.head.half()
    with pytest.raises(RuntimeError, match="spread over devices"):
        model(torch.randn(1, 3, 16, 16))
