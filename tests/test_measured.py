"""``backend="auto"`` measuring its candidates per op and shape, and remembering them on disk
(``convmixer_fast.backends.measured``). On CPU a twin of the eager backend gives "auto" a choice."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import stat
import threading
import time
import warnings

import pytest
import torch

import convmixer_fast as cf
from convmixer_fast import backends
from convmixer_fast.backends import BACKENDS, OP_NAMES, Backend, measured, resolve_ops
from convmixer_fast.backends.eager import OPS as EAGER_OPS
from helpers import reference_model, run_in_threads

CPU = torch.device("cpu")
IDENTITY = {"device": "test", "convmixer_fast": "0", "torch": "0", "triton": None}


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    """Every test measures into its own cache folder, with no choices carried in the process."""
    monkeypatch.setenv("CONVMIXER_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVMIXER_FAST_AUTO_MEASURE", raising=False)
    monkeypatch.setattr(measured, "_STORES", {})


class Recorder:
    """Candidate entries that log which backend ran; a timer that says ``fastest`` is fastest."""

    def __init__(self, fastest: str, seconds: dict[str, float] | None = None):
        self.ran: list[str] = []
        self.timed = 0
        self.fastest, self.seconds = fastest, seconds

    def entry(self, name: str):
        def op(*args, **kwargs):
            self.ran.append(name)
            return name

        return op

    def timer(self, call, device):
        self.timed += 1
        before = len(self.ran)
        call()
        name = self.ran[before]
        if self.seconds is not None:
            return self.seconds[name]
        return 1.0 if name == self.fastest else 2.0


def measured_op(recorder: Recorder, store, names=("triton", "cuda", "eager")) -> measured.MeasuredOp:
    return measured.MeasuredOp("pointwise", {n: recorder.entry(n) for n in names}, CPU, store=store,
                               timer=recorder.timer)


def test_threads_measure_one_at_a_time_and_a_signature_once(tmp_path):
    """Two models' ops measuring from two threads would time each other's kernels: the second waits,
    then takes the choice the first stored."""
    store = measured.ChoiceStore(str(tmp_path / "choices.json"), IDENTITY)
    recorder, timing, overlaps = Recorder(fastest="cuda"), threading.Event(), []

    def slow_timer(call, device):
        overlaps.append(timing.is_set())
        timing.set()
        time.sleep(0.05)  # long enough for the other thread to arrive
        timing.clear()
        return recorder.timer(call, device)

    ops = [measured.MeasuredOp("pointwise", {n: recorder.entry(n) for n in ("triton", "cuda")}, CPU, store=store,
                               timer=slow_timer) for _ in range(2)]
    results = []
    run_in_threads(lambda index: results.append(ops[index](torch.zeros(4, 8), "gelu")), len(ops))
    assert results == ["cuda", "cuda"]
    assert recorder.timed == 2 and overlaps == [False, False]  # each candidate once, never two at a time


def test_signature_names_shapes_dtypes_strides_of_positional_arguments():
    x = torch.empty(2, 3, 4, 5)
    key = measured.signature("stem", (x, "gelu"))
    assert key == "stem(2x3x4x5:float32:60,20,5,1;'gelu')"
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert measured.signature("stem", (channels_last, "gelu")) != key
    assert measured.signature("stem", (x.half(), "gelu")) != key
    assert measured.signature("stem", (x, "relu")) != key


def test_fp32_choices_are_measured_per_tf32_setting(tmp_path, restored_tf32):
    """The TF32 switches change how fast fp32 kernels run (the Triton GEMM's dot precision): the
    signature of an op computing in fp32 (its weight) names them and is measured anew under other
    switches; a 16-bit op's, whose epilogue vectors are fp32 all the same, does not."""
    from convmixer_fast import _tf32

    store = measured.ChoiceStore(str(tmp_path / "choices.json"), IDENTITY)
    recorder = Recorder(fastest="cuda")
    op = measured_op(recorder, store)
    x, weight, bias = torch.zeros(4, 8), torch.zeros(6, 8), torch.zeros(6)  # the vectors: fp32 always
    fp32_args, bf16_args = (x, weight, bias, "gelu"), (x.bfloat16(), weight.bfloat16(), bias, "gelu")
    _tf32._set(True, True)
    assert measured.signature("pointwise", fp32_args).endswith(" tf32(matmul=1,conv=1)")
    assert measured.signature("pointwise", bf16_args) == (
        "pointwise(4x8:bfloat16:8,1;6x8:bfloat16:8,1;6:float32:1;'gelu')")
    op(*fp32_args), op(*bf16_args)
    assert recorder.timed == 6
    _tf32._set(False, True)
    assert measured.signature("pointwise", fp32_args).endswith(" tf32(matmul=0,conv=1)")
    op(*fp32_args), op(*bf16_args)
    assert recorder.timed == 9  # the fp32 signature anew, the bf16 one remembered
    _tf32._set(True, True)
    op(*fp32_args)
    assert recorder.timed == 9
    assert len(json.loads((tmp_path / "choices.json").read_text())["choices"]) == 3


def test_picks_the_fastest_once_per_signature_and_stores_it(tmp_path):
    store = measured.ChoiceStore(str(tmp_path / "choices.json"), IDENTITY)
    recorder = Recorder(fastest="cuda")
    op = measured_op(recorder, store)
    x = torch.zeros(4, 8)
    assert op(x, "gelu", out=None) == "cuda"
    assert recorder.timed == 3  # each candidate once
    assert op(x, "gelu") == "cuda" and recorder.timed == 3  # remembered
    assert op(torch.zeros(5, 8), "gelu") == "cuda" and recorder.timed == 6  # a new shape is measured
    assert op.label == "cuda (measured)"
    saved = json.loads((tmp_path / "choices.json").read_text())
    assert saved["identity"] == IDENTITY
    entry = saved["choices"][measured.signature("pointwise", (x, "gelu"))]
    assert entry == {"backend": "cuda", "seconds": {"triton": 2.0, "cuda": 1.0, "eager": 2.0}}


def test_a_near_tie_goes_to_the_earlier_candidate(tmp_path):
    store = measured.ChoiceStore(str(tmp_path / "choices.json"), IDENTITY)
    seconds = {"triton": 1.02, "cuda": 1.0, "eager": 5.0}  # triton within TIE_MARGIN of the best
    op = measured_op(Recorder("cuda", seconds), store)
    assert op(torch.zeros(2)) == "triton"
    seconds = {"triton": 1.2, "cuda": 1.0, "eager": 5.0}
    op = measured_op(Recorder("cuda", seconds), store)
    assert op(torch.zeros(3)) == "cuda"


def test_another_process_reuses_the_file_without_measuring(tmp_path):
    path = str(tmp_path / "choices.json")
    measured_op(Recorder("eager"), measured.ChoiceStore(path, IDENTITY))(torch.zeros(3))
    recorder = Recorder("triton")  # would pick triton if it measured
    op = measured_op(recorder, measured.ChoiceStore(path, IDENTITY))
    assert op(torch.zeros(3)) == "eager" and recorder.timed == 0


def test_other_versions_measure_anew(tmp_path):
    """(A stored choice of no candidate here: test_a_stored_choice_of_no_candidate_here_is_measured_anew_and_replaced.)"""
    path = str(tmp_path / "choices.json")
    measured_op(Recorder("eager"), measured.ChoiceStore(path, IDENTITY))(torch.zeros(3))
    recorder = Recorder("triton")
    other = measured.ChoiceStore(path, {**IDENTITY, "torch": "1"})
    assert other.choices == {}
    assert measured_op(recorder, other)(torch.zeros(3)) == "triton" and recorder.timed == 3


def test_an_unreadable_file_warns_and_is_replaced(tmp_path):
    path = tmp_path / "choices.json"
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable auto-backend cache"):
        store = measured.ChoiceStore(str(path), IDENTITY)
    assert store.choices == {}
    with pytest.warns(UserWarning, match="unreadable"):  # put() merges with the file: warns again
        measured_op(Recorder("cuda"), store)(torch.zeros(2))
    assert json.loads(path.read_text())["schema"] == measured.STORE_SCHEMA


def test_an_unwritable_cache_warns_and_inference_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = measured.ChoiceStore(str(blocker / "sub" / "choices.json"), IDENTITY)  # parent is a file
    with pytest.warns(UserWarning, match="could not save"):
        assert measured_op(Recorder("cuda"), store)(torch.zeros(2)) == "cuda"


def test_a_failed_save_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "choices.json"
    path.mkdir()  # os.replace cannot put the file there
    with pytest.warns(UserWarning) as caught:  # (it is unreadable too)
        measured_op(Recorder("cuda"), measured.ChoiceStore(str(path), IDENTITY))(torch.zeros(2))
    assert any("could not save" in str(warning.message) for warning in caught)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["choices.json", "choices.json.lock"]


def test_the_file_is_created_as_the_umask_says(tmp_path):
    """Not mkstemp's 0600: a cache folder shared by a team stays readable by the others."""
    previous = os.umask(0o022)
    try:
        measured_op(Recorder("cuda"), measured.ChoiceStore(str(tmp_path / "choices.json"), IDENTITY))(torch.zeros(2))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "choices.json").stat().st_mode) == 0o644


@pytest.mark.parametrize("document", [
    {"schema": measured.STORE_SCHEMA, "identity": IDENTITY, "choices": {"sig": {"backend": ["cuda"]}}},
    "[" * 100_000,  # nested past the JSON parser's recursion limit
])
def test_an_odd_file_measures_anew(tmp_path, document):
    path = tmp_path / "choices.json"
    path.write_text(json.dumps(document) if isinstance(document, dict) else document)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the deep one warns that it is unreadable)
        store = measured.ChoiceStore(str(path), IDENTITY)
    assert store.get("sig") is None


def _put_many(path: str, worker: int, count: int) -> None:
    store = measured.ChoiceStore(path, IDENTITY)
    for index in range(count):
        store.put(f"{worker}-{index}", "cuda", {"cuda": 1.0})


def test_processes_sharing_the_file_keep_each_others_choices(tmp_path):
    """Each save re-reads and merges the file under a lock: without it, a process writing between
    another's read and write dropped that one's choices (~3% of them with three processes)."""
    path = str(tmp_path / "choices.json")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_put_many, args=(path, worker, 100)) for worker in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert len(json.loads((tmp_path / "choices.json").read_text())["choices"]) == 300


def test_each_identity_keeps_a_file_of_its_own(monkeypatch):
    """Two environments on one machine (another torch, say, or Triton autotuning off) keep their
    choices side by side instead of wiping each other's file at every save."""
    monkeypatch.setenv("CONVMIXER_FAST_TRITON_AUTOTUNE", "1")
    first = measured.store_for(CPU)
    measured_op(Recorder("cuda"), first)(torch.zeros(2))
    monkeypatch.setenv("CONVMIXER_FAST_TRITON_AUTOTUNE", "0")
    second = measured.store_for(CPU)
    assert second.identity == {**first.identity, "triton_autotune": False}
    assert second.path != first.path and os.path.dirname(second.path) == os.path.dirname(first.path)
    measured_op(Recorder("triton"), second)(torch.zeros(3))
    assert measured.ChoiceStore(first.path, first.identity).choices.keys() != second.choices.keys()
    assert len(measured.ChoiceStore(first.path, first.identity).choices) == 1


def refuses(*args, **kwargs):
    """A candidate whose argument checks reject the call."""
    raise ValueError("cuda_pointwise: y must be 16-byte aligned")


def test_a_candidate_that_raises_is_left_out_and_all_failing_raise(tmp_path):
    store = measured.ChoiceStore(str(tmp_path / "choices.json"), IDENTITY)
    recorder = Recorder(fastest="triton")

    op = measured.MeasuredOp("pointwise", {"triton": refuses, "cuda": recorder.entry("cuda")}, CPU, store=store,
                             timer=recorder.timer)
    assert op(torch.zeros(3)) == "cuda"
    (entry,) = store.choices.values()
    assert entry["seconds"] == {"cuda": 2.0} and "16-byte aligned" in entry["failed"]["triton"]
    op = measured.MeasuredOp("pointwise", {"triton": refuses, "cuda": refuses}, CPU, store=store, timer=recorder.timer)
    with pytest.raises(ValueError, match="16-byte aligned"):
        op(torch.zeros(4))


def doubling(last_image_offset: float = 0.0):
    """An op ``x -> 2 x`` writing into ``out``; ``last_image_offset`` is added to the last image only
    (a kernel that gets later images wrong)."""

    def op(x, out=None):
        result = 2 * x
        result[-1] += last_image_offset
        return result if out is None else out.copy_(result)

    return op


def judged_op(tmp_path, candidates: dict, fastest: str, reference=None) -> measured.MeasuredOp:
    store = measured.ChoiceStore(str(tmp_path / "choices.json"), IDENTITY)

    def timer(call, device):
        call()
        return 1.0 if timer.name == fastest else 2.0

    def timed(name, entry):
        def call(*args, **kwargs):
            timer.name = name
            return entry(*args, **kwargs)

        return call

    return measured.MeasuredOp("depthwise_block", {n: timed(n, e) for n, e in candidates.items()}, CPU, store=store,
                               timer=timer, reference=reference or doubling())


def test_a_candidate_that_disagrees_with_the_reference_is_left_out_with_a_warning(tmp_path):
    op = judged_op(tmp_path, {"triton": doubling(), "cuda": doubling(last_image_offset=0.5)}, fastest="cuda")
    x = torch.ones(3, 4, 5, 8)
    with pytest.warns(UserWarning, match=r"the cuda backend's depthwise_block disagrees with the reference"):
        out = op(x, out=torch.full_like(x, float("nan")))
    assert op.chosen and set(op.chosen.values()) == {"triton"}  # the slower one, but right
    torch.testing.assert_close(out, 2 * x)
    saved = json.loads((tmp_path / "choices.json").read_text())
    (entry,) = saved["choices"].values()
    assert entry["backend"] == "triton" and entry["failed"]["cuda"].startswith("WrongResultError: max |out")


def test_when_no_candidate_agrees_the_reference_runs(tmp_path):
    wrong = doubling(last_image_offset=1.0)
    op = judged_op(tmp_path, {"triton": wrong, "cuda": wrong}, fastest="cuda")
    x = torch.ones(2, 3, 3, 8)
    with pytest.warns(UserWarning) as warned:
        out = op(x)
    messages = [str(w.message) for w in warned]
    assert [m.split(":")[1].strip() for m in messages[:2]] == [
        "the triton backend's depthwise_block disagrees with the reference on depthwise_block(2x3x3x8",
        "the cuda backend's depthwise_block disagrees with the reference on depthwise_block(2x3x3x8"]
    assert "no candidate's depthwise_block agrees" in messages[2] and len(messages) == 3
    torch.testing.assert_close(out, 2 * x)
    assert op.label == "eager (measured)"
    with measured.warnings.catch_warnings():
        measured.warnings.simplefilter("error")
        torch.testing.assert_close(op(x), 2 * x)  # remembered: no second judging


def test_a_later_process_runs_the_stored_reference_choice_warned_without_judging_again(tmp_path):
    """Where no candidate agreed, the reference's choice is kept in the file like any other: a later
    process (a fresh op on the same file) runs the reference at once, warned, judging and timing
    nothing."""
    wrong = doubling(last_image_offset=1.0)
    x = torch.ones(2, 3, 3, 8)
    with pytest.warns(UserWarning, match="no candidate's depthwise_block agrees"):
        judged_op(tmp_path, {"triton": wrong, "cuda": wrong}, fastest="cuda")(x)
    calls = []

    def counted(x, out=None):
        calls.append(1)
        return wrong(x, out)

    later = judged_op(tmp_path, {"triton": counted, "cuda": counted}, fastest="cuda")
    with pytest.warns(UserWarning) as warned:
        out = later(x)
    assert len(warned) == 1 and "no candidate's depthwise_block agreed with the reference" in str(warned[0].message)
    assert str(tmp_path / "choices.json") in str(warned[0].message)
    torch.testing.assert_close(out, 2 * x)
    assert calls == [] and later.label == "eager (measured)"


@pytest.mark.parametrize("conv_tf32", [False, True])
def test_fp32_candidates_are_held_to_tf32s_tolerance_where_the_references_convolutions_may_use_it(
        tmp_path, gpu_tolerances, conv_tf32):
    """On a GPU the reference's cuDNN convolutions follow the conv switch (on by default), the
    kernels the matmul switch: with the matmul switch off and the conv switch on, an exact fp32
    kernel differs from the reference by TF32's rounding, which must not count as a wrong kernel.
    (The device is a GPU for the tolerance only: the tensors stay on the CPU.)"""
    from convmixer_fast import _tf32

    _tf32._set(False, conv_tf32)
    off_by_tf32 = doubling(last_image_offset=1e-3)  # 1e-3 relative: within 5e-3, past fp32's 1e-4
    op = judged_op(tmp_path, {"triton": off_by_tf32, "cuda": off_by_tf32}, fastest="cuda")
    x = torch.ones(2, 3, 3, 8)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        op(x)
    assert op.label == ("cuda (measured)" if conv_tf32 else "eager (measured)")
    assert bool(warned) != conv_tf32


def test_one_candidate_refusing_and_the_other_disagreeing_runs_the_reference(tmp_path):
    """The reference ran on these arguments: a kernel's refusal (an argument check) beside a wrong
    kernel is no reason to fail the call, nor to run the wrong one."""
    op = judged_op(tmp_path, {"triton": doubling(last_image_offset=1.0), "cuda": refuses}, fastest="cuda")
    x = torch.ones(2, 3, 3, 8)
    with pytest.warns(UserWarning, match="no candidate's depthwise_block agrees"):
        out = op(x)
    torch.testing.assert_close(out, 2 * x)
    assert op.label == "eager (measured)"


def test_non_finite_reference_outputs_judge_nothing(tmp_path):
    op = judged_op(tmp_path, {"triton": doubling(), "cuda": doubling(last_image_offset=0.5)}, fastest="cuda")
    x = torch.ones(2, 3, 3, 8)
    x[0, 0, 0, 0] = float("nan")
    with measured.warnings.catch_warnings():
        measured.warnings.simplefilter("error")
        op(x)
    assert set(op.chosen.values()) == {"cuda"}  # by time alone, as without a reference


def test_a_reference_that_cannot_run_warns_and_measures_unchecked(tmp_path):
    def broken(*args, **kwargs):
        raise MemoryError("no room")

    op = judged_op(tmp_path, {"triton": doubling(), "cuda": doubling(last_image_offset=0.5)}, fastest="cuda",
                   reference=broken)
    with pytest.warns(UserWarning, match="could not run to check the candidates"):
        op(torch.ones(2, 3, 3, 8))
    assert set(op.chosen.values()) == {"cuda"}


def test_the_models_auto_ops_are_judged_by_the_eager_ops(twin_backend):
    resolved = resolve_ops("auto", CPU, torch.float32, 16, measure=True)
    for op_name in OP_NAMES:
        op = getattr(resolved.ops, op_name)
        assert op.reference is getattr(EAGER_OPS, op_name)


def test_needs_two_candidates():
    with pytest.raises(ValueError, match="at least two candidates"):
        measured.MeasuredOp("head", {"eager": EAGER_OPS.head}, CPU, store=object())


def test_time_op_calls_once_untimed_then_times():
    calls = []
    seconds = measured.time_op(lambda: calls.append(1), CPU)
    assert len(calls) == 1 + measured.TIMED_CALLS and seconds >= 0


# ------------------------------------------------------------------ through the model
@pytest.fixture
def twin_backend(monkeypatch):
    """A second CPU backend ("twin", the eager ops logging each call) that "auto" must choose between."""
    ran = []

    def logged(op):
        def entry(*args, **kwargs):
            ran.append(op)
            return getattr(EAGER_OPS, op)(*args, **kwargs)

        return entry

    twin = Backend("twin", "eager ops, logged", lambda device: None,
                   lambda: backends.BackendOps(*(logged(op) for op in OP_NAMES)), preallocates=True)
    monkeypatch.setitem(BACKENDS, "twin", twin)
    monkeypatch.setattr(backends, "AUTO_ORDER_DEFAULT", {op: ("eager", "twin") for op in OP_NAMES})
    return ran


def twin_is_faster_timer(ran):
    def timer(call, device):
        before = len(ran)
        call()
        return 1.0 if len(ran) > before else 2.0

    return timer


def test_model_auto_measures_per_op_and_gives_the_same_logits(twin_backend, monkeypatch, tmp_path):
    monkeypatch.setattr(measured, "time_op", twin_is_faster_timer(twin_backend))
    reference = reference_model(16, 2, 3, 2, 5)
    model = cf.ConvMixer.from_eager(reference)
    assert model.backend_label() == "fastest of eager/twin"
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        logits = model(x)
        expected = cf.ConvMixer.from_eager(reference, backend="eager")(x)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert model.backend_label() == "twin (measured)"
    twin_backend.clear()
    with torch.no_grad():
        model(x)
    assert twin_backend == ["stem", "depthwise_block", "pointwise", "depthwise_block", "pointwise", "head"]
    stored = list((tmp_path / "cache" / "auto").glob("*.json"))
    assert [p.name[:4] for p in stored] == ["cpu-"]  # cpu-<identity hash>.json
    assert len(json.loads(stored[0].read_text())["choices"]) == 4  # one signature per op


def test_measuring_can_be_switched_off(twin_backend, monkeypatch):
    monkeypatch.setenv("CONVMIXER_FAST_AUTO_MEASURE", "0")
    resolved = resolve_ops("auto", CPU, torch.float32, 16, measure=True)
    assert resolved.label == "eager" and resolved.candidates == (("eager",),) * 4
    monkeypatch.delenv("CONVMIXER_FAST_AUTO_MEASURE")
    resolved = resolve_ops("auto", CPU, torch.float32, 16, measure=True)
    assert resolved.candidates == (("eager", "twin"),) * 4
    assert isinstance(resolved.ops.pointwise, measured.MeasuredOp)
    assert resolve_ops("auto", CPU, torch.float32, 16).label == "eager"  # measure=False: the first


def test_gpu_timing_queues_each_repeat_behind_a_spin_and_averages_back_to_back_calls(monkeypatch):
    """``time_op``'s CUDA path with torch.cuda stood in for (the order of what it queues; the GPU
    runs it on a GPU test machine through every "auto" model)."""
    queued = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing
            self.at = None

        def record(self):
            queued.append("event")
            self.at = len(queued)

        def elapsed_time(self, end):  # ms: one per thing queued between the two events
            return float(end.at - self.at - 1)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: queued.append(f"spin {cycles}"))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: queued.append("sync"))
    seconds = measured.time_op(lambda: queued.append("call"), torch.device("cuda", 1))
    repeat = [f"spin {measured.SPIN_CYCLES}", "event", *["call"] * measured.TIMED_CALLS, "event"]
    assert queued == ["call", *repeat * measured.TIMED_REPEATS, "sync"]  # one untimed call first
    assert seconds == pytest.approx(1e-3)  # TIMED_CALLS calls between the events: 1 ms per call here


def test_stored_choices_belong_to_the_kernels_they_measured(monkeypatch, tmp_path):
    """The identity holds a hash of the Triton ops' sources and the compiled _C: an edited or rebuilt
    kernel starts afresh instead of trusting choices measured on its previous build."""
    identity = measured.device_identity(CPU)
    assert identity["kernels"] == measured.kernels_fingerprint() and len(identity["kernels"]) == 16
    path = str(tmp_path / "choices.json")
    measured_op(Recorder("eager"), measured.ChoiceStore(path, identity))(torch.zeros(3))
    assert measured.ChoiceStore(path, identity).choices
    assert not measured.ChoiceStore(path, {**identity, "kernels": "0" * 16}).choices


def test_another_layout_of_the_same_shape_is_measured_anew(tmp_path):
    """The strides are part of the in-memory key as of the stored signature: a channels-last or
    transposed input of a shape already measured may run (or refuse) otherwise, so it is measured
    on its own and stored under its own signature."""
    store = measured.ChoiceStore(str(tmp_path / "choices.json"), IDENTITY)

    def contiguous_only(*args, **kwargs):
        if not args[0].is_contiguous():
            raise ValueError("cuda_pointwise: y must be contiguous")
        return recorder.entry("cuda")(*args, **kwargs)

    recorder = Recorder(fastest="cuda")
    op = measured.MeasuredOp("pointwise", {"triton": recorder.entry("triton"), "cuda": contiguous_only}, CPU,
                             store=store, timer=recorder.timer)
    x = torch.zeros(4, 4)
    assert op(x, "gelu") == "cuda" and recorder.timed == 2
    transposed = x.t().contiguous().t()  # the same shape and dtype, other strides
    assert op(transposed, "gelu") == "triton"  # measured: the cuda candidate refuses it
    assert len(store.choices) == 2
    assert "must be contiguous" in store.choices[measured.signature("pointwise", (transposed, "gelu"))]["failed"]["cuda"]
    assert op(x, "gelu") == "cuda" and op(transposed, "gelu") == "triton"


def test_a_stored_choice_of_no_candidate_here_is_measured_anew_and_replaced(tmp_path):
    """A choice stored for a backend that is not a candidate of this op (another build, fewer
    backends available) is measured anew among the candidates, and the new choice replaces it in
    the file (the file's entry does not win the merge over the fresh measurement)."""
    path = str(tmp_path / "choices.json")
    measured_op(Recorder("eager"), measured.ChoiceStore(path, IDENTITY))(torch.zeros(3))
    recorder = Recorder("cuda")
    op = measured_op(recorder, measured.ChoiceStore(path, IDENTITY), names=("triton", "cuda"))
    assert op(torch.zeros(3)) == "cuda" and recorder.timed == 2
    (entry,) = json.loads((tmp_path / "choices.json").read_text())["choices"].values()
    assert entry["backend"] == "cuda"
    recorder = Recorder("triton")  # a later process finds the new choice
    assert measured_op(recorder, measured.ChoiceStore(path, IDENTITY), names=("triton", "cuda"))(
        torch.zeros(3)) == "cuda" and recorder.timed == 0


@pytest.mark.parametrize("entry", ["cuda", ["cuda"], 3, None])
def test_a_choice_that_is_no_object_is_ignored_and_replaced(tmp_path, entry):
    """A hand-edited or foreign file whose entry is a bare string, a list, a number or null: no
    crash, the signature is measured and its entry in the file replaced by a proper one."""
    path = tmp_path / "choices.json"
    key = measured.signature("pointwise", (torch.zeros(3),))
    path.write_text(json.dumps({"schema": measured.STORE_SCHEMA, "identity": IDENTITY, "choices": {key: entry}}))
    store = measured.ChoiceStore(str(path), IDENTITY)
    assert store.get(key) is None
    recorder = Recorder("cuda")
    assert measured_op(recorder, store)(torch.zeros(3)) == "cuda" and recorder.timed == 3
    assert json.loads(path.read_text())["choices"][key]["backend"] == "cuda"


def test_a_candidate_whose_output_is_nan_where_the_reference_is_finite_is_left_out(tmp_path):
    """NaN compares false with any tolerance: a kernel that writes NaN must be judged wrong, not
    slip through a ``>`` check."""
    def nan_on_last_image(x, out=None):
        result = 2 * x
        result[-1] = float("nan")
        return result if out is None else out.copy_(result)

    op = judged_op(tmp_path, {"triton": doubling(), "cuda": nan_on_last_image}, fastest="cuda")
    x = torch.ones(2, 3, 3, 8)
    with pytest.warns(UserWarning, match=r"the cuda backend's depthwise_block disagrees with the reference"):
        out = op(x)
    assert set(op.chosen.values()) == {"triton"}
    torch.testing.assert_close(out, 2 * x)


def test_a_per_op_mix_with_a_preallocating_backend_gets_the_models_buffers(twin_backend, monkeypatch):
    """Where any candidate of any op preallocates (the twin does, eager does not), the model hands
    the ops its reusable activation buffers, and the logits stay those of the eager model."""
    monkeypatch.setattr(measured, "time_op", twin_is_faster_timer(twin_backend))
    reference = reference_model(16, 2, 3, 2, 5)
    model = cf.ConvMixer.from_eager(reference, cuda_graphs=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = cf.ConvMixer.from_eager(reference, backend="eager")(x)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # through the buffers again
    (key,) = model._activation_buffers
    assert key[:3] == (2, 4, 4)
