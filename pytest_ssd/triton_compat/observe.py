"""Observing Triton: call back on every JIT miss and autotune benchmark, Triton 3.2 to 3.9.

| what                   | 3.2-3.3                                  | 3.4-3.9                           |
|------------------------|------------------------------------------|-----------------------------------|
| JIT miss, before/after | JITFunction.cache_hook / compiled_hook   | knobs.runtime.jit_cache_hook /    |
|                        |                                          | jit_post_compile_hook             |
| compiled vs disk hit   | put_group on the compile's cache manager | knobs.compilation.listener        |
| autotune benchmark     | Autotuner.prune_configs + _bench         | same, + check_disk_cache          |

The hooks themselves are in :mod:`.jit_hooks` and :mod:`.autotune_hooks`, what they read in
:mod:`.fields`, the observers and re-chaining in :mod:`._registry`. Here observers come and go,
and the patches follow them.

A second signal does not depend on hooks at all: the number of binaries in the JIT caches of
every kernel we know (met in a hook, or registered with :func:`watch_jit_cache`). A cache that
grew by more binaries than were reported means someone blinded every hook of ours: ``stop()``
returns those kernels.
"""
from __future__ import annotations

from typing import Any, Callable

from . import autotune_hooks, jit_hooks
from ._patch import Patch, rechain_replaced
from ._registry import (COMPILE_PATCHES, KNOWN_JIT, LOCK, OBSERVERS, TUNE_PATCHES, Observer, check_hooks,
                        jit_cache_size)


def observe_triton(
    *,
    on_compile: Callable[[dict], None] | None = None,
    on_autotune: Callable[[dict], None] | None = None,
    on_tune_start: Callable[[Any, tuple], None] | None = None,
    on_hook_change: Callable[[str], None] | None = None,
    watch_caches: bool = False,
) -> Callable[[], list[dict]]:
    """Call back on every JIT miss and autotune benchmark in this process; return ``stop``.

    ``on_compile(fields)`` gets the fields of :class:`pytest_ssd.events.CompileEvent`
    (without ``compile_only``); ``on_autotune(fields)`` those of ``AutotuneEvent``;
    ``on_tune_start(autotuner, key)`` fires when an autotuner misses its in-memory cache;
    ``on_hook_change(note)`` when one of our hooks was found replaced (and chained again).
    Callbacks run on the thread that compiled, outside any lock of ours.

    Compile hooks are in place while some observer wants compiles, chaining whatever hook
    was set before; they are put back when the last such observer stops. A hook that someone
    set over ours in the meantime (torch, vLLM) is chained anew at the next JIT miss, by the
    next observer, or at ``stop``, whichever comes first.

    ``stop()`` returns, with ``watch_caches``, one ``{"kernel", "module", "binaries",
    "reported"}`` per known kernel whose JIT caches grew by more binaries than ``on_compile``
    reported while observing (an empty list when hooks and caches agree).
    """
    observer = Observer(on_compile, on_autotune, on_tune_start, on_hook_change, watch_caches)
    check_hooks()  # observers already open learn of a change that this one would chain silently
    with LOCK:
        if watch_caches:
            observer.cache_sizes = {key: (fn, jit_cache_size(fn)) for key, fn in list(KNOWN_JIT.items())}
        OBSERVERS.append(observer)
        _sync_patches()

    def stop() -> list[dict]:
        check_hooks()
        with LOCK:
            if observer in OBSERVERS:
                OBSERVERS.remove(observer)
                _sync_patches()
        return _unreported_binaries(observer)

    return stop


def watch_jit_cache(*kernels: Any) -> None:
    """Count these kernels' JIT caches in every recording (``observe_triton(watch_caches=True)``),
    even if no hook of ours ever sees them compile. Autotuner and heuristics wrappers are
    unwrapped to their JITFunction; anything else (an interpreted kernel) is ignored."""
    from triton.runtime.jit import JITFunction

    for kernel in kernels:
        for _ in range(8):
            if isinstance(kernel, JITFunction) or not hasattr(kernel, "fn"):
                break
            kernel = kernel.fn
        if isinstance(kernel, JITFunction):
            KNOWN_JIT[id(kernel)] = kernel


def _unreported_binaries(observer: Observer) -> list[dict]:
    found = []
    for key, (jit_fn, before) in list(observer.cache_sizes.items()):
        grew, reported = jit_cache_size(jit_fn) - before, observer.reported.get(key, 0)
        if grew > reported:
            found.append({"kernel": jit_fn.fn.__qualname__, "module": jit_fn.fn.__module__, "binaries": grew,
                          "reported": reported})
    return found


def _sync_patches() -> None:
    """Under the lock: the patches each kind of observer needs, in place and in front (silently)."""
    _sync(COMPILE_PATCHES, any(o.on_compile for o in OBSERVERS), jit_hooks.patch_specs)
    _sync(TUNE_PATCHES, bool(OBSERVERS), autotune_hooks.patch_specs)


def _sync(patches: list[Patch], needed: bool, specs: Callable[[], list]) -> None:
    if not needed:
        while patches:
            patches.pop().undo()
    elif not patches:
        patches.extend(Patch.apply(*spec) for spec in specs())
    else:
        rechain_replaced(patches)
