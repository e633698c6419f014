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
        self._warm_events: list = []  # every event seen in this process: the warm set
        self._warmups: dict = {}
        self._kernel = None
        self._warmup_fn: Optional[Callable] = None
        self._mode: Optional[Mode] = None
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

    def unfiled(self, events: list) -> list:
        """Drop events already filed: recorded by a warmup or explained by :meth:`absorb`.

        Recordings nest (a warmup or a coverage check inside a watched test phase), and each gets
        an equal event for one compile (same fields, same measured time): equality, not identity
        of the objects, tells them apart.
        """
        return [e for e in events if e not in self._warm_events]

    # ---- the warm set and explanations --------------------------------------------------------
    def file_cold(self, nodeid: str, phase: str, outcome: str, events: list,
                  allow_reason: Optional[str] = None, enforced_by: Optional[str] = None) -> list:
        """Explain ``events`` (:meth:`absorb`) and file them in the report as one cold record,
        under the layer config the test warmed last; returns the explanation lines, for the
        failure message."""
        from .report import ColdRecord

        lines = self.absorb(events)
        layer = self.layers_warmed_in_test[-1] if self.layers_warmed_in_test else None
        self.report.cold.append(ColdRecord(nodeid=nodeid, phase=phase, outcome=outcome, lines=lines,
                                           seconds=round(sum(e.seconds or 0.0 for e in events), 4),
                                           allow_reason=allow_reason, enforced_by=enforced_by, layer=layer))
        return lines

    def absorb(self, events: list) -> list:
        """Explain cold events against the warm set, then count them as warm from now on.

        Returns one line per event: the binary and why the warm set did not have it.
        """
        from .coverage import compare
        from .events import Recording

        report = compare(Recording(events=list(self._warm_events)), Recording(events=list(events)))
        self._warm_events.extend(events)
        return [f"{miss.event.describe()} -- {miss.reason}" for miss in report.missing]
