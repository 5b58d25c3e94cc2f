"""The project's performance targets, judged on a saved ``bench`` result.

``python -m convmixer_fast bench --targets RESULT.json`` prints one row per target of ``TARGETS``
(issue 6: ConvMixer at 224x224 in bf16 on an H100 or H200): the figure the result holds, the bound,
and PASS or MISS; or why the row cannot be judged (its workload or a provider missing from the
result, ``OURS`` with logits that failed ``bench``'s check: our figure counts only when its outputs
matched the reference). A peer's figure counts whether its logits passed or not (``bench`` times a
WRONG provider all the same: the speed its users get); the row then names it. It measures
nothing, and exits 1 unless every target passes. A workload record that its run left
``"partial"`` (stopped before its last provider) gives its figures, but none of its rows passes:
the targets ask for every provider measured in one run. Where the file holds several runs
(``bench --merge``), each row names the run that measured its workload.

The batch-1 targets compare latency: single calls, each waited for, so the host's work per call
counts (back to back, a GPU-bound provider hides it behind the previous call's kernels). A best-peer
target is judged only when every peer of ``REQUIRED_PEERS`` (and every other peer in the result)
was timed: the one that failed may be the fastest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .bench import status_label, timed

OURS = "convmixer_fast-auto"  # what a user gets by default: backend "auto", CUDA graphs on
PEERS = ("eager-fp32", "eager-amp", "eager-channels-last", "torch-compile", "torch-compile-max-autotune")
BEST_PEER = "best peer"  # the peer of PEERS with the most img/s in the workload
# The best peer is judged only when each of these was timed (an opt-in peer that ran must have been
# too): a failed or unmeasured torch-compile may well be the fastest peer.
REQUIRED_PEERS = ("eager-amp", "eager-channels-last", "torch-compile")
PARTIAL = "partial run: stopped before its last provider"  # appended to each status of such a record


@dataclass(frozen=True)
class Target:
    """``OURS`` on a workload against a bound. ``kind``: "speedup" (its img/s over ``against``'s, at
    least ``bound``), "time" (its time per batch over ``against``'s, at most ``bound``) or "peak"
    (its fraction of the matmul peak measured in the same run, at least ``bound``). ``latency``:
    "speedup" and "time" compare single synchronized calls (``latency_ms``: the host's work per call
    included) instead of calls back to back."""

    model: str
    batch: int
    kind: str
    against: str | None
    bound: float
    dtype: str = "bf16"
    image_size: int = 224
    latency: bool = False

    def label(self) -> str:
        if self.latency:
            what = {"speedup": f"{self.against}'s latency over ours", "time": f"latency over {self.against}'s"}[self.kind]
        else:
            what = {"speedup": f"img/s over {self.against}'s", "time": f"time over {self.against}'s",
                    "peak": f"fraction of the {self.dtype} matmul peak"}[self.kind]
        return f"{self.model} b{self.batch} {self.dtype}: {what}"

    def required(self) -> str:
        if self.kind == "peak":
            return f">= {self.bound:.0%}"
        return f"{'<=' if self.kind == 'time' else '>='} {self.bound:g}x"


TARGETS = (
    Target("convmixer_1536_20", 256, "speedup", "eager-amp", 4.0),
    Target("convmixer_1536_20", 256, "speedup", "torch-compile", 4.0),
    Target("convmixer_1536_20", 256, "peak", None, 0.5),
    Target("convmixer_1536_20", 256, "time", "gemm-floor", 1.35),
    Target("convmixer_1536_20", 1, "time", "gemm-floor", 2.0, latency=True),
    Target("convmixer_1536_20", 1, "speedup", "eager-amp", 5.0, latency=True),
    Target("convmixer_768_32", 256, "speedup", BEST_PEER, 3.0),
    Target("convmixer_1024_20_ks9_p14", 256, "speedup", BEST_PEER, 3.0),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None  # the ratio or fraction; None where it cannot be judged
    status: str  # "PASS", "MISS", or why it cannot be judged
    against: str | None = None  # the provider compared with (the best peer resolved)
    run: int | None = None  # the judged record's run: an index into the result's "runs"
    wrong_peers: tuple[str, ...] = ()  # compared peers timed with logits that failed bench's check

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def _find_workload(result: dict, target: Target) -> dict | None:
    for record in result["workloads"]:
        if (record["model"], record["batch"], record["dtype"], record["image_size"]) == (
                target.model, target.batch, target.dtype, target.image_size):
            return record
    return None


def _why_not_measured(record: dict, name: str, *, peer: bool = False) -> str | None:
    """None if the provider was timed and its logits passed (a ``peer``: was timed), else why not."""
    entry = record["providers"].get(name)
    if entry is None:
        return f"{name} not in the result"
    return None if entry["status"] == "ok" or (peer and timed(entry)) else f"{name} {status_label(entry)}"


def judge(result: dict, target: Target) -> Verdict:
    record = _find_workload(result, target)
    if record is None:
        return Verdict(target, None, "workload not in the result")
    verdict = replace(_judge_record(record, target), run=record.get("run"))
    if record.get("partial"):  # a run cut short: its figures stand, but not as the complete run's
        return replace(verdict, status=f"{verdict.status}; {PARTIAL}")
    return verdict


def _judge_record(record: dict, target: Target) -> Verdict:
    why = _why_not_measured(record, OURS)
    if why is not None:
        return Verdict(target, None, why)
    ours = record["providers"][OURS]
    if target.kind == "peak":
        value = ours.get("fraction_of_peak")
        if value is None:
            return Verdict(target, None, "no matmul peak in the result")
        return Verdict(target, value, "PASS" if value >= target.bound else "MISS")
    against = target.against
    if against == BEST_PEER:  # the fastest peer that ran: the one ours is the least ahead of
        unjudged = [why for name in PEERS
                    if (name in REQUIRED_PEERS or name in record["providers"])
                    and (why := _why_not_measured(record, name, peer=True)) is not None]
        if unjudged:
            return Verdict(target, None, "best peer unknown: " + "; ".join(unjudged))
        peers = [name for name in PEERS if name in ours["ratios"]]  # (each timed: checked above)
        against = min(peers, key=ours["ratios"].get)
    else:
        why = _why_not_measured(record, against, peer=True)
        if why is not None:
            return Verdict(target, None, why, against)
        peers = [against]
    wrong = tuple(name for name in peers if record["providers"][name]["status"] == "wrong")
    return replace(_compare(record, target, ours, against), wrong_peers=wrong)


def _compare(record: dict, target: Target, ours: dict, against: str) -> Verdict:
    """``target`` judged on ``ours`` against the timed provider ``against``."""
    if target.latency:
        mine, theirs = ours.get("latency_ms"), record["providers"][against].get("latency_ms")
        if mine is None or theirs is None:
            return Verdict(target, None, "no latency in the result", against)
        speedup = theirs / mine
    else:
        speedup = ours["ratios"][against]  # img/s over its; at one batch size, its time over ours
    if target.kind == "time":
        return Verdict(target, 1 / speedup, "PASS" if 1 / speedup <= target.bound else "MISS", against)
    return Verdict(target, speedup, "PASS" if speedup >= target.bound else "MISS", against)


def evaluate(result: dict, targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    return [judge(result, target) for target in targets]


def format_verdicts(verdicts: list[Verdict], runs: list[dict] | None = None) -> str:
    """The table of ``verdicts``; where their records come from more than one of ``runs`` (the
    result's, a file that ``bench --merge`` added to), each row names its run's date and commit."""
    judged_runs = {verdict.run for verdict in verdicts if verdict.run is not None}
    name_runs = runs is not None and len(judged_runs) > 1
    lines = [f"{'target':<66} {'measured':>9} {'required':>9}  verdict"]
    for verdict in verdicts:
        target = verdict.target
        label = target.label()
        if target.against == BEST_PEER and verdict.against:
            label = label.replace(BEST_PEER, f"{BEST_PEER} ({verdict.against})")
        if verdict.value is None:
            measured = "-"
        else:
            measured = f"{verdict.value:.1%}" if target.kind == "peak" else f"{verdict.value:.2f}x"
        row = f"{label:<66} {measured:>9} {target.required():>9}  {verdict.status}"
        if verdict.wrong_peers:
            row += f" ({', '.join(verdict.wrong_peers)} WRONG: timed, speed counted)"
        if name_runs and verdict.run is not None:
            run = runs[verdict.run]
            row += f"  [run of {run['date']}, commit {(run['commit'] or 'unknown')[:10]}]"
        lines.append(row)
    passed = sum(verdict.passed for verdict in verdicts)
    lines.append(f"{passed} of {len(verdicts)} targets pass")
    return "\n".join(lines)
