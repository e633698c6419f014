"""Per-process state of a pytest-ssd session: settings, the warm set, warmups, the worker report.

Kept apart from the pytest hooks so the hooks stay thin. torch/triton are imported lazily: a
session that never touches a kernel never imports them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
import warnings
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


# The short dtype names of coverage._SHORT_DTYPES that layers use; not imported from there, because
# coverage imports triton and this module is loaded with the plugin in every pytest run.
_SHORT_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def layer_short_name(layer: Any) -> str:
    """A layer config in a few words for the terminal, e.g. ``bf16/fp32 h80x64 n128 g1 c256 z``.

    Model/state dtype, heads x head_dim, dstate, groups, chunk size, then what differs from a
    plain Mixer2 layer (``tp2``, ``z``, ``D/hdim``, ``no-softplus``, ``dt_limit=lo..hi``).
    The full identity is :func:`layer_description`.
    """
    def dtype(value: Any) -> str:
        name = str(value).replace("torch.", "")
        return _SHORT_DTYPES.get(name, name)

    words = [f"{dtype(layer.dtype)}/{dtype(layer.state_dtype)}", f"h{layer.nheads}x{layer.head_dim}",
             f"n{layer.ssm_state_size}", f"g{layer.n_groups}", f"c{layer.chunk_size}"]
    low, high = layer.dt_limit
    flags = ((layer.tp_size > 1, f"tp{layer.tp_size}"), (layer.gated, "z"), (layer.d_has_hdim, "D/hdim"),
             (not layer.dt_softplus, "no-softplus"),
             ((low, high) != (0.0, float("inf")), f"dt_limit={low:g}..{high:g}"))
    words += [word for on, word in flags if on]
    return " ".join(words)


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
        self._interpreter_settled = False
        # Layer configs ssd_warmup was called for in the current test (the plugin clears it at
        # each setup): the last one is the layer a cold event of the test is filed under.
        self.layers_warmed_in_test: list = []
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
        """A third-party kernel on CPU runs under Triton's interpreter: it never compiles.

        Decided without importing torch for the bundled kernel or compile-only mode."""
        s = self.settings
        return s.kernel != DEFAULT_KERNEL and not s.compile_only and self.mode.device == "cpu"

    def settle_interpreter(self) -> None:
        """Before anything imports triton: set ``TRITON_INTERPRET=1`` for an interpreted kernel.

        Triton reads it when a kernel is decorated, its own ``triton.language`` helpers included
        (decorated when triton is imported): a triton imported before it is set leaves JIT helpers
        that an interpreted kernel cannot call. Every autotuner of an interpreted kernel then tunes
        without a driver (:func:`pytest_ssd.triton_compat.interpreter_autotuning`: the first config
        wins), and ``torch.cuda.device`` of a CPU tensor's index is a no-op
        (:func:`pytest_ssd.interpreter.cpu_device_guards`). All is taken back when the session
        ends. A ``TRITON_INTERPRET`` of the user's own is left as it is.
        """
        if self._interpreter_settled or not self.kernel_interpreted:
            return
        self._interpreter_settled = True
        if "TRITON_INTERPRET" not in os.environ:
            if "triton" in sys.modules:
                warnings.warn(
                    f"pytest-ssd: triton was imported (by a plugin or conftest) before pytest-ssd could set "
                    f"TRITON_INTERPRET=1 for {self.settings.kernel}; interpreted kernels that call triton.language "
                    f"helpers will fail. Export TRITON_INTERPRET=1 before running pytest.", stacklevel=2)
            os.environ["TRITON_INTERPRET"] = "1"
            self.cleanup.callback(os.environ.pop, "TRITON_INTERPRET", None)
        from .interpreter import cpu_device_guards
        from .triton_compat import interpreter_autotuning

        self.cleanup.enter_context(interpreter_autotuning())
        self.cleanup.enter_context(cpu_device_guards())

    def adopt_interpreter(self, early: "SSDSession") -> None:
        """Take over what ``early`` (a session made before conftest files loaded) settled: this
        session takes it back when it ends."""
        self._interpreter_settled = early._interpreter_settled
        self.cleanup.enter_context(early.cleanup.pop_all())

    def interpreter_skip_reason(self, dtype: Any) -> Optional[str]:
        """Why a correctness case in ``dtype`` cannot judge this session's interpreted kernel (None: it can).

        Runs the bf16 probe (:func:`pytest_ssd.interpreter.probe_dot`) at the first bf16 case of
        an interpreted kernel, once; its outcome, and how many cases it skipped, go into the report.
        """
        import torch

        if dtype != torch.bfloat16 or not self.kernel_interpreted:
            return None
        from .interpreter import probe_dot

        probe = probe_dot(torch.bfloat16)
        if self.report.interpreter is None:
            self.report.interpreter = {"bf16_dot": probe.to_dict(), "bf16_skip_reason": probe.skip_reason,
                                       "bf16_cases_skipped": 0}
        if probe.exact:
            return None
        self.report.interpreter["bf16_cases_skipped"] += 1
        return probe.skip_reason

    @property
    def coverage_skip_reason(self) -> Optional[str]:
        """Why an in-process coverage check (``ssd_coverage_check``) cannot run here, or None."""
        if self.kernel_interpreted:
            return (f"{self.settings.kernel} runs under Triton's interpreter in this process, where nothing "
                    f"compiles; judge its warmth with ssd_verdict (a fresh compile-only process) instead")
        return None

    # ---- the kernel and its warmup ----------------------------------------------------------
    @property
    def kernel(self):
        if self._kernel is None:
            from .adapters import SSDKernel, detect_api

            s = self.settings
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
            self._warmup_fn = load_callable(self.settings.warmup, "--ssd-warmup")
        return self._warmup_fn

    def warm(self, layer: Any):
        """Run the configured warmup once for this layer configuration; returns its Recording."""
        from .compile_only import active_target
        from .events import record_triton

        # Compile-only binaries live under a device of their own: warm each mode (and target) separately.
        target = active_target()
        key = layer_description(layer) + (f" [compile-only {target}]" if target else "")
        self.layers_warmed_in_test.append(key)
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
            layer=key, name=layer_short_name(layer) + (f" compile-only {target}" if target else ""),
            seconds=round(seconds, 4), compiles=len(compiles), compiled_fresh=fresh,
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
        device = self.mode.device  # a CUDA mode is never compile-only
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
                seconds=round(sum(c.miss.event.seconds or 0.0 for c in verdict.cold), 4),
                enforced_by="the warmth verdict (a fresh process)", layer=self.report.verdicts[-1].layer))
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
                  allow_reason: Optional[str] = None, enforced_by: Optional[str] = None) -> list:
        """Explain ``events`` (:meth:`explain`) and file them in the report as one cold record,
        under the layer config the test warmed last; returns the explanation lines, for the
        failure message."""
        from .report import ColdRecord

        lines = self.explain(events)
        self._filed.extend(events)
        layer = self.layers_warmed_in_test[-1] if self.layers_warmed_in_test else None
        self.report.cold.append(ColdRecord(nodeid=nodeid, phase=phase, outcome=outcome, lines=lines,
                                           seconds=round(sum(e.seconds or 0.0 for e in events), 4),
                                           allow_reason=allow_reason, enforced_by=enforced_by, layer=layer))
        return lines

    def warmed_by_fixture(self, events: list) -> None:
        """Fixtures are where tests warm: what a setup phase compiled is warm from now on."""
        self._warm_events.extend(events)

    def explain(self, events: list) -> list:
        """One line per event: the binary, why this process's warmups did not have it, and what a
        fresh machine pays for it.

        Explained against the warmups (and what fixtures compiled) only, never against what
        earlier tests' call phases compiled: those binaries are warm in this process by accident.
        """
        from .coverage import compare
        from .events import Recording

        report = compare(Recording(events=list(self._warm_events)), Recording(events=list(events)))
        return [f"{miss.line(_fresh_cost(miss.event))}; fix: {miss.fix}"
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

    spec = verdict.spec
    short = _spec_layer_name(spec.layer)
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


def _spec_layer_name(layer: dict) -> str:
    """:func:`layer_short_name` of a verdict spec's layer (``make_mixer2_layer`` keywords, dtypes by name)."""
    import inspect
    from types import SimpleNamespace

    from .layer import make_mixer2_layer

    defaults = {name: p.default for name, p in inspect.signature(make_mixer2_layer).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return layer_short_name(SimpleNamespace(**{**defaults, **layer}))
