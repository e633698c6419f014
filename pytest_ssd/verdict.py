"""The warmth verdict: is a kernel warm after its warmup, judged the way production meets it?

``judge(WorkloadSpec(...)) -> Verdict`` starts a fresh Python process with an empty Triton
cache dir of its own. There it imports the kernel, runs the warmup, then the workload (every
request, without and with initial states, in every call variant the engine uses), recording
each step. Misses are explained against *that warmup's* binaries only, so nothing one test,
dtype or layer config compiled can make another look warm. On a GPU the launches are real; on
a CPU the process runs in compile-only mode (:mod:`pytest_ssd.compile_only`), which compiles
the same binaries and runs nothing.

A second fresh process then runs the workload alone, in compile-only mode and from the first
one's disk cache (cheap): what the workload needs from a cold start. Warm binaries outside it
are *unused*; those an autotuner compiled to benchmark its configs are *candidates*, counted
apart (the price of autotuning, not waste).

The process boundary is the point: both children are ``python -m pytest_ssd.verdict``, one
JSON spec in ``argv``, one JSON result on stdout's last line.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from .coverage import Miss, autotune_candidates, compare, unused
from .events import Recording

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
        from .validation import dtype_name

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
    candidates: tuple  # coverage.Candidates of the warmup
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


# ---- the child side ---------------------------------------------------------------------------

def _layer(spec: WorkloadSpec, device: str):
    import torch

    from .layer import make_mixer2_layer

    kwargs = dict(spec.layer)
    for key in ("dtype", "state_dtype"):
        if key in kwargs:
            kwargs[key] = getattr(torch, kwargs[key])
    if "dt_limit" in kwargs:
        kwargs["dt_limit"] = tuple(kwargs["dt_limit"])
    return make_mixer2_layer(**kwargs, seed=spec.seed, device=device)


def _workload_calls(spec: WorkloadSpec, layer, record: bool) -> list[dict]:
    """Every request, without and with initial states, in every variant; one recording each."""
    import torch

    from .adapters import SSDKernel
    from .events import record_triton
    from .layer import make_ssd_inputs
    from .options import load_callable
    from .triton_compat import jit_dispatch

    kernel = SSDKernel(fn=load_callable(spec.kernel, "kernel"), api=spec.api, name=spec.kernel)
    workload = load_callable(spec.workload, "workload") if spec.workload else None
    variants = ("workload",) if workload else spec.variants
    calls = []
    for i, seqlens in enumerate(spec.requests):
        for init in (False, True):
            inputs = make_ssd_inputs(layer, list(seqlens), seed=spec.seed + 1 + i, with_initial_states=init)
            for variant in variants:
                # Through Triton's JIT on every launch: what Triton would compile for this call.
                with (record_triton() if record else contextlib.nullcontext(Recording())) as rec, jit_dispatch():
                    if workload:
                        workload(layer, inputs)
                    else:
                        kernel.run(layer, inputs, variant=variant)
                    if layer.device.type == "cuda":
                        torch.cuda.synchronize()
                calls.append({"seqlens": list(seqlens), "initial_states": init, "variant": variant,
                              "recording": rec.to_dict()})
    return calls


def _judge_here(spec: WorkloadSpec) -> dict:
    import torch

    from .compile_only import compile_only
    from .events import record_triton
    from .options import load_callable

    import triton

    mode = compile_only(spec.target) if spec.device == "cpu" else contextlib.nullcontext()
    with mode:
        warmup = load_callable(spec.warmup, "warmup")
        layer = _layer(spec, spec.device)
        with record_triton() as warm:
            start = time.perf_counter()
            warmup(layer)
            if spec.device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        calls = _workload_calls(spec, layer, record=True)
    return {"warmup": warm.to_dict(), "warmup_seconds": seconds, "calls": calls, "triton": triton.__version__}


def _cold_here(spec: WorkloadSpec) -> dict:
    from .compile_only import compile_only
    from .events import record_triton

    with compile_only(spec.target), record_triton() as rec:
        _workload_calls(spec, _layer(spec, "cpu"), record=False)
    return {"workload": rec.to_dict()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 2 or argv[0] not in ("judge", "cold"):
        raise SystemExit("usage: python -m pytest_ssd.verdict judge|cold '<WorkloadSpec JSON>'")
    spec = WorkloadSpec.from_json(argv[1])
    result = _judge_here(spec) if argv[0] == "judge" else _cold_here(spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
