"""Float64 PyTorch reference for Mamba2 SSD on vLLM's packed varlen layout.

The ground truth the Triton kernels are judged against. Shapes follow
``mamba_chunk_scan_combined_varlen``: T tokens of S sequences packed one after the other,
H heads of P channels, G groups of B/C with N states each; head ``h`` reads group
``h // (H // G)``. For each sequence, with ``dt'`` the processed step size::

    h_t = exp(dt'_t A) h_{t-1} + dt'_t x_t B_t^T      h: (H, P, N), h_{-1} = initial state or 0
    y_t = C_t h_t + D x_t                             contract over N
    y_t = y_t * silu(z_t)                             only when z is given

The step size is ``dt' = clamp(softplus(dt + dt_bias), *dt_limit)``: softplus only with
``dt_softplus``, and the clamp always, also with the default ``dt_limit=(0, inf)``. That is what
the kernels do: vLLM's ``_chunk_cumsum_fwd_kernel`` and mamba_ssm's clamp dt' to ``dt_limit``
unconditionally (their PyTorch paths skip the clamp for ``(0, inf)``, which differs only where
dt' < 0), and so does the bundled kernel. After softplus dt' > 0 and the default clamp changes
nothing; without softplus it turns a negative dt' into 0: that token neither decays nor adds
to the state (a negative dt' would make exp(dt' A) > 1, a state that grows).

Two forms compute this: :func:`ssd_reference_sequential`, a loop over tokens to check by
eye, and :func:`ssd_reference_chunked`, the SSD block decomposition (quadratic inside a
chunk, a recurrence over chunk states) that is fast enough for long sequences. Both upcast
every input to float64 first, whatever it came in, so rounding in the reference is far below
any kernel tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .chunking import chunk_offsets
from .validation import (
    FLOAT_DTYPES,
    check_bool,
    check_cu_seqlens,
    check_divides,
    check_dt_limit,
    check_dtype,
    check_dtype_value,
    check_power_of_two,
    check_same_device,
    check_shape,
    optional_shape,
)

__all__ = ["ssd_reference", "ssd_reference_sequential", "ssd_reference_chunked"]

METHODS = ("chunked", "sequential")
_DEFAULT_DT_LIMIT = (0.0, float("inf"))


@dataclass(frozen=True)
class _Problem:
    """Validated arguments, upcast to float64, with dt already processed into dt'."""

    x: torch.Tensor  # (T, H, P)
    dt: torch.Tensor  # (T, H): dt' = clamp(softplus(dt + dt_bias), *dt_limit)
    A: torch.Tensor  # (H,)
    B: torch.Tensor  # (T, G, N)
    C: torch.Tensor  # (T, G, N)
    D: Optional[torch.Tensor]  # (H, 1) or (H, P): broadcasts against x[t]
    z: Optional[torch.Tensor]  # (T, H, P)
    initial_states: torch.Tensor  # (S, H, P, N), zeros where none were given
    offsets: list  # cu_seqlens as S+1 Python ints
    out_dtype: torch.dtype
    state_dtype: torch.dtype

    @property
    def seqlens(self) -> list:
        return [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:])]


def _prepare(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    cu_seqlens: Optional[torch.Tensor],
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    dt_bias: Optional[torch.Tensor],
    dt_softplus: bool,
    dt_limit: Sequence[float],
    initial_states: Optional[torch.Tensor],
    output_dtype: Optional[torch.dtype],
) -> _Problem:
    """Validate every argument (``ValueError`` naming it), then upcast and process dt."""
    sizes: dict = {}
    check_shape("x", x, ("T", "H", "P"), sizes)
    check_shape("dt", dt, ("T", "H"), sizes)
    check_shape("A", A, ("H",), sizes)
    check_shape("B", B, ("T", "G", "N"), sizes)
    check_shape("C", C, ("T", "G", "N"), sizes)
    optional_shape("D", D, [("H",), ("H", "P")], sizes)
    optional_shape("z", z, [("T", "H", "P")], sizes)
    optional_shape("dt_bias", dt_bias, [("H",)], sizes)
    if sizes["T"] < 1:
        raise ValueError(f"x: expected at least one token (T >= 1), got shape {tuple(x.shape)}")
    check_divides("B.shape[1] (groups G)", sizes["G"], "x.shape[1] (heads H)", sizes["H"])
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias}
    for name, tensor in tensors.items():
        if tensor is not None:
            check_dtype(name, tensor, FLOAT_DTYPES)
    if initial_states is not None:
        check_dtype("initial_states", initial_states, FLOAT_DTYPES)
    # Before reading cu_seqlens' values: a tensor on another device is the likelier mistake.
    check_same_device(
        {**tensors, "initial_states": initial_states, "cu_seqlens": cu_seqlens if torch.is_tensor(cu_seqlens) else None}
    )
    offsets = [0, sizes["T"]] if cu_seqlens is None else check_cu_seqlens(cu_seqlens, sizes["T"])
    if initial_states is not None:
        check_shape("initial_states", initial_states, (len(offsets) - 1, "H", "P", "N"), sizes)
    check_bool("dt_softplus", dt_softplus)
    dt_limit = check_dt_limit(dt_limit)
    if output_dtype is not None:
        check_dtype_value("output_dtype", output_dtype, FLOAT_DTYPES)

    f64 = torch.float64
    dt = dt.to(f64)
    if dt_bias is not None:
        dt = dt + dt_bias.to(f64)
    if dt_softplus:
        dt = F.softplus(dt)  # threshold 20 (identity above), as the kernels' softplus
    dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])  # always, as the kernels (module docstring)
    H, P, N = sizes["H"], sizes["P"], sizes["N"]
    if initial_states is None:
        initial_states = torch.zeros(len(offsets) - 1, H, P, N, dtype=f64, device=x.device)
    if D is not None:
        D = D.to(f64).reshape(H, -1)  # (H,) -> (H, 1): one skip weight for all P channels
    return _Problem(
        x=x.to(f64),
        dt=dt,
        A=A.to(f64),
        B=B.to(f64),
        C=C.to(f64),
        D=D,
        z=None if z is None else z.to(f64),
        initial_states=initial_states.to(f64),
        offsets=offsets,
        out_dtype=x.dtype if output_dtype is None else output_dtype,
        state_dtype=output_dtype or (f64 if x.dtype == f64 else torch.float32),
    )


def ssd_reference_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    cu_seqlens: Optional[torch.Tensor] = None,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _DEFAULT_DT_LIMIT,
    initial_states: Optional[torch.Tensor] = None,
    output_dtype: Optional[torch.dtype] = None,
) -> tuple:
    """SSD as a plain recurrence over tokens: the ground truth, O(T H P N), slow.

    Args: see :func:`ssd_reference`. Returns ``(out (T, H, P), final_states (S, H, P, N))``.
    """
    p = _prepare(x, dt, A, B, C, cu_seqlens, D, z, dt_bias, dt_softplus, dt_limit, initial_states, output_dtype)
    heads_per_group = p.x.shape[1] // p.B.shape[1]
    B_h = p.B.repeat_interleave(heads_per_group, dim=1)  # (T, H, N): head h reads group h // (H/G)
    C_h = p.C.repeat_interleave(heads_per_group, dim=1)  # (T, H, N)
    out = torch.empty_like(p.x)
    final_states = torch.empty_like(p.initial_states)
    for s, (start, end) in enumerate(zip(p.offsets[:-1], p.offsets[1:])):
        h = p.initial_states[s]  # (H, P, N) h_{-1}
        for t in range(start, end):
            decay = torch.exp(p.dt[t] * p.A)  # (H,) exp(dt'_t A)
            inject = (p.dt[t][:, None] * p.x[t])[:, :, None] * B_h[t][:, None, :]  # (H, P, N) dt'_t x_t B_t^T
            h = decay[:, None, None] * h + inject  # h_t = exp(dt'_t A) h_{t-1} + dt'_t x_t B_t^T
            y = torch.einsum("hpn,hn->hp", h, C_h[t])  # (H, P) y_t = C_t h_t
            if p.D is not None:
                y = y + p.D * p.x[t]  # y_t += D x_t (skip connection)
            if p.z is not None:
                y = y * p.z[t] * torch.sigmoid(p.z[t])  # y_t *= silu(z_t) (gate)
            out[t] = y
        final_states[s] = h
    return out.to(p.out_dtype), final_states.to(p.state_dtype)


def _segsum_exp(a: torch.Tensor) -> torch.Tensor:
    """``(..., L) -> (..., L, L)``: ``exp(a[j+1] + ... + a[i])`` for ``j <= i``, else 0.

    Summed from masked copies rather than as a difference of cumsums, which would cancel;
    in place after the first copy, since this is the largest tensor of the chunked form.
    """
    L = a.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=a.device)
    out = a[..., :, None].expand(*a.shape, L).masked_fill(~ones.tril(-1), 0.0)  # out[..., k, j] = a[k] if k > j
    out.cumsum_(dim=-2)  # out[..., i, j] = sum of a[k] over j < k <= i
    return out.masked_fill_(~ones.tril(0), -torch.inf).exp_()  # exp(-inf) = 0: no influence backwards


def ssd_reference_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    cu_seqlens: Optional[torch.Tensor] = None,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _DEFAULT_DT_LIMIT,
    initial_states: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
    output_dtype: Optional[torch.dtype] = None,
) -> tuple:
    """SSD by chunks (the state-space-dual form), vectorised over chunks and heads.

    Chunks are the kernels' physical chunks (:func:`pytest_ssd.chunking.chunk_offsets`): every
    sequence starts a new one. Each is padded to the longest chunk with dt' = 0, which
    neither adds to nor decays the state. Work is O(T H (chunk_size (P + N) + P N)) plus one
    short loop over chunks. Args: see :func:`ssd_reference`. Returns ``(out (T, H, P), final_states
    (S, H, P, N))``.
    """
    check_power_of_two("chunk_size", chunk_size)
    p = _prepare(x, dt, A, B, C, cu_seqlens, D, z, dt_bias, dt_softplus, dt_limit, initial_states, output_dtype)
    T, H, P = p.x.shape
    G, N = p.B.shape[1:]
    cu_chunks, chunk_seq, last_chunk = chunk_offsets(p.seqlens, chunk_size)
    nc = len(chunk_seq)
    # Pad only to the longest chunk: many short sequences must not cost chunk_size^2 each.
    L = max(b - a for a, b in zip(cu_chunks[:-1], cu_chunks[1:]))
    R = H // G  # heads per group; head h = g * R + r
    device = p.x.device

    # 0. Gather tokens into padded chunks (nc, L, ...), L <= chunk_size. torch.where, not a product with a
    #    mask, so a NaN token cannot leak into another sequence's padding.
    bounds = torch.tensor(cu_chunks, device=device)
    token = bounds[:-1, None] + torch.arange(L, device=device)  # (nc, L)
    valid = token < bounds[1:, None]
    token = token.clamp(max=T - 1)

    def gather(t: torch.Tensor) -> torch.Tensor:
        mask = valid.view(nc, L, *([1] * (t.dim() - 1)))
        return torch.where(mask, t[token], 0.0)

    xc = gather(p.x).view(nc, L, G, R, P)
    dtc = gather(p.dt)  # (nc, L, H)
    Bc, Cc = gather(p.B), gather(p.C)  # (nc, L, G, N)
    dA = dtc * p.A  # (nc, L, H) log of each token's decay
    dA_cumsum = torch.cumsum(dA, dim=1)

    # 1. Diagonal blocks: each token's output from the tokens before it in its own chunk,
    #    y_l = sum_{s <= l} (C_l . B_s) exp(dA_{s+1} + ... + dA_l) dt'_s x_s.
    CB = torch.einsum("clgn,csgn->cgls", Cc, Bc)  # (nc, G, L, L)
    dt_s = dtc.view(nc, L, G, R).permute(0, 2, 3, 1)[:, :, :, None, :]  # (nc, G, R, 1, L) over s
    scores = _segsum_exp(dA.permute(0, 2, 1)).reshape(nc, G, R, L, L)  # decay from s to l, 0 for s > l
    scores.mul_(CB[:, :, None]).mul_(dt_s)  # in place: the largest tensor here
    y_diag = torch.einsum("cgrls,csgrp->clgrp", scores, xc)  # (nc, L, G, R, P)

    # 2. Chunk states: what each chunk's own tokens leave in the state at its end.
    to_end = (torch.exp(dA_cumsum[:, -1:] - dA_cumsum) * dtc).view(nc, L, G, R, 1)  # (nc, L, G, R, 1)
    chunk_states = torch.einsum("clgn,clgrp->cgrpn", Bc, xc * to_end).reshape(nc, H, P, N)

    # 3. Pass states from chunk to chunk: the state entering each chunk, restarting from the
    #    initial state at every sequence start.
    chunk_decay = torch.exp(dA_cumsum[:, -1])[:, :, None, None]  # (nc, H, 1, 1)
    states_in = torch.empty(nc, H, P, N, dtype=torch.float64, device=device)
    final_states = torch.empty_like(p.initial_states)
    first_chunk = 0
    for s, last in enumerate(last_chunk):
        h = p.initial_states[s]  # (H, P, N)
        for c in range(first_chunk, last + 1):
            states_in[c] = h
            h = chunk_decay[c] * h + chunk_states[c]
        final_states[s] = h
        first_chunk = last + 1

    # 4. Off-diagonal blocks: the entering state, decayed to each token, read out by C.
    y_off = torch.einsum("clgn,cgrpn->clgrp", Cc, states_in.view(nc, G, R, P, N))
    y_off = y_off * torch.exp(dA_cumsum).view(nc, L, G, R, 1)

    # 5. Drop the padding, then skip connection and gate.
    y = (y_diag + y_off).reshape(nc * L, H, P)[valid.reshape(-1)]  # (T, H, P)
    if p.D is not None:
        y = y + p.D * p.x
    if p.z is not None:
        y = y * F.silu(p.z)
    return y.to(p.out_dtype), final_states.to(p.state_dtype)


def ssd_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    cu_seqlens: Optional[torch.Tensor] = None,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _DEFAULT_DT_LIMIT,
    initial_states: Optional[torch.Tensor] = None,
    method: str = "chunked",
    chunk_size: int = 64,
    output_dtype: Optional[torch.dtype] = None,
) -> tuple:
    """Mamba2 SSD forward in float64, with the arguments of ``mamba_chunk_scan_combined_varlen``.

    Args:
        x: (T, H, P) float, the tokens of all sequences packed.
        dt: (T, H) float, raw step sizes.
        A: (H,) float, per-head decay rate (negative for a stable SSM).
        B, C: (T, G, N) float; H must be a multiple of G.
        cu_seqlens: (S+1,) int offsets ``[0, ..., T]``, strictly increasing; None = one sequence.
        D: (H,) or (H, P) float skip weights, or None.
        z: (T, H, P) float gate, or None.
        dt_bias: (H,) float added to dt, or None.
        dt_softplus: apply softplus to ``dt + dt_bias``.
        dt_limit: clamp dt' to ``(low, high)``, always: the default ``(0, inf)`` turns a negative
            dt' (possible without softplus) into 0, as the kernels do (see the module docstring).
        initial_states: (S, H, P, N) float, or None for zeros.
        method: "chunked" (fast) or "sequential" (the token loop).
        chunk_size: power of two, chunk length of the chunked form (the result does not depend on it).
        output_dtype: dtype of both results; default x's dtype for ``out``, and for states float64
            when x is float64, else float32 (the kernels' state dtype). Pass torch.float64 to
            compare without rounding.

    Returns:
        ``(out (T, H, P), final_states (S, H, P, N))``; all arithmetic is float64.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    check_power_of_two("chunk_size", chunk_size)
    kwargs = dict(
        cu_seqlens=cu_seqlens, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
        initial_states=initial_states, output_dtype=output_dtype,
    )
    if method == "sequential":
        return ssd_reference_sequential(x, dt, A, B, C, **kwargs)
    return ssd_reference_chunked(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)
