"""The warmth verdict as production meets it: ``judge(WorkloadSpec(...)) -> Verdict``.

``judge`` starts a fresh Python process with an empty Triton cache dir of its own
(:mod:`pytest_ssd.verdict.child`). There it imports the kernel, runs the warmup, then the
workload (every request, without and with initial states, in every call variant the engine
uses), recording each step. Misses are explained against *that warmup's* binaries only
(:mod:`pytest_ssd.verdict.reasons`), so nothing one test, dtype or layer config compiled can make
another look warm. On a GPU the launches are real; on a CPU the process runs in compile-only mode
(:mod:`pytest_ssd.compile_only`), which compiles the same binaries and runs nothing.

A second fresh process then runs the workload alone, in compile-only mode and from the first
one's disk cache (cheap): what the workload needs from a cold start. Warm binaries outside it
are *unused*; those an autotuner compiled to benchmark its configs are *candidates*, counted
apart (the price of autotuning, not waste).

The process boundary is the point: both children are ``python -m pytest_ssd.verdict``, one
JSON spec in ``argv``, one JSON result on stdout's last line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..events import Recording
from ..manifest import layer_entry
from ..report import ColdRecord, VerdictRecord
from .layer_names import layer_short_name
from .reasons import Miss, autotune_candidates, compare, unused

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class WorkloadSpec:
    """What to judge, as JSON-able values (it crosses a process boundary).

    ``kernel``/``warmup``/``workload``: ``module:callable``. The warmup is called as
    ``warmup(layer)``; a ``workload`` (optional, the engine's own call path) as
    ``workload(layer, inputs)`` once per request and initial-states value, replacing the
    kernel calls. ``layer``: :func:`pytest_ssd.layer.make_mixer2_layer` keyword arguments, dtypes
    by name. ``requests``: sequence lengths per request. ``variants``: the kernel's call
    variants (:data:`pytest_ssd.adapters.CALL_VARIANTS`). ``device``: ``cuda`` (real launches)
    or ``cpu`` (compile-only for ``target``). ``target``: the compile-only target that predicts
    the device's binaries (``cuda:90``); None where none does (then ``unused`` is unknown).
    """

    kernel: str
    api: str
    warmup: str
    layer: dict
    requests: tuple
    variants: tuple = ("returned",)
    workload: Optional[str] = None
    device: str = "cpu"
    target: Optional[str] = "cuda:90"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cpu" and self.target is None:
            raise ValueError("target: a CPU verdict runs in compile-only mode and needs a target such as 'cuda:90'")
        for key in ("dtype", "state_dtype"):
            if self.layer.get(key, "float32") not in _DTYPES:
                raise ValueError(f"layer[{key!r}]: expected one of {_DTYPES}, got {self.layer.get(key)!r}")

    @classmethod
    def for_layer(cls, *, layer_kwargs: dict, **fields: Any) -> "WorkloadSpec":
        """A spec from ``make_mixer2_layer`` keyword arguments with torch dtypes."""
        from ..validation import dtype_name

        layer = {k: (dtype_name(v) if k in ("dtype", "state_dtype") else v)
                 for k, v in layer_kwargs.items() if k not in ("device", "seed")}
        fields["requests"] = tuple(tuple(r) for r in fields["requests"])
        fields["variants"] = tuple(fields.get("variants", ("returned",)))
        return cls(layer=layer, **fields)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkloadSpec":
        data = json.loads(text)
        data["requests"] = tuple(tuple(r) for r in data["requests"])
        data["variants"] = tuple(data["variants"])
        return cls(**data)

    @property
    def where(self) -> str:
        """Where the warmup ran: ``cuda`` (real launches) or ``compile-only cuda:90``."""
        return "cuda" if self.device == "cuda" else f"compile-only {self.target}"

    def layer_name(self) -> str:
        """:func:`~pytest_ssd.verdict.layer_names.layer_short_name` of this spec's layer (its
        ``make_mixer2_layer`` keywords over that function's defaults)."""
        import inspect
        from types import SimpleNamespace

        from ..layer import make_mixer2_layer

        defaults = {name: p.default for name, p in inspect.signature(make_mixer2_layer).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        return layer_short_name(SimpleNamespace(**{**defaults, **self.layer}))


def gpu_target() -> Optional[str]:
    """The compile-only target that predicts this GPU's binaries (``cuda:90`` on an H100), or None."""
    import torch

    from ..compile_only import TARGETS

    major, minor = torch.cuda.get_device_capability()
    target = f"cuda:{major}{minor}"
    return target if target in TARGETS else None


@dataclass(frozen=True)
class Call:
    """One workload call and what it compiled or autotuned."""

    seqlens: tuple
    initial_states: bool
    variant: str  # a call variant, or "workload" for a user's workload
    recording: Recording

    def describe(self) -> str:
        lens = list(self.seqlens)
        shown = str(lens) if len(lens) <= 6 else f"[{', '.join(map(str, lens[:5]))}, ...] ({len(lens)} sequences)"
        return (f"seqlens {shown} ({sum(lens)} tokens), initial_states={self.initial_states}, "
                f"{self.variant}")


@dataclass(frozen=True)
class ColdBinary:
    """A workload event the warmup did not provide: the miss, and the call that paid for it."""

    miss: Miss
    call: Call

    def line(self) -> str:
        event = self.miss.event
        cost = ("" if event.seconds is None
                else f" -- a fresh machine pays {event.seconds:.2f}s" + (" (compile-only)" if event.compile_only else ""))
        return self.miss.line(cost)


@dataclass(frozen=True)
class Verdict:
    """What one fresh process found. ``unused`` is None when no cold recording was possible."""

    spec: WorkloadSpec
    warmup: Recording
    warmup_seconds: float
    calls: tuple
    cold: tuple  # ColdBinary, in the order they compiled
    candidates: tuple  # reasons.Candidates of the warmup
    unused: Optional[tuple]  # warm Events no request needed, autotune candidates excluded
    triton: str

    @property
    def ok(self) -> bool:
        return not self.cold

    def fixes(self) -> list[str]:
        """The extra warmup calls that would cover every cold binary: one per call that paid,
        each with its distinct fixes (a call compiles only what no earlier call did)."""
        by_call: dict[int, list[ColdBinary]] = {}
        for c in self.cold:
            by_call.setdefault(id(c.call), []).append(c)
        lines = []
        for group in sorted(by_call.values(), key=len, reverse=True):
            fixes = list(dict.fromkeys(c.miss.fix.removeprefix("add a warmup call with ") for c in group))
            lines.append(f"a call like {group[0].call.describe()}: {len(group)} event(s); "
                         f"needs {'; '.join(fixes)}")
        return lines

    def format(self) -> str:
        """The failure message: each cold binary with its reason, cost and fix, then the list
        of warmup calls to add."""
        binaries = len(self.warmup.binaries())
        head = (f"warmup {self.spec.warmup}: {self.warmup_seconds:.2f}s, {binaries} binaries, "
                f"{len(self.warmup.autotune_keys())} autotune keys")
        if self.ok:
            return f"warm: {len(self.calls)} calls after the warmup compiled and autotuned nothing ({head})"
        lines = [f"COLD: {len(self.cold)} Triton compile/autotune event(s) in {len(self.calls)} calls after the "
                 f"warmup, in a fresh process ({head}):"]
        for c in self.cold:
            lines.append(f"  {c.line()}")
            lines.append(f"      paid by: {c.call.describe()}")
            lines.append(f"      fix: {c.miss.fix}")
        lines.append("Warmup calls to add:")
        lines.extend(f"  {i}. {fix}" for i, fix in enumerate(self.fixes(), 1))
        return "\n".join(lines)

    def cold_lines(self) -> list[str]:
        return [c.line() for c in self.cold]

    def records(self, nodeid: str) -> tuple[VerdictRecord, Optional[ColdRecord]]:
        """The verdict as test ``nodeid`` files it in the report, and its cold events as one
        failed cold record under the verdict's layer name (None when warm)."""
        spec, warmup, name = self.spec, self.warmup, self.spec.layer_name()
        known = [group for group in self.candidates if group.winner is not None]
        record = VerdictRecord(
            nodeid=nodeid, layer=name, kernel=spec.kernel, warmup=spec.warmup, where=spec.where,
            warmup_seconds=round(self.warmup_seconds, 3), warmup_binaries=len(warmup.binaries()),
            autotune_keys=len(warmup.autotune_keys()), calls=len(self.calls),
            cold=self.cold_lines(), fixes=self.fixes(), candidates=[g.describe() for g in self.candidates],
            candidate_binaries=sum(len(g.binaries) for g in self.candidates),
            candidates_lost=sum(len(g.lost) for g in known) if known or not self.candidates else None,
            unused=None if self.unused is None else [e.describe() for e in self.unused],
            warmup_compile_seconds=round(sum(e.seconds or 0.0 for e in warmup.compiles), 3),
            autotune_configs=sum(e.configs_benchmarked for e in warmup.autotunes),
            warmup_manifest=layer_entry(self, name),
        )
        cold = None if self.ok else ColdRecord(
            nodeid=nodeid, phase="call", outcome="failed", lines=self.cold_lines(),
            seconds=round(sum(c.miss.event.seconds or 0.0 for c in self.cold), 4),
            enforced_by="the warmth verdict (a fresh process)", layer=name)
        return record, cold


def judge(spec: WorkloadSpec, timeout: float = 1800.0) -> Verdict:
    """Run the warmup and the workload of ``spec`` in a fresh process; explain what compiled.

    RuntimeError (with the child's stderr) when the child fails: a kernel or warmup that
    raises is a failed verdict, never a pass.
    """
    cache_dir = tempfile.mkdtemp(prefix="pytest-ssd-verdict-")
    try:
        result = _child("judge", spec, cache_dir, timeout)
        cold = None
        if spec.target is not None:
            cold = Recording.from_dict(_child("cold", spec, cache_dir, timeout)["workload"])
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return analyse(spec, result, cold)


def analyse(spec: WorkloadSpec, result: dict, cold: Optional[Recording]) -> Verdict:
    """A :class:`Verdict` from a judging child's result and the cold recording (pure)."""
    warmup = Recording.from_dict(result["warmup"])
    calls = tuple(Call(tuple(c["seqlens"]), c["initial_states"], c["variant"], Recording.from_dict(c["recording"]))
                  for c in result["calls"])
    cold_binaries = []
    for call in calls:
        report = compare(warmup, call.recording)
        cold_binaries.extend(ColdBinary(miss, call) for miss in report.missing)
    candidates = tuple(autotune_candidates(warmup))
    unused_events = None if cold is None else tuple(unused(warmup, cold))
    return Verdict(spec=spec, warmup=warmup, warmup_seconds=result["warmup_seconds"], calls=calls,
                   cold=tuple(cold_binaries), candidates=candidates, unused=unused_events,
                   triton=result["triton"])


def _child(step: str, spec: WorkloadSpec, cache_dir: str, timeout: float) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=cache_dir, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    # Empty autotune caches and real compiles: no interpreter, no persisted tuning results.
    for name in ("TRITON_INTERPRET", "TRITON_CACHE_AUTOTUNING"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "pytest_ssd.verdict", step, spec.to_json()]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"warmth verdict ({step}) for {spec.kernel} did not finish in {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"warmth verdict ({step}) for {spec.kernel} failed in its fresh process "
                           f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
