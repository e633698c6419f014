"""A MambaMixer2-like layer's SSD parameters, and random inputs for its SSD call.

What the SSD kernel sees of one vLLM ``MambaMixer2`` layer on one tensor-parallel rank: its
configuration, its parameters A, dt_bias and D initialised as Mamba2 does, and packed varlen
inputs with their chunk metadata. Everything is random, non-zero and reproducible from a seed:
zeros would let a kernel that skips a term still pass. Tensors are drawn on the CPU with an
explicitly seeded ``torch.Generator``, then moved, so they are the same on every device.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from .chunking import chunk_metadata
from .validation import (
    MAX_CHUNK_SIZE,
    MODEL_DTYPES,
    STATE_DTYPES,
    check_bool,
    check_divides,
    check_dt_limit,
    check_dtype_value,
    check_positive_int,
    check_power_of_two,
)

__all__ = ["Mixer2Layer", "make_mixer2_layer", "SSDInputs", "make_ssd_inputs"]


# After mamba_ssm's Mamba2: A = -exp(A_log) in [-16, -1] (Mamba2 draws A uniform in [1, 16];
# here A_log is uniform, so A is log-uniform: more heads decay slowly); dt log-uniform in
# [dt_min, dt_max], floored, stored as its inverse softplus (as is, without softplus); D random around Mamba2's 1, so a
# kernel that drops or misplaces the skip term cannot match by luck.
A_LOG_RANGE = (math.log(1.0), math.log(16.0))
DT_MIN, DT_MAX, DT_INIT_FLOOR = 1e-3, 1e-1, 1e-4
D_RANGE = (0.5, 1.5)  # bounded away from 0, so the skip term always counts


@dataclass(frozen=True, eq=False)  # eq=False: == on tensors has no single truth value
class Mixer2Layer:
    """SSD configuration and parameters of one Mixer2 layer, for TP rank 0 of ``tp_size``.

    ``A``, ``dt_bias`` (local_heads,) and ``D`` (local_heads,) or (local_heads, head_dim) are
    float32, as vLLM keeps them, on ``device``. The rank holds the first ``local_heads`` heads
    of the full layer, so a ``tp_size=2`` layer's parameters are the first half of the
    ``tp_size=1`` layer's with the same seed.
    """

    nheads: int  # over all ranks
    head_dim: int
    n_groups: int  # over all ranks
    ssm_state_size: int
    chunk_size: int
    tp_size: int
    dtype: torch.dtype  # model dtype: x, dt, B, C, z
    state_dtype: torch.dtype  # SSM state dtype: initial and final states
    dt_softplus: bool
    dt_limit: tuple
    d_has_hdim: bool
    seed: int
    A: torch.Tensor = field(repr=False)
    dt_bias: torch.Tensor = field(repr=False)
    D: torch.Tensor = field(repr=False)
    # The SSD call gets z (the gate fused into the kernel). vLLM's Mixer2 gates in its norm and
    # passes z=None, so the default is False; HAS_Z is a constexpr, so the warmup must know.
    gated: bool = False

    @property
    def local_heads(self) -> int:
        return self.nheads // self.tp_size

    @property
    def local_groups(self) -> int:
        return self.n_groups // self.tp_size

    @property
    def device(self) -> torch.device:
        return self.A.device


def _check_device(device: Union[str, torch.device]) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if device.type == "cuda":
        # torch's own answer here is an AssertionError from deep inside its lazy CUDA init.
        if not torch.cuda.is_available():
            raise ValueError(f"device: {str(device)!r} asked for, but torch.cuda.is_available() is False (a CPU "
                             f"build of torch, or no GPU visible); use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {str(device)!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def _check_seed(seed: object) -> None:
    # torch.Generator.manual_seed takes any 64-bit value; negative seeds would alias large ones.
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed: expected an int in [0, 2**63), got {seed!r}")


def make_mixer2_layer(
    *,
    nheads: int = 8,
    head_dim: int = 16,
    n_groups: int = 1,
    ssm_state_size: int = 16,
    chunk_size: int = 16,
    tp_size: int = 1,
    dtype: torch.dtype = torch.float32,
    state_dtype: torch.dtype = torch.float32,
    d_has_hdim: bool = False,
    dt_softplus: bool = True,
    dt_limit: Sequence[float] = (0.0, float("inf")),
    gated: bool = False,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
) -> Mixer2Layer:
    """Build a :class:`Mixer2Layer` with Mamba2-initialised random parameters from ``seed``.

    Raises ``ValueError`` naming the argument for non-positive sizes, ``nheads`` not a multiple
    of ``n_groups``, ``tp_size`` not dividing ``nheads`` and ``n_groups``, a ``chunk_size`` that
    is not a power of two, or a dtype outside fp32/fp16/bf16.
    """
    for name, value in (("nheads", nheads), ("head_dim", head_dim), ("n_groups", n_groups),
                        ("ssm_state_size", ssm_state_size), ("tp_size", tp_size)):
        check_positive_int(name, value)
    check_power_of_two("chunk_size", chunk_size, maximum=MAX_CHUNK_SIZE)
    check_divides("n_groups", n_groups, "nheads", nheads)
    check_divides("tp_size", tp_size, "nheads", nheads)
    check_divides("tp_size", tp_size, "n_groups", n_groups)
    check_dtype_value("dtype", dtype, MODEL_DTYPES)
    check_dtype_value("state_dtype", state_dtype, STATE_DTYPES)
    check_bool("d_has_hdim", d_has_hdim)
    check_bool("dt_softplus", dt_softplus)
    check_bool("gated", gated)
    dt_limit = check_dt_limit(dt_limit)
    _check_seed(seed)
    device = _check_device(device)

    # Draw the whole layer in a fixed order, then keep rank 0's heads.
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    lo, hi = A_LOG_RANGE
    A_log = lo + (hi - lo) * torch.rand(nheads, generator=gen, dtype=f64)
    log_dt = math.log(DT_MIN) + (math.log(DT_MAX) - math.log(DT_MIN)) * torch.rand(nheads, generator=gen, dtype=f64)
    dt = torch.exp(log_dt).clamp(min=DT_INIT_FLOOR)  # as Mamba2; binds only if DT_MIN < floor
    # Stored so that the kernel's dt' starts at dt: its inverse softplus, or dt itself when the
    # kernel applies no softplus (an inverse softplus there, about -4, would clamp every dt' to 0).
    dt_bias = dt + torch.log(-torch.expm1(-dt)) if dt_softplus else dt
    d_shape = (nheads, head_dim) if d_has_hdim else (nheads,)
    D = D_RANGE[0] + (D_RANGE[1] - D_RANGE[0]) * torch.rand(d_shape, generator=gen, dtype=f64)
    local = slice(0, nheads // tp_size)

    def param(t: torch.Tensor) -> torch.Tensor:
        return t[local].to(torch.float32).contiguous().to(device)

    return Mixer2Layer(
        nheads=nheads, head_dim=head_dim, n_groups=n_groups, ssm_state_size=ssm_state_size,
        chunk_size=chunk_size, tp_size=tp_size, dtype=dtype, state_dtype=state_dtype,
        dt_softplus=dt_softplus, dt_limit=dt_limit, d_has_hdim=d_has_hdim, seed=seed,
        A=param(-torch.exp(A_log)), dt_bias=param(dt_bias), D=param(D), gated=gated,
    )


@dataclass(frozen=True, eq=False)  # eq=False: == on tensors has no single truth value
class SSDInputs:
    """Packed varlen inputs of one SSD call for a :class:`Mixer2Layer`.

    x, z (T, local_heads, head_dim), dt (T, local_heads) and B, C (T, local_groups,
    ssm_state_size) are in the layer's model dtype; initial_states (S, local_heads, head_dim,
    ssm_state_size) in its state dtype. The int32 chunk metadata comes from
    :func:`pytest_ssd.chunking.chunk_metadata` for ``chunk_size``.
    """

    x: torch.Tensor = field(repr=False)
    dt: torch.Tensor = field(repr=False)
    B: torch.Tensor = field(repr=False)
    C: torch.Tensor = field(repr=False)
    z: Optional[torch.Tensor] = field(repr=False)
    initial_states: Optional[torch.Tensor] = field(repr=False)
    cu_seqlens: torch.Tensor = field(repr=False)  # (S+1,) int32
    cu_chunk_seqlens: torch.Tensor = field(repr=False)  # (num_chunks+1,) int32
    seq_idx: torch.Tensor = field(repr=False)  # (num_chunks,) int32, sequence of each chunk
    last_chunk_indices: torch.Tensor = field(repr=False)  # (S,) int32
    seqlens: tuple
    chunk_size: int  # the metadata's; must equal the layer's
    seed: int

    @property
    def num_tokens(self) -> int:
        return sum(self.seqlens)

    def _check_layer(self, layer: Mixer2Layer) -> None:
        """The metadata and shapes were built for one layer; another one would misread them."""
        if not isinstance(layer, Mixer2Layer):
            raise ValueError(f"layer: expected a Mixer2Layer, got {type(layer).__name__}")
        T = self.num_tokens
        for what, want, got in (
            ("x shape", (T, layer.local_heads, layer.head_dim), tuple(self.x.shape)),
            ("B shape", (T, layer.local_groups, layer.ssm_state_size), tuple(self.B.shape)),
            ("x dtype", layer.dtype, self.x.dtype),
            ("initial_states dtype", layer.state_dtype,
             layer.state_dtype if self.initial_states is None else self.initial_states.dtype),
            ("chunk_size", layer.chunk_size, self.chunk_size),
        ):
            if want != got:
                raise ValueError(
                    f"layer: its {what} is {want}, but these inputs have {got}; "
                    f"build the inputs with make_ssd_inputs(layer, ...) for this layer"
                )

    def kernel_kwargs(self, layer: Mixer2Layer) -> dict:
        """Keyword arguments of ``mamba_chunk_scan_combined_varlen`` except ``out``.

        The caller allocates ``out`` (T, local_heads, head_dim) so it can poison it first.
        """
        self._check_layer(layer)
        return dict(
            x=self.x, dt=self.dt, A=layer.A, B=self.B, C=self.C, chunk_size=layer.chunk_size,
            cu_seqlens=self.cu_seqlens, cu_chunk_seqlens=self.cu_chunk_seqlens,
            last_chunk_indices=self.last_chunk_indices, seq_idx=self.seq_idx,
            D=layer.D, z=self.z, dt_bias=layer.dt_bias, initial_states=self.initial_states,
            dt_softplus=layer.dt_softplus, dt_limit=layer.dt_limit, state_dtype=layer.state_dtype,
        )

    def reference_kwargs(self, layer: Mixer2Layer) -> dict:
        """Keyword arguments of :func:`pytest_ssd.reference.ssd_reference` for the same call.

        Not the layer's chunk size: the reference's result does not depend on it, and its own
        small default keeps memory (chunks x chunk_size^2 per head) low for a 256-token layer.
        """
        self._check_layer(layer)
        return dict(
            x=self.x, dt=self.dt, A=layer.A, B=self.B, C=self.C, cu_seqlens=self.cu_seqlens,
            D=layer.D, z=self.z, dt_bias=layer.dt_bias, dt_softplus=layer.dt_softplus,
            dt_limit=layer.dt_limit, initial_states=self.initial_states,
        )


def _check_seqlens(seqlens: object) -> tuple:
    if not isinstance(seqlens, (list, tuple)) or not seqlens or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in seqlens
    ):
        raise ValueError(f"seqlens: expected a non-empty list of positive ints, got {seqlens!r:.200}")
    return tuple(seqlens)


def make_ssd_inputs(
    layer: Mixer2Layer,
    seqlens: Sequence[int],
    *,
    seed: int,
    with_initial_states: bool = False,
    with_z: Optional[bool] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> SSDInputs:
    """Random (randn) packed inputs for ``layer``: one sequence per entry of ``seqlens``.

    Reproducible from ``seed``. x, dt, B, C are drawn first, so the flags do not change them;
    then initial states (in the layer's state dtype), then z.
    dt is randn too: the kernel adds dt_bias and applies softplus. ``device`` defaults to the
    layer's.
    """
    if not isinstance(layer, Mixer2Layer):
        raise ValueError(f"layer: expected a Mixer2Layer, got {type(layer).__name__}")
    seqlens = _check_seqlens(seqlens)
    _check_seed(seed)
    check_bool("with_initial_states", with_initial_states)
    with_z = layer.gated if with_z is None else with_z  # default: what the layer's SSD call gets
    check_bool("with_z", with_z)
    device = layer.device if device is None else _check_device(device)

    T, S, H, P = sum(seqlens), len(seqlens), layer.local_heads, layer.head_dim
    G, N = layer.local_groups, layer.ssm_state_size
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    x = randn(T, H, P, dtype=layer.dtype)
    dt = randn(T, H, dtype=layer.dtype)
    B = randn(T, G, N, dtype=layer.dtype)
    C = randn(T, G, N, dtype=layer.dtype)
    initial_states = randn(S, H, P, N, dtype=layer.state_dtype) if with_initial_states else None
    z = randn(T, H, P, dtype=layer.dtype) if with_z else None

    # Built where the kernel will read it, so chunk_metadata vouches for these very tensors and
    # the kernel need not read them back; a "meta" device cannot be read: built on the CPU, moved.
    cu_seqlens = torch.tensor([0, *itertools.accumulate(seqlens)], dtype=torch.int32)
    if torch.device(device).type != "meta":
        cu_seqlens = cu_seqlens.to(device)
    meta = chunk_metadata(cu_seqlens, layer.chunk_size)
    return SSDInputs(
        x=x, dt=dt, B=B, C=C, z=z, initial_states=initial_states,
        cu_seqlens=cu_seqlens.to(device), cu_chunk_seqlens=meta.cu_chunk_seqlens.to(device),
        seq_idx=meta.seq_idx.to(device), last_chunk_indices=meta.last_chunk_indices.to(device),
        seqlens=seqlens, chunk_size=layer.chunk_size, seed=seed,
    )
