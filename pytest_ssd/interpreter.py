"""Running GPU kernels on CPU tensors under Triton's interpreter: what it gets wrong, and a guard.

On a CPU a third-party kernel's numbers come from Triton's interpreter. Where the interpreter
itself computes something wrongly, a mismatch says nothing about the kernel, so the suite must
not blame the kernel for it. Known: a bare bf16 ``tl.dot`` (bf16 operands, float32 accumulator)
comes out wrong by about 2e10 on every Triton from 3.2 to 3.9 we tried, while fp32, fp16 and bf16
operands upcast to float32 are exact. :func:`probe_dot` checks this on the Triton at hand, with a
16x16 product of small integers (exact in every dtype), instead of trusting a version list: an
interpreter that gets it right has its bf16 cases judged.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import triton.language as tl

from .options import DTYPE_NAMES
from .triton_compat import triton_release
from .validation import MODEL_DTYPES, check_dtype_value

PROBE_SIZE = 16  # tl.dot's smallest tile
_SHORT_NAMES = dict(zip(MODEL_DTYPES, DTYPE_NAMES))  # torch.bfloat16 -> "bf16", as --ssd-dtype spells it


@dataclass(frozen=True)
class DotProbe:
    """The outcome of one interpreted ``tl.dot`` against the exact product."""

    dtype: str  # operand dtype as --ssd-dtype spells it: "bf16"
    triton: str  # "major.minor"
    exact: bool
    max_abs_error: float  # largest |interpreted - exact| over the 16x16 result; inf if it raised
    error: Optional[str] = None  # what the interpreter raised, when it did not compute at all

    @property
    def skip_reason(self) -> Optional[str]:
        """Why correctness cases in this dtype cannot judge an interpreted kernel; None when exact."""
        if self.exact:
            return None
        found = (f"it raises {self.error}" if self.error is not None
                 else f"off by up to {self.max_abs_error:.3g} on a {PROBE_SIZE}x{PROBE_SIZE} probe of small integers")
        return f"Triton {self.triton}'s interpreter computes {self.dtype} tl.dot wrongly ({found}); run {self.dtype} on a GPU"

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "triton": self.triton, "exact": self.exact,
                "max_abs_error": self.max_abs_error, "error": self.error}


def _dot_kernel(a_ptr, b_ptr, c_ptr, SIZE: tl.constexpr):
    """c = a @ b for one SIZE x SIZE tile, accumulated in float32 (tl.dot's default)."""
    rows = tl.arange(0, SIZE)[:, None] * SIZE
    cols = tl.arange(0, SIZE)[None, :]
    c = tl.dot(tl.load(a_ptr + rows + cols), tl.load(b_ptr + rows + cols))
    tl.store(c_ptr + rows + cols, c)


@functools.lru_cache(maxsize=None)
def probe_dot(dtype: torch.dtype) -> DotProbe:
    """Run one ``tl.dot`` of ``dtype`` operands (a model dtype) through Triton's interpreter; cached.

    The operands are small integers (-4..4): every product and sum is exact in each model dtype,
    TF32 and float32, so any difference from the exact product is the interpreter's. The kernel
    is built as an ``InterpretedFunction`` here, so the answer does not depend on
    ``TRITON_INTERPRET``. Up to Triton 3.5 running the interpreter patches ``triton.language``
    for the rest of the process, after which real compiles fail: call this only where kernels
    are interpreted anyway.
    """
    from triton.runtime.interpreter import InterpretedFunction

    check_dtype_value("dtype", dtype, MODEL_DTYPES)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-4, 5, (PROBE_SIZE, PROBE_SIZE), generator=gen).to(dtype) for _ in range(2))
    exact = a.double() @ b.double()
    c = torch.full((PROBE_SIZE, PROBE_SIZE), float("nan"), dtype=torch.float32)
    version, name = triton_release(), _SHORT_NAMES[dtype]
    try:
        InterpretedFunction(_dot_kernel)[(1,)](a, b, c, SIZE=PROBE_SIZE)
    except Exception as e:  # an interpreter that cannot run it cannot judge such a kernel either
        return DotProbe(name, version, exact=False, max_abs_error=float("inf"), error=f"{type(e).__name__}: {e}"[:300])
    diff = (c.double() - exact).abs()
    max_abs = float(diff.max()) if bool(torch.isfinite(diff).all()) else float("inf")
    return DotProbe(name, version, exact=max_abs == 0.0, max_abs_error=max_abs)


@contextlib.contextmanager
def cpu_device_guards() -> Iterator[None]:
    """While active, ``torch.cuda.device(None)`` is the no-op torch documents it to be.

    Kernels written for GPUs select the device of their tensors, ``with
    torch.cuda.device(x.device.index)`` (mamba_ssm's do); for a CPU tensor the index is None.
    torch's docstring calls that a no-op, but without a CUDA device it raises (torch 2.13's CPU
    build: TypeError; 2.14 without a driver: ``invalid argument to exchangeDevice``). A negative
    index is the no-op that works: None becomes -1. Anything else goes through unchanged.
    """
    guard = torch.cuda.device
    enter = guard.__enter__

    def __enter__(self):  # noqa: N807 - the method it stands in for
        if self.idx is None:
            self.idx = -1
        return enter(self)

    guard.__enter__ = __enter__
    try:
        yield
    finally:
        guard.__enter__ = enter
