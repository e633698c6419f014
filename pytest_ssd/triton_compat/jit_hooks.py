"""In-memory JIT misses: one compile event per binary Triton builds, compiled or loaded from disk.

| what                   | 3.2-3.3                                    | 3.4-3.9                                |
|------------------------|--------------------------------------------|----------------------------------------|
| JIT miss, before/after | ``JITFunction.cache_hook`` / ``compiled_hook`` | ``knobs.runtime.jit_cache_hook`` /  |
|                        |                                            | ``jit_post_compile_hook``              |
| compiled vs disk hit   | ``put_group`` on the compile's cache manager | ``knobs.compilation.listener(cache_hit=)`` |

Triton's JIT hooks fire on an in-memory cache miss only; ``JITFunction.run`` stays untouched, so
a warm launch costs exactly what it costs without us. Under ``TRITON_INTERPRET=1`` no hook fires
on any version. A truthy answer from a chained before-compile hook cancels the compile, as it
does without us.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import _registry
from ._patch import Live
from ._versions import version_at_least
from .autotune_hooks import benchmarking
from .fields import bound_int_args, read_launch_options, read_specialization


@dataclass
class _PendingCompile:
    """A JIT miss between Triton's before- and after-compile hooks (one thread)."""

    key: Any
    started: float
    int_values: dict[str, int] | None
    source: str | None = None


_local = threading.local()


def _pending_compiles() -> list[_PendingCompile]:
    if not hasattr(_local, "compiles"):
        _local.compiles = []
    return _local.compiles


def patch_specs() -> list[tuple[Any, str, Callable]]:
    """``(owner, attribute, make)`` of every slot our compile hooks take on the installed Triton."""
    if version_at_least(3, 4):
        from triton import knobs

        return [(knobs.runtime, "jit_cache_hook", _before_compile_hook),
                (knobs.runtime, "jit_post_compile_hook", _after_compile_hook),
                (knobs.compilation, "listener", _compilation_listener)]
    import triton.compiler.compiler as compiler_module
    from triton.runtime.jit import JITFunction

    return [(JITFunction, "cache_hook", _before_compile_hook),
            (JITFunction, "compiled_hook", _after_compile_hook),
            (compiler_module, "get_cache_manager", _cache_manager_spy)]


def _before_compile_hook(prior: Callable | None, live: Live) -> Callable:
    def before_compile(*args: Any, **kwargs: Any) -> Any:
        skip = prior(*args, **kwargs) if prior is not None else None
        if not skip and live.on:  # a truthy answer from the chained hook cancels the compile
            _registry.check_hooks()  # before Triton reads the after-compile hook: a replaced one is chained in time
            jit_fn = kwargs["fn"].jit_function
            _registry.meet(jit_fn)
            _pending_compiles().append(_PendingCompile(kwargs["key"], time.perf_counter(), bound_int_args(jit_fn)))
        return skip

    return before_compile


def _after_compile_hook(prior: Callable | None, live: Live) -> Callable:
    def after_compile(*args: Any, **kwargs: Any) -> Any:
        result = prior(*args, **kwargs) if prior is not None else None
        if live.on:
            jit_fn = kwargs["fn"].jit_function
            _registry.meet(jit_fn)
            _registry.report_compile(jit_fn, _compile_fields(kwargs, _pop_pending(kwargs["key"])))
            _registry.check_hooks()  # the before-compile hook may be the one that was replaced
        return result

    return after_compile


def _compilation_listener(prior: Callable | None, live: Live) -> Callable:
    def listener(*args: Any, **kwargs: Any) -> Any:
        pending = _pending_compiles()
        if live.on and pending and pending[-1].source is None:
            pending[-1].source = "disk" if kwargs.get("cache_hit") else "compiled"
        return prior(*args, **kwargs) if prior is not None else None

    return listener


def _cache_manager_spy(prior: Callable, live: Live) -> Callable:
    """3.2/3.3: a compile that stores a binary group compiled it; one that does not loaded it."""

    def get_cache_manager(*args: Any, **kwargs: Any) -> Any:
        manager = prior(*args, **kwargs)
        pending = _pending_compiles()
        if live.on and pending and pending[-1].source is None:
            current = pending[-1]
            current.source = "disk"
            put_group = manager.put_group

            def put_group_marking(*a: Any, **kw: Any) -> Any:
                current.source = "compiled"
                return put_group(*a, **kw)

            manager.put_group = put_group_marking
        return manager

    return get_cache_manager


def _pop_pending(key: Any) -> _PendingCompile | None:
    stack = _pending_compiles()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i].key == key:
            found = stack[i]
            del stack[i:]  # entries above it belong to compiles that raised
            return found
    return None


def _compile_fields(hook_kwargs: dict, pending: _PendingCompile | None) -> dict:
    """The fields of :class:`pytest_ssd.events.CompileEvent` (less ``compile_only``)."""
    from triton.runtime.driver import driver

    info = hook_kwargs["compile"]
    jit_fn = hook_kwargs["fn"].jit_function
    constexprs, signature, specializations = read_specialization(jit_fn, info)
    target = driver.active.get_current_target()
    return {
        "kernel": jit_fn.fn.__qualname__,
        "module": jit_fn.fn.__module__,
        "constexprs": constexprs,
        "signature": signature,
        "specializations": specializations,
        "int_values": pending.int_values if pending else None,
        "num_warps": int(info["num_warps"]),
        "num_stages": int(info["num_stages"]),
        "options": read_launch_options(info),
        "target": f"{target.backend}:{target.arch}",
        "source": (pending.source or "unknown") if pending else "unknown",
        "seconds": time.perf_counter() - pending.started if pending else None,
        "during_autotune": benchmarking(),
    }
