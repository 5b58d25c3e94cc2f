"""The whole model through each kernel backend (triton: also on CPU under the interpreter; cuda: on a
GPU) against the reference model."""

import pytest
import torch

from helpers import DEVICE, skip_module_unless_triton_runs  # noqa: E402
skip_module_unless_triton_runs()

import convmixer_fast as cf  # noqa: E402
from helpers import DYNAMIC_IMAGE, reference_model, run_in_threads  # noqa: E402

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


def skip_unless_backend_runs_model(backend, dtype, dim):
    reason = backend.op_unsupported_reason("pointwise", DEVICE, dtype, dim)
    if reason is not None:
        pytest.skip(f"{backend.name}: {reason} (backend='auto' runs that op on another backend)")


@pytest.mark.parametrize("dim, depth, k, p, n, act, batch, H, W", CONFIGS)
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_model_matches_reference(kernel_backend, dim, depth, k, p, n, act, batch, H, W, dtype, tol):
    skip_unless_backend_runs_model(kernel_backend, dtype, dim)
    reference = reference_model(dim, depth, k, p, n, act=act, seed=dim).to(DEVICE)
    model = cf.ConvMixer.from_eager(reference, backend=kernel_backend.name).to(dtype)
    x = torch.randn(batch, 3, H, W, device=DEVICE)
    with torch.no_grad():
        expected = reference(x)
        logits = model(x)
        assert logits.dtype == dtype and logits.shape == (batch, n)
        assert (logits.float() - expected).abs().max() <= tol * expected.abs().max()
        features = model.forward_features(x)
        ref_features = reference[: 3 + depth](x)
        assert (features.float() - ref_features).abs().max() <= tol * 4 * ref_features.abs().max()


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_a_nan_pixel_makes_its_image_nan_and_leaves_the_others(kernel_backend, act):
    """As in the eager model, a NaN in one image makes that image's logits NaN (with ReLU too: a max
    that drops NaN, as fmaxf and PTX max.f32 do, would let the stem turn it into finite logits),
    and the other images' logits are what they are without it."""
    skip_unless_backend_runs_model(kernel_backend, torch.float16, 16)
    reference = reference_model(16, 2, 3, 2, 5, act=act).to(DEVICE)
    model = cf.ConvMixer.from_eager(reference, backend=kernel_backend.name).half()
    x = torch.randn(3, 3, 8, 8, device=DEVICE, dtype=torch.float16)
    poisoned = x.clone()
    poisoned[1, 0, 5, 2] = float("nan")
    with torch.no_grad():
        assert reference(poisoned.float())[1].isnan().all()
        clean, logits = model(x), model(poisoned)
    assert logits[1].isnan().all(), logits[1]
    assert torch.equal(logits[[0, 2]], clean[[0, 2]])


def test_outputs_do_not_alias_the_reused_buffers(kernel_backend):
    skip_unless_backend_runs_model(kernel_backend, torch.float16, 16)
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5).to(DEVICE), backend=kernel_backend.name)
    model = model.half()
    x1, x2 = (torch.randn(2, 3, 8, 8, device=DEVICE, dtype=torch.float16) for _ in range(2))
    with torch.no_grad():
        first, features = model(x1), model.forward_features(x1)
        first_copy, features_copy = first.clone(), features.clone()
        model(x2), model.forward_features(x2)
    assert torch.equal(first, first_copy) and torch.equal(features, features_copy)
    assert len(model._activation_buffers) == 1  # one input shape, one buffer set


def test_compile_fullgraph_export_and_trace(kernel_backend):
    skip_unless_backend_runs_model(kernel_backend, torch.float16, 16)
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5).to(DEVICE), backend=kernel_backend.name)
    model = model.half()
    x = torch.randn(2, 3, 9, 8, device=DEVICE, dtype=torch.float16)
    other = torch.randn(3, 3, 12, 10, device=DEVICE, dtype=torch.float16)
    with torch.no_grad():
        expected, other_expected = model(x), model(other)
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, rtol=2e-3, atol=2e-3)
        # A second shape recompiles with symbolic sizes (dynamo's automatic dynamic shapes).
        torch.testing.assert_close(compiled(other), other_expected, rtol=2e-3, atol=2e-3)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected, rtol=2e-3, atol=2e-3)
        names = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
        assert any(f"{kernel_backend.name}_pointwise" in name for name in names), names
        exported = torch.export.export(model, (x,), dynamic_shapes=(DYNAMIC_IMAGE,))
        torch.testing.assert_close(exported.module()(other), other_expected, rtol=2e-3, atol=2e-3)
        # torch.jit.trace records the kernels on fresh allocations, not the model's buffers or graphs
        # (a buffer would become a constant of the trace, shared by every call).
        model._activation_buffers.clear()
        traced = torch.jit.trace(model, (x,), check_trace=False)  # (the check would call the model itself)
        assert not model._activation_buffers
        assert f"{kernel_backend.name}_pointwise" in str(traced.graph)
        traced_logits = traced(x)
        torch.testing.assert_close(traced(other), other_expected, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(traced_logits, expected, rtol=2e-3, atol=2e-3)


def test_concurrent_calls_from_threads(kernel_backend):
    """Threads share the model's activation buffers and graphs: each call still gets its own input's
    logits (the model's lock). On a GPU the calls go through the CUDA graph of their shape."""
    skip_unless_backend_runs_model(kernel_backend, torch.float16, 16)
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5).to(DEVICE), backend=kernel_backend.name)
    model = model.half()
    images = [torch.randn(2, 3, 8, 8, device=DEVICE, dtype=torch.float16) for _ in range(3)]
    with torch.no_grad():  # one signature: on a GPU the calls warm up, capture, replay
        expected = [model(x) for x in images]
    results: dict[int, list[torch.Tensor]] = {}

    def run(index):
        with torch.no_grad():
            results[index] = [model(images[index]) for _ in range(3)]

    run_in_threads(run, len(images))
    assert sorted(results) == list(range(len(images)))
    for index, outputs in results.items():
        for output in outputs:
            torch.testing.assert_close(output, expected[index], rtol=0, atol=0)


def test_every_triton_launch_passes_the_compile_options(monkeypatch):
    """Each Triton kernel of a forward is launched with ``TRITON_COMPILE_OPTIONS``, what ``inspect``
    compiles with, so Triton versions that change those options' defaults run the same code."""
    import triton.runtime.interpreter
    import triton.runtime.jit

    from convmixer_fast._settings import TRITON_COMPILE_OPTIONS

    launches = []

    def recording(run):
        def run_and_record(self, *args, **kwargs):
            launches.append((self.fn.__name__, {key: kwargs.get(key) for key in TRITON_COMPILE_OPTIONS}))
            return run(self, *args, **kwargs)

        return run_and_record

    for cls in (triton.runtime.jit.JITFunction, triton.runtime.interpreter.InterpretedFunction):
        monkeypatch.setattr(cls, "run", recording(cls.run))
    model = cf.ConvMixer.from_eager(reference_model(16, 1, 3, 2, 5).to(DEVICE), backend="triton")
    with torch.no_grad():
        model(torch.randn(1, 3, 6, 6, device=DEVICE))
    assert {name for name, _ in launches} == {
        "stem_kernel", "_depthwise_block_kernel", "pointwise_kernel", "_head_pool_kernel", "_head_classifier_kernel"
    }
    assert all(options == TRITON_COMPILE_OPTIONS for _, options in launches), launches
