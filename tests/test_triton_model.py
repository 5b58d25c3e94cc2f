"""The whole model through the triton backend against the reference model (interpreter on CPU)."""


import pytest
import torch

from helpers import DEVICE, skip_module_unless_triton_runs  # noqa: E402
skip_module_unless_triton_runs()

import convmixer_fast as cf  # noqa: E402
from helpers import reference_model  # noqa: E402

# Relative to max |logit|, against the fp32 reference model: one rounding per step, 2*depth+2 steps.
DTYPES = [
    pytest.param(torch.float32, 1e-4, id="fp32"),
    pytest.param(torch.float16, 1e-2, id="fp16"),
    pytest.param(torch.bfloat16, 6e-2, id="bf16"),
]
CONFIGS = [  # dim, depth, kernel, patch, classes, act, batch, H, W
    pytest.param(16, 2, 5, 2, 10, "gelu", 2, 14, 13, id="k5-p2"),
    pytest.param(24, 1, 4, 3, 7, "relu", 1, 17, 20, id="even-k-relu"),
    pytest.param(19, 2, 9, 4, 3, "gelu", 3, 23, 21, id="odd-dim-k9"),
]


@pytest.mark.parametrize("dim, depth, k, p, n, act, batch, H, W", CONFIGS)
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_triton_model_matches_reference(dim, depth, k, p, n, act, batch, H, W, dtype, tol):
    reference = reference_model(dim, depth, k, p, n, act=act, seed=dim).to(DEVICE)
    model = cf.ConvMixer.from_eager(reference, backend="triton").to(dtype)
    x = torch.randn(batch, 3, H, W, device=DEVICE)
    with torch.no_grad():
        expected = reference(x)
        logits = model(x)
        assert logits.dtype == dtype and logits.shape == (batch, n)
        assert (logits.float() - expected).abs().max() <= tol * expected.abs().max()
        features = model.forward_features(x)
        ref_features = reference[: 3 + depth](x)
        assert (features.float() - ref_features).abs().max() <= tol * 4 * ref_features.abs().max()


def test_outputs_do_not_alias_the_reused_buffers():
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5).to(DEVICE), backend="triton")
    x1, x2 = torch.randn(2, 3, 8, 8, device=DEVICE), torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        first, features = model(x1), model.forward_features(x1)
        first_copy, features_copy = first.clone(), features.clone()
        model(x2), model.forward_features(x2)
    assert torch.equal(first, first_copy) and torch.equal(features, features_copy)
    assert len(model._activation_buffers) == 1  # one input shape, one buffer set


def test_compile_fullgraph_and_export():
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5).to(DEVICE), backend="triton")
    x = torch.randn(2, 3, 9, 8, device=DEVICE)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected, rtol=1e-4, atol=1e-4)
        names = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
        assert any("triton_pointwise" in name for name in names), names
