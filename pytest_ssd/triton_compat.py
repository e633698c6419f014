"""The one place where Triton versions (3.2 to 3.9) differ for pytest-ssd.

Everything that depends on which Triton is installed lives here, so the rest of the package
reads as if there were one Triton. This part builds kernels; the hook adapters used by the
event recorder follow below it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import triton

TRITON_VERSION: tuple = tuple(int(p) for p in triton.__version__.split("+")[0].split(".")[:2])


def version_at_least(major: int, minor: int) -> bool:
    return TRITON_VERSION >= (major, minor)


# --------------------------------------------------------------------------------------
# Building kernels that run both compiled (GPU, compile-only) and interpreted (CPU).
# --------------------------------------------------------------------------------------

def _cpu_do_bench(kernel_call: Callable, quantiles: Sequence[float] = (0.5,), **_: Any) -> list:
    """Autotune benchmark for the interpreter: there is no GPU driver to time with.

    One wall-clock run per config: the interpreter's timings say nothing about a GPU, but the
    autotuner needs a number to pick *some* config, and every config is exercised once.
    """
    start = time.perf_counter()
    kernel_call()
    ms = (time.perf_counter() - start) * 1e3
    return [ms for _ in quantiles]


@dataclass(frozen=True)
class KernelPair:
    """One Triton kernel built twice from the same Python source.

    ``compiled`` is a real ``JITFunction`` (optionally autotuned): it goes through Triton's
    binder, specialization, caches and hooks, on a GPU or under :func:`pytest_ssd.compile_only`.
    ``interpreted`` runs the same source on CPU tensors through Triton's interpreter. Building
    both explicitly (instead of reading ``TRITON_INTERPRET`` at decoration time) lets one
    process check numerics on CPU *and* record real compiles.
    """

    compiled: Any
    interpreted: Any

    def pick(self, interpret: bool) -> Any:
        return self.interpreted if interpret else self.compiled


def kernel_pair(
    fn: Callable,
    *,
    do_not_specialize: Sequence[str] = (),
    autotune_configs: Sequence[Any] | None = None,
    autotune_key: Sequence[str] = (),
) -> KernelPair:
    """Build a :class:`KernelPair` from a plain Python kernel function.

    ``do_not_specialize`` names integer arguments Triton must not specialize on (==1, %16):
    a runtime length there would otherwise compile a new binary per divisibility class.
    ``autotune_configs``/``autotune_key`` wrap the compiled kernel in ``triton.autotune``; the
    interpreted kernel gets the same configs with a CPU benchmark (Triton 3.3+ accepts
    ``do_bench=``; on 3.2 it keeps the first config only).
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    dns = list(do_not_specialize)
    compiled = JITFunction(fn, do_not_specialize=dns)
    interpreted = InterpretedFunction(fn, do_not_specialize=dns)
    if autotune_configs:
        configs = list(autotune_configs)
        key = list(autotune_key)
        compiled = triton.autotune(configs=configs, key=key)(compiled)
        if version_at_least(3, 3):
            interpreted = triton.autotune(configs=configs, key=key, do_bench=_cpu_do_bench)(interpreted)
        else:
            interpreted = triton.autotune(configs=configs[:1], key=key)(interpreted)
    return KernelPair(compiled=compiled, interpreted=interpreted)


def base_jit_function(kernel: Any) -> Any:
    """The ``JITFunction`` under any stack of ``Autotuner``/``Heuristics`` wrappers."""
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn"):
        fn = fn.fn
    return fn
