"""The project's performance targets, judged on a saved ``bench`` result.

``python -m convmixer_fast bench --targets RESULT.json`` prints one row per target of ``TARGETS``
(issue 6: ConvMixer at 224x224 in bf16 on an H100 or H200): the figure the result holds, the bound,
and PASS or MISS; or why the row cannot be judged (its workload or a provider missing from the
result, or a provider whose logits failed ``bench``'s check: a figure counts only when its outputs
matched the reference). It measures nothing, and exits 1 unless every target passes.
"""

from __future__ import annotations

from dataclasses import dataclass

OURS = "convmixer_fast-auto"  # what a user gets by default: backend "auto", CUDA graphs on
PEERS = ("eager-fp32", "eager-amp", "eager-channels-last", "torch-compile", "torch-compile-max-autotune")
BEST_PEER = "best peer"  # the peer of PEERS with the most img/s in the workload


@dataclass(frozen=True)
class Target:
    """``OURS`` on a workload against a bound. ``kind``: "speedup" (its img/s over ``against``'s, at
    least ``bound``), "time" (its time per batch over ``against``'s, at most ``bound``) or "peak"
    (its fraction of the matmul peak measured in the same run, at least ``bound``)."""

    model: str
    batch: int
    kind: str
    against: str | None
    bound: float
    dtype: str = "bf16"
    image_size: int = 224

    def label(self) -> str:
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
    Target("convmixer_1536_20", 1, "time", "gemm-floor", 2.0),
    Target("convmixer_1536_20", 1, "speedup", "eager-amp", 5.0),
    Target("convmixer_768_32", 256, "speedup", BEST_PEER, 3.0),
    Target("convmixer_1024_20_ks9_p14", 256, "speedup", BEST_PEER, 3.0),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None  # the ratio or fraction; None where it cannot be judged
    status: str  # "PASS", "MISS", or why it cannot be judged
    against: str | None = None  # the provider compared with (the best peer resolved)

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def _find_workload(result: dict, target: Target) -> dict | None:
    for record in result["workloads"]:
        if (record["model"], record["batch"], record["dtype"], record["image_size"]) == (
                target.model, target.batch, target.dtype, target.image_size):
            return record
    return None


def _measured(record: dict, name: str) -> tuple[dict | None, str | None]:
    """(the provider's entry, None) if it ran and its logits passed, else (None, why not)."""
    entry = record["providers"].get(name)
    if entry is None:
        return None, f"{name} not in the result"
    if entry["status"] != "ok":
        return None, f"{name} {'WRONG' if entry['status'] == 'wrong' else entry['status']}"
    return entry, None


def judge(result: dict, target: Target) -> Verdict:
    record = _find_workload(result, target)
    if record is None:
        return Verdict(target, None, "workload not in the result")
    ours, why = _measured(record, OURS)
    if ours is None:
        return Verdict(target, None, why)
    if target.kind == "peak":
        value = ours.get("fraction_of_peak")
        if value is None:
            return Verdict(target, None, "no matmul peak in the result")
        return Verdict(target, value, "PASS" if value >= target.bound else "MISS")
    against = target.against
    if against == BEST_PEER:
        peers = [(entry["img_per_s"], name) for name in PEERS
                 for entry in [record["providers"].get(name)] if entry is not None and entry["status"] == "ok"]
        if not peers:
            return Verdict(target, None, "no peer measured")
        against = max(peers)[1]
    other, why = _measured(record, against)
    if other is None:
        return Verdict(target, None, why, against)
    if target.kind == "time":
        value = ours["ms_per_batch"] / other["ms_per_batch"]
        return Verdict(target, value, "PASS" if value <= target.bound else "MISS", against)
    value = ours["img_per_s"] / other["img_per_s"]
    return Verdict(target, value, "PASS" if value >= target.bound else "MISS", against)


def evaluate(result: dict, targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    return [judge(result, target) for target in targets]


def format_verdicts(verdicts: list[Verdict]) -> str:
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
        lines.append(f"{label:<66} {measured:>9} {target.required():>9}  {verdict.status}")
    passed = sum(verdict.passed for verdict in verdicts)
    lines.append(f"{passed} of {len(verdicts)} targets pass")
    return "\n".join(lines)
