"""Stage 4: carry the state across the chunks of each sequence.

One program per (block of P*N, head, sequence) walks that sequence's chunks in order::

    state = initial_states[s] if HAS_INITSTATES else 0
    for c in chunks of s:  state = exp(dA_cumsum[c, h, last]) * state + states[c];  states[c] = state
    final_states[s] = state

``states`` (float32, ``(C, H, P, N)``) is updated in place: afterwards it holds the state at the
*end* of every chunk. ``final_states`` is float32 ``(S, H, P, N)``; the entry point casts it.
The walk is a ``while`` loop: memory-bound, nothing to pipeline, and Triton's interpreters of
every version accept a loaded value in its condition.
"""
from __future__ import annotations

import triton.language as tl

from ..triton_compat import kernel_pair


def _state_passing_kernel(
    states_ptr, dA_cumsum_ptr, initial_states_ptr, last_chunk_indices_ptr, final_states_ptr,
    H: tl.constexpr, DIM: tl.constexpr, CHUNK_SIZE: tl.constexpr,
    HAS_INITSTATES: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    seq = tl.program_id(2)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DIM
    chunk = tl.load(last_chunk_indices_ptr + seq - 1, mask=seq > 0, other=-1) + 1
    last = tl.load(last_chunk_indices_ptr + seq)
    seq = seq.to(tl.int64)

    if HAS_INITSTATES:
        state = tl.load(initial_states_ptr + (seq * H + h) * DIM + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        state = tl.full((BLOCK,), 0.0, tl.float32)
    while chunk <= last:
        row = chunk.to(tl.int64) * H + h
        decay = tl.exp(tl.load(dA_cumsum_ptr + row * CHUNK_SIZE + CHUNK_SIZE - 1))
        ptrs = states_ptr + row * DIM + offs
        state = decay * state + tl.load(ptrs, mask=mask, other=0.0)
        tl.store(ptrs, state, mask=mask)
        chunk += 1
    tl.store(final_states_ptr + (seq * H + h) * DIM + offs, state, mask=mask)


STATE_PASSING = kernel_pair(_state_passing_kernel)
