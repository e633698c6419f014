"""Launch configurations and the float32 dot precision: fixed per layer, never autotuned at request time.

A config is a pure function of the layer (H, G, P, N, chunk size, dtype), so a warmup of the
layer compiles exactly the binaries every later request uses, and the choice cannot move from
run to run. The numbers were picked with ``benchmarks/bench_kernel.py --sweep`` on an H100 for
the Mamba2-2.7B layer (see docs/kernel.md); the clamps keep small layers (tests, the CPU
interpreter) on small tiles.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Iterator, NamedTuple, Optional

import torch

STAGES = ("chunk_state", "bmm_chunk", "state_passing", "chunk_scan")

# How float32 models multiply in ``tl.dot`` (16-bit models multiply their own dtype on the tensor
# cores, with hi/lo pairs for float32 operands: this does not apply to them).
# "bf16x3" (default): each float32 operand split into a hi/lo pair of bf16 values, three bf16 tensor-core
# products per dot (hi*hi + hi*lo + lo*hi, about 16 bits of mantissa), written out in the kernels
# so it works on every Triton (3.9's own input_precision="bf16x3" is the same idea);
# "tf32x3": three TF32 products per dot (Triton's input_precision, about float32 accuracy);
# "ieee": float32 FMAs on the CUDA cores (exact float32, many times slower); "tf32": one TF32
# product (10-bit mantissa: not float32 accuracy, for measurement only). Triton 3.2-3.9 accept all
# four, compiled (CUDA) and interpreted; the interpreter computes every one as a float32 matmul of
# the rounded pieces, so only a GPU shows what a choice costs (tests/test_kernel_gpu.py,
# benchmarks/fp32_precision.py). AMD's backend takes neither tf32x3 nor (but on gfx94x) tf32: "ieee" there.
FP32_DOT_PRECISIONS = ("bf16x3", "tf32x3", "ieee", "tf32")
_FP32_DOT_PRECISION = ["bf16x3"]


class DotPlan(NamedTuple):
    """How a kernel's ``tl.dot`` calls multiply, for one model dtype (constexprs of every stage)."""

    narrow: torch.dtype  # what each operand (or each piece of a hi/lo pair) is rounded to
    split_f32: bool  # float32 operands (states, decay-scaled B and CB) enter as hi/lo pairs
    split_model: bool  # the model's own operands (x, B, C) too: float32 models under bf16x3
    input_precision: str  # tl.dot's input_precision: used by float32 operands only


def dot_plan(dtype: torch.dtype, *, amd: bool = False) -> DotPlan:
    """The :class:`DotPlan` of a model ``dtype``; ``amd``: for Triton's AMD backend."""
    if dtype != torch.float32:
        return DotPlan(dtype, True, False, "tf32")
    precision = fp32_dot_precision(amd=amd)
    if precision == "bf16x3":
        return DotPlan(torch.bfloat16, True, True, "tf32")
    return DotPlan(torch.float32, False, False, precision)


class LayerDims(NamedTuple):
    """What a launch configuration may depend on: the layer, never the request."""

    nheads: int
    ngroups: int
    head_dim: int
    dstate: int
    chunk_size: int
    dtype: torch.dtype


@dataclass(frozen=True)
class LaunchConfig:
    blocks: dict = field(default_factory=dict)  # BLOCK_* constexprs of the kernel (and, to measure, any other)
    num_warps: int = 4
    num_stages: int = 2
    maxnreg: Optional[int] = None  # registers per thread at most (CUDA only): more CTAs per SM

    def launch_kwargs(self, interpret: bool, cuda: bool = True) -> dict:
        # The interpreter takes no launch options; AMD's backend has no maxnreg.
        if interpret:
            return dict(self.blocks)
        options = dict(self.blocks, num_warps=self.num_warps, num_stages=self.num_stages)
        if self.maxnreg is not None and cuda:
            options["maxnreg"] = self.maxnreg
        return options


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, n - 1).bit_length())


def default_configs(dims: LayerDims) -> dict:
    """One :class:`LaunchConfig` per stage for ``dims``.

    Float32 models (bf16x3: every operand a hi/lo pair) hold twice the operand registers of a
    16-bit model's tile: smaller dstate and token blocks win there (H200, docs/kernel.md).
    chunk_scan is capped at 128 registers per thread (``maxnreg``; CUDA only): four CTAs per SM
    instead of three, no spills, 15% less time on an H200 (docs/kernel.md, "Registers").
    (The plan puts chunk_state's decay scale on the smaller of its two tiles, ``SCALE_X``:
    combined.py.)
    """
    L, P, N = dims.chunk_size, _pow2(dims.head_dim), _pow2(dims.dstate)
    fp32 = dims.dtype == torch.float32
    return {
        "chunk_state": LaunchConfig({"BLOCK_M": min(64, P), "BLOCK_N": min(128, N),
                                     "BLOCK_K": min(16 if fp32 else 32, L), "FUSE_BMM": not fp32}, num_warps=4,
                                    num_stages=3),
        "bmm_chunk": LaunchConfig({"BLOCK_M": min(64, L), "BLOCK_N": min(64, L), "BLOCK_K": min(64, N)},
                                  num_warps=4, num_stages=2),
        "state_passing": LaunchConfig({"BLOCK": min(1024, _pow2(dims.head_dim * dims.dstate))}, num_warps=4,
                                      num_stages=1),
        "chunk_scan": LaunchConfig({"BLOCK_M": min(64, L), "BLOCK_N": min(64, P), "BLOCK_K": min(32, L),
                                    "BLOCK_DSTATE": min(32 if fp32 else 128, N)}, num_warps=4, num_stages=1,
                                   maxnreg=128),
    }


_OVERRIDES: dict = {}
_ON_CHANGE: list = []  # called whenever the overrides change: whoever caches configs drops them


def on_change(callback) -> None:
    """Call ``callback()`` whenever :func:`overridden` changes what :func:`configs_for` answers."""
    _ON_CHANGE.append(callback)


def _changed() -> None:
    for callback in _ON_CHANGE:
        callback()


def configs_for(dims: LayerDims) -> dict:
    configs = default_configs(dims)
    for stage, override in _OVERRIDES.items():
        configs[stage] = replace(configs[stage], blocks={**configs[stage].blocks, **override.blocks},
                                 num_warps=override.num_warps, num_stages=override.num_stages,
                                 maxnreg=override.maxnreg)
    return configs


def fp32_dot_precision(*, amd: bool = False) -> str:
    """The ``input_precision`` of float32 models' dots (one of :data:`FP32_DOT_PRECISIONS`);
    ``amd``: for Triton's AMD backend, which accepts only "ieee" of them everywhere."""
    return "ieee" if amd else _FP32_DOT_PRECISION[0]


@contextlib.contextmanager
def fp32_dot_precision_set(precision: str) -> Iterator[None]:
    """Multiply float32 models' dots with ``precision`` inside the block (the precision benchmark).

    A different precision is a different binary: set it before the warmup, as with
    :func:`overridden`; a warmup done under another precision does not cover it.
    """
    if precision not in FP32_DOT_PRECISIONS:
        raise ValueError(f"precision: expected one of {FP32_DOT_PRECISIONS}, got {precision!r}")
    previous = _FP32_DOT_PRECISION[0]
    _FP32_DOT_PRECISION[0] = precision
    _changed()
    try:
        yield
    finally:
        _FP32_DOT_PRECISION[0] = previous
        _changed()


@contextlib.contextmanager
def overridden(stage: str, config: LaunchConfig) -> Iterator[None]:
    """Use ``config`` for ``stage`` inside the block (the tuning sweep of the benchmark)."""
    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
    previous = _OVERRIDES.get(stage)
    _OVERRIDES[stage] = config
    _changed()
    try:
        yield
    finally:
        if previous is None:
            _OVERRIDES.pop(stage)
        else:
            _OVERRIDES[stage] = previous
        _changed()
