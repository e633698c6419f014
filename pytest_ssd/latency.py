"""First-call latency against the steady state, measured the way a serving engineer would.

The first call is timed with the host wall clock around a synchronised call (compiling and
autotuning happen on the host, before anything reaches the device), with the Triton event
recorder on, so a spike comes with its explanation. The steady state is timed after warm-up
runs, over many repeats that rotate through several input sets (so caches do not flatter it),
with CUDA events on a GPU and the wall clock on CPU; it reports the median and the spread.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from .events import record_triton


@dataclass
class LatencyResult:
    name: str
    first_ms: float
    steady_median_ms: float
    steady_p20_ms: float
    steady_p80_ms: float
    repeats: int
    input_sets: int
    timer: str  # "cuda-events" or "wall-clock"
    first_call_compiles: int = 0
    first_call_autotunes: int = 0
    first_call_events: list = field(default_factory=list)  # describe() lines

    @property
    def ratio(self) -> float:
        return self.first_ms / self.steady_median_ms if self.steady_median_ms > 0 else float("inf")

    @property
    def steady_iqr_ms(self) -> float:
        """The p20-p80 spread of the steady state (the report field's name says IQR; it is wider)."""
        return self.steady_p80_ms - self.steady_p20_ms

    @property
    def decides(self) -> bool:
        """Only device-event timings on a GPU may decide pass/fail; CPU wall clocks only inform."""
        return self.timer == "cuda-events"

    def format(self) -> str:
        events = "" if not self.first_call_events else "\n  first call: " + "\n  first call: ".join(self.first_call_events)
        note = "" if self.decides else " (CPU wall clock: informative only)"
        return (f"{self.name}: first call {self.first_ms:.3f} ms, steady median {self.steady_median_ms:.3f} ms "
                f"[p20 {self.steady_p20_ms:.3f}, p80 {self.steady_p80_ms:.3f}] over {self.repeats} runs of "
                f"{self.input_sets} input set(s), ratio {self.ratio:.2f}, {self.first_call_compiles} compiles, "
                f"{self.first_call_autotunes} autotunes [{self.timer}]{note}{events}")


def _check_input_sets(input_sets: object) -> None:
    """A list (or tuple) of argument tuples: ``[(x, out), (x2, out2)]``. A list of tensors would be
    taken apart row by row (``fn(*tensor)``), so it is refused."""
    if not isinstance(input_sets, (list, tuple)) or not input_sets:
        raise ValueError(f"input_sets: expected a non-empty list of argument tuples, e.g. [(x, out)], "
                         f"got {input_sets!r:.80}")
    for i, args in enumerate(input_sets):
        if not isinstance(args, (tuple, list)):
            raise ValueError(f"input_sets[{i}]: expected a tuple of arguments for fn, e.g. (x, out), got a "
                             f"{type(args).__name__}; wrap one argument as (x,)")


def _check_max_ratio(max_ratio: object) -> None:
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 1 < max_ratio < math.inf:
        raise ValueError(f"max_ratio: expected a finite number > 1 (first call / steady state), got {max_ratio!r}")


def _uses_cuda(device: Optional[torch.device]) -> bool:
    return device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()


def measure_latency(
    fn: Callable[..., Any],
    input_sets: Sequence[tuple],
    *,
    device: Optional[torch.device] = None,
    name: Optional[str] = None,
    warmup_runs: int = 3,
    repeats: int = 50,
) -> LatencyResult:
    """Time ``fn(*input_sets[0])`` once (the first call), then the steady state.

    ``input_sets``: one or more argument tuples; the first call uses the first, the steady
    state rotates through all of them. ``device``: the CUDA device the work runs on (None or a
    CPU device: wall clock only).
    """
    _check_input_sets(input_sets)
    if not callable(fn):
        raise ValueError(f"fn: expected a callable, got {type(fn).__name__}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 3:
        raise ValueError(f"repeats: expected an int >= 3 (a median needs several samples), got {repeats!r}")
    if isinstance(warmup_runs, bool) or not isinstance(warmup_runs, int) or warmup_runs < 0:
        raise ValueError(f"warmup_runs: expected an int >= 0, got {warmup_runs!r}")
    cuda = _uses_cuda(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    sync()
    with record_triton() as rec:
        start = time.perf_counter()
        fn(*input_sets[0])
        sync()
        first_ms = (time.perf_counter() - start) * 1e3

    for i in range(warmup_runs):
        fn(*input_sets[i % len(input_sets)])
    sync()
    samples = []
    for i in range(repeats):
        args = input_sets[i % len(input_sets)]
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn(*args)
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t0) * 1e3)
    quintiles = statistics.quantiles(samples, n=5, method="inclusive")  # p20, p40, p60, p80
    return LatencyResult(
        name=name or getattr(fn, "__name__", "fn"),
        first_ms=first_ms,
        steady_median_ms=statistics.median(samples),
        steady_p20_ms=quintiles[0],
        steady_p80_ms=quintiles[3],
        repeats=repeats,
        input_sets=len(input_sets),
        timer="cuda-events" if cuda else "wall-clock",
        first_call_compiles=len(rec.compiles),
        first_call_autotunes=len(rec.autotunes),
        first_call_events=[e.describe() for e in rec.events],
    )


def assert_no_latency_spike(
    fn: Callable[..., Any],
    input_sets: Sequence[tuple],
    *,
    max_ratio: float = 1.5,
    device: Optional[torch.device] = None,
    name: Optional[str] = None,
    **kwargs: Any,
) -> LatencyResult:
    """Fail if the first call compiled or autotuned anything, or (GPU only) was over ``max_ratio`` x steady.

    On CPU the ratio is measured and returned but never fails: wall-clock timings of a shared
    CI machine say nothing about a GPU's first request.
    """
    _check_max_ratio(max_ratio)
    result = measure_latency(fn, input_sets, device=device, name=name, **kwargs)
    if result.first_call_compiles or result.first_call_autotunes:
        raise AssertionError(f"first call was cold: {result.format()}")
    if result.decides and result.ratio > max_ratio:
        raise AssertionError(f"first call {result.ratio:.2f}x the steady state (limit {max_ratio}): {result.format()}")
    return result
