"""Compiling a launch's binary before the launch, from several threads at once.

| what                                 | 3.2                         | 3.3-3.4                   | 3.6-3.9          |
|--------------------------------------|-----------------------------|---------------------------|------------------|
| ``JITFunction.warmup(*a, grid=, **k)`` | compiles what ``jit[grid](*a, **k)`` launches | same | same |
| a kernel's binder, binaries per device | ``binder``, built at first launch | ``device_caches[device]`` | same |
| the source hash (``cache_key``)      | computed at first use, unguarded | same                 | under a lock     |
| the GIL while compiling              | (not measured)              | 3.4: held in the passes   | released there   |

(3.5 was not read; it lies between two releases that agree on the first two rows.)
``warmup`` compiles into the cache the launch reads, with the launch's own arguments. A
``device_caches`` entry is built by a ``defaultdict``'s Python factory: two threads that meet
it missing each build one, and an entry set late replaces one that a binary was already stored
in (that binary compiles again at its launch). 3.2's ``binder`` race builds an equal binder
twice, which is harmless.
So :func:`precompile` builds the entry and the hash under a lock of ours; the compiles
themselves run side by side (ptxas, a subprocess, overlaps on every version).

What a binary is specialized on (:func:`binary_key`) is the same on 3.2-3.9 for CUDA: the
constexprs and launch options; per pointer the dtype and 16-byte alignment, or None; per
integer ==1, divisibility by 16 and width; floats are fp32.
"""
from __future__ import annotations

import threading
from typing import Any

from ._versions import version_at_least

_BINDER_PER_DEVICE = version_at_least(3, 3)  # device_caches[device]: built by a defaultdict's factory
_PREPARE_LOCK = threading.Lock()


def precompile(jit: Any, grid: tuple, args: tuple, constexprs: dict) -> None:
    """Compile the binary ``jit[grid](*args, **constexprs)`` would launch on the current device
    (or compile-only target), into the JIT's cache, and launch nothing.

    ``jit`` is a plain ``JITFunction``; ``args`` its leading parameters, ``constexprs`` the rest
    by name with the launch options. Safe to call from several threads at once, also for one
    kernel; two calls for one binary at once both compile it, so merge launches first
    (:func:`binary_key`). The compile hooks fire on the calling thread, as for a launch.
    """
    from triton.runtime.driver import driver

    with _PREPARE_LOCK:
        jit.cache_key  # noqa: B018 (a property: computes the source hash once, here)
        if _BINDER_PER_DEVICE:
            jit.device_caches[driver.active.get_current_device()]
    jit.warmup(*args, grid=grid, **constexprs)


def binary_key(jit: Any, args: tuple, constexprs: dict) -> tuple:
    """What picks the binary of ``jit[grid](*args, **constexprs)``: launches with equal keys use
    one binary. Hashable. Arguments of other kinds than tensors, None, bools, ints and floats
    never compare equal, so they are compiled apart rather than merged by mistake."""
    return (id(jit), tuple(sorted((name, repr(value)) for name, value in constexprs.items())),
            tuple(_argument_class(arg) for arg in args))


def _argument_class(arg: Any) -> Any:
    if arg is None:
        return None
    if hasattr(arg, "data_ptr") and hasattr(arg, "dtype"):  # a pointer, as Triton's binder tells one
        return ("pointer", str(arg.dtype), arg.data_ptr() % 16 == 0)
    if isinstance(arg, bool):
        return ("bool", arg)
    if isinstance(arg, int):
        width = "i32" if -2**31 <= arg < 2**31 else "u64" if arg >= 2**63 else "i64"
        return ("int", width, arg == 1, arg % 16 == 0)
    if isinstance(arg, float):
        return ("float",)
    return ("other", id(arg))
