"""Undoing what Triton's interpreter does to ``triton.language`` while it runs a kernel.

| what                                            | 3.2-3.5                 | 3.6-3.9                          |
|-------------------------------------------------|-------------------------|----------------------------------|
| ``tl``, ``tl.core``, ``tl.math``, ``tl.tensor``, ``tl.dtype`` (3.4-3.5: also ``tensor_descriptor_base``) | patched at every interpreted launch, never restored | patched in a scope, restored after it |

So before 3.6, once a kernel has been interpreted, compiling any kernel in that process fails
(``'ir.value' object has no attribute 'data'``: the compiler meets the interpreter's builtins).
A process that interprets the bundled kernel on CPU tensors and then compiles under
:func:`pytest_ssd.compile_only.compile_only` (a user's tests, or this project's) would break.
:func:`language_restored` puts back every attribute of those objects as it was before the block;
the interpreter patches them again at its next launch.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from ._versions import version_at_least

RESTORES = not version_at_least(3, 6)  # 3.6+ restores by itself
_MISSING = object()


def _patched_objects() -> list:
    import triton.language as tl

    objects = [tl, tl.core, tl.math, tl.core.tensor, tl.core.dtype]
    descriptor = getattr(tl.core, "tensor_descriptor_base", None)
    return objects + ([descriptor] if descriptor is not None else [])


@contextlib.contextmanager
def language_restored() -> Iterator[None]:
    """Inside the block the interpreter may patch ``triton.language``; after it (Triton < 3.6) every
    attribute it set, added or replaced on the patched objects is as it was before."""
    if not RESTORES:
        yield
        return
    saved = [(obj, dict(vars(obj))) for obj in _patched_objects()]
    try:
        yield
    finally:
        for obj, before in saved:
            now = vars(obj)
            for name in [n for n in now if n not in before]:
                delattr(obj, name)
            for name, value in before.items():
                if now.get(name, _MISSING) is not value:
                    setattr(obj, name, value)
