"""The entry point's argument checks: every check with its message, and one cheap pass for requests.

:func:`validate` names the first bad argument (a ``ValueError`` saying what was expected and
what came); :func:`fast_sizes` gives the same sizes in one pass when everything is fine, and None
otherwise, so a request pays microseconds and a bad call still gets the full message.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..chunking import METADATA_NAMES
from ..validation import (MAX_CHUNK_SIZE, MAX_TOKENS, MODEL_DTYPES, STATE_DTYPES, check_bool, check_contiguous,
                          check_divides, check_dt_limit, check_dtype, check_no_overlap, check_power_of_two,
                          check_same_device, check_shape, optional_shape)

ALIGNMENT = 16  # bytes; Triton compiles a separate binary for pointers that are not 16-byte aligned
MAX_GRID_YZ = 65535  # CUDA limit on the 2nd and 3rd grid dimension (chunks, sequences)


def validate(x, dt, A, B, C, out, D, z, dt_bias, initial_states, metadata, chunk_size, dt_limit,
              state_dtype, dt_softplus, return_intermediate_states) -> tuple:
    """Every argument check, with a ``ValueError`` naming the argument on the first failure.

    Returns ``(T, H, P, G, N, S, nchunks, dt_low, dt_high, device)``. The metadata's contents
    are checked later (:func:`_check_metadata`), after the launches are prepared.
    """
    cu_seqlens, cu_chunk_seqlens, seq_idx, last_chunk_indices = metadata
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

    check_dtype("x", x, MODEL_DTYPES)
    for name, t in (("dt", dt), ("B", B), ("C", C), ("z", z), ("out", out)):
        if t is not None:
            check_dtype(name, t, (x.dtype,))
    for name, t in (("A", A), ("dt_bias", dt_bias), ("D", D)):
        if t is not None:
            check_dtype(name, t, (torch.float32,))
    if initial_states is not None:
        check_dtype("initial_states", initial_states, STATE_DTYPES)
    for name, t in zip(METADATA_NAMES, metadata):
        check_dtype(name, t, (torch.int32, torch.int64))
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype: expected one of (float32, float16, bfloat16) or None, got {state_dtype}")
    check_power_of_two("chunk_size", chunk_size, minimum=16, maximum=MAX_CHUNK_SIZE)
    check_bool("dt_softplus", dt_softplus)
    check_bool("return_intermediate_states", return_intermediate_states)
    if sizes["T"] > MAX_TOKENS:
        raise ValueError(f"x: at most 2**31 - 1 tokens per call (metadata is int32), got T={sizes['T']}")
    check_divides("ngroups (dimension 1 of B)", sizes["G"], "nheads (dimension 1 of x)", sizes["H"])
    lo, hi = check_dt_limit(dt_limit)
    if sizes["S"] > MAX_GRID_YZ or sizes["C"] > MAX_GRID_YZ:
        raise ValueError(f"cu_seqlens: at most {MAX_GRID_YZ} sequences and chunks per call, got {sizes['S']} "
                         f"sequences in {sizes['C']} chunks; split the batch")

    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "out": out, "z": z, "dt_bias": dt_bias, "D": D,
               "initial_states": initial_states}
    device = check_same_device({**tensors, **dict(zip(METADATA_NAMES, metadata))})
    grad = torch.is_grad_enabled()
    for name, t in tensors.items():
        if t is None:
            continue
        check_contiguous(name, t)
        check_aligned(name, t)
        if grad and t.requires_grad:
            raise ValueError(
                f"{name}: requires grad, but this kernel is forward-only (no backward: the gradient would be "
                f"silently dropped); call it under torch.no_grad() or torch.inference_mode(), or pass "
                f"{name}.detach()"
            )
    check_no_overlap("out", out, {k: v for k, v in tensors.items() if k != "out"})
    return tuple(sizes[k] for k in ("T", "H", "P", "G", "N", "S", "C")) + (lo, hi, device)


def fast_sizes(x, dt, A, B, C, out, D, z, dt_bias, initial_states, metadata, chunk_size, dt_limit,
                state_dtype, dt_softplus, return_intermediate_states) -> Optional[tuple]:
    """:func:`validate`'s result in one cheap pass when every check passes, else None.

    A request pays this, not the full checks with their messages (a few microseconds against
    tens); anything unusual (a wrong shape, dtype, device, layout, or a non-tensor) returns
    None and :func:`validate` names the problem. It must never accept what ``validate``
    rejects: ``tests/test_kernel_cpu.py`` runs both on every bad input.
    """
    try:
        T, H, P = x.shape
        _, G, N = B.shape
        cu_seqlens, cu_chunk_seqlens, seq_idx, last_chunk_indices = metadata
        S, nchunks = cu_seqlens.shape[0] - 1, seq_idx.shape[0]
        lo, hi = dt_limit
        lo, hi = float(lo), float(hi)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    dtype, device = x.dtype, x.device
    grad = torch.is_grad_enabled()
    out_start = out.data_ptr() if isinstance(out, torch.Tensor) else 0
    out_end = out_start + out.nbytes if out_start else 0
    for t in (x, dt, A, B, C, D, z, dt_bias, initial_states):
        if t is None:
            continue
        if not (isinstance(t, torch.Tensor) and t.device == device and t.is_contiguous()):
            return None
        start = t.data_ptr()
        if start % ALIGNMENT or (start < out_end and out_start < start + t.nbytes) or (grad and t.requires_grad):
            return None
    if not (isinstance(out, torch.Tensor) and out.device == device and out.is_contiguous()
            and out_start % ALIGNMENT == 0 and not (grad and out.requires_grad)):
        return None
    for t in metadata:
        if not (isinstance(t, torch.Tensor) and t.device == device and t.dtype in (torch.int32, torch.int64)):
            return None
    ok = (dtype in MODEL_DTYPES and dt.dtype == B.dtype == C.dtype == out.dtype == dtype
          and A.dtype == torch.float32 and dt.shape == (T, H) and A.shape == (H,) and B.shape == C.shape == (T, G, N)
          and out.shape == (T, H, P) and (z is None or (z.dtype == dtype and z.shape == (T, H, P)))
          and (dt_bias is None or (dt_bias.dtype == torch.float32 and dt_bias.shape == (H,)))
          and (D is None or (D.dtype == torch.float32 and D.shape in ((H,), (H, P))))
          and (initial_states is None or (initial_states.dtype in STATE_DTYPES
                                          and initial_states.shape == (S, H, P, N)))
          and cu_seqlens.shape == (S + 1,) and S >= 1 and seq_idx.shape == (nchunks,)
          and cu_chunk_seqlens.shape == (nchunks + 1,) and last_chunk_indices.shape == (S,)
          and (state_dtype is None or state_dtype in STATE_DTYPES)
          and type(chunk_size) is int and 16 <= chunk_size <= MAX_CHUNK_SIZE and not chunk_size & (chunk_size - 1)
          and (dt_softplus is True or dt_softplus is False)
          and (return_intermediate_states is True or return_intermediate_states is False)
          and G > 0 and H % G == 0 and lo <= hi and S <= MAX_GRID_YZ and nchunks <= MAX_GRID_YZ and T <= MAX_TOKENS)
    return (T, H, P, G, N, S, nchunks, lo, hi, device) if ok else None



def check_aligned(name: str, t: torch.Tensor) -> None:
    offset = t.data_ptr() % ALIGNMENT
    if offset:
        raise ValueError(
            f"{name}: expected a {ALIGNMENT}-byte aligned data pointer, got one {offset} bytes past alignment "
            f"(a view at an offset, storage_offset={t.storage_offset()}); the kernels are compiled for aligned "
            f"inputs, so this would compile a new binary at request time: pass a fresh tensor (.clone())"
        )
