"""The regression guard: a run's figures against a recorded baseline, each allowed to slip a tolerance.

Rows are dicts ``{"name": str, "dtype": str, "device": str, FIGURE: number, ...}``: one per
kernel (or scenario), model dtype and device; every other numeric key is a figure for which
lower is better (ms, s, counts). Each benchmark turns its own result file into rows.

- A figure slips when ``(now - baseline) / baseline`` exceeds its tolerance (default 0.10); a
  baseline of 0 (compiles after warmup, say) slips at any rise. A faster figure passes.
- Entries are matched by name, dtype and device. A baseline from another device is not compared,
  and that fails, unless ``any_device`` (then entries match by name and dtype, and it is said).
- What the baseline records must be measured now: a baseline entry or figure the run lacks
  (or holds as NaN) fails. An entry or figure the baseline lacks is reported (record a new baseline to guard it).
- A comparison that compared nothing fails.
- A figure the host's speed moves (a warmup's compile time, a first request's host path) may
  carry a *reference*: the same figure of another kernel measured beside it in the same run
  (bench_peers: the peer's). Such a figure slips only when it also rises more than its tolerance
  over the reference: ``(now / ref_now) / (baseline / ref_baseline) - 1``. A rise the reference
  shares is a slower lease, not a regression: reported beside the figure, not failed.
  ``absolute=True`` (``--absolute``) ignores references.

Pure data: no torch, no GPU (``tests/test_bench_guard.py``).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

KEYS = ("name", "dtype", "device")
DEFAULT_TOLERANCE = 0.10


@dataclass(frozen=True)
class Figure:
    """One figure of one entry, baseline against now."""

    entry: str  # "bundled bfloat16"
    figure: str  # "steady_ms"
    baseline: float
    now: float
    tolerance: float  # the allowed rise, as a fraction of the baseline
    reference: Optional[str] = None  # the kernel beside it whose same figure the host moves alike
    ref_baseline: Optional[float] = None
    ref_now: Optional[float] = None

    @property
    def change(self) -> float:
        """``(now - baseline) / baseline``; +inf for a rise from a baseline of 0."""
        if self.baseline == 0:
            return math.inf if self.now > 0 else 0.0
        return (self.now - self.baseline) / self.baseline

    @property
    def ref_change(self) -> Optional[float]:
        """The reference's own change, or None without a usable reference."""
        if self.ref_baseline is None or self.ref_now is None or self.ref_baseline <= 0 or self.ref_now <= 0:
            return None
        return (self.ref_now - self.ref_baseline) / self.ref_baseline

    @property
    def relative_change(self) -> Optional[float]:
        """The change over the reference's, ``(now / ref_now) / (baseline / ref_baseline) - 1``;
        None without a usable reference (or a baseline of 0)."""
        if self.ref_change is None or self.baseline <= 0:
            return None
        return (self.now / self.ref_now) / (self.baseline / self.ref_baseline) - 1

    @property
    def slipped(self) -> bool:
        relative = self.relative_change
        return self.change > self.tolerance and (relative is None or relative > self.tolerance)

    @property
    def moved_with_reference(self) -> bool:
        """Risen past its tolerance, but no more than the reference: the lease's host, not a slip."""
        return self.change > self.tolerance and not self.slipped

    def describe(self) -> str:
        text = (f"{self.entry} {self.figure} {self.baseline:g} -> {self.now:g} "
                f"({_percent(self.change)}, tolerance {self.tolerance:.0%})")
        if self.relative_change is not None:
            text += (f"; {_percent(self.relative_change)} against {self.reference}'s, which moved "
                     f"{_percent(self.ref_change)}")
        return text


@dataclass(frozen=True)
class Comparison:
    """``figures`` compared; ``failures``: what could not be compared and so fails the guard;
    ``notes``: what was not compared and is only reported."""

    figures: Tuple[Figure, ...]
    failures: Tuple[str, ...]
    notes: Tuple[str, ...]

    @property
    def slipped(self) -> List[Figure]:
        return [f for f in self.figures if f.slipped]

    @property
    def ok(self) -> bool:
        return not self.slipped and not self.failures

    def report(self, baseline: str) -> str:
        """A table of baseline vs now vs change, what was not compared, and the verdict."""
        lines = [f"regression guard against {baseline} (lower is better; a figure slips when it rises "
                 f"more than its tolerance)"]
        if self.figures:
            width = max(len(f.entry) for f in self.figures)
            lines.append(f"{'entry':{width}}  {'figure':20} {'baseline':>10} {'now':>10} {'change':>8} {'vs peer':>8}")
            for f in self.figures:
                flag = f"  SLIPPED (> {f.tolerance:.0%})" if f.slipped else ""
                if f.moved_with_reference:
                    flag = f"  moved with {f.reference}'s ({_percent(f.ref_change)}): the host, not judged a slip"
                relative = "" if f.relative_change is None else _percent(f.relative_change)
                lines.append(f"{f.entry:{width}}  {f.figure:20} {f.baseline:10.4g} {f.now:10.4g} "
                             f"{_percent(f.change):>8} {relative:>8}{flag}")
        lines += list(self.notes) + list(self.failures)
        moved = [f for f in self.figures if f.moved_with_reference]
        if moved:
            lines.append(f"{len(moved)} figure(s) rose past their tolerance with their reference kernel's on this "
                         f"host (judged against it, within tolerance; --absolute judges them alone):")
            lines += [f"  {f.describe()}" for f in moved]
        if self.ok:
            lines.append(f"guard passed: {len(self.figures)} figures within tolerance")
        else:
            lines.append(f"guard FAILED: {len(self.slipped)} of {len(self.figures)} figures slipped"
                         + (f"; {len(self.failures)} not compared (above)" if self.failures else ""))
            lines += [f"  slipped: {f.describe()}" for f in self.slipped]
        return "\n".join(lines)


def _percent(change: float) -> str:
    return "+inf" if math.isinf(change) else f"{change:+.1%}"


def compare(now: Sequence[Mapping], baseline: Sequence[Mapping], *, tolerance: float = DEFAULT_TOLERANCE,
            tolerances: Optional[Mapping[str, float]] = None, any_device: bool = False,
            absolute: bool = False) -> Comparison:
    """Compare the rows of a run with the baseline's (module docstring: the rules).

    ``tolerance``: the allowed rise of every figure, a fraction (0.10 = 10%); ``tolerances``:
    per figure name, over it. A row's references: ``"reference"`` (a name) and ``"references"``
    (figure -> that kernel's value in the same run); ``absolute`` ignores them. Raises
    ``ValueError`` for a row without a name, dtype or device, two rows of one entry, or a
    per-figure tolerance for a figure no row has.
    """
    tolerances = dict(tolerances or {})
    known = {f for row in [*now, *baseline] for f in _figures(row)}
    unknown = sorted(set(tolerances) - known)
    if unknown:
        raise ValueError(f"tolerance given for {unknown}: expected figures of these rows, {sorted(known)}")
    for rows, whose in ((now, "this run"), (baseline, "the baseline")):
        if not rows:
            return Comparison((), (f"not compared: {whose} has no entries",), ())
    width = 2 if any_device else 3  # entries match by (name, dtype) across devices
    now_by, base_by = _index(now, width), _index(baseline, width)
    devices_now, devices_base = _devices(now), _devices(baseline)
    notes: List[str] = []
    if devices_now != devices_base:
        where = f"the baseline is from {_names(devices_base)}, this run from {_names(devices_now)}"
        if not any_device:
            return Comparison((), (f"not compared: {where} (--baseline-any-device compares them anyway)",), ())
        notes.append(f"compared across devices: {where}")
    figures: List[Figure] = []
    failures: List[str] = []
    for key, base in base_by.items():
        label = " ".join(key[:2])
        row = now_by.get(key)
        if row is None:
            failures.append(f"not compared: {label}: in the baseline, not measured now")
            continue
        for name in _figures(base):
            if name not in _figures(row):
                failures.append(f"not compared: {label} {name}: in the baseline, not measured now")
                continue
            refs = {} if absolute else _references(base, row, name)
            figures.append(Figure(label, name, float(base[name]), float(row[name]),
                                  tolerances.get(name, tolerance), **refs))
        notes += [f"not compared: {label} {name}: not in the baseline" for name in _figures(row)
                  if name not in _figures(base)]
    notes += [f"not compared: {' '.join(key[:2])}: no baseline entry (record a new baseline to guard it)"
              for key in now_by if key not in base_by]
    if not figures and not failures:
        failures.append("not compared: the baseline's entries hold no figures")
    return Comparison(tuple(figures), tuple(failures), tuple(notes))


def _references(base: Mapping, row: Mapping, name: str) -> dict:
    """Figure ``name``'s reference fields when both rows hold its reference, from the same
    kernel; none otherwise (the figure is then judged alone)."""
    ref_base, ref_now = (r.get("references", {}).get(name) for r in (base, row))
    if ref_base is None or ref_now is None or base.get("reference") != row.get("reference"):
        return {}
    return {"reference": row.get("reference"), "ref_baseline": float(ref_base), "ref_now": float(ref_now)}


def _figures(row: Mapping) -> List[str]:
    """A row's figure names: its numeric values other than the entry's keys, in the row's order
    (a NaN is no figure: a baseline figure that is NaN now was not measured)."""
    return [k for k, v in row.items()
            if k not in KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]


def _devices(rows: Iterable[Mapping]) -> frozenset:
    return frozenset(row["device"] for row in rows)


def _names(devices: frozenset) -> str:
    return ", ".join(sorted(map(str, devices)))


def _index(rows: Sequence[Mapping], width: int) -> Dict[tuple, Mapping]:
    """Rows by their entry key (name, dtype[, device])."""
    out: Dict[tuple, Mapping] = {}
    for row in rows:
        missing = [k for k in KEYS if row.get(k) in (None, "")]
        if missing:
            raise ValueError(f"a guard row needs {KEYS}; {dict(row)} lacks {missing}")
        key = tuple(str(row[k]) for k in KEYS[:width])
        if key in out:
            raise ValueError(f"two rows for {' '.join(key)}: one entry a row (take the median of repeats first)")
        out[key] = row
    return out


# --------------------------------------------------------------------------------------
# The command-line side, shared by the benchmarks that guard their figures.
# --------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--baseline``, ``--tolerance``, ``--baseline-any-device`` and ``--check-only``."""
    group = parser.add_argument_group("regression guard (benchmarks/README.md)")
    group.add_argument("--baseline", metavar="FILE",
                       help="a saved result of this benchmark: after measuring, fail when a figure slips")
    group.add_argument("--tolerance", metavar="[FIGURE=]FRACTION", action="append", type=_tolerance, default=[],
                       help=f"the allowed rise, a fraction (default {DEFAULT_TOLERANCE}); FIGURE=FRACTION for "
                            "one figure (repeatable), e.g. --tolerance first_ms=0.5")
    group.add_argument("--baseline-any-device", action="store_true",
                       help="compare with a baseline from another device (its name differs) instead of failing")
    group.add_argument("--check-only", metavar="NOW.json",
                       help="compare a saved result with --baseline, measuring nothing")
    group.add_argument("--absolute", action="store_true",
                       help="judge host-bound figures alone, not against the reference kernel measured beside them")


def baseline_rows(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  rows_of: Callable[[dict], List[dict]], load: Callable[[str], dict]) -> Optional[List[dict]]:
    """The baseline's rows (``rows_of`` its ``load``-ed file) when ``--baseline`` was given, else
    None. With ``--check-only NOW.json`` it compares NOW.json's rows with them and exits (0: passed)."""
    if not args.baseline:
        if args.check_only:
            parser.error("--check-only NOW.json needs --baseline BASE.json")
        return None
    baseline = rows_of(load(args.baseline))
    if args.check_only:
        sys.exit(0 if check(rows_of(load(args.check_only)), baseline, args) else 1)
    return baseline


def measured(report: Mapping, key: str, benchmark: str) -> list:
    """``report[key]``, the measurements of a saved ``benchmark`` result, or SystemExit saying
    why there are none (skipped without CUDA, or another benchmark's file)."""
    if key not in report:
        why = f"skipped: {report['skipped']}" if "skipped" in report else f"no {key!r}: not a {benchmark} result"
        raise SystemExit(f"regression guard: nothing to compare in this file ({why})")
    return report[key]


def _tolerance(text: str) -> Tuple[Optional[str], float]:
    figure, _, value = text.rpartition("=")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not fraction >= 0 or (figure == "" and "=" in text):
        raise argparse.ArgumentTypeError(f"expected FRACTION or FIGURE=FRACTION with FRACTION >= 0 "
                                         f"(0.10 is 10%), got {text!r}")
    return figure or None, fraction


def check(now: Sequence[Mapping], baseline: Sequence[Mapping], args: argparse.Namespace) -> bool:
    """Compare as ``args`` asks (``add_arguments``), print the report; True when the guard passed."""
    default = [fraction for figure, fraction in args.tolerance if figure is None]
    per_figure = {figure: fraction for figure, fraction in args.tolerance if figure is not None}
    try:
        result = compare(now, baseline, tolerance=default[-1] if default else DEFAULT_TOLERANCE,
                         tolerances=per_figure, any_device=args.baseline_any_device,
                         absolute=getattr(args, "absolute", False))
    except ValueError as error:
        raise SystemExit(f"regression guard: {error}") from None
    print(result.report(args.baseline), flush=True)
    return result.ok

