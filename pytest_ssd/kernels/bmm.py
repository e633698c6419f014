"""Stage 2: ``CB[c, g] = C_c @ B_c^T`` for every chunk ``c`` and group ``g``.

Output float32 ``(C, G, CHUNK_SIZE, CHUNK_SIZE)``; row ``i`` is the target token, column ``j``
the source token of chunk ``c``. Only what the chunk scan reads is written: tiles entirely above
the diagonal (``j > i`` everywhere) and tiles of rows past the chunk's length are skipped.

:func:`bmm_tile` is one tile's work. On its own launch (:data:`BMM_CHUNK`) it takes a program
per tile; chunk_state runs the same tiles in extra programs of its own grid (``FUSE_BMM``,
chunk_state.py): a 5 us kernel of its own costs a launch and the GPU's gap around it.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..triton_compat import kernel_pair


@triton.jit
def bmm_tile(C_ptr, B_ptr, CB_ptr, tile, chunk, g, start, length,
             G: tl.constexpr, N: tl.constexpr, CHUNK_SIZE: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
             SPLIT_MODEL: tl.constexpr, NARROW: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Tile ``tile`` (row-major over (CHUNK_SIZE / BLOCK_M, CHUNK_SIZE / BLOCK_N)) of ``CB[chunk, g]``
    for a chunk of ``length`` tokens from token ``start`` (int64); nothing for a tile the scan never reads."""
    num_n = CHUNK_SIZE // BLOCK_N
    pid_m = tile // num_n
    pid_n = tile % num_n
    # An `if` around the body, not an early return: this is a helper, inlined into two kernels.
    if (pid_m * BLOCK_M < length) & (pid_n * BLOCK_N < (pid_m + 1) * BLOCK_M):
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < length
        mask_n = offs_n < length
        c_ptrs = C_ptr + (start + offs_m[:, None]) * (G * N) + g * N + offs_k[None, :]
        b_ptrs = B_ptr + (start + offs_n[None, :]) * (G * N) + g * N + offs_k[:, None]
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        for k0 in range(0, N, BLOCK_K):
            mask_k = (k0 + offs_k) < N
            c = tl.load(c_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(b_ptrs + k0, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            c_hi, b_hi = c.to(NARROW), b.to(NARROW)
            acc = tl.dot(c_hi.to(DOT_DTYPE), b_hi.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
            if SPLIT_MODEL:  # float32 models under bf16x3: hi*hi + hi*lo + lo*hi
                acc = tl.dot(c_hi.to(DOT_DTYPE), (b - b_hi.to(tl.float32)).to(NARROW).to(DOT_DTYPE), acc)
                acc = tl.dot((c - c_hi.to(tl.float32)).to(NARROW).to(DOT_DTYPE), b_hi.to(DOT_DTYPE), acc)
        offs = (chunk.to(tl.int64) * G + g) * (CHUNK_SIZE * CHUNK_SIZE) + offs_m[:, None] * CHUNK_SIZE + offs_n[None, :]
        tl.store(CB_ptr + offs, acc)


def _bmm_chunk_kernel(
    C_ptr, B_ptr, cu_chunk_seqlens_ptr, CB_ptr,
    G: tl.constexpr, N: tl.constexpr, CHUNK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SPLIT_MODEL: tl.constexpr, NARROW: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    chunk = tl.program_id(1)
    start = tl.load(cu_chunk_seqlens_ptr + chunk)
    length = tl.load(cu_chunk_seqlens_ptr + chunk + 1) - start
    bmm_tile(C_ptr, B_ptr, CB_ptr, tl.program_id(0), chunk, tl.program_id(2), start.to(tl.int64), length,
             G, N, CHUNK_SIZE, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION, SPLIT_MODEL, NARROW, DOT_DTYPE)


BMM_CHUNK = kernel_pair(_bmm_chunk_kernel)
