"""The in-process check: what this process's warmups compiled, and what each test phase compiled after.

The plugin keeps one :class:`WarmSet` per process. ``ssd_warmup`` runs the configured warmup
once per layer config and adds what it compiled; a test's fixtures (its setup phase) add theirs.
What a watched test phase compiles beyond that is cold: explained against the warm set only
(:func:`pytest_ssd.verdict.reasons.compare`), never against what earlier tests' call phases
compiled (those binaries are warm in this process by accident), and filed in the worker report.
In-process, so it can be fooled by what another test warmed; the verdict that cannot is
:func:`pytest_ssd.verdict.judge`, in a fresh process.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

from ..compile_only import active_target
from ..events import Event, Recording, record_triton
from ..report import ColdRecord, WarmupRecord, WorkerReport
from .layer_names import layer_description, layer_short_name
from .reasons import compare


class WarmSet:
    """This process's warm set, and the filing of its warmups and cold events in ``report``.

    ``persist_dir``: ``--ssd-persist-autotune``'s dir, shared by xdist workers: warmups take a
    file lock in it in turn, and keep each layer's cold warmup time there.
    """

    def __init__(self, report: WorkerReport, persist_dir: Optional[str]) -> None:
        self.report = report
        self.persist_dir = persist_dir
        self._events: list = []  # what this process's warmups and tests' fixtures compiled
        self._filed: list = []  # cold events already filed in the report
        self._warmups: dict = {}  # layer key -> the Recording of its warmup
        # Layer configs warmed in the current test (the plugin clears it at each setup): the last
        # one is the layer a cold event of the test is filed under.
        self.layers_in_test: list = []

    def warm(self, layer: Any, warmup: Callable) -> Recording:
        """Run ``warmup(layer)`` once per layer configuration (and compile-only target); returns its
        Recording, and files its time and binaries in the report."""
        target = active_target()  # compile-only binaries live under a device of their own
        key = layer_description(layer) + (f" [compile-only {target}]" if target else "")
        self.layers_in_test.append(key)
        if key in self._warmups:
            return self._warmups[key]
        persist = self.persist_dir
        lock = _file_lock(os.path.join(persist, ".pytest-ssd-warmup.lock")) if persist else contextlib.nullcontext()
        with lock, record_triton() as rec:
            start = time.perf_counter()
            warmup(layer)
            seconds = time.perf_counter() - start
            compiles, autotunes = rec.compiles, rec.autotunes
            fresh = sum(1 for e in compiles if e.source != "disk")
            cold_seconds = _remember_cold_warmup(persist, key, seconds, cold=bool(compiles) and fresh == len(compiles))
        self._warmups[key] = rec
        self._events.extend(rec.events)
        self.report.warmups.append(WarmupRecord(
            layer=key, name=layer_short_name(layer) + (f" compile-only {target}" if target else ""),
            seconds=round(seconds, 4), compiles=len(compiles), compiled_fresh=fresh,
            autotunes=len(autotunes), autotunes_persisted=sum(1 for e in autotunes if e.source == "persisted"),
            binaries=[e.describe() for e in compiles], persisted_caches=bool(persist), cold_seconds=cold_seconds,
        ))
        return rec

    def unfiled(self, events: Sequence[Event]) -> list:
        """Drop events already filed: recorded by a warmup, or filed by :meth:`file_cold`.

        Recordings nest (a warmup or a coverage check inside a watched test phase), and each gets
        an equal event for one compile (same fields, same measured time): equality, not identity
        of the objects, tells them apart.
        """
        return [e for e in events if e not in self._events and e not in self._filed]

    def file_fixture_warmup(self, nodeid: str, events: Sequence[Event], sources: Sequence[tuple]) -> None:
        """A test's fixtures are where it warms: what its setup phase compiled is warm from now on,
        filed as a warmup under the fixture that compiled it (``sources``: (event, fixture name) pairs)."""
        self._events.extend(events)
        lines = [f"{e.describe()} -- in fixture {next((name for s, name in sources if s == e), 'unknown')!r}"
                 for e in events]
        self.report.cold.append(ColdRecord(nodeid=nodeid, phase="setup", outcome="warmup", seconds=_seconds(events),
                                           lines=lines))

    def file_call(self, nodeid: str, events: Sequence[Event], enforced_by: Optional[str],
                  allow_reason: Optional[str]) -> Optional[str]:
        """File what a test's call phase compiled after warmup; returns the failure message when it
        must fail the test.

        ``enforced_by``: what makes a cold call phase fail (``--ssd-require-warm``, a marker), None
        if nothing (then it is only reported). ``allow_reason``: an ``ssd_allow_cold`` marker's.
        """
        outcome = "reported" if enforced_by is None else "allowed" if allow_reason is not None else "failed"
        lines = self.file_cold(nodeid, "call", outcome, events, allow_reason,
                               enforced_by=enforced_by if outcome == "failed" else None)
        if outcome != "failed":
            return None
        return (f"pytest-ssd: {len(events)} Triton compile/autotune event(s) in the call phase after warmup, "
                f"{_seconds(events):.2f}s spent (enforced by {enforced_by}):\n  " + "\n  ".join(lines)
                + "\nWarm these in the warmup, or mark the test @pytest.mark.ssd_allow_cold(reason=...).")

    def file_cold(self, nodeid: str, phase: str, outcome: str, events: Sequence[Event],
                  allow_reason: Optional[str] = None, enforced_by: Optional[str] = None) -> list[str]:
        """Explain ``events`` (:meth:`explain`) and file them in the report as one cold record,
        under the layer config the test warmed last; returns the explanation lines, for the
        failure message."""
        lines = self.explain(events)
        self._filed.extend(events)
        layer = self.layers_in_test[-1] if self.layers_in_test else None
        self.report.cold.append(ColdRecord(nodeid=nodeid, phase=phase, outcome=outcome, lines=lines,
                                           seconds=_seconds(events), allow_reason=allow_reason,
                                           enforced_by=enforced_by, layer=layer))
        return lines

    def explain(self, events: Sequence[Event]) -> list[str]:
        """One line per event: the binary, why the warm set did not have it, what a fresh machine
        pays for it, and the fix."""
        report = compare(Recording(events=list(self._events)), Recording(events=list(events)))
        return [f"{miss.line(_fresh_cost(miss.event))}; fix: {miss.fix}" for miss in report.missing]


def _seconds(events: Sequence[Event]) -> float:
    return round(sum(e.seconds or 0.0 for e in events), 4)


def _fresh_cost(event: Event) -> str:
    """What a fresh machine pays for ``event``, where the recording could not measure it."""
    if getattr(event, "source", None) == "disk":
        return " (served by Triton's disk cache here: a fresh machine compiles it)"
    if getattr(event, "source", None) == "persisted":
        return " (loaded from persisted autotune results here: a fresh machine benchmarks it)"
    return ""


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive advisory lock, so xdist workers sharing a Triton cache dir take turns warming."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remember_cold_warmup(persist_dir: Optional[str], key: str, seconds: float, cold: bool) -> Optional[float]:
    """Keep each layer's cold warmup time in the persisted cache dir, to show cold vs persisted.

    Returns the cold time on record for ``key`` (None without a persist dir or a record).
    Called under the warmup lock, so xdist workers do not race on the file.
    """
    if not persist_dir:
        return None
    path = os.path.join(persist_dir, "pytest-ssd-warmups.json")
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        record = {}
    if cold:
        record[key] = round(seconds, 4)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1)
    return record.get(key)
