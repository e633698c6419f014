"""Compare a kernel's output and final states with the reference, and explain a mismatch.

The message says which tensor, how many elements are off, the worst one (index, sequence,
kernel value, reference value, allowed error), and the seed to reproduce it; a float32 mismatch
on a GPU whose errors are TF32-sized says that too. NaN or inf in the kernel's result always
fails, whatever the tolerance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .validation import dtype_name


@dataclass(frozen=True)
class Tolerance:
    """Allowed error ``atol + rtol * |reference|``; both finite and >= 0 (a NaN or infinite one
    would pass any finite output)."""

    atol: float
    rtol: float

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"Tolerance {name}: expected a finite number >= 0, got {value!r}")


# At least as tight as vLLM's SSD tests (fp32 8e-3/5e-3, bf16 5e-2/5e-2); fp16 has 3 more
# mantissa bits than bf16, so it gets a tighter bound. Reference is float64.
TOLERANCES = {
    torch.float32: Tolerance(atol=8e-3, rtol=5e-3),
    torch.float16: Tolerance(atol=3e-2, rtol=3e-2),
    torch.bfloat16: Tolerance(atol=5e-2, rtol=5e-2),
    torch.float64: Tolerance(atol=1e-9, rtol=1e-9),
}


def tolerance_for(dtype: torch.dtype) -> Tolerance:
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype: expected one of {list(TOLERANCES)}, got {dtype}")
    return TOLERANCES[dtype]


def _checked_tolerance(name: str, tol: object) -> Tolerance:
    if not isinstance(tol, Tolerance):
        raise ValueError(f"{name}: expected a pytest_ssd.assertions.Tolerance(atol=..., rtol=...), got {tol!r}")
    return tol


def _sequence_of(token: int, cu_seqlens: Optional[Sequence[int]]) -> str:
    if cu_seqlens is None:
        return ""
    for s in range(len(cu_seqlens) - 1):
        if cu_seqlens[s] <= token < cu_seqlens[s + 1]:
            return f" (sequence {s}, position {token - cu_seqlens[s]})"
    return ""


def mismatch_report(
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    tol: Tolerance,
    *,
    token_axis: Optional[int] = None,
    cu_seqlens: Optional[Sequence[int]] = None,
) -> Optional[str]:
    """None when ``actual`` matches ``expected`` within ``tol``, else a readable explanation."""
    if tuple(actual.shape) != tuple(expected.shape):
        return f"{name}: shape {tuple(actual.shape)}, reference {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    for side, t, why in (("kernel", a, "an unwritten output keeps its NaN poison"),
                         ("reference", e, "the reference's inputs overflow or are not finite")):
        bad_values = ~torch.isfinite(t)
        if bool(bad_values.any()):  # NaN compares false with everything: never let it reach the tolerance
            idx = tuple(int(i) for i in bad_values.nonzero()[0])
            where = _sequence_of(idx[token_axis], cu_seqlens) if token_axis is not None else ""
            return (f"{name}: {int(bad_values.sum())} of {t.numel()} {side} elements are NaN/inf (first at index "
                    f"{idx}{where}: {t[idx].item()}); NaN never passes; {why}")
    allowed = tol.atol + tol.rtol * e.abs()
    excess = (a - e).abs() - allowed
    n_bad = int((excess > 0).sum())
    if n_bad == 0:
        return None
    flat = int(torch.argmax(excess))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    where = _sequence_of(idx[token_axis], cu_seqlens) if token_axis is not None else ""
    return (
        f"{name}: {n_bad} of {a.numel()} elements outside atol={tol.atol:g} rtol={tol.rtol:g}; worst at index "
        f"{idx}{where}: kernel {a[idx].item():.6g}, reference {e[idx].item():.6g}, |diff| "
        f"{abs(a[idx].item() - e[idx].item()):.3g} > allowed {allowed[idx].item():.3g}; "
        f"max |diff| over all {float((a - e).abs().max()):.3g}"
    )


# Relative RMS errors that TF32 products leave in float32 results: 10-bit mantissas, unit
# roundoff 2^-11 ~ 5e-4 per operand. A wrong formula or index is off by far more.
TF32_SIZED = (1e-4, 1e-2)


def tf32_hint(actual: torch.Tensor, expected: torch.Tensor) -> Optional[str]:
    """A line for a float32 mismatch whose errors are the size TF32 dots give, else None.

    Measured as ``rms(actual - expected) / rms(expected)`` over the whole tensor.
    """
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    scale = float(e.pow(2).mean().sqrt())
    if not (scale > 0 and bool(torch.isfinite(a).all())):
        return None
    relative = float((a - e).pow(2).mean().sqrt()) / scale
    if not TF32_SIZED[0] <= relative <= TF32_SIZED[1]:
        return None
    return (f"errors of ~1e-3 relative in fp32 are what TF32 dots give (here {relative:.1e} RMS relative): "
            f"Triton computes a float32 tl.dot in TF32 on NVIDIA GPUs by default (input_precision='tf32'); "
            f"a float32 model's kernel wants input_precision='ieee' or 'tf32x3' (or 'bf16x3' on Triton 3.6+, or a "
            f"hi/lo bf16 split by hand as the bundled kernel does). The fp32 tolerance is "
            f"not loosened for TF32.")


def assert_ssd_close(
    out: torch.Tensor,
    final_states: Optional[torch.Tensor],
    ref_out: torch.Tensor,
    ref_final_states: Optional[torch.Tensor],
    *,
    dtype: torch.dtype,
    seed: Optional[object] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    tol: Optional[Tolerance] = None,
    state_tol: Optional[Tolerance] = None,
    state_dtype: Optional[torch.dtype] = None,
) -> None:
    """Assert the whole output (T, H, P) and final states (S, H, P, N) match the reference.

    ``dtype`` is the model dtype: ``out`` must have it, and it picks the tolerance
    (:data:`TOLERANCES`); ``state_dtype``, when given, is the dtype ``final_states`` must have.
    States are compared with ``state_tol`` (default: the same tolerance); states on one side only
    fail. ``seed`` (int or text saying how to reproduce) is printed in the failure message. A
    float32 mismatch on a GPU whose errors are TF32-sized says so (:func:`tf32_hint`).
    Raises ``ValueError`` for a bad ``dtype`` or tolerance, ``AssertionError`` on a mismatch.
    """
    tol = tolerance_for(dtype) if tol is None else _checked_tolerance("tol", tol)
    state_tol = tol if state_tol is None else _checked_tolerance("state_tol", state_tol)
    for name, t in (("out", out), ("ref_out", ref_out)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    offsets = None if cu_seqlens is None else [int(v) for v in cu_seqlens.tolist()]
    problems = []
    if out.dtype != dtype:  # a kernel that writes another dtype than the model's is wrong, however close
        problems.append(f"out: dtype {dtype_name(out.dtype)}, expected the model dtype {dtype_name(dtype)}")
    if state_dtype is not None and final_states is not None and final_states.dtype != state_dtype:
        problems.append(f"final_states: dtype {dtype_name(final_states.dtype)}, expected {dtype_name(state_dtype)}")
    problems.append(mismatch_report("out", out, ref_out, tol, token_axis=0, cu_seqlens=offsets))
    compared = [(problems[-1], out, ref_out)]
    if (ref_final_states is None) != (final_states is None):
        kernel_side = "returned None" if final_states is None else "returned states"
        ref_side = "has none" if ref_final_states is None else "has states"
        problems.append(f"final_states: the kernel {kernel_side}, the reference {ref_side}; compare both or neither")
    elif ref_final_states is not None:
        problems.append(mismatch_report("final_states", final_states, ref_final_states, state_tol))
        compared.append((problems[-1], final_states, ref_final_states))
    if dtype == torch.float32 and out.is_cuda:  # one hint line, from the first TF32-sized mismatch
        hints = (tf32_hint(a, e) for problem, a, e in compared if problem and tuple(a.shape) == tuple(e.shape))
        problems.append(next((h for h in hints if h), None))
    problems = [p for p in problems if p]
    if problems:
        seed_line = f"\nseed: {seed}" if seed is not None else ""
        raise AssertionError(f"SSD kernel disagrees with the reference ({dtype_name(dtype)}):\n  "
                             + "\n  ".join(problems) + seed_line)
