"""Autotuner misses: one autotune event per key an autotuner tunes, benchmarked or persisted.

| what                                     | 3.2-3.3                     | 3.4-3.7              | 3.8-3.9         |
|------------------------------------------|-----------------------------|----------------------|-----------------|
| a miss and its configs                   | ``Autotuner.prune_configs`` | same                 | same            |
| each config's benchmark                  | ``Autotuner._bench``        | same                 | same            |
| persisted results (``cache_results=True``) | none                      | ``check_disk_cache`` | same            |
| ``knobs.autotuning.listener``            | none                        | none                 | there; not used |

The methods wrapped here run only when an autotuner's in-memory cache misses; ``Autotuner.run``
stays untouched, so a warm launch costs exactly what it costs without us.
``knobs.autotuning.listener`` (3.8+) is deliberately not used: while it is set, Triton's
``Autotuner.run`` crashes for interpreted kernels (it walks ``.fn`` looking for a
``JITFunction``), and these wrappers give the same facts on every version.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import _registry
from ._patch import Live
from .fields import config_fields, named_tuning_key


@dataclass
class _PendingTune:
    """An autotuner miss between prune_configs and its last benchmark (one thread)."""

    tuner: Any
    key_values: dict[str, Any]
    key_dtypes: dict[str, str]
    n_configs: int
    started: float
    results: list = field(default_factory=list)
    in_disk_check: bool = False


_local = threading.local()
_persisted_autotune_writes = True


def _pending_tunes() -> dict[int, _PendingTune]:
    if not hasattr(_local, "tunes"):
        _local.tunes = {}
    return _local.tunes


def benchmarking() -> bool:
    """Whether this thread is inside an autotuner's benchmark: a compile there is a candidate's."""
    return getattr(_local, "benchmarking", 0) > 0


@contextmanager
def persisted_autotune_writes(allowed: bool) -> Iterator[None]:
    """Unless ``allowed``, observed autotuners read Triton's persisted autotune results
    (``cache_results``, 3.4+) while the block runs but never write them."""
    global _persisted_autotune_writes
    _persisted_autotune_writes = allowed
    try:
        yield
    finally:
        _persisted_autotune_writes = True


def patch_specs() -> list[tuple[Any, str, Callable]]:
    """``(owner, attribute, make)`` of every Autotuner method our spies wrap on the installed Triton."""
    from triton.runtime.autotuner import Autotuner

    specs = [(Autotuner, "prune_configs", _prune_configs_spy), (Autotuner, "_bench", _bench_spy)]
    if hasattr(Autotuner, "check_disk_cache"):
        specs.append((Autotuner, "check_disk_cache", _disk_cache_spy))
    return specs


def _prune_configs_spy(prior: Callable, live: Live) -> Callable:
    def prune_configs(self: Any, kwargs: dict, *args: Any, **kw: Any) -> Any:
        pruned = prior(self, kwargs, *args, **kw)
        if live.on:
            _registry.check_hooks()  # an autotune miss compiles next: our compile hooks must be in place
            key, values, dtypes = named_tuning_key(self, kwargs)
            _pending_tunes()[id(self)] = _PendingTune(self, values, dtypes, len(pruned), time.perf_counter())
            if key not in self.cache:  # Autotuner.warmup prunes too, without a miss
                _registry.emit("on_tune_start", self, key)
        return pruned

    return prune_configs


def _bench_spy(prior: Callable, live: Live) -> Callable:
    def _bench(self: Any, *args: Any, config: Any, **meta: Any) -> Any:
        _local.benchmarking = getattr(_local, "benchmarking", 0) + 1  # compiles in here are candidates
        try:
            timing = prior(self, *args, config=config, **meta)
        finally:
            _local.benchmarking -= 1
        pending = _pending_tunes().get(id(self)) if live.on else None
        if pending is not None and pending.tuner is self:
            pending.results.append((config, timing))
            if not pending.in_disk_check and len(pending.results) == pending.n_configs:
                # Triton picks the first config of least timing: min() over configs in order.
                _finish_tune(pending, "benchmarked", min(pending.results, key=lambda r: r[1])[0])
        return timing

    return _bench


def _disk_cache_spy(prior: Callable, live: Live) -> Callable:
    def check_disk_cache(self: Any, tuning_key: Any, configs: Any, bench_fn: Callable, *args: Any, **kw: Any) -> Any:
        if not live.on:
            return prior(self, tuning_key, configs, bench_fn, *args, **kw)
        pending = _pending_tunes().get(id(self))
        if pending is not None:
            pending.in_disk_check = True
        if _persisted_autotune_writes:
            hit = prior(self, tuning_key, configs, bench_fn, *args, **kw)
        else:
            hit = _check_disk_cache_read_only(prior, self, tuning_key, configs, bench_fn, *args, **kw)
        if pending is not None and pending.tuner is self:
            _finish_tune(pending, "persisted" if hit else "benchmarked", self.cache.get(tuning_key))
        return hit

    return check_disk_cache


class _SkipPersist(Exception):
    """Raised right after benchmarking to stop check_disk_cache before it writes."""


def _check_disk_cache_read_only(prior: Callable, tuner: Any, tuning_key: Any, configs: Any, bench_fn: Callable,
                                *args: Any, **kw: Any) -> bool:
    """Load persisted results if there are any; never store new ones.

    In 3.4-3.9 ``check_disk_cache`` returns on a hit and otherwise benchmarks, then writes:
    stopping it right after the benchmark leaves the autotuner exactly as after a miss.
    """
    def bench_then_stop() -> None:
        bench_fn()
        raise _SkipPersist

    try:
        return prior(tuner, tuning_key, configs, bench_then_stop, *args, **kw)
    except _SkipPersist:
        return False


def _finish_tune(pending: _PendingTune, source: str, winner: Any) -> None:
    _pending_tunes().pop(id(pending.tuner), None)
    base = pending.tuner.base_fn
    _registry.emit("on_autotune", {
        "kernel": base.__qualname__,
        "module": base.__module__,
        "key_values": pending.key_values,
        "key_dtypes": pending.key_dtypes,
        "configs_benchmarked": len(pending.results),
        "winner": config_fields(winner) if winner is not None else None,
        "source": source,
        "seconds": time.perf_counter() - pending.started,
    })
