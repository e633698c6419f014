"""Rounding float32 tiles to bf16 two values per instruction, for the compiled CUDA kernels.

On sm_90 ptxas turns Triton's scalar ``cvt.rn.bf16.f32`` into one F2F per value, which issues on
the slow conversion pipe; it pairs the float16 ones into packed F2FP instructions by itself, so
bf16 models paid more for the same hi/lo splits (chunk_state 0.074 vs 0.062 ms on an H200). The
packed ``cvt.rn.bf16x2.f32`` rounds exactly as the scalar one (to nearest, ties to even).

Kernels call :func:`bf16x2` only under their ``PACK_BF16`` constexpr (CUDA and bf16 pieces): the
interpreter cannot run inline PTX, and AMD has no PTX; there they use ``.to(NARROW)``.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def bf16x2(x):
    # pack=2: each instruction gets two float32 registers and writes both bf16 halves of one.
    return tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,r,r", [x], dtype=tl.bfloat16,
                                     is_pure=True, pack=2)
