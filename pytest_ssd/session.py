"""Per-process state of a pytest-ssd session: settings, mode, the kernel and warmup, the worker report.

Kept apart from the pytest hooks so the hooks stay thin. torch/triton are imported lazily: a
session that never touches a kernel never imports them. What warmups compiled and what tests
compiled after them is the session's warm set (:mod:`pytest_ssd.verdict.warm_set`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .options import DEFAULT_KERNEL, Settings, load_callable
from .report import WorkerReport


def test_seed(base_seed: int, nodeid: str) -> int:
    """A per-test seed: stable for a test whatever order or worker runs it."""
    return (base_seed + zlib.crc32(nodeid.encode())) % (2**31)


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
        self._warm_set = None
        self._kernel = None
        self._warmup_fn: Optional[Callable] = None
        self._mode: Optional[Mode] = None
        self._interpreter_settled = False
        self.cleanup = contextlib.ExitStack()  # closed at pytest_unconfigure

    def set_environment(self, changes: dict) -> None:
        """Set the environment variables of ``changes`` (name -> value); the session's cleanup
        restores each (an in-process session ends)."""
        for name, value in changes.items():
            self.cleanup.callback(_restore_variable, name, os.environ.get(name))
            os.environ[name] = value

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

    def describe_mode(self) -> str:
        """Where kernels run and where compile-only mode is in effect, for the report header."""
        mode, s = self.mode, self.settings
        if mode.compile_only:
            source = s.sources.get("compile_only", "default")
            return (f"compile-only {mode.compile_only} ({source}) for the whole session: kernels compile for that "
                    f"target, nothing runs, correctness tests skip")
        device = f"device={mode.device}" + (" (auto)" if s.device == "auto" else f" ({s.sources.get('device')})")
        if mode.device == "cuda":
            return f"{device}: kernels run on the GPU"
        # Warmth verdicts run in fresh processes without the interpreter, for third-party kernels too.
        return (f"{device}: numerics under Triton's interpreter; warmup coverage in compile-only mode for "
                f"{mode.coverage_target} (fresh processes)")

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

    # ---- the warm set and the warmth verdict ---------------------------------------------------
    @property
    def warm_set(self):
        """This process's :class:`~pytest_ssd.verdict.warm_set.WarmSet`, filing in :attr:`report`.

        Made at first use (a warmup, a watched test phase): the verdict package imports triton,
        which must wait for :meth:`settle_interpreter`.
        """
        if self._warm_set is None:
            from .verdict.warm_set import WarmSet

            self._warm_set = WarmSet(self.report, persist_dir=self.settings.persist_autotune)
        return self._warm_set

    def start_test(self) -> None:
        """A test begins: it has warmed no layer config yet."""
        if self._warm_set is not None:
            self._warm_set.layers_in_test.clear()

    def judge(self, nodeid: str, layer_kwargs: dict, requests=None):
        """The warmth verdict of the configured kernel, warmup and workload for one layer config,
        from a fresh process (:func:`pytest_ssd.verdict.judge`), filed in the report."""
        from .adapters import call_variants
        from .verdict import WorkloadSpec, gpu_target, judge

        s, kernel = self.settings, self.kernel
        device = self.mode.device  # a CUDA mode is never compile-only
        if requests is None:
            from .suite.cases import COVERAGE_REQUESTS

            requests = s.requests or COVERAGE_REQUESTS
        spec = WorkloadSpec.for_layer(layer_kwargs=layer_kwargs, kernel=kernel.name, api=kernel.api,
                                      warmup=s.warmup, workload=s.workload, requests=requests,
                                      variants=call_variants(kernel.fn, kernel.api), device=device,
                                      target=self.mode.coverage_target if device == "cpu" else gpu_target(),
                                      seed=s.seed)
        verdict = judge(spec)
        record, cold = verdict.records(nodeid)
        self.report.verdicts.append(record)
        if cold is not None:
            self.report.cold.append(cold)
        return verdict


def _restore_variable(name: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
