"""Why a workload event was cold, and the warmup call that fixes it: ``compare(warmup, workload)``.

After a good warmup the workload's recording is empty. Each compile or autotune event it
does hold is something the warmup did not provide; the report explains each one in words by
diffing it against the nearest warmed binary (or autotune key) of the same kernel. Both the
fresh-process verdict (:mod:`pytest_ssd.verdict.fresh_process`) and the in-process warm set
(:mod:`pytest_ssd.verdict.warm_set`) explain their misses here.

``unused`` lists warmed binaries and autotune keys the workload does not need. That is only
knowable from a recording of the workload that saw *everything* it needs, i.e. one taken
from a cold start (a fresh process, or fresh kernel objects under compile-only):
pass it as ``workload_cold``. Without it ``unused`` is None (unknown). ``autotune_candidates``
tells the binaries an autotuner compiled to benchmark its configs from the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from ..events import AutotuneEvent, CompileEvent, Event, Recording
from ..triton_compat.fields import BINARY_OPTIONS

_SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64",
                 "float8_e4m3fn": "fp8e4nv", "float8_e5m2": "fp8e5", "int8": "i8", "int16": "i16",
                 "int32": "i32", "int64": "i64", "uint8": "u8", "bool": "i1"}
_INT_SPECS = {"none": "not divisible by 16", "%16": "divisible by 16",
              "==1": "equal to 1 (compiled in as a constant)", "nospec": "not specialized"}


class Miss(NamedTuple):
    """A workload event the warmup did not provide, why, and what warmup call would provide it."""

    event: Event
    reason: str
    fix: str

    def line(self, cost: str = "") -> str:
        """``binary -- reason`` (then ``cost``, what a fresh machine pays), as reports print it."""
        return f"{self.event.describe()} -- {self.reason}{cost}"


@dataclass(frozen=True)
class CoverageReport:
    """``missing``: one :class:`Miss` per workload event. ``unused``: warmed binaries and
    autotune keys the cold workload did not need (None when no cold recording was given)."""

    missing: list[Miss]
    unused: list[Event] | None
    warmed_binaries: int
    warmed_autotune_keys: int

    @property
    def ok(self) -> bool:
        return not self.missing

    def format(self) -> str:
        """Multi-line text for a terminal or a test failure."""
        warm = f"warmup: {self.warmed_binaries} binaries, {self.warmed_autotune_keys} autotune keys"
        if self.ok:
            lines = [f"Triton coverage OK: the workload compiled and autotuned nothing ({warm})."]
        else:
            compiles = sum(isinstance(m.event, CompileEvent) for m in self.missing)
            lines = [f"Triton coverage FAILED: {compiles} compiles and {len(self.missing) - compiles} "
                     f"autotunes after warmup ({warm}):"]
            for miss in self.missing:
                lines.append(f"  {miss.event.kind:<8} {miss.event.describe()}")
                lines.append(f"  {'':<8} why: {miss.reason}")
                lines.append(f"  {'':<8} fix: {miss.fix}")
        if self.unused is None:
            lines.append("Unused warm binaries: unknown (pass workload_cold, a recording of the workload "
                         "from a cold start).")
        elif self.unused:
            lines.append(f"Warmed but not needed by the workload ({len(self.unused)}):")
            lines.extend(f"  {e.kind:<8} {e.describe()}" for e in self.unused)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "missing": [{"event": m.event.to_dict(), "reason": m.reason, "fix": m.fix} for m in self.missing],
            "unused": None if self.unused is None else [e.to_dict() for e in self.unused],
            "warmed_binaries": self.warmed_binaries,
            "warmed_autotune_keys": self.warmed_autotune_keys,
        }


def compare(warmup: Recording, workload: Recording, workload_cold: Recording | None = None) -> CoverageReport:
    """Explain every event of ``workload`` (recorded after the warmup) against ``warmup``.

    ``workload_cold``: the same workload recorded from a cold start; enables ``unused``.
    """
    for name, rec in (("warmup", warmup), ("workload", workload), ("workload_cold", workload_cold or Recording())):
        if not isinstance(rec, Recording):
            raise TypeError(f"compare: {name} must be a pytest_ssd.events.Recording, got {type(rec).__name__}")
    binaries, keys = warmup.binaries(), warmup.autotune_keys()
    missing = []
    for e in workload.events:
        if isinstance(e, CompileEvent):
            found = _nearest(e, list(binaries.values()), warmup, _compile_diffs, _COMPILED_AGAIN)
            missing.append(Miss(e, _why_compiled(e, found), _fix_compiled(e, found, warmup)))
        else:
            found = _nearest(e, list(keys.values()), warmup, _tune_diffs, _TUNED_AGAIN)
            missing.append(Miss(e, _why_tuned(e, found), _fix_tuned(e, found)))
    return CoverageReport(missing, None if workload_cold is None else unused(warmup, workload_cold),
                          len(binaries), len(keys))


def unused(warmup: Recording, workload_cold: Recording) -> list[Event]:
    """Warmed binaries and autotune keys that the workload, recorded from a cold start, never needs.

    An autotuner's candidates (:func:`autotune_candidates`) are not among them: they are the
    price of tuning a key, counted with it (its key is unused when no request needs it).
    """
    needed = set(workload_cold.binaries()) | set(workload_cold.autotune_keys())
    tried = {b.identity for group in autotune_candidates(warmup) for b in group.binaries}
    return [e for identity, e in {**warmup.binaries(), **warmup.autotune_keys()}.items()
            if identity not in needed and identity not in tried]


def _same_kernel(event: Event, candidates: Sequence[Event]) -> list:
    return [c for c in candidates if (c.module, c.kernel) == (event.module, event.kernel)]


def _never_warmed(event: Event, warmup: Recording) -> str:
    if not _same_kernel(event, warmup.events):
        return "kernel never warmed"
    if isinstance(event, CompileEvent):
        return "no binary of this kernel was compiled during warmup (it was only autotuned there)"
    return "kernel compiled during warmup but never autotuned"


def _values(values: list[Any]) -> str:
    distinct = list(dict.fromkeys(str(v) for v in values))
    return ", ".join(distinct)


# -- compiles ------------------------------------------------------------------------------

def _nearest(event: Event, warmed: list, warmup: Recording, diffs: Any, again: str) -> tuple[Any, list] | str:
    """The warmed item of the same kernel that differs from ``event`` in the fewest fields, and
    all of that kernel's; or the reason itself when there is nothing to diff against."""
    same = _same_kernel(event, warmed)
    if not same:
        return _never_warmed(event, warmup)
    if any(w.identity == event.identity for w in same):
        return again
    return min(same, key=lambda w: len(diffs(event, w))), same


_COMPILED_AGAIN = ("identical binary was warmed, yet compiled again: the warmup ran in another process, "
                   "on another device, or on another kernel object")
_TUNED_AGAIN = ("identical autotune key was tuned during warmup, yet tuned again: the warmup ran in another "
                "process or on another autotuner object")


def _why_compiled(event: CompileEvent, found: tuple | str) -> str:
    if isinstance(found, str):
        return found
    nearest, same = found
    return "; ".join(_explain(event, nearest, same, diff) for diff in _compile_diffs(event, nearest))


def _compile_diffs(event: CompileEvent, warm: CompileEvent) -> list[tuple[str, str]]:
    diffs = [("constexpr", n) for n in dict.fromkeys([*event.constexprs, *warm.constexprs])
             if event.constexprs.get(n) != warm.constexprs.get(n)]
    types = [n for n in event.signature if event.signature[n] != warm.signature.get(n)]
    diffs += [("type", n) for n in types]
    diffs += [("spec", n) for n in event.specializations
              if n not in types and event.specializations[n] != warm.specializations.get(n)]
    diffs += [(f, f) for f in ("num_warps", "num_stages", "target") if getattr(event, f) != getattr(warm, f)]
    diffs += [("option", n) for n in dict.fromkeys([*event.options, *warm.options])
              if _option(event, n) != _option(warm, n)]
    return diffs


def _option(event: CompileEvent, name: str) -> Any:
    """A launch option of a compile: what it set, or the default it left (``BINARY_OPTIONS``)."""
    return event.options.get(name, BINARY_OPTIONS.get(name))


def _explain(event: CompileEvent, nearest: CompileEvent, same: list[CompileEvent], diff: tuple[str, str]) -> str:
    kind, name = diff
    if kind == "constexpr":
        value = event.constexprs.get(name)
        warmed = [b.constexprs.get(name) for b in same]
        if value in warmed:
            return (f"constexpr {name}={value} warmed only with other arguments "
                    f"(nearest warmed binary had {nearest.constexprs.get(name)})")
        return f"constexpr {name}={value} never warmed (warmup had {_values(warmed)})"
    if kind == "type":
        return f"{name}: {event.signature[name]} vs {nearest.signature.get(name)} in warmup"
    if kind == "spec":
        return _explain_spec(event, nearest, name)
    if kind == "option":
        return f"launch option {name}={_option(event, name)} vs {_option(nearest, name)} in warmup"
    return f"{name} {getattr(event, name)} vs {getattr(nearest, name)} in warmup"


def _explain_spec(event: CompileEvent, nearest: CompileEvent, name: str) -> str:
    spec, warm_spec = event.specializations[name], nearest.specializations.get(name)
    if spec in ("aligned", "unaligned"):
        return (f"{name}: pointer not 16-byte aligned" if spec == "unaligned"
                else f"{name}: pointer 16-byte aligned; warmup's was not")
    value = (event.int_values or {}).get(name)
    warm_value = (nearest.int_values or {}).get(name)
    shown = f"{name}={value}" if value is not None else name
    warm = (f"warmup used {warm_value}" if warm_value is not None
            else f"warmup's was {_INT_SPECS.get(warm_spec, warm_spec)}")
    return f"{shown} {_INT_SPECS.get(spec, spec)}; {warm}"


# -- autotunes -----------------------------------------------------------------------------

def short_dtype(dtype: str | None) -> str:
    """Triton's short name of a dtype (``bf16`` for ``torch.bfloat16`` or ``bfloat16``); ``none`` for None."""
    name = (dtype or "none").removeprefix("torch.")
    return _SHORT_DTYPES.get(name, name)


def _tune_diffs(event: AutotuneEvent, warm: AutotuneEvent) -> list[tuple[str, str]]:
    diffs = [("value", n) for n in dict.fromkeys([*event.key_values, *warm.key_values])
             if event.key_values.get(n) != warm.key_values.get(n)]
    return diffs + [("dtype", n) for n in dict.fromkeys([*event.key_dtypes, *warm.key_dtypes])
                    if event.key_dtypes.get(n) != warm.key_dtypes.get(n)]


def _why_tuned(event: AutotuneEvent, found: tuple | str) -> str:
    if isinstance(found, str):
        return found
    nearest, same = found
    reasons = []
    for kind, name in _tune_diffs(event, nearest):
        if kind == "value":
            warmed_values = _values([k.key_values.get(name) for k in same])
            reasons.append(f"new autotune key ({name}={event.key_values.get(name)}; warmup had {warmed_values})")
        elif name not in nearest.key_dtypes:
            reasons.append(f"{name} is a {short_dtype(event.key_dtypes[name])} tensor; warmup passed no tensor "
                           "there (one more dtype in the autotune key)")
        elif name not in event.key_dtypes:
            reasons.append(f"{name} passed no tensor; warmup passed {short_dtype(nearest.key_dtypes[name])} "
                           "(one dtype less in the autotune key)")
        else:
            reasons.append(f"dtype {short_dtype(event.key_dtypes[name])} vs {short_dtype(nearest.key_dtypes[name])}"
                           f" in the autotune key ({name})")
    return "; ".join(reasons)


# -- fixes: the warmup call that would have provided a missed event -------------------------

_SPEC_FIXES = {**_INT_SPECS, "==1": "equal to 1"}


def _fix_unfound(event: Event, found: str, again: str, warmup: Recording) -> str:
    """The fix where ``_nearest`` found nothing to diff against (its reason, ``found``)."""
    if found == again:
        return "warm in the process and on the device that serve (the warmup's binary is not this process's)"
    return f"add a warmup call that reaches {event.kernel}" + (
        "" if _same_kernel(event, warmup.events) else " (the warmup never ran it)")


def _fix_compiled(event: CompileEvent, found: tuple | str, warmup: Recording) -> str:
    if isinstance(found, str):
        return _fix_unfound(event, found, _COMPILED_AGAIN, warmup)
    nearest, _ = found
    hints = []
    for kind, name in _compile_diffs(event, nearest):
        if kind == "constexpr":
            hints.append(f"{name}={event.constexprs.get(name)}")
        elif kind == "type":
            hints.append(f"{name} as {event.signature[name]}" if event.signature[name] != "none"
                         else f"{name}=None")
        elif kind == "spec":
            spec = event.specializations[name]
            if spec in ("aligned", "unaligned"):
                hints.append(f"{name} {'not ' if spec == 'unaligned' else ''}16-byte aligned")
            else:
                value = (event.int_values or {}).get(name)
                hints.append(f"{name} {_SPEC_FIXES.get(spec, spec)}" + (f" (e.g. {value})" if value is not None else ""))
        elif kind == "option":
            hints.append(f"launch option {name}={_option(event, name)}")
        else:
            hints.append(f"{name}={getattr(event, name)}")
    return "add a warmup call with " + ", ".join(hints)


def _fix_tuned(event: AutotuneEvent, found: tuple | str) -> str:
    if isinstance(found, str):
        return f"add a warmup call that autotunes {event.kernel} with this key"
    nearest, _ = found
    hints = []
    for kind, name in _tune_diffs(event, nearest):
        if kind == "value":
            hints.append(f"{name}={event.key_values.get(name)}")
        elif name not in event.key_dtypes:
            hints.append(f"{name}=None")
        else:
            hints.append(f"{name} as {short_dtype(event.key_dtypes[name])}")
    return "add a warmup call with " + (", ".join(hints) if hints else "this autotune key")


# -- autotune candidates: the binaries an autotuner compiles to benchmark ---------------------

@dataclass(frozen=True)
class Candidates:
    """The binaries one autotune key compiled to benchmark its configs.

    ``winner``: the identity of the binary it kept, None when unknown (compile-only mode times
    nothing). The others lost: the price of autotuning, not waste.
    """

    tune: AutotuneEvent
    binaries: tuple  # CompileEvents, in the order compiled
    winner: str | None

    @property
    def lost(self) -> list[CompileEvent]:
        return [b for b in self.binaries if b.identity != self.winner] if self.winner else []

    @property
    def seconds(self) -> float:
        return sum(b.seconds or 0.0 for b in self.binaries)

    def describe(self) -> str:
        won = (f"{len(self.lost)} lost" if self.winner else "winner unknown (compile-only)")
        return (f"{self.tune.kernel} autotune key ({_key_words(self.tune)}): {len(self.binaries)} candidate "
                f"binaries, {won}, {self.seconds:.2f}s compiling")


def _key_words(tune: AutotuneEvent) -> str:
    values = ", ".join(f"{k}={v}" for k, v in tune.key_values.items())
    dtypes = ", ".join(f"{k}:{short_dtype(v)}" for k, v in tune.key_dtypes.items())
    return "; ".join(p for p in (values, dtypes) if p)


def autotune_candidates(recording: Recording) -> list[Candidates]:
    """Which compiles of ``recording`` were an autotuner benchmarking its configs.

    An autotuner compiles each config of a new key while it benchmarks (the recorder marks
    those compiles ``during_autotune``), then reports the key; events are in finishing order,
    so a kernel's marked compiles up to its autotune event are that key's candidates. The winner is the one whose warps, stages
    and config kwargs match the autotune event's ``winner``.
    """
    groups: list[Candidates] = []
    pending: dict[tuple, list[CompileEvent]] = {}
    for event in recording.events:
        kernel = (event.module, event.kernel)
        if isinstance(event, CompileEvent):
            if event.during_autotune:
                pending.setdefault(kernel, []).append(event)
            continue
        binaries = tuple(pending.pop(kernel, []))
        if binaries:
            groups.append(Candidates(event, binaries, _winner(event, binaries)))
    return groups


def _winner(tune: AutotuneEvent, binaries: tuple) -> str | None:
    if tune.winner is None:
        return None
    for b in binaries:
        if (b.num_warps, b.num_stages) == (tune.winner["num_warps"], tune.winner["num_stages"]) and all(
                b.constexprs.get(k) == v for k, v in tune.winner["kwargs"].items()):
            return b.identity
    return None
