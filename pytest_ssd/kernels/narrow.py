"""Float32 operands on 16-bit tensor cores: hi/lo pairs, and bf16 rounding two values at a time.

:func:`split_dot` is the product every stage's inner loop makes (docs/kernel.md, "Precision"): one
operand is float32 (a state, or a tile scaled by the decay), the other is the model's own. For
16-bit models the float32 one enters as a hi/lo pair of 16-bit values (``SPLIT_F32``): float32
accuracy for one more MMA. Float32 models under ``bf16x3`` split the model's operand too
(``SPLIT_MODEL``): hi*hi + hi*lo + lo*hi in bf16 (configs.py).

:func:`bf16x2` rounds float32 to bf16 with the packed ``cvt.rn.bf16x2.f32``. On sm_90 ptxas turns
Triton's scalar ``cvt.rn.bf16.f32`` into one F2F per value, on the slow conversion pipe; it pairs
the float16 ones into packed F2FP instructions by itself, so bf16 models paid more for the same
splits (chunk_state 0.074 vs 0.062 ms on an H200). The packed instruction rounds as the scalar one
(to nearest, ties to even). Only under ``PACK_BF16`` (CUDA and bf16 pieces): the interpreter
cannot run inline PTX, and AMD has none.

Both are ``@triton.jit`` helpers; the interpreted kernels call them too
(:func:`pytest_ssd.triton_compat.launch.interpretable`).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def bf16x2(x):
    # pack=2: each instruction gets two float32 registers and writes both bf16 halves of one.
    return tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,r,r", [x], dtype=tl.bfloat16,
                                     is_pure=True, pack=2)


@triton.jit
def _product(f, m, acc, F32_FIRST: tl.constexpr, DOT_DTYPE: tl.constexpr):
    if F32_FIRST:
        acc = tl.dot(f.to(DOT_DTYPE), m.to(DOT_DTYPE), acc)
    else:
        acc = tl.dot(m.to(DOT_DTYPE), f.to(DOT_DTYPE), acc)
    return acc


@triton.jit
def split_dot(f32, model, acc, F32_FIRST: tl.constexpr, SPLIT_F32: tl.constexpr, SPLIT_MODEL: tl.constexpr,
              PACK_BF16: tl.constexpr, NARROW: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``acc + f32 @ model`` (``F32_FIRST``) or ``acc + model @ f32``; ``f32`` is a float32 tile,
    ``model`` one in the model's dtype; each rounded to ``NARROW`` pieces, multiplied in ``DOT_DTYPE``
    (``DOT_PRECISION``, for float32 pieces, applies to the one product they make)."""
    f_hi = bf16x2(f32) if PACK_BF16 else f32.to(NARROW)
    m_hi = model.to(NARROW)
    if F32_FIRST:
        acc = tl.dot(f_hi.to(DOT_DTYPE), m_hi.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    else:
        acc = tl.dot(m_hi.to(DOT_DTYPE), f_hi.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    if SPLIT_F32:
        f_lo = f32 - f_hi.to(tl.float32)
        acc = _product(bf16x2(f_lo) if PACK_BF16 else f_lo.to(NARROW), m_hi, acc, F32_FIRST, DOT_DTYPE)
    if SPLIT_MODEL:
        m_lo = model - m_hi.to(tl.float32)
        acc = _product(f_hi, bf16x2(m_lo) if PACK_BF16 else m_lo.to(NARROW), acc, F32_FIRST, DOT_DTYPE)
    return acc
