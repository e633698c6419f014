"""Small synthetic Triton kernels that pin each recorded field; importable by tests.

Each ``make_*`` returns a *fresh* kernel object: its in-memory caches are empty, so a test
sees its own JIT misses whatever ran before. Kernels here run under compile-only mode only
(CPU tensors; nothing executes).
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from pytest_ssd import triton_compat


def scale(x_ptr, out_ptr, n, stride, BLOCK: tl.constexpr, DOUBLE: tl.constexpr):
    """out[i] = x[i * stride] (* 2 if DOUBLE) for i < n."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs * stride, mask=mask)
    if DOUBLE:
        x = x * 2
    tl.store(out_ptr + offs, x, mask=mask)


def chunk_scan(x_ptr, init_ptr, out_ptr, seqlen, HAS_INITSTATES: tl.constexpr, BLOCK: tl.constexpr):
    """A stand-in for an SSD kernel: a constexpr branch and a runtime length."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < seqlen
    acc = tl.load(x_ptr + offs, mask=mask)
    if HAS_INITSTATES:
        acc += tl.load(init_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.cumsum(acc, axis=0), mask=mask)


def tuned_heads(x_ptr, states_ptr, out_ptr, nheads, seqlen, BLOCK: tl.constexpr):
    """Autotuned on ``nheads``; the tensor dtypes join Triton's autotune key."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < seqlen * nheads
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    s = tl.load(states_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, x + s, mask=mask)


def fill(out_ptr, value, n, BLOCK: tl.constexpr):
    """out[i] = value for i < n."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.full((BLOCK,), value, tl.float32), mask=offs < n)


TUNED_CONFIGS = (triton.Config({"BLOCK": 64}, num_warps=4, num_stages=2),
                 triton.Config({"BLOCK": 128}, num_warps=8, num_stages=3))


def make_scale() -> JITFunction:
    return JITFunction(scale)


def make_chunk_scan() -> JITFunction:
    return JITFunction(chunk_scan)


def make_fill() -> JITFunction:
    return JITFunction(fill)


def make_tuned_heads(cache_results: bool = False):
    """An autotuner over :data:`TUNED_CONFIGS` keyed on ``nheads``."""
    return triton_compat.autotune(JITFunction(tuned_heads), TUNED_CONFIGS, ["nheads"], cache_results=cache_results)


# The start of an inner test module (pytester.makepyfile dedents it): a tiny constexpr-branching
# kernel and launch(flag, n); tests append their own test functions.
SCALE_KERNEL_TESTS = """
    import pytest
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def scale_kernel(x_ptr, n, FLAG: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n)
        if FLAG:
            x = x * 2
        tl.store(x_ptr + offs, x, mask=offs < n)

    def launch(flag, n=64):
        x = torch.randn(n)
        scale_kernel[(1,)](x, n, FLAG=flag, BLOCK=64)
"""


@triton.jit
def _negated(x):
    return -x


@triton.jit
def _doubled(x, NEGATE: tl.constexpr):
    """A @jit helper that calls another: both must run under the interpreter too."""
    if NEGATE:
        x = _negated(x)
    return x * 2


def scale_with_helpers(x_ptr, out_ptr, n, BLOCK: tl.constexpr, NEGATE: tl.constexpr):
    """out[i] = 2 * x[i] (negated if NEGATE), through two nested @jit helpers."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, _doubled(tl.load(x_ptr + offs, mask=mask), NEGATE), mask=mask)
