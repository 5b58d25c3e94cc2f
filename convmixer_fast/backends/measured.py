"""``backend="auto"`` where several backends run an op: the one measured fastest, per shape.

For an op with more than one candidate (the backends of ``AUTO_ORDER`` that are available on the
device and run the op for the model's dtype and width) the model gets a ``MeasuredOp``. On its first
call with a new *signature* (the op; its input tensors' shapes, dtypes and strides; its other
positional arguments; in fp32, the TF32 switches) it runs each candidate once on those very
arguments (compilation, autotuning), times more calls of each (``time_op``: on a GPU the kernels'
time, as a CUDA graph replays them, not the host's launch overhead), and from then on runs the
fastest: the first candidate, in ``AUTO_ORDER``'s order, within ``TIE_MARGIN`` of the best time, so
near-ties do not flip between runs. A candidate that raises on those arguments (one backend's
argument checks, say) is left out of that choice, its error kept beside the times; if every
candidate raises (none disagreeing with the reference, below), the first error does. The outputs
of the measured calls land in the op's ``out`` and are overwritten by the chosen backend's call.

Before it is timed, each candidate's output is held to the reference op's (``reference``: the eager
backend's, on the first and last image of the batch, within ``verify``'s per-kernel tolerance of
the dtype): a candidate that disagrees is left out with a warning that names the error, so a kernel
that computes wrongly on this GPU and shape is never chosen. If none agrees (one disagreeing at
least, the others disagreeing or raising), the reference op runs (slow, right, warned about), and
that choice is stored as any other: a later process runs the reference at once, warned again. In
fp32 the tolerance is TF32's where either TF32 switch is on (the kernels follow the matmul one,
the reference's cuDNN convolutions the conv one, on by default).
Where the reference's own output is not finite (NaN / Inf inputs) or it cannot run, the
candidates are not judged.

Choices live per process and in a JSON file per GPU model and identity under
``CONVMIXER_FAST_CACHE_DIR``'s ``auto/`` (``_settings``): a later process on the same kind of GPU,
with the same versions of convmixer_fast, torch and triton, the same kernels
(``kernels_fingerprint``: a rebuilt or edited kernel counts as new) and the same Triton autotuning
switch, reuses them without measuring; any change starts a file of its own (two environments on one
machine do not overwrite each other's). Processes sharing a file merge their choices under a file
lock.
``CONVMIXER_FAST_AUTO_MEASURE=0`` turns measuring off (the first candidate runs). An unmeasured
signature during CUDA graph capture takes the first candidate (timing would synchronize the
device); torch.compile never sees these ops (the model resolves without measuring while tracing).
Measurements run one at a time per process (threads wait, then find the choice made), but other
work on the GPU while one runs, another process's say, is timed with it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from .. import _settings, _tf32

TIMED_CALLS = 5  # back to back, per timed repeat
TIMED_REPEATS = 3  # the median of their means counts
# A spin kernel queued before each timed repeat (torch.cuda._sleep; ~2.5 ms at 2 GHz): the GPU is
# busy while the host queues the repeat's calls behind it, so the events time the kernels alone, as
# a CUDA graph replays them, and not the launch overhead of each call (tens of µs in Python against
# a few µs of kernel at batch 1, which would favour the op with the cheaper launch path).
SPIN_CYCLES = 5_000_000
TIE_MARGIN = 0.03  # a candidate within 3% of the fastest counts as fast as it
STORE_SCHEMA = 1
REFERENCE = "eager"  # the backend whose op judges the candidates, and runs where none agrees with it
# One measurement at a time in the process: models measuring from several threads would time each
# other's kernels (on a shared stream) and measure the same signature twice.
_MEASURING = threading.Lock()

Timer = Callable[[Callable[[], object], torch.device], float]  # (call, device) -> seconds per call


def time_op(call: Callable[[], object], device: torch.device) -> float:
    """Seconds per call of ``call``: the median of ``repeat_times``."""
    return statistics.median(repeat_times(call, device))


def repeat_times(call: Callable[[], object], device: torch.device, repeats: int = TIMED_REPEATS) -> list[float]:
    """Seconds per call of ``call`` in each of ``repeats`` repeats, after one untimed call. On a GPU:
    ``TIMED_CALLS`` calls back to back between two CUDA events on ``device``'s current stream, each
    repeat queued behind a spin kernel (``SPIN_CYCLES``), the mean of the calls. Elsewhere: one call
    timed by ``time.perf_counter`` per repeat, ``TIMED_CALLS`` repeats at least."""
    call()
    if device.type == "cuda":
        with torch.cuda.device(device):  # the events and the spin on the device the op runs on
            events = []
            for _ in range(repeats):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda._sleep(SPIN_CYCLES)
                begin.record()
                for _ in range(TIMED_CALLS):
                    call()
                end.record()
                events.append((begin, end))
            torch.cuda.synchronize(device)
        return [begin.elapsed_time(end) / 1e3 / TIMED_CALLS for begin, end in events]
    times = []
    for _ in range(max(repeats, TIMED_CALLS)):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return times


def fp32_switches(args: tuple) -> tuple[bool, ...]:
    """The TF32 switches (``_tf32.switches_for``: matmul, cuDNN conv) where the op computes in fp32
    (its weight, positional argument 1 of every op, is fp32), else (): they change how fast fp32 kernels
    run (the Triton GEMMs' dot precision follows the matmul switch), so a choice made under one
    setting does not carry over. (A 16-bit op's epilogue vectors are fp32 too: they do not count.)"""
    weight = args[1] if len(args) > 1 else None
    return _tf32.switches_for(weight.dtype) if isinstance(weight, torch.Tensor) else ()


def signature(op: str, args: tuple) -> str:
    """The op and what of its positional arguments decides the kernels' speed, as a stable string
    (the key on disk): tensors by shape, dtype and strides, other values by ``repr``, and for an op
    computing in fp32 the TF32 switches (``fp32_switches``). Keyword arguments (``out``, the head's
    ``pooled`` workspace) follow from the inputs and are left out."""

    def describe(value) -> str:
        if isinstance(value, torch.Tensor):
            shape = "x".join(map(str, value.shape))
            strides = ",".join(map(str, value.stride()))
            return f"{shape}:{str(value.dtype).removeprefix('torch.')}:{strides}"
        return repr(value)

    described = f"{op}({';'.join(describe(a) for a in args)})"
    switches = fp32_switches(args)
    if switches:
        described += " tf32(matmul={:d},conv={:d})".format(*switches)
    return described


@functools.lru_cache(maxsize=None)
def kernels_fingerprint() -> str:
    """A hash of what the kernels are built from: the sources of the Triton ops and the compiled
    ``_C`` (where it loads). A rebuilt or edited kernel changes it, so its stored choices are
    measured anew rather than trusted (the package version alone does not change in a checkout)."""
    from .._extension import extension_status

    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parent.parent / "ops").glob("*.py")):
        digest.update(path.read_bytes())
    if extension_status().loaded:
        from .. import _C

        digest.update(Path(_C.__file__).read_bytes())
    return digest.hexdigest()[:16]


def device_identity(device: torch.device) -> dict:
    """What must match for stored choices to apply: the device model, the software versions and
    the kernels' own build (``kernels_fingerprint``)."""
    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} sm_{props.major}{props.minor}"
    else:
        name = device.type
    return {"device": name, "convmixer_fast": __version__, "kernels": kernels_fingerprint(), "torch": torch.__version__,
            "triton": triton_version, "triton_autotune": _settings.triton_autotunes()}


class ChoiceStore:
    """signature -> the chosen backend and every candidate's seconds, for one device identity;
    loaded from and saved to ``path`` (JSON). A missing, unreadable or other-identity file gives an
    empty store; saving re-reads the file and merges under a lock on ``path + ".lock"``, so
    processes sharing it keep each other's choices."""

    def __init__(self, path: str, identity: dict):
        self.path, self.identity = path, identity
        self.choices: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            with open(self.path) as file:
                document = json.load(file)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError, RecursionError) as error:  # (bad JSON or UTF-8; nested too deep)
            warnings.warn(f"convmixer_fast: ignoring the unreadable auto-backend cache {self.path}: {error}")
            return {}
        if (not isinstance(document, dict) or document.get("schema") != STORE_SCHEMA
                or document.get("identity") != self.identity or not isinstance(document.get("choices"), dict)):
            return {}
        return document["choices"]

    def get(self, key: str) -> str | None:
        entry = self.choices.get(key)
        backend = entry.get("backend") if isinstance(entry, dict) else None
        return backend if isinstance(backend, str) else None  # (an edited file's list, say: measured anew)

    def put(self, key: str, backend: str, seconds: dict[str, float], failures: dict[str, str] | None = None) -> None:
        self.choices[key] = {"backend": backend, "seconds": seconds, **({"failed": failures} if failures else {})}
        # Written next to the file, then renamed over it (readers see the old or the new file); the
        # temporary name is per process and thread where no lock exists. os.open's mode 0o666 goes
        # through the umask as any new file's does (mkstemp's 0o600 would shut out a shared cache).
        temporary = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with _file_lock(self.path + ".lock"):
                document = {"schema": STORE_SCHEMA, "identity": self.identity,
                            "choices": {**self._read(), **self.choices}}
                handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                try:
                    with os.fdopen(handle, "w") as file:
                        json.dump(document, file, indent=1, sort_keys=True)
                    os.replace(temporary, self.path)
                finally:
                    with contextlib.suppress(OSError):  # (a full disk: no stray temporary file per put)
                        os.unlink(temporary)
        except OSError as error:  # a read-only home must not break inference
            warnings.warn(f"convmixer_fast: could not save the auto-backend cache {self.path}: {error}")


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive advisory lock (``flock``) on ``path``, created if missing; none where the
    platform has no ``fcntl`` (Windows: the last writer's merge wins)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    # Read-only: flock needs no write access, so another user of a shared cache whose umask left
    # the lock file 0644 can still take the lock (and the folder's write bit is what saving needs).
    handle = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # (released when the descriptor closes)
        yield
    finally:
        os.close(handle)


_STORES: dict[str, ChoiceStore] = {}


def store_for(device: torch.device) -> ChoiceStore:
    """The process-wide store of ``device``'s kind and identity (a file per device model and
    identity hash under the cache dir)."""
    identity = device_identity(device)
    slug = re.sub(r"[^a-z0-9]+", "-", identity["device"].lower()).strip("-")
    identity_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(_settings.cache_dir("auto"), f"{slug}-{identity_hash}.json")
    store = _STORES.get(path)
    if store is None:
        store = _STORES[path] = ChoiceStore(path, identity)
    return store


class WrongResultError(RuntimeError):
    """A candidate's output on the measured arguments is not within tolerance of the reference's."""


def edge_images(tensor: torch.Tensor) -> torch.Tensor:
    """The first and the last entry along dim 0 (the batch; one entry if there is one)."""
    index = torch.tensor(sorted({0, tensor.shape[0] - 1}), device=tensor.device)
    return tensor.index_select(0, index)


class MeasuredOp:
    """An op of ``BackendOps`` that runs, per signature, the fastest of ``candidates`` (backend
    name -> entry, in ``AUTO_ORDER`` order) whose output agrees with ``reference`` (the eager op; None:
    no judging); ``chosen`` holds what it picked for each argument signature."""

    def __init__(self, op: str, candidates: dict[str, Callable], device: torch.device,
                 store: ChoiceStore | None = None, timer: Timer | None = None,
                 reference: Callable | None = None):
        if len(candidates) < 2:
            raise ValueError(f"{op}: measuring needs at least two candidates, got {list(candidates)}")
        self.op, self.candidates, self.device, self.reference = op, candidates, device, reference
        self._entries = dict(candidates)  # what a choice runs: a candidate, or the reference where none agreed
        if reference is not None:
            self._entries.setdefault(REFERENCE, reference)
        self.timer = timer or time_op
        self.store = store if store is not None else store_for(device)
        self.chosen: dict[tuple, str] = {}  # argument key (shapes, strides, dtypes, values) -> backend

    def __call__(self, *args, **kwargs):
        # In memory the key is a tuple (cheaper than the string signature: this runs on every call).
        key = tuple((a.shape, a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)
        key += fp32_switches(args)
        backend = self.chosen.get(key)
        if backend is None:
            backend = self._choose(args, kwargs)
            if backend is None:  # capturing a CUDA graph: no timing now, the first candidate
                return self.candidates[next(iter(self.candidates))](*args, **kwargs)
            self.chosen[key] = backend
        return self._entries[backend](*args, **kwargs)

    def _reference_output(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The reference op's output on the first and last image of ``args``; None where it cannot
        judge (no reference, an empty batch, a non-finite output, or it raised)."""
        if self.reference is None or args[0].shape[0] == 0:
            return None
        edge_args = (edge_images(args[0]), *args[1:])
        own_buffers = {k: v for k, v in kwargs.items() if k not in ("out", "pooled")}  # it allocates its own
        try:
            expected = self.reference(*edge_args, **own_buffers)
        except Exception as error:  # (e.g. out of memory): measure without judging, as before
            warnings.warn(f"auto: the reference {self.op} could not run to check the candidates "
                          f"({type(error).__name__}: {error}); measuring them unchecked", stacklevel=5)
            return None
        return expected if bool(torch.isfinite(expected).all()) else None

    def _check(self, result: torch.Tensor, expected: torch.Tensor) -> None:
        """Raises WrongResultError unless ``result``'s first and last image are within ``verify``'s
        kernel tolerance of ``expected`` (max |difference| / max |expected|)."""
        from ..verify import errors, tolerances  # (verify imports this package)

        tolerance = tolerances(result.dtype, result.device)[0]
        max_abs, max_rel = errors(edge_images(result), expected)
        if not max_rel <= tolerance:  # (NaN fails)
            raise WrongResultError(f"max |out - reference| = {max_abs:.3g}, {max_rel:.3g} of max |reference| "
                                   f"(tolerance {tolerance:.1g} for {result.dtype})")

    def _choose(self, args: tuple, kwargs: dict) -> str | None:
        """The stored choice for the arguments' signature, else the fastest measured on them (and
        stored); None where measuring is impossible now."""
        name = signature(self.op, args)
        with _MEASURING:  # (a thread that waited finds the choice the other stored)
            backend = self.store.get(name)
            if backend in self._entries:  # (a choice of a backend that is no candidate here is measured anew)
                if backend not in self.candidates:
                    warnings.warn(f"auto: no candidate's {self.op} agreed with the reference on {name} when it was "
                                  f"measured (stored in {self.store.path}, with why); the reference ({REFERENCE}) "
                                  "runs it", stacklevel=3)
                return backend
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return None
            return self._measure(name, args, kwargs)

    def _measure(self, name: str, args: tuple, kwargs: dict) -> str:
        """Each candidate judged against the reference and timed on ``args``; the choice stored."""
        expected = self._reference_output(args, kwargs)
        seconds: dict[str, float] = {}
        failures: dict[str, Exception] = {}
        for candidate, entry in self.candidates.items():
            try:
                if expected is not None:
                    self._check(entry(*args, **kwargs), expected)
                seconds[candidate] = self.timer(lambda entry=entry: entry(*args, **kwargs), self.device)
            except WrongResultError as error:
                warnings.warn(f"auto: the {candidate} backend's {self.op} disagrees with the reference on "
                              f"{name}: {error}; it is not used for these arguments (a bug: please report "
                              f"it with this message)", stacklevel=4)
                failures[candidate] = error
            except Exception as error:  # e.g. an argument check of one backend: the others may run
                failures[candidate] = error
        described = {c: f"{type(e).__name__}: {e}"[:300] for c, e in failures.items()}
        if not seconds:
            # The reference ran on these arguments: a refusal elsewhere is no reason to fail the call.
            if any(isinstance(error, WrongResultError) for error in failures.values()):
                warnings.warn(f"auto: no candidate's {self.op} agrees with the reference on {name}; the "
                              f"reference ({REFERENCE}) runs it", stacklevel=4)
                self.store.put(name, REFERENCE, {}, described)
                return REFERENCE
            raise next(iter(failures.values()))
        best = min(seconds.values())
        backend = next(candidate for candidate, s in seconds.items() if s <= best * (1 + TIE_MARGIN))
        self.store.put(name, backend, seconds, described)
        return backend

    @property
    def label(self) -> str:
        """What it ran: "cuda (measured)", "triton/cuda (measured per shape)", or, before any
        call, "fastest of triton/cuda/eager"."""
        picked = [name for name in self._entries if name in self.chosen.values()]
        if not picked:
            return f"fastest of {'/'.join(self.candidates)}"
        return f"{'/'.join(picked)} (measured{' per shape' if len(picked) > 1 else ''})"
