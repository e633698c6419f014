"""The bundled Triton SSD kernel compiled on a CUDA GPU, float32/float16/bfloat16, against the float64 reference.

Skipped without CUDA. Tolerances (pytest_ssd.assertions.TOLERANCES) are at least as tight as
vLLM's: fp32 atol 8e-3 rtol 5e-3, fp16 3e-2/3e-2, bf16 5e-2/5e-2. Outputs are NaN-poisoned;
whole outputs and whole final states are compared.
"""
from __future__ import annotations

import pytest
import torch

import _ssd_cases
from _ssd_cases import (KernelCase, assert_states_matter, check_against_reference, check_intermediate_states,
                        run_kernel)
from pytest_ssd.kernels import configs

pytestmark = pytest.mark.gpu  # the plugin skips it without CUDA

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GPU = dict(nheads=16, head_dim=64, ssm_state_size=128, chunk_size=64, state_dtype=torch.float32)

CASES = [
    KernelCase("single_token", [1]),
    KernelCase("varlen_mix", [1, 64, 200, 513]),
    KernelCase("initial_states", [129, 1, 64, 70], initial_states=True, layer={"n_groups": 2}),
    KernelCase("z_and_D_per_channel", [150, 33], z=True, layer={"d_has_hdim": True}),
    KernelCase("dt_limit_no_softplus", [70, 3], layer={"dt_softplus": False, "dt_limit": (0.0, 0.1)}),
    KernelCase("mamba2_decay", [300, 1, 64], initial_states=True, slow_decay=False),
    KernelCase("tensor_parallel", [66, 2], layer={"nheads": 32, "n_groups": 4, "tp_size": 2}),
    KernelCase("chunk256_everything", [1, 700, 256, 1], initial_states=True, z=True,
               layer={"chunk_size": 256, "n_groups": 2, "d_has_hdim": True, "dt_limit": (0.005, 0.08)}),
    KernelCase("states_in_model_dtype", [97, 2, 255], initial_states=True, layer={"state_dtype": "model"}),
    # dt' of both signs (a floor below 0, no softplus): chunk_scan's decay per tile, not factored.
    KernelCase("chunk256_negative_dt_floor", [600, 3, 257], initial_states=True,
               layer={"chunk_size": 256, "dt_softplus": False, "dt_limit": (-0.02, 0.1)}),
    # head_dim above dstate: chunk_state scales B's tile, not x's.
    KernelCase("head_dim_above_dstate", [300, 1, 70], initial_states=True, layer={"ssm_state_size": 32}),
]


def make_case(case: KernelCase, dtype: torch.dtype, seed: int, mixer2_layer, ssd_inputs):
    return _ssd_cases.make_case(case, {**GPU, "dtype": dtype}, device="cuda", seed=seed, mixer2_layer=mixer2_layer,
                                ssd_inputs=ssd_inputs)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case: KernelCase, dtype, ssd_seed, mixer2_layer, ssd_inputs) -> None:
    print(f"seed={ssd_seed} case={case} dtype={dtype}")
    layer, inputs = make_case(case, dtype, ssd_seed, mixer2_layer, ssd_inputs)
    check_against_reference(layer, inputs, seed=ssd_seed)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_intermediate_states(dtype, ssd_seed, mixer2_layer, ssd_inputs) -> None:
    print(f"seed={ssd_seed} dtype={dtype}")
    layer, inputs = make_case(CASES[7], dtype, ssd_seed, mixer2_layer, ssd_inputs)
    check_intermediate_states(layer, inputs, seed=ssd_seed)


def test_initial_states_are_tested(ssd_seed, mixer2_layer, ssd_inputs) -> None:
    layer, inputs = make_case(CASES[2], torch.bfloat16, ssd_seed, mixer2_layer, ssd_inputs)
    assert_states_matter(layer, inputs, seed=ssd_seed)


@pytest.mark.parametrize("with_initial_states", [False, True], ids=["zero_states", "initial_states"])
def test_mamba2_2p7b_layer(with_initial_states, ssd_seed, mixer2_layer, ssd_inputs) -> None:
    """The anchors' workload: 80 heads x 64, dstate 128, chunk 256, bf16, fp32 states, 6565 tokens."""
    print(f"seed={ssd_seed}")
    layer = mixer2_layer(nheads=80, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256,
                         dtype=torch.bfloat16, state_dtype=torch.float32, device="cuda")
    inputs = ssd_inputs(layer, [1000, 2048, 517, 3000], with_initial_states=with_initial_states, device="cuda")
    check_against_reference(layer, inputs, seed=ssd_seed)


# float32 models' dot precisions that claim float32 accuracy (kernels/configs.py): each passes the
# fp32 tolerance, whichever is the default. Plain "tf32" claims no such thing and is only measured
# (benchmarks/fp32_precision.py).
ACCURATE_FP32_PRECISIONS = ["bf16x3", "tf32x3", "ieee"]


@pytest.mark.parametrize("precision", ACCURATE_FP32_PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fp32_dot_precision_matches_reference(case: KernelCase, precision, ssd_seed, mixer2_layer,
                                              ssd_inputs) -> None:
    print(f"seed={ssd_seed} case={case} precision={precision}")
    layer, inputs = make_case(case, torch.float32, ssd_seed, mixer2_layer, ssd_inputs)
    with configs.fp32_dot_precision_set(precision):
        check_against_reference(layer, inputs, seed=ssd_seed)


@pytest.mark.parametrize("precision", ACCURATE_FP32_PRECISIONS)
@pytest.mark.parametrize("slow_decay", [False, True], ids=["mamba2_decay", "slow_decay"])
def test_fp32_dot_precision_on_the_mamba2_2p7b_layer(precision, slow_decay, ssd_seed, mixer2_layer,
                                                     ssd_inputs) -> None:
    """The anchors' workload in float32 (chunk 256: the longest dots), with initial states."""
    print(f"seed={ssd_seed} precision={precision}")
    layer = mixer2_layer(nheads=80, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256,
                         dtype=torch.float32, state_dtype=torch.float32, device="cuda")
    if slow_decay:
        layer = _ssd_cases.with_slow_decay(layer, ssd_seed)
    inputs = ssd_inputs(layer, [1000, 2048, 517, 3000], with_initial_states=True, device="cuda")
    with configs.fp32_dot_precision_set(precision):
        check_against_reference(layer, inputs, seed=ssd_seed)


# Launch configs other layers get (and the tuning sweep tries): every one must compute the same thing.
ALTERNATIVE_CONFIGS = [
    ("chunk_scan", configs.LaunchConfig(dict(BLOCK_M=128, BLOCK_K=64, BLOCK_DSTATE=32), num_warps=8, num_stages=2)),
    ("chunk_scan", configs.LaunchConfig(dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, BLOCK_DSTATE=64), num_warps=2,
                                        num_stages=3)),
    ("chunk_state", configs.LaunchConfig(dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64), num_warps=4, num_stages=2)),
    # bmm's tiles in chunk_state's grid (16 tiles per row here) and on their own launch, in every dtype
    ("chunk_state", configs.LaunchConfig(dict(BLOCK_M=32, BLOCK_N=32, FUSE_BMM=True), num_warps=4, num_stages=3)),
    ("chunk_state", configs.LaunchConfig(dict(FUSE_BMM=False), num_warps=4, num_stages=3)),
    ("bmm_chunk", configs.LaunchConfig(dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32), num_warps=2, num_stages=3)),
    ("state_passing", configs.LaunchConfig(dict(BLOCK=256), num_warps=2, num_stages=1)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("stage,config", ALTERNATIVE_CONFIGS,
                         ids=[f"{stage}{i}" for i, (stage, _) in enumerate(ALTERNATIVE_CONFIGS)])
def test_alternative_launch_configs(stage, config, dtype, ssd_seed, mixer2_layer, ssd_inputs) -> None:
    print(f"seed={ssd_seed} {stage} {config}")
    layer, inputs = make_case(CASES[7], dtype, ssd_seed, mixer2_layer, ssd_inputs)
    with configs.overridden(stage, config):
        check_against_reference(layer, inputs, seed=ssd_seed)


def test_direct_launches_match_the_jit_path(ssd_seed, mixer2_layer, ssd_inputs) -> None:
    """Warm calls launch the kept binaries directly (Triton 3.4+), through their launcher with no
    launch hooks set: same numbers as the JIT path, on a new request shape (new grid) too, and
    each launch (three for bf16: bmm's tiles run in chunk_state's) goes through the JIT only once."""
    from pytest_ssd.kernels import combined
    from pytest_ssd.triton_compat import DIRECT_LAUNCH

    assert not DIRECT_LAUNCH or combined._LAUNCHER.stream(0) is not None, \
        "a launch hook is set: kept launches take the runner path"

    print(f"seed={ssd_seed}")
    layer, first = make_case(CASES[7], torch.bfloat16, ssd_seed, mixer2_layer, ssd_inputs)
    combined._LAUNCHER.clear()
    jit_out, jit_states = run_kernel(layer, first)  # through Triton's JIT
    assert len(combined._LAUNCHER._compiled) == (3 if DIRECT_LAUNCH else 0)
    direct_out, direct_states = run_kernel(layer, first)  # straight to the kept binaries
    assert torch.equal(jit_out, direct_out) and torch.equal(jit_states, direct_states), f"seed={ssd_seed}"
    other = ssd_inputs(layer, [3, 517, 1, 260], with_initial_states=True, with_z=True, device="cuda")
    check_against_reference(layer, other, seed=ssd_seed)
    assert len(combined._LAUNCHER._compiled) == (3 if DIRECT_LAUNCH else 0)
