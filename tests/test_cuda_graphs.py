"""The model's automatic CUDA graphs: one capture per input signature, replayed after the first call.

On CPU the bookkeeping runs with a stand-in capture (a "graph" whose replay reruns the forward into
the static output): warm-up, capture, replay, copies out, the bound, invalidation, failures. On a GPU
the real capture is checked against the uncaptured forward.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import convmixer_fast as cf
from convmixer_fast import model as model_module
from helpers import DEVICE, reference_model, run_in_threads

NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


class ReplayingForward:
    """Stands in for a captured CUDA graph: ``replay`` recomputes the static output."""

    def __init__(self, model, image):
        self.model, self.image = model, image
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.output.copy_(self.model._outputs(self.image, preallocated=False))


@pytest.fixture
def stand_in_capture(monkeypatch):
    """CPU models take the graph path, with ``_capture`` replaced by ``ReplayingForward``; returns
    the list of captures made."""
    captures = []

    def capture(self, x):
        image = x.clone()
        graph = ReplayingForward(self, image)
        graph.output = self._outputs(image, preallocated=False)
        captures.append(graph)
        return model_module._CapturedForward(graph, image, graph.output)

    monkeypatch.setattr(cf.ConvMixer, "_graphs_apply", lambda self, x: self.cuda_graphs)
    monkeypatch.setattr(cf.ConvMixer, "_capture", capture)
    return captures


def small_model(**kwargs):
    return cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend="eager", **kwargs)


def test_first_call_warms_up_second_captures_later_calls_replay(stand_in_capture):
    model = small_model()
    images = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    with torch.no_grad():
        expected = [model._outputs(x) for x in images]
        outputs = [model(x) for x in images]
    assert len(stand_in_capture) == 1 and stand_in_capture[0].replays == 3  # calls 2, 3 and 4
    for output, reference in zip(outputs, expected):
        torch.testing.assert_close(output, reference, rtol=0, atol=0)
    static = stand_in_capture[0].output
    assert all(output.data_ptr() != static.data_ptr() for output in outputs)  # copies, never overwritten
    assert not model._activation_buffers  # the captured shape's buffers were released


def test_signature_includes_strides_dtype_and_autocast(stand_in_capture):
    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for variant in (x, x.contiguous(memory_format=torch.channels_last), x.double()):
            model(variant), model(variant)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # an fp32 model then computes in bf16
            logits = [model(x), model(x), model(x)]
    assert len(stand_in_capture) == 4 and all(out.dtype == torch.bfloat16 for out in logits)


def test_each_tf32_setting_gets_its_own_graph(stand_in_capture, restored_tf32):
    """A graph replays the kernels captured under the TF32 switches of its capture (cuBLAS and
    cuDNN pick TF32 kernels then): a change of either switch captures anew, and changing back
    replays the first graph."""
    from convmixer_fast import _tf32

    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    matmul, conv = _tf32.switches()
    with torch.no_grad():
        for switches in ((matmul, conv), (matmul, not conv), (not matmul, conv), (matmul, conv)):
            _tf32._set(*switches)
            model(x), model(x)
    assert len(stand_in_capture) == 3
    assert [graph.replays for graph in stand_in_capture] == [3, 1, 1]  # (a capture call replays too)


def test_a_16_bit_graph_does_not_depend_on_the_tf32_switches(stand_in_capture, restored_tf32):
    """TF32 concerns fp32 math only: a 16-bit model keeps replaying its graph whatever the switches
    (and does not read them on every call)."""
    from convmixer_fast import _tf32

    model = small_model().half()
    x = torch.randn(2, 3, 8, 8).half()
    with torch.no_grad():
        for switches in ((True, True), (False, False), (True, False)):
            _tf32._set(*switches)
            model(x), model(x)
    assert len(stand_in_capture) == 1 and stand_in_capture[0].replays == 5


def test_graphs_are_bounded_least_recent_dropped_and_not_captured_again(stand_in_capture):
    """More signatures in turn than graphs kept: capturing each anew on its return would cost a
    warm-up run and a capture per call, so a signature whose graph was dropped runs uncaptured."""
    model = small_model()
    bound = model_module.MAX_CACHED_SHAPES
    with torch.no_grad():
        for batch in range(1, bound + 3):
            x = torch.randn(batch, 3, 8, 8)
            model(x), model(x)  # warm-up, capture
        assert len(stand_in_capture) == bound + 2 and len(model._graphs) == bound
        assert {key[0][0] for key in model._graphs} == set(range(3, bound + 3))
        assert [state for state in model._signatures.values()] == [model_module._DROPPED] * 2
        x = torch.randn(1, 3, 8, 8)
        torch.testing.assert_close(model(x), model._outputs(x), rtol=0, atol=0)
    assert len(stand_in_capture) == bound + 2


def test_signatures_seen_once_leave_the_graphs_alone(stand_in_capture):
    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model(x), model(x)  # warm-up, capture
        for batch in range(3, 3 + 4 * model_module.MAX_CACHED_SHAPES):
            model(torch.randn(batch, 3, 8, 8))  # warm-ups only
        model(x)
    assert len(stand_in_capture) == 1 and stand_in_capture[0].replays == 2


def test_a_parameter_change_drops_the_graphs(stand_in_capture):
    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model(x), model(x)
        model.head.bias.add_(1.0)
        assert model(x) is not None and not model._graphs  # dropped, warm-up again
        after = model(x)  # captured anew on the new parameters
    torch.testing.assert_close(after, small_model_with(model)(x), rtol=0, atol=0)
    assert len(stand_in_capture) == 2


def small_model_with(model):
    """An uncaptured copy of ``model`` (same parameters)."""
    copy = small_model(cuda_graphs=False)
    copy.load_state_dict(model.state_dict())
    return copy


def test_a_failed_capture_warns_and_switches_graphs_off(monkeypatch):
    """``_capture`` itself, with torch.cuda's streams and graphs stood in for and the capture
    failing: torch's allocator may be left unfit for another capture, so none is tried again."""
    class Stream:
        def wait_stream(self, other):
            pass

    attempts = []

    def failing_graph(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    for name, stand_in in {"device": lambda device: contextlib.nullcontext(), "Stream": Stream,
                           "current_stream": lambda device=None: Stream(), "stream": lambda s: contextlib.nullcontext(),
                           "set_stream": lambda s: None, "CUDAGraph": object, "graph": failing_graph}.items():
        monkeypatch.setattr(torch.cuda, name, stand_in)
    monkeypatch.setattr(cf.ConvMixer, "_graphs_apply", lambda self, x: self.cuda_graphs)
    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model._outputs(x)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # warm-up
        with pytest.warns(UserWarning, match="CUDA graphs are now off for this model"):
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        for batch in (2, 2, 3, 3):
            model(torch.randn(batch, 3, 8, 8))
    assert len(attempts) == 1 and not model.cuda_graphs and not model._graphs


def test_switching_graphs_off_releases_them(stand_in_capture):
    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model(x), model(x)
        assert model._graphs
        model.cuda_graphs = False
        assert not model._graphs
        model(x)
    assert len(stand_in_capture) == 1 and stand_in_capture[0].replays == 1  # (the capturing call's)


def test_switched_off_never_captures(stand_in_capture):
    model = small_model(cuda_graphs=False)
    assert "cuda_graphs=False" in repr(model)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, 8, 8))
    assert not stand_in_capture and not model._graphs


@pytest.mark.parametrize("forward", ["forward", "forward_features"])
def test_inside_a_callers_capture_nothing_of_the_models_is_reused(monkeypatch, forward):
    """A graph the caller captures must not record the model's reusable activation buffers: a later
    call (a capture of the model's own, a new shape pushing them out) may free them under it."""
    pytest.importorskip("triton")
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend="triton")  # a preallocating backend
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        monkeypatch.setattr(model_module, "_capturing", lambda image: True)
        getattr(model, forward)(x)
        assert not model._activation_buffers
        monkeypatch.setattr(model_module, "_capturing", lambda image: False)
        getattr(model, forward)(x)
        assert len(model._activation_buffers) == 1


def test_a_first_call_inside_a_callers_capture_keeps_no_prepared_parameters(monkeypatch):
    """Prepared inside the caller's capture, the parameters are only recorded into its graph (their
    memory its pool's, their values computed at each replay): kept, later calls would read memory
    nothing wrote."""
    model = small_model()
    model._invalidate_prepared()  # (from_eager's check of the conversion prepared them)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        monkeypatch.setattr(model_module, "_capturing", lambda tensor: True)
        first = model(x)
        assert model._prepared is None
        monkeypatch.setattr(model_module, "_capturing", lambda tensor: False)
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)
    assert model._prepared is not None


def test_threads_replaying_one_graph_get_their_own_logits(stand_in_capture):
    """A graph's static input and logits are shared: without the model's lock a thread's replay
    could read another thread's image, or return logits another replay overwrote."""
    model = small_model()
    images = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    with torch.no_grad():
        expected = [model._outputs(x) for x in images]
        model(images[0]), model(images[0])  # warm-up, capture
    results: dict[int, list[torch.Tensor]] = {}

    def run(index):
        with torch.no_grad():
            results[index] = [model(images[index]) for _ in range(20)]

    run_in_threads(run, len(images))
    assert len(stand_in_capture) == 1
    for index, outputs in sorted(results.items()):
        for output in outputs:
            torch.testing.assert_close(output, expected[index], rtol=0, atol=0)
    assert sorted(results) == list(range(len(images)))


def test_cpu_models_take_no_graph_path():
    model = small_model()
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8)), model(torch.randn(1, 3, 8, 8))
    assert not model._graphs


# ------------------------------------------------------------------ real graphs
@NEEDS_GPU
@pytest.mark.parametrize("backend", ["auto", "triton", "cuda", "eager"])
def test_captured_forward_equals_uncaptured(backend):
    from convmixer_fast.backends import BACKENDS

    if backend != "auto" and BACKENDS[backend].unavailable_reason(DEVICE) is not None:
        pytest.skip(BACKENDS[backend].unavailable_reason(DEVICE))
    reference = reference_model(64, 3, 5, 4, 10).to(DEVICE)
    model = cf.ConvMixer.from_eager(reference, backend=backend).to(torch.bfloat16)
    plain = cf.ConvMixer.from_eager(reference, backend=backend, cuda_graphs=False).to(torch.bfloat16)
    images = [torch.randn(3, 3, 40, 36, device=DEVICE) for _ in range(4)]
    with torch.inference_mode():
        outputs = [model(x) for x in images]  # warm-up, capture + replay, replay, replay
        kept = [output.clone() for output in outputs]
        expected = [plain(x) for x in images]
    assert isinstance(next(iter(model._graphs.values())), model_module._CapturedForward)
    # Same kernels on the same inputs: bitwise equal (eager: cuDNN may pick another algorithm).
    tolerance = dict(rtol=2e-2, atol=2e-2) if backend == "eager" else dict(rtol=0, atol=0)
    for output, copy, reference_logits in zip(outputs, kept, expected):
        assert torch.equal(output, copy)  # not overwritten by later replays
        torch.testing.assert_close(output, reference_logits, **tolerance)


@NEEDS_GPU
def test_the_model_inside_a_callers_graph_is_recorded_not_captured_again():
    model = cf.ConvMixer.from_eager(reference_model(32, 2, 3, 4, 5).to(DEVICE)).to(torch.float16)
    x = torch.randn(2, 3, 32, 32, device=DEVICE, dtype=torch.float16)
    with torch.inference_mode():
        expected = model(x)  # warm-up outside the capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = model(x)
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(output, expected)


@NEEDS_GPU
def test_a_callers_graph_stays_valid_while_the_model_goes_on_running():
    model = cf.ConvMixer.from_eager(reference_model(32, 2, 3, 4, 5).to(DEVICE)).to(torch.float16)
    x = torch.randn(2, 3, 32, 32, device=DEVICE, dtype=torch.float16)
    with torch.inference_mode():
        model(x)  # warm-up outside the capture
        graph, static_input = torch.cuda.CUDAGraph(), x.clone()
        with torch.cuda.graph(graph):
            static_output = model(static_input)
        for _ in range(3):  # the model's own capture for this shape, then replays
            model(torch.randn_like(x))
        model(torch.randn(5, 3, 32, 32, device=DEVICE, dtype=torch.float16))
        fresh = torch.randn_like(x)
        static_input.copy_(fresh)
        graph.replay()
        expected = model(fresh)
        torch.cuda.synchronize()
    assert torch.equal(static_output, expected)


@NEEDS_GPU
def test_graphs_follow_modes_and_parameter_changes():
    model = cf.ConvMixer.from_eager(reference_model(32, 2, 3, 4, 5).to(DEVICE)).to(torch.float16)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        model(x)
    with torch.inference_mode():  # captured in inference mode ...
        model(x)
    with torch.no_grad():  # ... replayed outside it
        before = model(x)
        model.head.bias.add_(1.0)
        after = model(x)
    torch.testing.assert_close(after.float(), before.float() + 1.0, rtol=0, atol=2e-2)


@NEEDS_GPU
def test_an_fp32_model_under_autocast_replays_its_bf16_graph():
    """Autocast is part of the signature: an fp32 model's bf16 graph (its bf16 kernels and weights)
    under autocast, its fp32 graph without, each equal to its uncaptured forward."""
    reference = reference_model(32, 2, 3, 4, 5).to(DEVICE)
    model = cf.ConvMixer.from_eager(reference, backend="triton")  # (one backend: the same kernels in both)
    plain = cf.ConvMixer.from_eager(reference, backend="triton", cuda_graphs=False)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        for autocast in (True, False, True, False):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                outputs = [model(x) for _ in range(3)]
                expected = plain(x)
            dtype = torch.bfloat16 if autocast else torch.float32
            assert all(out.dtype == expected.dtype == dtype for out in outputs)
            for out in outputs:
                torch.testing.assert_close(out, expected, rtol=0, atol=0)


def gated_streams(model, first, second, streams):
    """``model(first)`` on ``streams[0]`` and ``model(second)`` on ``streams[1]``, the second stream
    held back until the first has finished a ~25 ms spin: both calls' kernels then run at the same
    time unless the model orders them. Returns both outputs, after synchronizing."""
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream())
    gate = torch.cuda.Event()
    with torch.cuda.stream(streams[0]):
        torch.cuda._sleep(50_000_000)
        gate.record()
        out_first = model(first)
    with torch.cuda.stream(streams[1]):
        streams[1].wait_event(gate)
        out_second = model(second)
    torch.cuda.synchronize()
    return out_first, out_second


@NEEDS_GPU
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_calls_on_two_streams(cuda_graphs):
    """Graphs: a replay on another stream than the previous one waits for it (shared static input
    and logits). Without graphs: each stream has its own activation buffers."""
    reference = reference_model(64, 3, 5, 4, 10).to(DEVICE)
    model = cf.ConvMixer.from_eager(reference, cuda_graphs=cuda_graphs).to(torch.float16)
    plain = cf.ConvMixer.from_eager(reference, cuda_graphs=False).to(torch.float16)
    first, second = (torch.randn(64, 3, 64, 64, device=DEVICE, dtype=torch.float16) for _ in range(2))
    with torch.inference_mode():
        expected = plain(first), plain(second)
        model(first), model(first)  # warm-up, capture (with graphs)
        streams = torch.cuda.Stream(), torch.cuda.Stream()
        for _ in range(3):
            outputs = gated_streams(model, first, second, streams)
            for output, reference_logits in zip(outputs, expected):
                torch.testing.assert_close(output, reference_logits, rtol=0, atol=0)
    if not cuda_graphs:  # the default stream's, and one per new stream
        assert len(model._activation_buffers) == 1 + len(streams)


def test_an_fp32_graph_under_one_16_bit_autocast_is_not_replayed_under_the_other(stand_in_capture):
    """The compute dtype is part of the signature: an fp32 model's graph captured under bf16
    autocast must not answer a call under fp16 autocast (same input, same TF32 switches: none
    count for 16-bit math), which computes and returns float16."""
    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x), model(x)  # warm-up, capture
        with torch.autocast("cpu", dtype=torch.float16):
            logits = [model(x), model(x), model(x)]
    assert [out.dtype for out in logits] == [torch.float16] * 3
    assert len(stand_in_capture) == 2


def test_a_captured_shape_releases_its_activation_buffers(stand_in_capture):
    """A preallocating backend's buffers for a shape serve its uncaptured calls; once the shape has
    a graph (which owns its own allocations) they are released, the other shapes' kept."""
    pytest.importorskip("triton")
    model = cf.ConvMixer.from_eager(reference_model(16, 2, 3, 2, 5), backend="triton")
    x, other = torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        model(other), model(x)  # warm-ups: buffers for both shapes
        assert len(model._activation_buffers) == 2
        model(x)  # captured
    assert len(stand_in_capture) == 1
    assert [key[0] for key in model._activation_buffers] == [3]


def test_a_warm_signature_is_remembered_past_more_signatures_than_graphs_kept(stand_in_capture):
    """Signatures seen once are remembered up to MAX_SEEN_SIGNATURES, not MAX_CACHED_SHAPES: a
    shape that returns after more other shapes than graphs kept is still captured at its second
    call (forgotten, each return would be a warm-up again and a rotation of shapes never captured)."""
    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model(x)  # warm-up
        for batch in range(3, 3 + 2 * model_module.MAX_CACHED_SHAPES):
            model(torch.randn(batch, 3, 8, 8))  # warm-ups of others
        model(x)  # captured
    assert len(stand_in_capture) == 1 and stand_in_capture[0].output.shape == (2, 5)
