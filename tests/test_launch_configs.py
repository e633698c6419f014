"""Launch configs (kernels/configs.py) and the per-target constexprs of the plans (kernels/combined.py).

chunk_scan's register cap reaches CUDA binaries, and only them: it is what lets an H200 hold four
chunk_scan CTAs per SM instead of three. bf16 pieces are rounded two per instruction on CUDA only
(kernels/narrow.py), and chunk_state scales the smaller of its two tiles. Their effect on time is
measured by benchmarks/kernel_variants.py, not here.
"""
from __future__ import annotations

import re

import pytest
import torch

from pytest_ssd.compile_only import compile_only
from pytest_ssd.kernels import combined, configs, mamba_chunk_scan_combined_varlen
from pytest_ssd.kernels.chunk_scan import CHUNK_SCAN
from pytest_ssd.kernels.configs import LaunchConfig, LayerDims
from pytest_ssd.triton_compat import cached_binaries, version_at_least

FLAGS = dict(init_dtype=None, has_D=True, D_has_hdim=False, has_z=False, has_dt_bias=True, dt_softplus=True,
             has_dt_limit=False, dt_nonneg=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_chunk_scan_is_capped_at_128_registers_on_cuda_only(dtype):
    for target, interpret, expected in (("cuda:90", False, 128), ("cuda:80", False, 128),
                                        ("hip:gfx942", False, None), (None, True, None)):
        plans = combined._stage_plans(80, 1, 64, 128, 256, dtype, **FLAGS, interpret=interpret, target=target)
        assert plans.chunk_scan.constexprs.get("maxnreg") == expected, (target, interpret)
        # the other stages are not capped: a cap there measured slower or did not compile
        for stage in (plans.chunk_state, plans.bmm, plans.state_passing):
            assert "maxnreg" not in stage.constexprs


def test_an_override_sets_or_clears_the_register_cap():
    dims = LayerDims(80, 1, 64, 128, 256, torch.bfloat16)
    default = configs.configs_for(dims)["chunk_scan"]
    with configs.overridden("chunk_scan", LaunchConfig(default.blocks, 4, 1, maxnreg=96)):
        assert configs.configs_for(dims)["chunk_scan"].maxnreg == 96
    with configs.overridden("chunk_scan", LaunchConfig(default.blocks, 4, 1)):  # an override is the whole config
        assert configs.configs_for(dims)["chunk_scan"].maxnreg is None
    assert configs.configs_for(dims)["chunk_scan"].maxnreg == 128


@pytest.mark.usefixtures("triton_cache_dir")
def test_the_cap_is_in_the_compiled_chunk_scan(ssd_seed):
    """Compile-only sm_90: the PTX Triton hands to ptxas carries ``.maxnreg 128``."""
    from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs

    print(f"seed={ssd_seed}")
    layer = make_mixer2_layer(nheads=4, head_dim=16, n_groups=1, ssm_state_size=32, chunk_size=32,
                              dtype=torch.bfloat16, state_dtype=torch.float32, seed=ssd_seed)
    inputs = make_ssd_inputs(layer, [40, 9], seed=ssd_seed + 1)
    with compile_only("cuda:90"):
        mamba_chunk_scan_combined_varlen(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
    compiled = [k for k in cached_binaries(CHUNK_SCAN.compiled) if k.metadata.target.arch == 90]
    assert compiled, "no chunk_scan binary was compiled for sm_90"
    assert all(re.search(r"\.maxnreg 128\b", k.asm["ptx"]) for k in compiled)


@pytest.mark.parametrize("dtype, scan, state", [(torch.bfloat16, True, True), (torch.float32, True, False),
                                                (torch.float16, False, False)])
def test_bf16_pieces_round_two_at_a_time_on_cuda_only(dtype, scan, state):
    """PACK_BF16 where the pieces are bf16 and the target runs PTX: a float32 model's chunk_scan
    (bf16x3) but not its chunk_state (slower there on an H200); never on AMD or in the interpreter."""
    for target, interpret, on in (("cuda:90", False, True), ("cuda:80", False, True),
                                  ("hip:gfx942", False, False), (None, True, False)):
        plans = combined._stage_plans(80, 1, 64, 128, 256, dtype, **FLAGS, interpret=interpret, target=target)
        assert plans.chunk_scan.constexprs["PACK_BF16"] is (on and scan), (target, interpret)
        assert plans.chunk_state.constexprs["PACK_BF16"] is (on and state), (target, interpret)


@pytest.mark.usefixtures("triton_cache_dir")
def test_the_compiled_bf16_kernels_round_with_packed_instructions(ssd_seed):
    """Compile-only sm_90, bf16 model: chunk_scan's and chunk_state's PTX round float32 to bf16 only
    with the packed ``cvt.rn.bf16x2.f32`` (the scalar one became a slow F2F per value)."""
    from pytest_ssd.kernels.chunk_state import CHUNK_STATE
    from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs

    print(f"seed={ssd_seed}")
    kernels = (CHUNK_SCAN.compiled, CHUNK_STATE.compiled)
    before = {id(k) for jf in kernels for k in cached_binaries(jf)}
    layer = make_mixer2_layer(nheads=4, head_dim=16, n_groups=1, ssm_state_size=32, chunk_size=64,
                              dtype=torch.bfloat16, state_dtype=torch.float32, seed=ssd_seed)
    inputs = make_ssd_inputs(layer, [70, 9], seed=ssd_seed + 1, with_initial_states=True)
    with compile_only("cuda:90"):
        mamba_chunk_scan_combined_varlen(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
    for jf in kernels:
        new = [k for k in cached_binaries(jf) if id(k) not in before]
        assert new, f"no new {jf.__name__} binary was compiled for sm_90"
        for k in new:
            assert "cvt.rn.bf16x2.f32" in k.asm["ptx"], jf.__name__  # Triton 3.3+ packs some by itself: the next line tells
            if version_at_least(3, 3):  # 3.2 still stores chunk_scan's bf16 output with scalar roundings
                assert not re.search(r"cvt\.rn\.bf16\.f32", k.asm["ptx"]), f"{jf.__name__} rounds one value at a time"


def test_chunk_state_scales_the_smaller_tile():
    """SCALE_X: the decay scale goes on x's (BLOCK_M, BLOCK_K) tile when it is the smaller one, also
    under a config override of the tiles; an override may set it outright (to measure)."""
    def scale_x(P, N):
        return combined._stage_plans(8, 1, P, N, 256, torch.bfloat16, **FLAGS, interpret=True).chunk_state.constexprs[
            "SCALE_X"]

    assert scale_x(64, 128) and not scale_x(64, 32)
    state = configs.default_configs(LayerDims(8, 1, 64, 128, 256, torch.bfloat16))["chunk_state"]
    with configs.overridden("chunk_state", LaunchConfig({**state.blocks, "BLOCK_N": 32}, 4, 3)):
        assert not scale_x(64, 128)
    with configs.overridden("chunk_state", LaunchConfig({**state.blocks, "SCALE_X": False}, 4, 3)):
        assert not scale_x(64, 128)


def test_bf16_pieces_are_not_packed_before_sm_80():
    """cvt.rn.bf16x2.f32 needs sm_80: older targets keep Triton's own rounding."""
    plans = combined._stage_plans(8, 1, 64, 128, 256, torch.bfloat16, **FLAGS, interpret=False, target="cuda:75")
    assert plans.chunk_scan.constexprs["PACK_BF16"] is False and plans.chunk_state.constexprs["PACK_BF16"] is False
