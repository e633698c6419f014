"""Compare a kernel's output and final states with the reference, and explain a mismatch.

The message says which tensor, how many elements are off, the worst one (index, sequence,
kernel value, reference value, allowed error), and the seed to reproduce it; a float32 mismatch
on a GPU whose errors are TF32-sized says that too. NaN or inf in the kernel's result always
fails, whatever the tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .validation import dtype_name


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


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
            f"a float32 model's kernel wants input_precision='ieee' (or 'tf32x3'). The fp32 tolerance is "
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
) -> None:
    """Assert the whole output (T, H, P) and final states (S, H, P, N) match the reference.

    ``dtype`` is the model dtype and picks the tolerance (:data:`TOLERANCES`); states are
    compared with ``state_tol`` (default: the same tolerance). ``seed`` (int or text saying how
    to reproduce) is printed in the failure message. A float32 mismatch on a GPU whose errors
    are TF32-sized says so (:func:`tf32_hint`).
    """
    tol = tol or tolerance_for(dtype)
    offsets = None if cu_seqlens is None else [int(v) for v in cu_seqlens.tolist()]
    problems = [mismatch_report("out", out, ref_out, tol, token_axis=0, cu_seqlens=offsets)]
    compared = [(problems[0], out, ref_out)]
    if ref_final_states is not None:
        if final_states is None:
            problems.append("final_states: kernel returned None, reference has states")
        else:
            problems.append(mismatch_report("final_states", final_states, ref_final_states, state_tol or tol))
            compared.append((problems[-1], final_states, ref_final_states))
    if dtype == torch.float32 and out.is_cuda:  # one hint line, from the first TF32-sized mismatch
        hints = (tf32_hint(a, e) for problem, a, e in compared if problem and tuple(a.shape) == tuple(e.shape))
        problems.append(next((h for h in hints if h), None))
    problems = [p for p in problems if p]
    if problems:
        seed_line = f"\nseed: {seed}" if seed is not None else ""
        raise AssertionError(f"SSD kernel disagrees with the reference ({dtype_name(dtype)}):\n  "
                             + "\n  ".join(problems) + seed_line)
