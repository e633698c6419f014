"""The observers of this process, the patches in place for them, and re-chaining replaced hooks.

The layer under the hook adapters: :mod:`.jit_hooks` and :mod:`.autotune_hooks` report here,
:mod:`.observe` adds and removes observers and installs or removes the patches (it knows which
hooks the installed Triton has). Here the patches are only checked, and chained again where
someone replaced them.

Anyone may assign Triton's hook slots while we observe (torch 2.13 assigns
``jit_post_compile_hook`` when a kernel uses its nvshmem helpers; vLLM sets its own). Every miss
path of ours calls :func:`check_hooks`: a wrapper that was replaced is chained anew, in front of
the newcomer, and the observers are told (``on_hook_change``). Same on Triton 3.2-3.9: only the
slots differ, and those are :mod:`.jit_hooks`' and :mod:`.autotune_hooks`' business.
"""
from __future__ import annotations

import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from ._patch import Patch, rechain_replaced


@dataclass(eq=False)
class Observer:
    """One ``observe_triton`` caller: its callbacks, and what it counted of the JIT caches."""

    on_compile: Callable[[dict], None] | None
    on_autotune: Callable[[dict], None] | None
    on_tune_start: Callable[[Any, tuple], None] | None
    on_hook_change: Callable[[str], None] | None = None
    watch_caches: bool = False
    cache_sizes: dict = field(default_factory=dict)  # id(jit_fn) -> (jit_fn, binaries when first known)
    reported: dict = field(default_factory=dict)  # id(jit_fn) -> compiles reported to this observer


LOCK = threading.Lock()
OBSERVERS: list[Observer] = []
COMPILE_PATCHES: list[Patch] = []  # while an observer wants compiles
TUNE_PATCHES: list[Patch] = []  # while any observer is registered
KNOWN_JIT: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()  # id -> JITFunction


def check_hooks() -> None:
    """Chain ourselves again in front of any hook that replaced ours; tell the observers."""
    with LOCK:
        replaced = [p for p in (*COMPILE_PATCHES, *TUNE_PATCHES) if not p.in_place]
        if not replaced:
            return
        notes = [f"{_slot_name(p.owner)}.{p.name} was replaced while recording (now "
                 f"{_callable_name(vars(p.owner).get(p.name, getattr(p.owner, p.name, None)))}); pytest-ssd "
                 f"chained its hook in front of it again" for p in replaced]
        rechain_replaced(COMPILE_PATCHES)
        rechain_replaced(TUNE_PATCHES)
        callbacks = [o.on_hook_change for o in OBSERVERS if o.on_hook_change is not None]
    for callback in callbacks:
        for note in notes:
            callback(note)


def _slot_name(owner: Any) -> str:
    if isinstance(owner, type):
        return owner.__name__
    if isinstance(owner, type(sys)):
        return owner.__name__
    return f"triton.knobs.{type(owner).__name__.replace('_knobs', '')}"


def _callable_name(value: Any) -> str:
    if value is None:
        return "None"
    name = getattr(value, "__qualname__", None) or type(value).__name__
    module = getattr(value, "__module__", None)
    return f"{module}.{name}" if module else name


def emit(kind: str, *args: Any) -> None:
    """Call every observer's ``kind`` callback (``on_autotune``, ``on_tune_start``), outside the lock."""
    with LOCK:
        callbacks = [getattr(o, kind) for o in OBSERVERS]
    for callback in callbacks:
        if callback is not None:
            callback(*args)


def report_compile(jit_fn: Any, fields: dict) -> None:
    """Give one compile's fields to every observer that wants compiles, counted per kernel."""
    with LOCK:
        observers = [o for o in OBSERVERS if o.on_compile is not None]
        for observer in observers:
            observer.reported[id(jit_fn)] = observer.reported.get(id(jit_fn), 0) + 1
    for observer in observers:
        observer.on_compile(fields)


def cached_binaries(jit_fn: Any) -> list:
    """The compiled kernels in a JITFunction's in-memory caches, over all devices: 3.3-3.9 keep
    ``device_caches[device]``, a tuple whose first item is the dict of binaries by key; 3.2 keeps
    ``cache[device]``, that dict itself."""
    dicts = [e[0] for e in getattr(jit_fn, "device_caches", {}).values()
             if isinstance(e, tuple) and e and isinstance(e[0], dict)]
    if not hasattr(jit_fn, "device_caches"):
        dicts = [e for e in getattr(jit_fn, "cache", {}).values() if isinstance(e, dict)]
    return [kernel for d in dicts for kernel in list(d.values())]


def jit_cache_size(jit_fn: Any) -> int:
    """How many binaries :func:`cached_binaries` finds."""
    return len(cached_binaries(jit_fn))


def meet(jit_fn: Any) -> None:
    """A kernel reached one of our hooks: known from now on; an observer that did not know it
    takes its cache size now (from the before-compile hook: before this binary is stored)."""
    with LOCK:
        KNOWN_JIT[id(jit_fn)] = jit_fn
        for observer in OBSERVERS:
            if observer.watch_caches and id(jit_fn) not in observer.cache_sizes:
                observer.cache_sizes[id(jit_fn)] = (jit_fn, jit_cache_size(jit_fn))
