"""The float32 models' dot precision (kernels/configs.py): one choice, what it compiles to, bad values.

The numerics of each choice on a GPU are in tests/test_kernel_gpu.py (the interpreter computes
every precision as a float32 matmul, so it cannot tell them apart).
"""
from __future__ import annotations

import re

import pytest
import torch
import triton.language as tl

from pytest_ssd.compile_only import compile_only
from pytest_ssd.kernels import combined, configs
from pytest_ssd.kernels.bmm import BMM_CHUNK

pytestmark = pytest.mark.usefixtures("triton_cache_dir")

TF32_MMA = re.compile(r"(?:wgmma\.mma_async|mma\.sync)\.\S*\.tf32\.tf32")
FMA = re.compile(r"\bfma\.rn\.f32\b")


def _bmm_ptx(precision: str, target: str) -> str:
    """PTX of the bmm stage for a float32 model with 64x64 tiles (wgmma-sized on sm_90)."""
    torch.manual_seed(0)
    G, N, L = 1, 64, 64
    C, B = torch.randn(2 * L, G, N), torch.randn(2 * L, G, N)
    cu_chunks = torch.tensor([0, L, 2 * L], dtype=torch.int32)
    with compile_only(target):
        kernel = BMM_CHUNK.compiled[(1, 2, G)](C, B, cu_chunks, torch.empty(2, G, L, L), G=G, N=N, CHUNK_SIZE=L,
                                               BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, DOT_PRECISION=precision,
                                               DOT_DTYPE=tl.float32, num_warps=4)
    return kernel.asm["ptx"]


@pytest.mark.parametrize("target", ["cuda:90", "cuda:80"])
def test_tf32x3_compiles_to_tensor_core_products_and_ieee_to_fmas(target):
    tf32x3, ieee = _bmm_ptx("tf32x3", target), _bmm_ptx("ieee", target)
    assert TF32_MMA.search(tf32x3) and not FMA.search(tf32x3)
    assert not TF32_MMA.search(ieee) and len(FMA.findall(ieee)) >= 1024  # 64^3 FMAs over 128 threads: 2048
    if target == "cuda:90":
        assert "wgmma.mma_async" in tf32x3


def test_tf32x3_is_the_default_and_every_choice_reaches_the_float32_plans():
    assert configs.fp32_dot_precision() == "tf32x3"
    flags = dict(init_dtype=None, has_D=True, D_has_hdim=False, has_z=False, has_dt_bias=True, dt_softplus=True,
                 has_dt_limit=False, interpret=True)
    for precision in configs.FP32_DOT_PRECISIONS:
        with configs.fp32_dot_precision_set(precision):
            fp32 = combined._stage_plans(4, 1, 16, 16, 16, torch.float32, **flags)
            bf16 = combined._stage_plans(4, 1, 16, 16, 16, torch.bfloat16, **flags)
        for name in ("chunk_state", "bmm", "chunk_scan"):
            assert getattr(fp32, name).constexprs["DOT_PRECISION"] == precision
            assert getattr(bf16, name).constexprs["DOT_PRECISION"] == "tf32"  # 16-bit operands: not affected
    assert configs.fp32_dot_precision() == "tf32x3"


def test_amd_targets_multiply_float32_in_ieee():
    """Triton's AMD backend refuses tf32x3 (and tf32 but on gfx94x): a float32 model compiled for
    it must not take the CUDA default."""
    flags = dict(init_dtype=None, has_D=True, D_has_hdim=False, has_z=False, has_dt_bias=True, dt_softplus=True,
                 has_dt_limit=False, interpret=False)
    for target, expected in (("hip:gfx942", "ieee"), ("cuda:90", "tf32x3"), ("cuda:80", "tf32x3")):
        plans = combined._stage_plans(4, 1, 16, 16, 16, torch.float32, **flags, target=target)
        assert plans.bmm.constexprs["DOT_PRECISION"] == expected, target


def test_a_precision_change_drops_the_kept_plans():
    combined._PLANS[("sentinel",)] = None
    with configs.fp32_dot_precision_set("ieee"):
        assert ("sentinel",) not in combined._PLANS
        combined._PLANS[("sentinel",)] = None
    assert ("sentinel",) not in combined._PLANS


@pytest.mark.parametrize("bad", ["bf16x9", "TF32X3", None, 3])
def test_an_unknown_precision_is_refused_and_changes_nothing(bad):
    with pytest.raises(ValueError) as raised:
        with configs.fp32_dot_precision_set(bad):
            pass
    assert str(raised.value) == f"precision: expected one of ('tf32x3', 'ieee', 'tf32'), got {bad!r}"
    assert configs.fp32_dot_precision() == "tf32x3"
