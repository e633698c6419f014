"""Record what Triton compiles and autotunes: ``with record_triton() as rec: ...``.

Works without pytest, so a model loader can record its own warmup. Every in-memory JIT miss
becomes a :class:`CompileEvent` and every autotune benchmark an :class:`AutotuneEvent`, in
the order they finish, from every thread; nested recordings each see all events. Nothing is
added to a warm launch: see the hook adapters in :mod:`pytest_ssd.triton_compat.observe`.
"""
from __future__ import annotations

import hashlib
import json
import threading
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterator, Union

from . import triton_compat
from .compile_only import compile_only_active

FORMAT_VERSION = 1

# How a specialization reads in a one-line description.
_SPEC_WORDS = {"%16": "%16=True", "none": "%16=False", "==1": "==1", "nospec": "unspecialized",
               "aligned": "aligned", "unaligned": "unaligned", "None": "None"}


def _digest(parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _seconds(seconds: float | None) -> str:
    if seconds is None:
        return "time unknown"
    return f"{seconds:.1f}s" if seconds >= 0.1 else f"{seconds * 1e3:.0f}ms"


@dataclass(frozen=True)
class CompileEvent:
    """One in-memory JIT miss: Triton built (or loaded from disk) a binary for a kernel.

    ``constexprs``: declared ``tl.constexpr`` parameters by name. ``signature``: the other
    parameters' Triton types (``*bf16``, ``i32``, ``fp32``; ``none`` for a None argument).
    ``specializations``: per integer parameter ``==1``, ``%16`` or ``none`` (neither), per
    pointer ``aligned`` (16 bytes) or ``unaligned``; ``nospec`` where the kernel opted out.
    ``int_values``: integer arguments at compile time, None where they could not be read.
    ``target``: e.g. ``cuda:90``. ``source``: ``compiled``, ``disk`` (Triton's on-disk cache:
    a fresh machine would compile it) or ``unknown``. ``compile_only``: recorded under
    :func:`pytest_ssd.compile_only.compile_only`. ``during_autotune``: compiled while an
    autotuner benchmarked its configs (a candidate, see :func:`pytest_ssd.verdict.autotune_candidates`).
    ``options``: launch options that change the binary, set away from their defaults
    (``{"maxnreg": 128}``; ``triton_compat.fields.BINARY_OPTIONS``), usually empty.
    """

    kind: ClassVar[str] = "compile"

    kernel: str
    module: str
    constexprs: dict[str, Any]
    signature: dict[str, str]
    specializations: dict[str, str]
    int_values: dict[str, int] | None
    num_warps: int
    num_stages: int
    target: str | None
    source: str
    seconds: float | None
    compile_only: bool = False
    during_autotune: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """Stable across processes: the same binary has the same identity on every worker.

        Built from the kernel, constexprs, signature, specializations, warps, stages, target
        and the launch options set away from their defaults (``maxnreg``, ...: only when there
        are any, so a binary without them keeps its identity); never from times, integer
        values, pid or source.
        """
        parts = ["compile", self.module, self.kernel, self.target, self.constexprs, self.signature,
                 self.specializations, self.num_warps, self.num_stages]
        return _digest(parts + [self.options] if self.options else parts)

    def arg_words(self, name: str) -> str:
        """One argument as ``describe()`` shows it, e.g. ``seqlen:i32=6565 %16=False``."""
        value = (self.int_values or {}).get(name)
        shown = f"{name}:{self.signature[name]}" + (f"={value}" if value is not None else "")
        spec = self.specializations.get(name)
        return f"{shown} {_SPEC_WORDS.get(spec, spec)}" if spec else shown

    def describe(self) -> str:
        """One line, e.g. ``k[HAS_INITSTATES=True] (x:*bf16 aligned, n:i32=6565 %16=False) warps=4 stages=3 ...``."""
        constexprs = ", ".join(f"{k}={v}" for k, v in self.constexprs.items())
        args = ", ".join(self.arg_words(name) for name in self.signature)
        mode = " (compile-only)" if self.compile_only else ""
        options = "".join(f" {k}={v}" for k, v in self.options.items())
        return (f"{self.kernel}[{constexprs}] ({args}) warps={self.num_warps} stages={self.num_stages}{options} "
                f"{self.target} {self.source} {_seconds(self.seconds)}{mode}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class AutotuneEvent:
    """One autotune miss: an autotuner met a key it had not tuned in this process.

    ``key_values``: the key arguments by name; ``key_dtypes``: the dtype of every tensor
    argument by name. Together they are Triton's key, ``[key values] + [str(dtype) ...]``.
    ``configs_benchmarked``: 0 when results came from Triton's persisted autotune cache
    (``source="persisted"``, 3.4+ ``cache_results``), else ``source="benchmarked"``.
    ``winner``: the chosen config's kwargs, num_warps, num_stages; None when it cannot be
    known (compile-only mode benchmarks nothing: Triton keeps the first config there).
    """

    kind: ClassVar[str] = "autotune"

    kernel: str
    module: str
    key_values: dict[str, Any]
    key_dtypes: dict[str, str]
    configs_benchmarked: int
    winner: dict | None
    source: str
    seconds: float | None
    compile_only: bool = False

    @property
    def identity(self) -> str:
        """Stable across processes: the kernel and its autotune key, nothing else."""
        return _digest(["autotune", self.module, self.kernel, self.key_values, self.key_dtypes])

    def describe(self) -> str:
        """One line, e.g. ``k autotune key (nheads=80; x:torch.bfloat16) 4 configs benchmarked -> ...``."""
        values = ", ".join(f"{k}={v}" for k, v in self.key_values.items())
        dtypes = ", ".join(f"{k}:{v}" for k, v in self.key_dtypes.items())
        key = "; ".join(part for part in (values, dtypes) if part)
        if self.source == "persisted":
            how = "loaded from the persisted autotune cache"
        else:
            how = f"{self.configs_benchmarked} configs benchmarked"
        if self.winner is not None:
            kwargs = ", ".join(f"{k}={v}" for k, v in self.winner["kwargs"].items())
            winner = f"-> {kwargs} warps={self.winner['num_warps']} stages={self.winner['num_stages']}"
        else:
            winner = "-> winner unknown (compile-only)" if self.compile_only else "-> winner unknown"
        return f"{self.kernel} autotune key ({key}) {how} {winner} {_seconds(self.seconds)}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


Event = Union[CompileEvent, AutotuneEvent]
_EVENT_TYPES = {cls.kind: cls for cls in (CompileEvent, AutotuneEvent)}


def event_from_dict(data: dict) -> Event:
    """Inverse of ``event.to_dict()``."""
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in _EVENT_TYPES:
        raise ValueError(f"event kind must be one of {sorted(_EVENT_TYPES)}; got {kind!r}")
    return _EVENT_TYPES[kind](**fields)


class RecorderHookWarning(UserWarning):
    """Something replaced one of the recorder's Triton hooks while a recording was open; the
    recorder chained itself in front of it again (see ``Recording.hook_changes``)."""


@dataclass(frozen=True)
class UnrecordedBinaries:
    """A kernel whose in-memory JIT caches grew by more binaries during a recording than the
    recorder's hooks reported: someone replaced every hook of ours without chaining it."""

    kernel: str
    module: str
    binaries: int  # growth of the kernel's JIT caches over the recording
    reported: int  # compile events the hooks reported for it

    def describe(self) -> str:
        return (f"{self.module}.{self.kernel}: its JIT cache grew by {self.binaries} binar"
                f"{'y' if self.binaries == 1 else 'ies'}, the hooks reported {self.reported} compile(s)")


@dataclass
class Recording:
    """Events of one ``record_triton()`` block (or loaded from JSON), in the order they finished.

    Two checks on the recorder itself, filled when the block ends (not saved in JSON):
    ``hook_changes``, one note per hook of ours that something replaced during the block (each
    also a :class:`RecorderHookWarning`); ``unrecorded``, the kernels whose JIT caches grew by
    more binaries than the hooks reported (:class:`UnrecordedBinaries`). A recording with
    ``unrecorded`` entries missed compiles: its events cannot prove anything warm.
    """

    events: list[Event] = field(default_factory=list)
    hook_changes: list[str] = field(default_factory=list, compare=False)
    unrecorded: list[UnrecordedBinaries] = field(default_factory=list, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def add(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    @property
    def compiles(self) -> list[CompileEvent]:
        return [e for e in self.events if isinstance(e, CompileEvent)]

    @property
    def autotunes(self) -> list[AutotuneEvent]:
        return [e for e in self.events if isinstance(e, AutotuneEvent)]

    def binaries(self) -> dict[str, CompileEvent]:
        """Distinct binaries by identity (first event of each)."""
        out: dict[str, CompileEvent] = {}
        for event in self.compiles:
            out.setdefault(event.identity, event)
        return out

    def autotune_keys(self) -> dict[str, AutotuneEvent]:
        """Distinct (kernel, autotune key) pairs by identity (first event of each)."""
        out: dict[str, AutotuneEvent] = {}
        for event in self.autotunes:
            out.setdefault(event.identity, event)
        return out

    def summary(self) -> str:
        """One line: counts, sources and time, e.g. for a report header or a log."""
        compiles, autotunes = self.compiles, self.autotunes
        by_source: dict[str, int] = {}
        for event in compiles:
            by_source[event.source] = by_source.get(event.source, 0) + 1
        sources = ", ".join(f"{n} {source}" for source, n in by_source.items())
        compile_s = sum(e.seconds or 0.0 for e in compiles)
        tune_s = sum(e.seconds or 0.0 for e in autotunes)
        benchmarked = sum(e.configs_benchmarked for e in autotunes)
        persisted = sum(e.source == "persisted" for e in autotunes)
        text = (f"{len(compiles)} compiles ({sources or 'none'}; {compile_s:.1f}s), "
                f"{len(autotunes)} autotunes ({benchmarked} configs benchmarked")
        text += f", {persisted} from the persisted cache" if persisted else ""
        return text + f"; {tune_s:.1f}s)"

    def to_dict(self) -> dict:
        """JSON-able: for xdist ``workeroutput`` and JSON reports."""
        return {"format": FORMAT_VERSION, "triton": triton_compat.triton_version(),
                "events": [e.to_dict() for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict) -> "Recording":
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"recording format must be {FORMAT_VERSION}; got {data.get('format')!r}")
        return cls(events=[event_from_dict(e) for e in data["events"]])


@contextmanager
def record_triton() -> Iterator[Recording]:
    """Record every Triton JIT miss and autotune benchmark in this process while the block runs.

    Hooks already installed (torch's, vLLM's) keep working and are back after the block, also
    when it raises. Safe across threads; nested blocks each get every event. A hook assigned
    over ours while the block runs is chained again and reported (``Recording.hook_changes``, a
    :class:`RecorderHookWarning`); compiles that no hook reported show in ``Recording.unrecorded``.
    """
    recording = Recording()

    def on_compile(fields: dict) -> None:
        recording.add(CompileEvent(**fields, compile_only=compile_only_active()))

    def on_autotune(fields: dict) -> None:
        compile_only = compile_only_active()
        if compile_only:  # fake timings: Triton kept the first config, which says nothing
            fields = {**fields, "winner": None}
        recording.add(AutotuneEvent(**fields, compile_only=compile_only))

    def on_hook_change(note: str) -> None:
        with recording._lock:
            recording.hook_changes.append(note)

    stop = triton_compat.observe_triton(on_compile=on_compile, on_autotune=on_autotune,
                                        on_hook_change=on_hook_change, watch_caches=True)
    try:
        yield recording
    finally:
        recording.unrecorded.extend(UnrecordedBinaries(**found) for found in stop())
        for note in recording.hook_changes:
            warnings.warn(RecorderHookWarning(note), stacklevel=3)
