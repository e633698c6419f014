"""Per-process state of a pytest-ssd session: settings, the warm set, warmups, the worker report.

Kept apart from the pytest hooks so the hooks stay thin. torch/triton are imported lazily: a
session that never touches a kernel never imports them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import zlib
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

from .options import DEFAULT_KERNEL, Settings, load_callable
from .report import WarmupRecord, WorkerReport


def test_seed(base_seed: int, nodeid: str) -> int:
    """A per-test seed: stable for a test whatever order or worker runs it."""
    return (base_seed + zlib.crc32(nodeid.encode())) % (2**31)


def layer_description(layer: Any) -> str:
    """One line naming a layer configuration (its scalar fields; tensors left out)."""
    parts = []
    for f in fields(layer):
        value = getattr(layer, f.name)
        if f.name == "seed" or hasattr(value, "shape"):
            continue
        parts.append(f"{f.name}={str(value).replace('torch.', '')}")
    return "Mixer2Layer(" + ", ".join(parts) + ")"


@contextlib.contextmanager
def file_lock(path: str):
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


@dataclass
class Mode:
    """What this session can do with kernels."""

    device: str  # "cpu" or "cuda"
    compile_only: Optional[str]  # session-wide compile-only target, or None
    coverage_target: Optional[str]  # target for warmup-coverage checks on CPU (compile-only), or None on GPU

    @property
    def computes_results(self) -> bool:
        return self.compile_only is None


class SSDSession:
    """Everything a process of a pytest-ssd session keeps."""

    def __init__(self, settings: Settings, worker: str, gpu: Optional[str]) -> None:
        self.settings = settings
        self.report = WorkerReport(worker=worker, gpu=gpu)
        self._warm_events: list = []  # what this process's warmups compiled: the warm set
        self._filed: list = []  # cold events already filed in the report
        self._warmups: dict = {}
        self._kernel = None
        self._warmup_fn: Optional[Callable] = None
        self._mode: Optional[Mode] = None
        self.cleanup = contextlib.ExitStack()  # closed at pytest_unconfigure

    # ---- mode -----------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        if self._mode is None:
            self._mode = self._resolve_mode()
        return self._mode

    def _resolve_mode(self) -> Mode:
        s = self.settings
        if s.compile_only:
            return Mode(device="cpu", compile_only=s.compile_only, coverage_target=s.compile_only)
        import torch

        device = s.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return Mode(device=device, compile_only=None, coverage_target=None if device == "cuda" else "cuda:90")

    @property
    def kernel_interpreted(self) -> bool:
        """A third-party kernel on CPU runs under Triton's interpreter: it never compiles."""
        mode = self.mode
        return self.settings.kernel != DEFAULT_KERNEL and mode.device == "cpu" and not mode.compile_only

    @property
    def coverage_skip_reason(self) -> Optional[str]:
        """Why warmup coverage cannot be checked in this session, or None when it can."""
        if self.kernel_interpreted:
            return (f"{self.settings.kernel} runs under Triton's interpreter on CPU, where nothing compiles; "
                    f"check warmup coverage with --ssd-compile-only cuda:90 (or on a GPU)")
        return None

    # ---- the kernel and its warmup ----------------------------------------------------------
    @property
    def kernel(self):
        if self._kernel is None:
            from .adapters import SSDKernel, detect_api

            s = self.settings
            if self.kernel_interpreted and "TRITON_INTERPRET" not in os.environ:
                # A third-party kernel can only run on CPU through Triton's interpreter, which
                # Triton reads when the kernel is decorated: set it before importing it, and
                # take it back when the session ends.
                os.environ["TRITON_INTERPRET"] = "1"
                self.cleanup.callback(os.environ.pop, "TRITON_INTERPRET", None)
            fn = load_callable(s.kernel, "--ssd-kernel")
            api = detect_api(fn) if s.kernel_api == "auto" else s.kernel_api
            if api is None:
                import pytest

                raise pytest.UsageError(
                    f"pytest-ssd: cannot tell the API style of --ssd-kernel {s.kernel}: it has neither "
                    f"'cu_chunk_seqlens' (vLLM) nor 'return_final_states' (mamba_ssm); pass --ssd-kernel-api"
                )
            self._kernel = SSDKernel(fn=fn, api=api, name=s.kernel)
        return self._kernel

    @property
    def warmup_fn(self) -> Callable:
        if self._warmup_fn is None:
            self.kernel  # the kernel's module first: TRITON_INTERPRET is set before either imports
            self._warmup_fn = load_callable(self.settings.warmup, "--ssd-warmup")
        return self._warmup_fn

    def warm(self, layer: Any):
        """Run the configured warmup once for this layer configuration; returns its Recording."""
        from .compile_only import active_target
        from .events import record_triton

        # Compile-only binaries live under a device of their own: warm each mode (and target) separately.
        target = active_target()
        key = layer_description(layer) + (f" [compile-only {target}]" if target else "")
        if key in self._warmups:
            return self._warmups[key]
        persist = self.settings.persist_autotune
        lock = file_lock(os.path.join(persist, ".pytest-ssd-warmup.lock")) if persist else contextlib.nullcontext()
        with lock, record_triton() as rec:
            start = time.perf_counter()
            self.warmup_fn(layer)
            seconds = time.perf_counter() - start
            compiles, autotunes = rec.compiles, rec.autotunes
            fresh = sum(1 for e in compiles if e.source != "disk")
            cold_seconds = _remember_cold_warmup(persist, key, seconds, cold=bool(compiles) and fresh == len(compiles))
        self._warmups[key] = rec
        self._warm_events.extend(rec.events)
        self.report.warmups.append(WarmupRecord(
            layer=key, seconds=round(seconds, 4), compiles=len(compiles), compiled_fresh=fresh,
            autotunes=len(autotunes), autotunes_persisted=sum(1 for e in autotunes if e.source == "persisted"),
            binaries=[e.describe() for e in compiles], persisted_caches=bool(persist), cold_seconds=cold_seconds,
        ))
        return rec

    # ---- the warmth verdict ------------------------------------------------------------------
    def judge(self, nodeid: str, layer_kwargs: dict, requests=None):
        """The warmth verdict of the configured kernel, warmup and workload for one layer config,
        from a fresh process (:func:`pytest_ssd.verdict.judge`), filed in the report."""
        from .adapters import call_variants
        from .verdict import WorkloadSpec, judge

        s, kernel = self.settings, self.kernel
        device = "cuda" if self.mode.device == "cuda" and not self.mode.compile_only else "cpu"
        target = self.mode.coverage_target if device == "cpu" else _gpu_target()
        if requests is None:
            from .suite.cases import COVERAGE_REQUESTS

            requests = s.requests or COVERAGE_REQUESTS
        spec = WorkloadSpec.for_layer(layer_kwargs=layer_kwargs, kernel=kernel.name, api=kernel.api,
                                      warmup=s.warmup, workload=s.workload, requests=requests,
                                      variants=call_variants(kernel.fn, kernel.api), device=device, target=target,
                                      seed=s.seed)
        verdict = judge(spec)
        self.report.verdicts.append(_verdict_record(nodeid, verdict))
        if verdict.cold:
            from .report import ColdRecord

            self.report.cold.append(ColdRecord(
                nodeid=nodeid, phase="call", outcome="failed", lines=verdict.cold_lines(),
                seconds=round(sum(c.miss.event.seconds or 0.0 for c in verdict.cold), 4)))
        return verdict

    def unfiled(self, events: list) -> list:
        """Drop events already filed: recorded by a warmup, or filed by :meth:`file_cold`.

        Recordings nest (a warmup or a coverage check inside a watched test phase), and each gets
        an equal event for one compile (same fields, same measured time): equality, not identity
        of the objects, tells them apart.
        """
        return [e for e in events if e not in self._warm_events and e not in self._filed]

    # ---- cold events and their explanations ---------------------------------------------------
    def file_cold(self, nodeid: str, phase: str, outcome: str, events: list,
                  allow_reason: Optional[str] = None) -> list:
        """Explain ``events`` (:meth:`explain`) and file them in the report as one cold record;
        returns the explanation lines, for the failure message."""
        from .report import ColdRecord

        lines = self.explain(events)
        self._filed.extend(events)
        if phase == "setup":  # fixtures are where tests warm: what they compile is warm from now on
            self._warm_events.extend(events)
        self.report.cold.append(ColdRecord(nodeid=nodeid, phase=phase, outcome=outcome, lines=lines,
                                           seconds=round(sum(e.seconds or 0.0 for e in events), 4),
                                           allow_reason=allow_reason))
        return lines

    def explain(self, events: list) -> list:
        """One line per event: the binary, why this process's warmups did not have it, and what a
        fresh machine pays for it.

        Explained against the warmups (and what fixtures compiled) only, never against what
        earlier tests' call phases compiled: those binaries are warm in this process by accident.
        """
        from .coverage import compare
        from .events import Recording

        report = compare(Recording(events=list(self._warm_events)), Recording(events=list(events)))
        return [f"{miss.event.describe()} -- {miss.reason}{_fresh_cost(miss.event)}; fix: {miss.fix}"
                for miss in report.missing]


def _fresh_cost(event) -> str:
    """What a fresh machine pays for ``event``, where the recording could not measure it."""
    if getattr(event, "source", None) == "disk":
        return " (served by Triton's disk cache here: a fresh machine compiles it)"
    if getattr(event, "source", None) == "persisted":
        return " (loaded from persisted autotune results here: a fresh machine benchmarks it)"
    return ""


def _gpu_target():
    """The compile-only target that predicts this GPU's binaries, or None."""
    import torch

    from .compile_only import TARGETS

    major, minor = torch.cuda.get_device_capability()
    target = f"cuda:{major}{minor}"
    return target if target in TARGETS else None


def _verdict_record(nodeid: str, verdict):
    from .manifest import layer_entry
    from .report import VerdictRecord

    spec, layer = verdict.spec, verdict.spec.layer
    short = (f"{layer.get('nheads')}x{layer.get('head_dim')} N={layer.get('ssm_state_size')} "
             f"L={layer.get('chunk_size')} {layer.get('dtype', 'float32')}/{layer.get('state_dtype', 'float32')}")
    known = [group for group in verdict.candidates if group.winner is not None]
    return VerdictRecord(
        nodeid=nodeid, layer=short, kernel=spec.kernel, warmup=spec.warmup,
        where="cuda" if spec.device == "cuda" else f"compile-only {spec.target}",
        warmup_seconds=round(verdict.warmup_seconds, 3), warmup_binaries=len(verdict.warmup.binaries()),
        autotune_keys=len(verdict.warmup.autotune_keys()), calls=len(verdict.calls),
        cold=verdict.cold_lines(), fixes=verdict.fixes(), candidates=[g.describe() for g in verdict.candidates],
        candidate_binaries=sum(len(g.binaries) for g in verdict.candidates),
        candidates_lost=sum(len(g.lost) for g in known) if known or not verdict.candidates else None,
        unused=None if verdict.unused is None else [e.describe() for e in verdict.unused],
        warmup_compile_seconds=round(sum(e.seconds or 0.0 for e in verdict.warmup.compiles), 3),
        autotune_configs=sum(e.configs_benchmarked for e in verdict.warmup.autotunes),
        warmup_manifest=layer_entry(verdict, short),
    )
