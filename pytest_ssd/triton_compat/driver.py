"""Compile-only support: swapping Triton's active driver, and autotuning against whichever is active.

| what                                 | 3.2-3.3                      | 3.4                  | 3.5-3.9               |
|--------------------------------------|------------------------------|----------------------|-----------------------|
| the active driver's slot             | ``driver.active``            | same                 | ``driver._active``    |
| ``reset_active()`` without a GPU     | builds the default driver    | same                 | raises                |
| an autotuner's benchmarker           | fetched at definition        | fetched on first use | same                  |
| what ``utils.load_binary`` returns   | module, function, n_regs, n_spills | + n_max_threads | same              |
| persisted autotune results           | none                         | ``cache_results``    | same                  |

So the swap saves and restores the driver object itself, and autotuning in compile-only mode
fetches the active driver's benchmarker on every tuning call.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from ._patch import Patch
from ._versions import version_at_least
from .autotune_hooks import persisted_autotune_writes

# What a fake driver's ``utils.load_binary`` returns: (module, function, n_regs, n_spills[,
# n_max_threads]); 3.4+ added the thread limit.
LOADED_BINARY_STUB: tuple = (None, None, 0, 0, 1024) if version_at_least(3, 4) else (None, None, 0, 0)


def swap_active_driver(new: Any) -> Callable[[], None]:
    """Make ``new`` Triton's active driver; return a function that puts the previous one back.

    Restores the saved object itself: ``reset_active()`` would build the default driver,
    which raises without a GPU from 3.5 on.
    """
    from triton.runtime.driver import driver as config

    slot = "_active" if "_active" in vars(config) else "active"  # 3.5+ keeps it private
    saved = vars(config)[slot]
    setattr(config, slot, new)
    return lambda: setattr(config, slot, saved)


def bench_with_active_driver(kernel_call: Callable, quantiles: Sequence[float] = (0.5, 0.2, 0.8)) -> Any:
    """Benchmark with the driver active *now*: what Triton 3.4+ does by default.

    3.2/3.3 fetch the benchmarker once, when the kernel is defined; that fails without a GPU
    and would pin a kernel to the driver of that moment (e.g. compile-only's fake one).
    """
    from triton.runtime.driver import driver

    return driver.active.get_benchmarker()(kernel_call, quantiles=quantiles)


@contextmanager
def autotune_with_active_driver(*, persist: bool) -> Iterator[None]:
    """While active, every Autotuner benchmarks with ``driver.active``.

    3.4+ caches the benchmarker per autotuner on first use, 3.2/3.3 when the kernel is
    defined: without this, compile-only mode would either benchmark on a real GPU or leave
    its fake benchmarker behind. Unless ``persist``, Triton's persisted autotune results
    (``cache_results``, 3.4+) are read but never written, so fake timings stay out of the
    cache dir. Needs an active :func:`~.observe.observe_triton` observer for that part.
    """
    from triton.runtime.autotuner import Autotuner

    def benchmarker(_tuner: Any) -> Callable:
        from triton.runtime.driver import driver

        return driver.active.get_benchmarker()

    def keep_instance_benchmarker(tuner: Any, value: Any) -> None:
        # 3.2/3.3 assign do_bench in __init__: keep a lazy one rather than the fake itself.
        from triton.runtime.driver import driver

        fake = value is driver.active.get_benchmarker()
        tuner.__dict__["do_bench"] = bench_with_active_driver if fake else value

    patch = Patch.apply(Autotuner, "do_bench", lambda _prior, _live: property(benchmarker, keep_instance_benchmarker))
    try:
        with persisted_autotune_writes(persist):
            yield
    finally:
        patch.undo()
