"""Stage 5: the output of every token, from the state entering its chunk and the chunk itself.

For token ``i`` of chunk ``c``, head ``h`` (group ``g``)::

    y_i = exp(dA_cumsum[i]) * C_i @ state_in^T                                  (state entering the chunk)
        + sum_{j <= i} CB[c, g, i, j] * exp(dA_cumsum[i] - dA_cumsum[j]) * dt'[j] * x_j   (inside the chunk)
        + D * x_i                                                              (HAS_D; D per head or per head and P)
    y_i *= z_i * sigmoid(z_i)                                                  (HAS_Z)

``state_in`` is the previous chunk's end state when the chunk continues its sequence; for the
first chunk of a sequence it is that sequence's initial state (``HAS_INITSTATES``) or zero (the
term is skipped).

Below the diagonal block of an M-block the decay factors (``FACTORED_DECAY``, when dt' >= 0 so the
dA cumsum is monotone): ``exp(dA_i - dA_j) = exp(dA_i - r) exp(r - dA_j)`` with ``r`` the cumsum
at the block's first token, a scale per source token and one per target instead of an ``exp`` per
pair; the diagonal block keeps the decay per element and the causal mask (docs/kernel.md).

Precision: for 16-bit models the two float32 operands (the float32 state, and ``CB`` scaled by
decay and dt) enter the tensor cores as hi/lo pairs of 16-bit values (``SPLIT_F32``,
:func:`pytest_ssd.kernels.narrow.split_dot`): one
rounding to bf16 there costs up to ~0.3 absolute on outputs of long sequences, more than
vLLM's bf16 tolerance; the pair keeps float32 accuracy for one extra MMA each. Float32 models
under ``bf16x3`` split the model's operands (``C``, ``x``) too (``SPLIT_MODEL``): three bf16 MMAs.
``PACK_BF16``: bf16 pieces round two per instruction (narrow.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..triton_compat import kernel_pair
from .narrow import split_dot


@triton.jit
def _state_term(acc, c_ptrs, state_ptrs, mask_m, mask_n, offs_s, N: tl.constexpr, BLOCK_DSTATE: tl.constexpr,
                SPLIT_F32: tl.constexpr, SPLIT_MODEL: tl.constexpr, PACK_BF16: tl.constexpr, NARROW: tl.constexpr,
                DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``acc + C_m @ state^T`` over dstate blocks; ``state_ptrs`` a (dstate, head_dim) view of a state
    in float32 or any state dtype (one binary of this helper per pointer type, inlined)."""
    for s0 in range(0, N, BLOCK_DSTATE):
        mask_s = (s0 + offs_s) < N
        c = tl.load(c_ptrs + s0, mask=mask_m[:, None] & mask_s[None, :], other=0.0)
        st = tl.load(state_ptrs + s0, mask=mask_s[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        acc = split_dot(st, c, acc, False, SPLIT_F32, SPLIT_MODEL, PACK_BF16, NARROW, DOT_DTYPE, DOT_PRECISION)
    return acc


def _chunk_scan_kernel(
    x_ptr, z_ptr, out_ptr, C_ptr, CB_ptr, dt_ptr, dA_cumsum_ptr, states_ptr, initial_states_ptr, D_ptr,
    cu_chunk_seqlens_ptr, seq_idx_ptr,
    H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, CHUNK_SIZE: tl.constexpr,
    HAS_INITSTATES: tl.constexpr, HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr, HAS_Z: tl.constexpr,
    FACTORED_DECAY: tl.constexpr,
    SPLIT_F32: tl.constexpr, SPLIT_MODEL: tl.constexpr, INTERPRETED: tl.constexpr, PACK_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DSTATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, NARROW: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    h = tl.program_id(2)
    num_n = (P + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    pid_n = pid % num_n
    start = tl.load(cu_chunk_seqlens_ptr + chunk)
    length = tl.load(cu_chunk_seqlens_ptr + chunk + 1) - start
    if pid_m * BLOCK_M >= length:
        return
    start = start.to(tl.int64)
    chunk64 = chunk.to(tl.int64)
    g = h // (H // G)
    seq = tl.load(seq_idx_ptr + chunk)
    prev_seq = tl.load(seq_idx_ptr + chunk - 1, mask=chunk > 0, other=-1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # target tokens of the chunk
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # head_dim
    offs_k = tl.arange(0, BLOCK_K)  # source tokens of the chunk
    offs_s = tl.arange(0, BLOCK_DSTATE)  # dstate
    mask_m = offs_m < length
    mask_n = offs_n < P
    base_l = (chunk64 * H + h) * CHUNK_SIZE
    dA_m = tl.load(dA_cumsum_ptr + base_l + offs_m, mask=mask_m, other=0.0)
    c_ptrs = C_ptr + (start + offs_m[:, None]) * (G * N) + g * N + offs_s[None, :]
    state_offs = offs_n[None, :] * N + offs_s[:, None]  # (dstate, head_dim) view of a (P, N) state

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    if prev_seq == seq:  # the chunk continues its sequence: the previous chunk's end state (float32)
        acc = _state_term(acc, c_ptrs, states_ptr + ((chunk64 - 1) * H + h) * (P * N) + state_offs, mask_m, mask_n,
                          offs_s, N, BLOCK_DSTATE, SPLIT_F32, SPLIT_MODEL, PACK_BF16, NARROW, DOT_DTYPE, DOT_PRECISION)
    else:
        if HAS_INITSTATES:  # a sequence's first chunk: its initial state (any state dtype)
            acc = _state_term(acc, c_ptrs, initial_states_ptr + (seq.to(tl.int64) * H + h) * (P * N) + state_offs,
                              mask_m, mask_n, offs_s, N, BLOCK_DSTATE, SPLIT_F32, SPLIT_MODEL, PACK_BF16, NARROW,
                              DOT_DTYPE, DOT_PRECISION)

    k_end = tl.minimum((pid_m + 1) * BLOCK_M, length)
    cb_ptrs = CB_ptr + (chunk64 * G + g) * (CHUNK_SIZE * CHUNK_SIZE) + offs_m[:, None] * CHUNK_SIZE + offs_k[None, :]
    x_ptrs = x_ptr + (start + offs_k[:, None]) * (H * P) + h * P + offs_n[None, :]
    k_diagonal = 0  # where the k loop below starts: the source tokens before it were done already
    if FACTORED_DECAY:
        # Below the diagonal block every source j precedes every target i of the M-block, so
        # exp(dA_i - dA_j) = exp(dA_i - r) * exp(r - dA_j), with r the dA cumsum at the block's first
        # token: the decay is a scale per source (32 exps per tile, not 64 x 32) and one per target,
        # applied once. With dt' >= 0 the cumsum is monotone, so each factor lies between 1 and the
        # decay itself: neither overflows unless the decay does (the plan asks for dt' >= 0).
        k_diagonal = pid_m * BLOCK_M
        r = tl.load(dA_cumsum_ptr + base_l + k_diagonal)
        acc *= tl.exp(r)
        for k0 in range(0, CHUNK_SIZE if INTERPRETED else k_diagonal, BLOCK_K):
            k = k0 + offs_k
            mask_k = k < k_diagonal
            cb = tl.load(cb_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            dA_k = tl.load(dA_cumsum_ptr + base_l + k, mask=mask_k, other=0.0)
            dt_k = tl.load(dt_ptr + base_l + k, mask=mask_k, other=0.0)
            cb = cb * tl.where(mask_k, tl.exp(r - dA_k) * dt_k, 0.0)[None, :]
            xk = tl.load(x_ptrs + k0 * (H * P), mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = split_dot(cb, xk, acc, True, SPLIT_F32, SPLIT_MODEL, PACK_BF16, NARROW, DOT_DTYPE, DOT_PRECISION)
        acc *= tl.exp(dA_m - r)[:, None]
    else:
        acc *= tl.exp(dA_m)[:, None]

    # Triton < 3.9's interpreter cannot loop to a loaded (or assigned) value: it runs to the static
    # bound, and the masks make the extra iterations no-ops.
    for k0 in range(0 if INTERPRETED else k_diagonal, CHUNK_SIZE if INTERPRETED else k_end, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < k_end
        # Only j <= i counts. Masking the exponent (not clamping it to <= 0) keeps exp finite above the
        # diagonal and exact below it, where a negative dt' (a dt_limit below 0) makes it > 0.
        causal = k[None, :] <= offs_m[:, None]
        if INTERPRETED:  # its loop starts at 0: the sources the factored loop took are masked out
            mask_k = mask_k & (k >= k_diagonal)
            causal = causal & mask_k[None, :]
        cb = tl.load(cb_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        dA_k = tl.load(dA_cumsum_ptr + base_l + k, mask=mask_k, other=0.0)
        dt_k = tl.load(dt_ptr + base_l + k, mask=mask_k, other=0.0)
        decay = tl.exp(tl.where(causal, dA_m[:, None] - dA_k[None, :], float("-inf")))
        # Tiles above the diagonal were never written by the bmm stage: select, never multiply.
        cb = tl.where(causal, cb * decay * dt_k[None, :], 0.0)
        xk = tl.load(x_ptrs + k0 * (H * P), mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = split_dot(cb, xk, acc, True, SPLIT_F32, SPLIT_MODEL, PACK_BF16, NARROW, DOT_DTYPE, DOT_PRECISION)

    io_offs = (start + offs_m[:, None]) * (H * P) + h * P + offs_n[None, :]
    mask_io = mask_m[:, None] & mask_n[None, :]
    if HAS_D:
        x_m = tl.load(x_ptr + io_offs, mask=mask_io, other=0.0).to(tl.float32)
        if D_HAS_HDIM:
            acc += x_m * tl.load(D_ptr + h * P + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        else:
            acc += x_m * tl.load(D_ptr + h).to(tl.float32)
    if HAS_Z:
        z_m = tl.load(z_ptr + io_offs, mask=mask_io, other=0.0).to(tl.float32)
        acc *= z_m / (1.0 + tl.exp(-z_m))
    tl.store(out_ptr + io_offs, acc.to(out_ptr.dtype.element_ty), mask=mask_io)


CHUNK_SCAN = kernel_pair(_chunk_scan_kernel)
