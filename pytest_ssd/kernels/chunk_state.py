"""Stages 1 and 2: discretize dt, take the running sum of dt*A, and the state each chunk produces alone.

Per chunk ``c`` and head ``h`` (``l`` runs over the chunk's tokens, at most ``CHUNK_SIZE``)::

    dt'[c, h, l]        = clamp(softplus(dt[t_l, h] + dt_bias[h]))      (each step only when enabled)
    dA_cumsum[c, h, l]  = sum_{j <= l} dt'[c, h, j] * A[h]
    states[c, h]        = sum_l x[t_l, h, :]^T (B[t_l, g, :] * exp(dA_cumsum[c,h,last] - dA_cumsum[c,h,l]) * dt'[c,h,l])

The entry point enables the clamp (``HAS_DT_LIMIT``) wherever it can change dt': a ``dt_limit``
other than ``(0, inf)``, or no softplus (a negative dt' becomes 0, as in vLLM's and mamba_ssm's
kernels). ``dt'`` and ``dA_cumsum`` are float32 ``(C, H, CHUNK_SIZE)``, zero past the chunk's last token, so
``dA_cumsum[c, h, CHUNK_SIZE-1]`` is the chunk's total decay exponent; the later stages read them.
``states`` is float32 ``(C, H, P, N)``; state passing adds the state entering each chunk in place.

The cumsum is fused here rather than launched alone: a 5 us kernel in front of this one would leave
the GPU idle while the host launches the next one. Each tile program of a (chunk, head) computes
it, writes the same bits, and reads them back for its own k-blocks.

The scale ``exp(dA_last - dA_cumsum) * dt'`` goes on whichever tile is smaller: x's (BLOCK_M x
BLOCK_K) when ``SCALE_X`` (head_dim <= dstate, as in Mamba2), else B's (the same product).

``FUSE_BMM``: the grid has programs past the last head that make the chunk's ``C @ B^T`` tiles
(:func:`pytest_ssd.kernels.bmm.bmm_tile`, tiles of ``BMM_BLOCK_*``), so stage 2 needs no launch of
its own; they come last in the grid and fill the tail of the heads' programs.

Precision: the scaled operand is float32; for 16-bit models it enters the tensor cores as a hi/lo
pair of 16-bit values (``SPLIT_F32``, :func:`pytest_ssd.kernels.narrow.split_dot`), so the
product keeps float32 accuracy where one rounding of the scaled operand to bf16 costs up to ~0.3
absolute on outputs of long sequences.
"""
from __future__ import annotations

import triton.language as tl

from ..triton_compat import kernel_pair
from .bmm import bmm_tile
from .narrow import split_dot


def _chunk_state_kernel(
    x_ptr, B_ptr, dt_ptr, A_ptr, dt_bias_ptr, cu_chunk_seqlens_ptr, dt_out_ptr, dA_cumsum_ptr, states_ptr,
    C_ptr, CB_ptr, dt_min, dt_max,
    H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, CHUNK_SIZE: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_DT_LIMIT: tl.constexpr, SCALE_X: tl.constexpr,
    SPLIT_F32: tl.constexpr, SPLIT_MODEL: tl.constexpr, INTERPRETED: tl.constexpr, PACK_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    NARROW: tl.constexpr, DOT_DTYPE: tl.constexpr,
    FUSE_BMM: tl.constexpr, BMM_BLOCK_M: tl.constexpr, BMM_BLOCK_N: tl.constexpr, BMM_BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    h = tl.program_id(2)
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    start = tl.load(cu_chunk_seqlens_ptr + chunk)
    length = tl.load(cu_chunk_seqlens_ptr + chunk + 1) - start
    start = start.to(tl.int64)
    if FUSE_BMM:
        if h >= H:  # the programs after the heads' make this chunk's C.B^T tiles (stage 2)
            bmm_tiles = (CHUNK_SIZE // BMM_BLOCK_M) * (CHUNK_SIZE // BMM_BLOCK_N)
            t = (h - H) * ((P + BLOCK_M - 1) // BLOCK_M * num_n) + pid
            if t < G * bmm_tiles:
                bmm_tile(C_ptr, B_ptr, CB_ptr, t % bmm_tiles, chunk, t // bmm_tiles, start, length, G, N, CHUNK_SIZE,
                         BMM_BLOCK_M, BMM_BLOCK_N, BMM_BLOCK_K, DOT_PRECISION, SPLIT_MODEL, NARROW, DOT_DTYPE)
            return
    pid_m = pid // num_n
    pid_n = pid % num_n
    g = h // (H // G)
    base_l = (chunk.to(tl.int64) * H + h) * CHUNK_SIZE

    # dt' and its decay exponents over the whole chunk, for this head.
    offs_l = tl.arange(0, CHUNK_SIZE)
    mask_l = offs_l < length
    dt = tl.load(dt_ptr + (start + offs_l) * H + h, mask=mask_l, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + h).to(tl.float32)
    if DT_SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    if HAS_DT_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(mask_l, dt, 0.0)
    # tl.cumsum and tl.sum are nested @jit helpers the interpreter cannot call; scan and reduce are builtins.
    dA_cumsum = tl.associative_scan(dt * tl.load(A_ptr + h).to(tl.float32), 0, tl.standard._sum_combine)
    dA_last = tl.reduce(tl.where(offs_l == CHUNK_SIZE - 1, dA_cumsum, 0.0), 0, tl.standard._sum_combine)
    tl.store(dt_out_ptr + base_l + offs_l, dt)
    tl.store(dA_cumsum_ptr + base_l + offs_l, dA_cumsum)
    tl.debug_barrier()  # the k-blocks below read these stores back, from other threads of this program

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # head_dim
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # dstate
    offs_k = tl.arange(0, BLOCK_K)  # tokens of the chunk
    mask_m = offs_m < P
    mask_n = offs_n < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    # Triton < 3.9's interpreter cannot loop to a loaded (or assigned) value: it runs to the static
    # bound, and the masks make the extra iterations no-ops.
    for k0 in range(0, CHUNK_SIZE if INTERPRETED else length, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < length
        xt = tl.load(x_ptr + (start + k[None, :]) * (H * P) + h * P + offs_m[:, None],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(B_ptr + (start + k[:, None]) * (G * N) + g * N + offs_n[None, :],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        dA_k = tl.load(dA_cumsum_ptr + base_l + k, mask=mask_k, other=0.0, cache_modifier=".cg")
        dt_k = tl.load(dt_out_ptr + base_l + k, mask=mask_k, other=0.0, cache_modifier=".cg")
        w = tl.exp(dA_last - dA_k) * dt_k
        if SCALE_X:  # the scale on the (BLOCK_M, BLOCK_K) tile of x: the smaller operand for P < N
            acc = split_dot(xt.to(tl.float32) * w[None, :], b, acc, True, SPLIT_F32, SPLIT_MODEL, PACK_BF16, NARROW,
                            DOT_DTYPE, DOT_PRECISION)
        else:
            acc = split_dot(b.to(tl.float32) * w[:, None], xt, acc, False, SPLIT_F32, SPLIT_MODEL, PACK_BF16, NARROW,
                            DOT_DTYPE, DOT_PRECISION)

    offs = (chunk.to(tl.int64) * H + h) * (P * N) + offs_m[:, None] * N + offs_n[None, :]
    tl.store(states_ptr + offs, acc, mask=mask_m[:, None] & mask_n[None, :])


CHUNK_STATE = kernel_pair(_chunk_state_kernel)
