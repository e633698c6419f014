"""What a pytest-ssd session found, per worker, mergeable across xdist workers.

Plain JSON-able records (no torch, no triton), so a worker can ship its part to the xdist
controller through ``workeroutput`` and the controller can merge, print and write them.
"""
from __future__ import annotations

import json
import platform
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


@dataclass
class ColdRecord:
    """Compiles/autotunes seen during one test phase."""

    nodeid: str
    phase: str  # "setup" (reported only) or "call" (fails under require-warm)
    outcome: str  # "failed" (enforced), "allowed" (ssd_allow_cold), "reported"
    seconds: float
    lines: list = field(default_factory=list)  # one explained line per event
    allow_reason: Optional[str] = None


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
    layer: str  # short: heads x head_dim, dstate, chunk, dtypes
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

    @property
    def recorded_anything(self) -> bool:
        """Whether this worker warmed, met a cold event, measured latency or judged warmth."""
        return bool(self.warmups or self.cold or self.latency or self.verdicts)

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
        )


@dataclass
class SessionReport:
    seed: int
    settings: dict
    environment: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)  # WorkerReport

    def totals(self) -> dict:
        warmups = [w for wr in self.workers for w in wr.warmups]
        cold = [c for wr in self.workers for c in wr.cold]
        verdicts = [v for wr in self.workers for v in wr.verdicts]
        return {
            "workers": len(self.workers),
            "warmups": len(warmups),
            "warmup_seconds": round(sum(w.seconds for w in warmups), 3),
            "warmup_binaries": sum(w.compiles for w in warmups),
            "cold_tests_failed": sum(1 for c in cold if c.outcome == "failed"),
            "cold_events_call": sum(len(c.lines) for c in cold if c.phase == "call"),
            "cold_events_setup": sum(len(c.lines) for c in cold if c.phase == "setup"),
            "verdicts": len(verdicts),
            "verdicts_cold": sum(1 for v in verdicts if v.cold),
            "autotune_candidates": sum(v.candidate_binaries for v in verdicts),
            "unused_binaries": (None if all(v.unused is None for v in verdicts)
                                else sum(len(v.unused or []) for v in verdicts)),
        }

    def to_dict(self) -> dict:
        return {
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
        """The terminal summary: warmups per worker, cold events by test, unused binaries."""
        lines = []
        for wr in sorted(self.workers, key=lambda w: w.worker):
            where = f"{wr.worker}" + (f" (GPU {wr.gpu})" if wr.gpu is not None else "")
            for w in wr.warmups:
                persisted = ""
                if w.persisted_caches:
                    cold = f"{w.cold_seconds:.2f}s" if w.cold_seconds is not None else "not on record"
                    persisted = f" [persisted caches; cold warmup {cold}]"
                lines.append(
                    f"warmup {where}: {w.layer}: {w.seconds:.2f}s, {w.compiles} binaries "
                    f"({w.compiled_fresh} compiled, {w.compiles - w.compiled_fresh} from disk), "
                    f"{w.autotunes} autotune keys ({w.autotunes_persisted} persisted){persisted}"
                )
            for c in wr.cold:
                tag = {"failed": "COLD (failed)", "allowed": f"cold (allowed: {c.allow_reason})",
                       "reported": "compiled in fixture (reported)" if c.phase == "setup"
                       else "compiled in test (reported)"}[c.outcome]
                lines.append(f"{tag} {c.nodeid} [{c.phase}, {where}] {c.seconds:.2f}s:")
                lines.extend("    " + line for line in c.lines)
            for r in wr.latency:
                lines.append(
                    f"latency {where} {r.nodeid} {r.name}: first {r.first_ms:.3f} ms, steady {r.steady_median_ms:.3f} ms "
                    f"(p20-p80 spread {r.steady_iqr_ms:.3f}), ratio {r.ratio:.2f} [{r.timer}]"
                )
        lines.extend(self.verdict_lines())
        lines.extend(self.bill_lines())
        t = self.totals()
        lines.append(
            f"total: {t['workers']} worker(s), {t['warmups']} warmup(s) {t['warmup_seconds']:.2f}s "
            f"{t['warmup_binaries']} binaries; cold: {t['cold_tests_failed']} test(s) failed, "
            f"{t['cold_events_call']} call-phase and {t['cold_events_setup']} fixture event(s); "
            + f"verdicts: {t['verdicts']} ({t['verdicts_cold']} cold), {t['autotune_candidates']} autotune "
            "candidate binaries, "
            + ("unused warm binaries not measured" if t["unused_binaries"] is None
               else f"{t['unused_binaries']} unused warm binaries")
        )
        return lines

    def verdict_lines(self) -> list:
        """One line per warmth verdict; then unused warm binaries and the warmup calls to add."""
        lines = []
        verdicts = [v for wr in self.workers for v in wr.verdicts]
        for v in verdicts:
            lost = "winners unknown" if v.candidates_lost is None else f"{v.candidates_lost} lost"
            unused = "unused ?" if v.unused is None else f"{len(v.unused)} unused"
            lines.append(f"verdict {v.layer} [{v.where}]: {'COLD ' + str(len(v.cold)) if v.cold else 'warm'} "
                         f"after {v.calls} calls; warmup {v.warmup_seconds:.1f}s, {v.warmup_binaries} binaries "
                         f"({v.candidate_binaries} autotune candidates, {lost}), {unused}")
            lines.extend(f"    unused: {u}" for u in (v.unused or []))
        fixes = list(dict.fromkeys(f"{fix} [{v.layer}]" for v in verdicts for fix in v.fixes))
        if fixes:
            lines.append("warmup calls to add, per layer config:")
            lines.extend(f"  {i}. {fix}" for i, fix in enumerate(fixes, 1))
        return lines

    def bill_lines(self) -> list:
        """The warmup's bill per layer config (one fresh process each): binaries compiled,
        autotune configs benchmarked, compile seconds; then the total over every xdist worker."""
        verdicts = sorted(((v, wr.worker) for wr in self.workers for v in wr.verdicts),
                          key=lambda pair: (pair[0].layer, pair[0].nodeid))
        if not verdicts:
            return []

        def seconds(where: str, value: float) -> str:
            return f"{value:.2f}s compiling (GPU)" if where == "cuda" else f"{value:.2f}s compile-only (CPU)"

        lines = ["warmup bill, per layer config:"]
        for v, worker in verdicts:
            lines.append(f"  {v.layer} [{v.where}, {worker}]: {v.warmup_binaries} binaries, {v.autotune_configs} "
                         f"autotune candidates benchmarked, {seconds(v.where, v.warmup_compile_seconds)}")
        gpu = [v for v, _ in verdicts if v.where == "cuda"]
        cpu = [v for v, _ in verdicts if v.where != "cuda"]
        parts = [seconds(where, sum(v.warmup_compile_seconds for v in group))
                 for where, group in (("cuda", gpu), ("cpu", cpu)) if group]
        workers = len({worker for _, worker in verdicts})
        lines.append(f"  total: {len(verdicts)} warmup(s) on {workers} worker(s): "
                     f"{sum(v.warmup_binaries for v, _ in verdicts)} binaries, "
                     f"{sum(v.autotune_configs for v, _ in verdicts)} autotune candidates benchmarked, "
                     + ", ".join(parts))
        return lines


def environment() -> dict:
    """Versions and devices, read where they are (torch/triton imported lazily)."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
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
