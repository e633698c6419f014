"""The entry point: argument checks, then the four kernels of chunked SSD (see docs/kernel.md).

Dispatch: CPU tensors outside compile-only mode run the interpreted kernels (numerics on any
machine); CUDA tensors, and any tensors inside :func:`pytest_ssd.compile_only.compile_only`, run
the compiled kernels through Triton's real JIT path.

What a request can change, and what it cannot (this is what makes one warmup cover every batch):
token counts, sequence counts and chunk counts reach the kernels only through the *contents* of
the metadata tensors and through the grid, never as integer arguments, so no ``==1``/``%16``
specialization can depend on them; intermediate buffers put the request-dependent dimension
first, so strides are layer constants; data pointers must be 16-byte aligned and metadata is
normalized to aligned int32. The binaries a call uses are therefore fixed by the layer, the
model/state dtypes and the flags ``HAS_INITSTATES``, ``HAS_D``, ``D_HAS_HDIM``, ``HAS_Z``,
``dt_softplus`` and whether ``dt_limit`` is set.
"""
from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from typing import Optional, Sequence

import torch

from ..chunking import chunk_offsets
from ..compile_only import compile_only_active
from ..validation import (check_contiguous, check_cu_seqlens, check_divides, check_dt_limit, check_dtype,
                          check_power_of_two, check_same_device, check_shape, optional_shape)
from .bmm import BMM_CHUNK
from .chunk_scan import CHUNK_SCAN
from .chunk_state import CHUNK_STATE
from .configs import LayerDims, configs_for
from .state_passing import STATE_PASSING

MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALIGNMENT = 16  # bytes; Triton compiles a separate binary for pointers that are not 16-byte aligned
MAX_GRID_YZ = 65535  # CUDA limit on the 2nd and 3rd grid dimension (chunks, sequences)


def mamba_chunk_scan_combined_varlen(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    cu_seqlens: torch.Tensor,
    cu_chunk_seqlens: torch.Tensor,
    last_chunk_indices: torch.Tensor,
    seq_idx: torch.Tensor,
    out: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = (0.0, float("inf")),
    return_intermediate_states: bool = False,
    state_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Mamba2 SSD forward over a packed varlen batch, with vLLM's arguments and conventions.

    Shapes (T tokens, S sequences, C chunks, H heads, P head_dim, G groups, N dstate):
    ``x`` (T,H,P), ``dt`` (T,H), ``B``/``C`` (T,G,N), ``z`` (T,H,P) and ``out`` (T,H,P), all in
    one model dtype (float32, float16 or bfloat16), contiguous, 16-byte aligned; ``A``,
    ``dt_bias`` (H,) and ``D`` (H,) or (H,P) float32; ``initial_states`` (S,H,P,N) in float32,
    float16 or bfloat16. Metadata as :func:`pytest_ssd.chunking.chunk_metadata` builds it:
    ``cu_seqlens`` (S+1,), ``cu_chunk_seqlens`` (C+1,), ``seq_idx`` (C,), ``last_chunk_indices``
    (S,), integer tensors; they are checked against ``cu_seqlens`` with one small device-to-host
    copy.

    Computes, per sequence, ``dt' = clamp(softplus(dt + dt_bias))`` (softplus when
    ``dt_softplus``, clamp when ``dt_limit != (0, inf)``), ``h_t = exp(dt'_t A) h_{t-1} +
    dt'_t x_t B_t^T`` from ``initial_states`` (or zero), ``y_t = C_t h_t + D x_t``, times
    ``z_t * sigmoid(z_t)`` when ``z`` is given, and writes ``y`` into ``out``.

    Returns the final state of every sequence (S,H,P,N), or with
    ``return_intermediate_states`` the state at the end of every chunk (C,H,P,N), in
    ``state_dtype``; by default the dtype of ``initial_states`` when given, else ``x``'s dtype.
    States are computed in float32 and cast once at the end.

    Raises ``ValueError`` naming the argument, before any kernel launch, on bad input.
    """
    sizes: dict = {}
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("out", out), ("cu_seqlens", cu_seqlens),
                    ("cu_chunk_seqlens", cu_chunk_seqlens), ("seq_idx", seq_idx),
                    ("last_chunk_indices", last_chunk_indices)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    check_shape("x", x, ("T", "H", "P"), sizes)
    check_shape("dt", dt, ("T", "H"), sizes)
    check_shape("A", A, ("H",), sizes)
    check_shape("B", B, ("T", "G", "N"), sizes)
    check_shape("C", C, ("T", "G", "N"), sizes)
    check_shape("out", out, ("T", "H", "P"), sizes)
    optional_shape("z", z, [("T", "H", "P")], sizes)
    optional_shape("dt_bias", dt_bias, [("H",)], sizes)
    optional_shape("D", D, [("H",), ("H", "P")], sizes)
    check_shape("cu_seqlens", cu_seqlens, (None,), sizes)
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected at least 2 entries [0, T] (one sequence), got {cu_seqlens.numel()}")
    sizes["S"] = cu_seqlens.numel() - 1
    check_shape("seq_idx", seq_idx, ("C",), sizes)
    check_shape("cu_chunk_seqlens", cu_chunk_seqlens, (sizes["C"] + 1,), sizes)
    check_shape("last_chunk_indices", last_chunk_indices, ("S",), sizes)
    optional_shape("initial_states", initial_states, [("S", "H", "P", "N")], sizes)
    T, H, P, G, N, S, nchunks = (sizes[k] for k in ("T", "H", "P", "G", "N", "S", "C"))

    check_dtype("x", x, MODEL_DTYPES)
    for name, t in (("dt", dt), ("B", B), ("C", C), ("z", z), ("out", out)):
        if t is not None:
            check_dtype(name, t, (x.dtype,))
    for name, t in (("A", A), ("dt_bias", dt_bias), ("D", D)):
        if t is not None:
            check_dtype(name, t, (torch.float32,))
    if initial_states is not None:
        check_dtype("initial_states", initial_states, STATE_DTYPES)
    for name, t in (("cu_seqlens", cu_seqlens), ("cu_chunk_seqlens", cu_chunk_seqlens), ("seq_idx", seq_idx),
                    ("last_chunk_indices", last_chunk_indices)):
        check_dtype(name, t, (torch.int32, torch.int64))
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype: expected one of (float32, float16, bfloat16) or None, got {state_dtype}")
    check_power_of_two("chunk_size", chunk_size, minimum=16)
    check_divides("ngroups (dimension 1 of B)", G, "nheads (dimension 1 of x)", H)
    lo, hi = check_dt_limit(dt_limit)
    if S > MAX_GRID_YZ or nchunks > MAX_GRID_YZ:
        raise ValueError(f"cu_seqlens: at most {MAX_GRID_YZ} sequences and chunks per call, got {S} sequences "
                         f"in {nchunks} chunks; split the batch")

    device = check_same_device({"x": x, "dt": dt, "A": A, "B": B, "C": C, "out": out, "z": z, "dt_bias": dt_bias,
                                "D": D, "initial_states": initial_states, "cu_seqlens": cu_seqlens,
                                "cu_chunk_seqlens": cu_chunk_seqlens, "seq_idx": seq_idx,
                                "last_chunk_indices": last_chunk_indices})
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("out", out), ("z", z),
                    ("dt_bias", dt_bias), ("D", D), ("initial_states", initial_states)):
        if t is not None:
            check_contiguous(name, t)
            _check_aligned(name, t)

    interpret = device.type == "cpu" and not compile_only_active()
    dims = LayerDims(H, G, P, N, chunk_size, x.dtype)
    with _device_guard(device):
        # Plan everything first: after the one device-to-host copy below, the GPU waits for the
        # host until the first launch, so only the comparison and the launches come after it.
        given = (cu_seqlens, cu_chunk_seqlens, seq_idx, last_chunk_indices)
        metadata = [_normalized_int32(t) for t in given]
        checked = _VALIDATED.seen(given, chunk_size, T)
        packed = None if checked else torch.cat(metadata)
        dt_out, dA_cumsum, CB, chunk_states = _workspace(
            device, (nchunks, H, chunk_size), (nchunks, H, chunk_size), (nchunks, G, chunk_size, chunk_size),
            (nchunks, H, P, N))
        final_states = torch.empty((S, H, P, N), dtype=torch.float32, device=device)
        launches = _plan(x, dt, A, B, C, out, D, z, dt_bias, initial_states, *metadata[1:], dt_out, dA_cumsum, CB,
                         chunk_states, final_states, dims, dt_softplus=bool(dt_softplus), dt_limit=(lo, hi),
                         interpret=interpret)
        if not checked:
            _check_metadata(packed.cpu(), S, nchunks, chunk_size, T)
            _VALIDATED.remember(given, chunk_size, T)
        for kernel, grid, args, kwargs in launches:
            kernel[grid](*args, **kwargs)
    if state_dtype is None:
        state_dtype = initial_states.dtype if initial_states is not None else x.dtype
    result = chunk_states if return_intermediate_states else final_states
    return result.to(state_dtype)


def _plan(x, dt, A, B, C, out, D, z, dt_bias, initial_states, cu_chunk_seqlens, seq_idx, last_chunk_indices,
          dt_out, dA_cumsum, CB, states, final_states, dims: LayerDims, *, dt_softplus: bool, dt_limit: tuple,
          interpret: bool) -> list:
    """The four launches ``(kernel, grid, args, kwargs)``, in order, into the float32 buffers ``dt_out`` ..
    ``final_states``.

    Chunk state (with the dt cumsum) goes first: it is long enough on the GPU to hide the host time
    of the launches behind it.
    """
    H, G, P, N, L = dims.nheads, dims.ngroups, dims.head_dim, dims.dstate, dims.chunk_size
    nchunks, nseqs = states.shape[0], final_states.shape[0]
    cfg = configs_for(dims)
    common = dict(SPLIT_16BIT=x.dtype != torch.float32,  # hi/lo 16-bit operand pairs: float32 accuracy
                  INTERPRETED=interpret, DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
                  DOT_DTYPE=_dot_dtype(x.dtype, interpret))
    has_init = initial_states is not None
    c = cfg["chunk_state"]
    chunk_state = (CHUNK_STATE.pick(interpret), (_cdiv(P, c.blocks["BLOCK_M"]) * _cdiv(N, c.blocks["BLOCK_N"]),
                                                 nchunks, H),
                   (x, B, dt, A, dt_bias, cu_chunk_seqlens, dt_out, dA_cumsum, states, dt_limit[0], dt_limit[1]),
                   dict(H=H, G=G, P=P, N=N, CHUNK_SIZE=L, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
                        HAS_DT_LIMIT=dt_limit != (0.0, math.inf), **common, **c.launch_kwargs(interpret)))
    c = cfg["bmm_chunk"]
    bmm = (BMM_CHUNK.pick(interpret), ((L // c.blocks["BLOCK_M"]) * (L // c.blocks["BLOCK_N"]), nchunks, G),
           (C, B, cu_chunk_seqlens, CB),
           dict(G=G, N=N, CHUNK_SIZE=L, DOT_PRECISION=common["DOT_PRECISION"], DOT_DTYPE=common["DOT_DTYPE"],
                **c.launch_kwargs(interpret)))
    c = cfg["state_passing"]
    state_passing = (STATE_PASSING.pick(interpret), (_cdiv(P * N, c.blocks["BLOCK"]), H, nseqs),
                     (states, dA_cumsum, initial_states, last_chunk_indices, final_states),
                     dict(H=H, DIM=P * N, CHUNK_SIZE=L, HAS_INITSTATES=has_init, **c.launch_kwargs(interpret)))
    c = cfg["chunk_scan"]
    chunk_scan = (CHUNK_SCAN.pick(interpret), (_cdiv(L, c.blocks["BLOCK_M"]) * _cdiv(P, c.blocks["BLOCK_N"]),
                                               nchunks, H),
                  (x, z, out, C, CB, dt_out, dA_cumsum, states, initial_states, D, cu_chunk_seqlens, seq_idx),
                  dict(H=H, G=G, P=P, N=N, CHUNK_SIZE=L, HAS_INITSTATES=has_init, HAS_D=D is not None,
                       D_HAS_HDIM=D is not None and D.dim() == 2, HAS_Z=z is not None, **common,
                       **c.launch_kwargs(interpret)))
    return [chunk_state, bmm, state_passing, chunk_scan]


def _workspace(device: torch.device, *shapes: tuple) -> list:
    """float32 buffers of ``shapes`` carved from one allocation, each 256-byte aligned.

    One allocator call instead of four: less host time per call, and a request larger than any
    before it pays for one new device allocation, not four.
    """
    sizes = [math.prod(shape) for shape in shapes]
    padded = [-(-n // 64) * 64 for n in sizes]
    flat = torch.empty(sum(padded), dtype=torch.float32, device=device)
    views, offset = [], 0
    for shape, n, p in zip(shapes, sizes, padded):
        views.append(flat[offset:offset + n].view(shape))
        offset += p
    return views


def _dot_dtype(dtype: torch.dtype, interpret: bool):
    """What ``tl.dot`` multiplies in: the model dtype (a no-op cast), except bf16 under the
    interpreter, whose bf16 dot returns garbage (Triton 3.6-3.9): there the same bf16 values
    multiply in float32, exactly as the tensor cores multiply them."""
    import triton.language as tl

    if interpret and dtype == torch.bfloat16:
        return tl.float32
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_aligned(name: str, t: torch.Tensor) -> None:
    offset = t.data_ptr() % ALIGNMENT
    if offset:
        raise ValueError(
            f"{name}: expected a {ALIGNMENT}-byte aligned data pointer, got one {offset} bytes past alignment "
            f"(a view at an offset, storage_offset={t.storage_offset()}); the kernels are compiled for aligned "
            f"inputs, so this would compile a new binary at request time: pass a fresh tensor (.clone())"
        )


def _normalized_int32(t: torch.Tensor) -> torch.Tensor:
    """int32, contiguous, aligned: one pointer type and alignment for every request (copies only if not)."""
    if t.dtype != torch.int32 or not t.is_contiguous():
        t = t.to(torch.int32).contiguous()
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone()


def _check_metadata(host: torch.Tensor, nseqs: int, nchunks: int, chunk_size: int, total_tokens: int) -> None:
    """Check the chunk metadata, copied to the host as one tensor ``cu_seqlens + cu_chunk_seqlens +
    seq_idx + last_chunk_indices``, against ``cu_seqlens``: the kernels index memory with it."""
    offsets = check_cu_seqlens(host[:nseqs + 1], total_tokens, "cu_seqlens")
    rest = host[nseqs + 1:].tolist()
    got = (rest[:nchunks + 1], rest[nchunks + 1:2 * nchunks + 1], rest[2 * nchunks + 1:])
    seqlens = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    for name, have, want in zip(("cu_chunk_seqlens", "seq_idx", "last_chunk_indices"), got,
                                chunk_offsets(seqlens, chunk_size)):
        if have != want:
            raise ValueError(
                f"{name}: disagrees with cu_seqlens={_short(offsets)} and chunk_size={chunk_size}: expected "
                f"{_short(want)}, got {_short(have)} (build it with pytest_ssd.chunking.chunk_metadata)"
            )


class _ValidatedMetadata:
    """Metadata tensors already checked against their cu_seqlens, so a model that passes one batch's
    metadata to every layer pays the device-to-host copy (and the GPU idling behind it) once per
    batch, not once per layer.

    A hit needs the very same tensor objects (held by weak reference, so a freed tensor whose
    memory is reused never matches) at the same ``_version`` (bumped by any in-place write).
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._entries: "OrderedDict[tuple, tuple]" = OrderedDict()

    @staticmethod
    def _key(tensors: tuple, chunk_size: int, total_tokens: int) -> tuple:
        return tuple((id(t), t._version) for t in tensors) + (chunk_size, total_tokens)

    def seen(self, tensors: tuple, chunk_size: int, total_tokens: int) -> bool:
        refs = self._entries.get(self._key(tensors, chunk_size, total_tokens))
        return refs is not None and all(ref() is t for ref, t in zip(refs, tensors))

    def remember(self, tensors: tuple, chunk_size: int, total_tokens: int) -> None:
        self._entries[self._key(tensors, chunk_size, total_tokens)] = tuple(weakref.ref(t) for t in tensors)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


_VALIDATED = _ValidatedMetadata()


def _short(values: list, limit: int = 16) -> str:
    return str(values) if len(values) <= limit else str(values[:limit])[:-1] + ", ...]"


class _device_guard:
    """``torch.cuda.device(device)`` for CUDA tensors (Triton launches on the current device)."""

    def __init__(self, device: torch.device):
        self._guard = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self._guard is not None:
            self._guard.__enter__()

    def __exit__(self, *exc):
        if self._guard is not None:
            return self._guard.__exit__(*exc)
        return False
