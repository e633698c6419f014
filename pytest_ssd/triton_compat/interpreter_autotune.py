"""Autotuning under Triton's interpreter: there is no driver to benchmark with.

| Triton  | how :func:`interpreter_autotuning` gives interpreted autotuners its benchmarker   |
|---------|-----------------------------------------------------------------------------------|
| 3.2     | as 3.3, and the interpreter drops every launch option a ``triton.Config`` passes  |
| 3.3     | ``Autotuner.__init__`` gets it instead of looking the driver's up (which raises   |
|         | without a GPU); ``Autotuner.do_bench`` returns it                                 |
| 3.4-3.9 | the lazy ``Autotuner.do_bench`` returns it (without: 3.8+ raises "0 active drivers") |
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import triton

from ._patch import Live, Patch
from ._versions import version_at_least


def interpreter_benchmarker(*, run_each_config: bool = False) -> Callable:
    """A ``do_bench`` for an autotuner of an interpreted kernel: needs no driver, picks the first config.

    The interpreter's timings say nothing about a GPU, so none are taken: every config gets the
    same timing (0), and Triton keeps the first config of least timing, i.e. the first config
    left after its own pruning (``prune_configs_by``), on every Triton 3.2-3.9. Deterministic:
    the same config wins in every process and on every run. Without ``run_each_config`` no
    config is launched while tuning (an interpreted launch is slow, and the launch that follows
    runs the winner); with it, each config is launched once, in order, so that a config that
    fails under the interpreter fails the tuning call.
    """
    def do_bench(kernel_call: Callable, quantiles: Sequence[float] | None = None, **_: Any) -> Any:
        if run_each_config:
            kernel_call()
        return [0.0] * len(quantiles) if quantiles else 0.0

    return do_bench


def tunes_interpreted(tuner: Any) -> bool:
    """Whether an ``Autotuner`` (or the function it wraps) runs under Triton's interpreter: the
    ``.fn`` chain (heuristics, autotuners) ends in an ``InterpretedFunction``, not a ``JITFunction``."""
    from triton.runtime.interpreter import InterpretedFunction

    fn = tuner
    while fn is not None and not isinstance(fn, InterpretedFunction):
        fn = getattr(fn, "fn", None)
        if inspect.isfunction(fn):  # reached the Python function: a JITFunction wrapped it
            return False
    return fn is not None


@contextmanager
def interpreter_autotuning(*, run_each_config: bool = False) -> Iterator[None]:
    """While active, every autotuner of an interpreted kernel tunes with :func:`interpreter_benchmarker`.

    For ``triton.autotune`` kernels of any module, defined before or inside the block: on a CPU
    there is no driver, and Triton 3.8+ benchmarks through it (``RuntimeError: 0 active
    drivers``), as 3.2/3.3 do when the kernel is defined. A benchmarker the kernel brought
    itself is set aside too (it would time on a GPU). Autotuners of compiled kernels keep theirs,
    so compile-only blocks inside this one work as before. How, per Triton: the table above.
    """
    from triton.runtime.autotuner import Autotuner

    bench = interpreter_benchmarker(run_each_config=run_each_config)

    def do_bench_property(prior: Any, live: Live) -> property:
        def get(tuner: Any) -> Any:
            if live.on and tunes_interpreted(tuner):
                return bench
            if hasattr(prior, "__get__"):  # 3.4+'s cached_property, or another block's property
                return prior.__get__(tuner, type(tuner))
            return vars(tuner)["do_bench"]  # 3.2/3.3: set by __init__

        def set_(tuner: Any, value: Any) -> None:
            if hasattr(prior, "__set__"):
                prior.__set__(tuner, value)
            else:
                vars(tuner)["do_bench"] = value

        return property(get, set_)

    def init_without_driver(prior: Callable, live: Live) -> Callable:
        def __init__(self: Any, fn: Any, *args: Any, do_bench: Any = None, **kwargs: Any) -> None:
            if do_bench is None and live.on and tunes_interpreted(fn):
                do_bench = bench
            prior(self, fn, *args, do_bench=do_bench, **kwargs)

        return __init__

    patches = [Patch.apply(Autotuner, "do_bench", do_bench_property)]
    if not version_at_least(3, 4):
        patches.append(Patch.apply(Autotuner, "__init__", init_without_driver))
    if not version_at_least(3, 3):
        import triton.runtime.interpreter as interpreter_module

        patches.append(Patch.apply(interpreter_module, "RESERVED_KWS", _with_config_launch_options))
    try:
        yield
    finally:
        for patch in reversed(patches):
            patch.undo()


def _with_config_launch_options(prior: list, _live: Live) -> list:
    """3.2's interpreter drops only some launch options from a launch's keywords; a
    ``triton.Config`` passes more (the warp-specialization ones), which it then rejects."""
    return prior + [k for k in triton.Config({}).all_kwargs() if k not in prior]
