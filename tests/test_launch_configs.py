"""Launch configs (kernels/configs.py): chunk_scan's register cap reaches CUDA binaries, and only them.

The cap (``maxnreg``) is what lets an H200 hold four chunk_scan CTAs per SM instead of three
(benchmarks/kernel_variants.py); its effect on time is measured there, not here.
"""
from __future__ import annotations

import re

import pytest
import torch

from pytest_ssd.compile_only import compile_only
from pytest_ssd.kernels import combined, configs, mamba_chunk_scan_combined_varlen
from pytest_ssd.kernels.chunk_scan import CHUNK_SCAN
from pytest_ssd.kernels.configs import LaunchConfig, LayerDims

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
    compiled = [k for cache in CHUNK_SCAN.compiled.device_caches.values() for k in cache[0].values()
                if k.metadata.target.arch == 90]
    assert compiled, "no chunk_scan binary was compiled for sm_90"
    assert all(re.search(r"\.maxnreg 128\b", k.asm["ptx"]) for k in compiled)
