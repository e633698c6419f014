"""What a pytest-ssd session found, per worker, mergeable across xdist workers.

Plain JSON-able records (no torch, no triton), so a worker can ship its part to the xdist
controller through ``workeroutput`` and the controller can merge, print and write them.
"""
from __future__ import annotations

import json
import platform
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass
class WarmupRecord:
    """One run of the configured warmup for one layer configuration."""

    layer: str  # one-line description of the layer config
    seconds: float
    compiles: int  # in-memory JIT misses during the warmup
    compiled_fresh: int  # of which really compiled (not from Triton's disk cache)
    autotunes: int  # autotune keys benchmarked (or loaded from the persisted cache)
    autotunes_persisted: int
    binaries: list = field(default_factory=list)  # describe() lines
    persisted_caches: bool = False  # --ssd-persist-autotune was on
    cold_seconds: Optional[float] = None  # this layer's warmup with empty caches, as recorded in the persist dir
    name: Optional[str] = None  # the layer config in a few words, for the terminal (verdict.layer_names)


@dataclass
class ColdRecord:
    """Compiles/autotunes seen during one test phase, after the process's warmups."""

    nodeid: str
    phase: str  # "setup" (the test's fixtures: a warmup, never failed) or "call"
    outcome: str  # "failed" (enforced), "allowed" (ssd_allow_cold), "reported" (not enforced), "warmup" (setup)
    seconds: float
    lines: list = field(default_factory=list)  # one line per event: the binary, then why (or which fixture)
    allow_reason: Optional[str] = None
    enforced_by: Optional[str] = None  # "--ssd-require-warm (cli)", "@pytest.mark.ssd_requires_warm", ...
    layer: Optional[str] = None  # WarmupRecord.layer the test warmed last, or a verdict's VerdictRecord.layer


@dataclass
class LatencyRecord:
    nodeid: str
    name: str
    first_ms: float
    steady_median_ms: float
    steady_iqr_ms: float
    ratio: float
    timer: str  # "cuda-events" or "wall-clock"
    first_call_events: list = field(default_factory=list)


@dataclass
class VerdictRecord:
    """One warmth verdict (:mod:`pytest_ssd.verdict`): a fresh process's warmup and workload."""

    nodeid: str
    layer: str  # verdict.layer_names.layer_short_name: dtypes, heads x head_dim, dstate, groups, chunk
    kernel: str
    warmup: str
    where: str  # "cuda" (real launches) or "compile-only cuda:90"
    warmup_seconds: float
    warmup_binaries: int
    autotune_keys: int
    calls: int
    cold: list = field(default_factory=list)  # one explained line per cold event
    fixes: list = field(default_factory=list)  # the warmup calls to add
    candidates: list = field(default_factory=list)  # autotune candidate groups, described
    candidate_binaries: int = 0
    candidates_lost: Optional[int] = None  # None: winners unknown (compile-only)
    unused: Optional[list] = None  # warm binaries no request needed; None: not measurable here
    warmup_compile_seconds: float = 0.0  # compiling the warmup's binaries (compile-only: a CPU's seconds)
    autotune_configs: int = 0  # autotune configs the warmup benchmarked
    warmup_manifest: Optional[dict] = None  # pytest_ssd.manifest.layer_entry of the warmup


@dataclass
class WorkerReport:
    worker: str  # "main" without xdist, else "gw0", ...
    gpu: Optional[str] = None
    warmups: list = field(default_factory=list)  # WarmupRecord
    cold: list = field(default_factory=list)  # ColdRecord
    latency: list = field(default_factory=list)  # LatencyRecord
    verdicts: list = field(default_factory=list)  # VerdictRecord
    # What Triton's interpreter was found to get wrong, and what the suite did about it: the bf16
    # tl.dot probe (pytest_ssd.interpreter.DotProbe.to_dict()), its skip reason, cases skipped.
    # None where no interpreted bf16 case ran.
    interpreter: Optional[dict] = None

    @property
    def recorded_anything(self) -> bool:
        """Whether this worker warmed, met a cold event, measured latency, judged warmth or probed
        the interpreter."""
        return bool(self.warmups or self.cold or self.latency or self.verdicts or self.interpreter)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WorkerReport":
        return cls(
            worker=data["worker"],
            gpu=data.get("gpu"),
            warmups=[WarmupRecord(**w) for w in data.get("warmups", [])],
            cold=[ColdRecord(**c) for c in data.get("cold", [])],
            latency=[LatencyRecord(**r) for r in data.get("latency", [])],
            verdicts=[VerdictRecord(**v) for v in data.get("verdicts", [])],
            interpreter=data.get("interpreter"),
        )


REPORT_FORMAT = "pytest-ssd-report-v1"  # docs/report.md; renaming or dropping a field bumps it
WIDTH = 120  # the terminal summary's widest line


def _fit(line: str, width: int = WIDTH) -> str:
    """``line`` cut to ``width`` columns: the middle goes, the start and the end (a test id) stay."""
    if len(line) <= width:
        return line
    tail = (width - 3) // 3
    return line[:width - 3 - tail] + "..." + line[len(line) - tail:]


def _wrapped(line: str, indent: int = 6, width: int = WIDTH) -> list:
    """A binary's line, whole, on as many lines of ``width`` as it takes (continuations indented 2 more)."""
    return textwrap.wrap(line, width=width, initial_indent=" " * indent, subsequent_indent=" " * (indent + 2),
                         break_on_hyphens=False) or [" " * indent]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass
class SessionReport:
    seed: int
    settings: dict
    environment: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)  # WorkerReport

    def totals(self) -> dict:
        """Counts over all workers. Warmup events happen in ssd_warmup or in the tests' fixtures
        (setup phase); cold events are the ones after warmup (call phase)."""
        warmups = [w for wr in self.workers for w in wr.warmups]
        cold = [c for wr in self.workers for c in wr.cold]
        verdicts = [v for wr in self.workers for v in wr.verdicts]
        setup = [c for c in cold if c.phase == "setup"]
        call = [c for c in cold if c.phase == "call"]
        return {
            "workers": len(self.workers),
            "warmups": len(warmups),
            "warmup_seconds": round(sum(w.seconds for w in warmups), 3),
            "warmup_binaries": sum(w.compiles for w in warmups),
            "warmup_autotunes": sum(w.autotunes for w in warmups),
            "fixture_tests": len({c.nodeid for c in setup}),
            "fixture_seconds": round(sum(c.seconds for c in setup), 3),
            "cold_events_setup": sum(len(c.lines) for c in setup),
            "cold_events_call": sum(len(c.lines) for c in call),
            "cold_seconds_call": round(sum(c.seconds for c in call), 3),
            "cold_tests_failed": sum(1 for c in call if c.outcome == "failed"),
            "cold_tests_allowed": sum(1 for c in call if c.outcome == "allowed"),
            "cold_tests_reported": sum(1 for c in call if c.outcome == "reported"),
            "verdicts": len(verdicts),
            "verdicts_cold": sum(1 for v in verdicts if v.cold),
            "autotune_candidates": sum(v.candidate_binaries for v in verdicts),
            "unused_binaries": (None if all(v.unused is None for v in verdicts)
                                else sum(len(v.unused or []) for v in verdicts)),
        }

    def to_dict(self) -> dict:
        return {
            "format": REPORT_FORMAT,
            "seed": self.seed,
            "settings": self.settings,
            "environment": self.environment,
            "totals": self.totals(),
            "workers": [w.to_dict() for w in self.workers],
        }

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=False, default=str)

    def summary_lines(self) -> list:
        """The terminal summary, at most :data:`WIDTH` columns: a table of warmups (one row per
        layer config and worker), fixture warmups, cold events by test, latency, unused binaries,
        totals. Full binary and layer identities are in the JSON report."""
        workers = sorted(self.workers, key=lambda w: w.worker)
        lines = self._warmup_table(workers)
        for title, phase in (("warmed in fixtures (setup phase: the tests' own warmup, never failed)", "setup"),
                             ("cold after warmup (call phase)", "call")):
            records = [(wr, c) for wr in workers for c in wr.cold if c.phase == phase]
            if records:
                lines.append(title)
            for wr, c in records:
                lines.append(f"  {self._cold_tag(c)} [{self._where(wr)}] {c.seconds:.2f}s: {c.nodeid}")
                lines.extend(part for line in c.lines for part in _wrapped(line))
        latency = [(wr, r) for wr in workers for r in wr.latency]
        if latency:
            lines.append("latency (first call vs steady state)")
        for wr, r in latency:
            lines.append(f"  {self._where(wr)} {r.nodeid}")
            lines.append(f"      {r.name}: first {r.first_ms:.3f} ms, steady {r.steady_median_ms:.3f} ms "
                         f"(p20-p80 spread {r.steady_iqr_ms:.3f}), ratio {r.ratio:.2f} [{r.timer}]")
        for wr in workers:
            if wr.interpreter:
                probe, reason = wr.interpreter["bf16_dot"], wr.interpreter["bf16_skip_reason"]
                lines.append(f"interpreter {self._where(wr)}: " + (
                    f"{wr.interpreter['bf16_cases_skipped']} bf16 correctness case(s) skipped: {reason}" if reason
                    else f"Triton {probe['triton']}'s interpreter computes bf16 tl.dot exactly (probe): bf16 cases judged"))
        lines.extend(self.verdict_lines())
        lines.extend(self._total_lines())
        return [_fit(line) for line in lines]

    @staticmethod
    def _where(wr) -> str:
        return wr.worker + (f" GPU {wr.gpu}" if wr.gpu is not None else "")

    @staticmethod
    def _cold_tag(c) -> str:
        if c.phase == "setup":
            return "warmup"
        if c.outcome == "failed":
            return "FAILED" + (f" ({c.enforced_by})" if c.enforced_by else "")
        if c.outcome == "allowed":
            return f"allowed ({c.allow_reason})"
        return "reported (not enforced)"

    def _warmup_table(self, workers: list) -> list:
        rows, idle = [], []  # idle: warmups with nothing to show (on CPU, those under Triton's interpreter)
        for wr in workers:
            cold = {}
            for c in wr.cold:
                if c.phase == "call" and c.layer is not None:
                    cold[c.layer] = cold.get(c.layer, 0) + len(c.lines)
            for w in wr.warmups:
                if not (w.compiles or w.autotunes or cold.get(w.layer) or w.persisted_caches):
                    idle.append(w)
                    continue
                persisted = "" if not w.persisted_caches else (
                    f"{w.cold_seconds:.2f}s" if w.cold_seconds is not None else "not on record")
                rows.append((w.name or w.layer, self._where(wr), f"{w.seconds:.2f}s", str(w.compiles),
                             str(w.compiles - w.compiled_fresh), str(w.autotunes), str(cold.get(w.layer, 0)),
                             persisted))
        idle_line = ([f"  and {_plural(len(idle), 'warmup')} that compiled and tuned nothing and met nothing cold "
                      f"({sum(w.seconds for w in idle):.2f}s; e.g. under Triton's interpreter)"] if idle else [])
        if not rows:
            return ["warmups", *idle_line] if idle else []
        header = ("layer config (ssd_warmup)", "worker", "time", "binaries", "disk", "tunes", "cold", "uncached")
        if not any(r[-1] for r in rows):  # the last column only with --ssd-persist-autotune
            header, rows = header[:-1], [r[:-1] for r in rows]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        widths[0] = min(widths[0], WIDTH - sum(widths[1:]) - 2 * len(widths))

        def row(cells) -> str:
            first = cells[0] if len(cells[0]) <= widths[0] else cells[0][:widths[0] - 3] + "..."
            return "  " + "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

        notes = ["  binaries: new in this process (a dtype-independent one an earlier warmup compiled is not "
                 "counted again),",
                 "  disk: of them loaded from Triton's disk cache; tunes: autotune keys; cold: events after this "
                 "warmup"]
        if len(header) == 8:
            notes.append("  uncached: this warmup's time with empty caches, on record in --ssd-persist-autotune's dir")
        return ["warmups", row(header), *(row(r) for r in rows), *idle_line, *notes]

    def _total_lines(self) -> list:
        t = self.totals()
        in_warmups = t["warmup_binaries"] + t["warmup_autotunes"]
        unused = ("not measured" if t["unused_binaries"] is None else str(t["unused_binaries"]))
        return [
            f"warmup total: {_plural(in_warmups + t['cold_events_setup'], 'compile/autotune event')} = "
            f"{in_warmups} in {_plural(t['warmups'], 'ssd_warmup run')} ({t['warmup_seconds']:.2f}s) + "
            f"{t['cold_events_setup']} in fixtures of {_plural(t['fixture_tests'], 'test')} "
            f"({t['fixture_seconds']:.2f}s)",
            f"after warmup: {_plural(t['cold_events_call'], 'event')} ({t['cold_seconds_call']:.2f}s): "
            f"{t['cold_tests_failed']} test(s) failed, {t['cold_tests_allowed']} allowed, "
            f"{t['cold_tests_reported']} reported",
            f"warmth verdicts (fresh processes): {t['verdicts']}, {t['verdicts_cold']} cold; "
            f"{t['autotune_candidates']} autotune candidate binaries; unused warm binaries: {unused}",
        ]

    def verdict_lines(self) -> list:
        """The warmth verdicts, one row per layer config with its warmup's bill; the bill's total
        over every xdist worker; unused warm binaries; the warmup calls to add (cold events
        themselves are listed with their tests)."""
        verdicts = sorted(((v, wr.worker) for wr in self.workers for v in wr.verdicts),
                          key=lambda pair: (pair[0].layer, pair[0].nodeid))
        if not verdicts:
            return []
        lines = ["warmth verdicts (a fresh process each; candidates: compiled to benchmark autotune configs)"]
        for v, worker in verdicts:
            lost = "winners unknown" if v.candidates_lost is None else f"{v.candidates_lost} lost"
            unused = "?" if v.unused is None else str(len(v.unused))
            row = (f"{v.layer} [{v.where}, {worker}]: {'COLD ' + str(len(v.cold)) if v.cold else 'warm'}, "
                   f"{v.calls} calls | warmup {v.warmup_seconds:.1f}s, {v.warmup_binaries} binaries, "
                   f"{v.autotune_configs} configs benchmarked, {_compiling(v.where, v.warmup_compile_seconds)} | "
                   f"candidates {v.candidate_binaries} ({lost}), unused {unused}")
            lines.extend(_wrapped(row, indent=2))
            lines.extend(part for u in (v.unused or []) for part in _wrapped("unused: " + u))
        parts = [_compiling(where, sum(v.warmup_compile_seconds for v, _ in verdicts if (v.where == "cuda") == gpu))
                 for where, gpu in (("cuda", True), ("compile-only", False))
                 if any((v.where == "cuda") == gpu for v, _ in verdicts)]
        lines.append(f"  warmup bill: {len(verdicts)} warmup(s) on {len({w for _, w in verdicts})} worker(s), "
                     f"{sum(v.warmup_binaries for v, _ in verdicts)} binaries, "
                     f"{sum(v.autotune_configs for v, _ in verdicts)} autotune configs benchmarked, " + ", ".join(parts))
        fixes = list(dict.fromkeys(f"{fix} [{v.layer}]" for v, _ in verdicts for fix in v.fixes))
        if fixes:
            lines.append("warmup calls to add, per layer config:")
            lines.extend(part for i, fix in enumerate(fixes, 1) for part in _wrapped(f"{i}. {fix}", indent=2))
        return lines


def _compiling(where: str, seconds: float) -> str:
    return f"{seconds:.2f}s compiling (GPU)" if where == "cuda" else f"{seconds:.2f}s compiling (compile-only)"


def environment() -> dict:
    """Versions and devices, read where they are (torch/triton imported lazily)."""
    from . import __version__

    env: dict[str, Any] = {"pytest_ssd": __version__, "python": platform.python_version(),
                           "platform": platform.platform()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_available"] = torch.cuda.is_available()
        if env["cuda_available"]:
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        env["torch"] = None
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env
