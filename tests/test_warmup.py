"""warmup_ssd_kernels: what it reports, that it runs once per layer config, and that it leaves nothing cold.

Coverage is checked where Triton really compiles: on a GPU, and on CPU in compile-only mode.
"""
from __future__ import annotations

import logging

import pytest
import torch

from pytest_ssd import warmup as warmup_module
from pytest_ssd.events import record_triton
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
from pytest_ssd.triton_compat import jit_dispatch
from pytest_ssd.warmup import WarmupResult, warmup_ssd_kernels

# Request shapes of every specialization class: total tokens 1, 17 (neither 1 nor % 16), 256 and
# 6565, single-token sequences in mixes.
REQUESTS = ([1], [17], [256], [1000, 2048, 517, 3000], [6565], [1, 1, 1], [5, 1, 300, 16], [255, 257], [1, 4095, 1])


@pytest.fixture
def fresh_warm_set(monkeypatch):
    monkeypatch.setattr(warmup_module, "_WARMED", set())


def small_layer(**overrides):
    kwargs = dict(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16, seed=1, device="cpu")
    kwargs.update(overrides)
    return make_mixer2_layer(**kwargs)


def test_warmup_reports_what_it_ran(fresh_warm_set, caplog) -> None:
    layer = small_layer(dtype=torch.float32, state_dtype=torch.float16)
    with caplog.at_level(logging.INFO, logger="pytest_ssd"):
        result = warmup_ssd_kernels(layer)
    assert isinstance(result, WarmupResult)
    assert result.calls == 2 and len(result.warmed) == 2 and result.seconds > 0
    for text, init in zip(result.warmed, (False, True)):
        assert f"HAS_INITSTATES={init}" in text
        assert "x=float32" in text and "states=float16" in text and "chunk_size=16" in text
    assert len([r for r in caplog.records if r.name == "pytest_ssd"]) == 1


def test_warmup_runs_once_per_layer_config(fresh_warm_set, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pytest_ssd"):
        first = warmup_ssd_kernels(small_layer(seed=1))
        same_config = warmup_ssd_kernels(small_layer(seed=2))  # other weights, same config: already warm
        other_config = warmup_ssd_kernels(small_layer(d_has_hdim=True))
    assert (first.calls, same_config.calls, other_config.calls) == (2, 0, 2)
    assert same_config.warmed == [] and same_config.seconds == 0.0
    assert len([r for r in caplog.records if r.name == "pytest_ssd"]) == 2  # once per config, not per layer


def test_a_compile_only_target_is_warmed_apart_from_real_runs(fresh_warm_set) -> None:
    """A layer warmed for real (here: interpreted) is not warm for a compile-only target, nor one
    target for another: each compiles its own binaries, so each must run the warmup."""
    from pytest_ssd.compile_only import compile_only

    calls = []

    def kernel(**kwargs):  # stands in for the kernel: the warmup's calls are what is counted
        calls.append(kwargs["x"].shape[0])

    layer = small_layer()
    assert warmup_ssd_kernels(layer, kernel=kernel).calls == 2
    with compile_only("cuda:90"):
        assert warmup_ssd_kernels(layer, kernel=kernel).calls == 2
        assert warmup_ssd_kernels(layer, kernel=kernel).calls == 0
    with compile_only("cuda:80"):
        assert warmup_ssd_kernels(layer, kernel=kernel).calls == 2
    assert warmup_ssd_kernels(layer, kernel=kernel).calls == 0
    assert len(calls) == 6


def test_warmup_uses_the_layers_parameters_and_dtypes(fresh_warm_set) -> None:
    layer = small_layer(dtype=torch.float32, state_dtype=torch.float16, d_has_hdim=True, dt_limit=(0.01, 0.2))
    seen = []

    def spy(**kwargs):
        seen.append(kwargs)
        return mamba_chunk_scan_combined_varlen(**kwargs)

    warmup_ssd_kernels(layer, kernel=spy)
    assert [kw["initial_states"] is not None for kw in seen] == [False, True]
    for kw in seen:
        assert kw["A"] is layer.A and kw["D"] is layer.D and kw["dt_bias"] is layer.dt_bias
        assert kw["dt_limit"] == (0.01, 0.2) and kw["dt_softplus"] is True and kw["state_dtype"] == torch.float16
        assert kw["x"].dtype == torch.float32 and kw["z"] is None
        assert bool((kw["x"] != 0).all()), "warmup inputs must be random, never zeros"
        assert kw["x"].shape[0] > layer.chunk_size, "warmup should cross a chunk boundary"
    assert seen[1]["initial_states"].dtype == torch.float16


def _assert_warm_for_every_request(layer, device) -> None:
    with record_triton() as warm:
        assert warmup_ssd_kernels(layer, device=device).calls == 2
    # The warmup itself compiled this layer's binaries, both HAS_INITSTATES values: otherwise an
    # earlier test held them already and "nothing cold after" would prove nothing.
    init_flags = {e.constexprs.get("HAS_INITSTATES") for e in warm.compiles if "HAS_INITSTATES" in e.constexprs}
    assert init_flags == {False, True}, [e.describe() for e in warm.compiles]
    with record_triton() as rec, jit_dispatch():  # every launch asks Triton's JIT, which would compile a miss
        for i, seqlens in enumerate(REQUESTS):
            for with_init in (False, True):
                inputs = make_ssd_inputs(layer, seqlens, seed=100 + i, with_initial_states=with_init, device=device)
                mamba_chunk_scan_combined_varlen(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
        if device == "cuda":
            torch.cuda.synchronize()
    assert rec.events == [], "compiles/autotunes after warmup:\n  " + "\n  ".join(e.describe() for e in rec.events)


def test_nothing_cold_after_warmup_compile_only(fresh_warm_set) -> None:
    from pytest_ssd.compile_only import compile_only

    # 72 heads: a layer config no other test compiles, so this warmup is what compiles its binaries.
    layer = make_mixer2_layer(nheads=72, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256,
                              dtype=torch.bfloat16, state_dtype=torch.float32, seed=3, device="cpu")
    with compile_only(target="cuda:90"):
        _assert_warm_for_every_request(layer, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,state_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float16)],
                         ids=["bf16_fp32_states", "fp16_fp16_states"])
def test_nothing_cold_after_warmup_gpu(dtype, state_dtype, fresh_warm_set) -> None:
    # 48 heads: a layer config no other test compiles, so this warmup is what compiles its binaries.
    layer = make_mixer2_layer(nheads=48, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256,
                              dtype=dtype, state_dtype=state_dtype, seed=3, device="cuda")
    _assert_warm_for_every_request(layer, "cuda")


def test_max_num_tokens_adds_one_call_of_that_size(fresh_warm_set) -> None:
    layer = small_layer()
    seen = []

    def spy(**kwargs):
        seen.append(kwargs)
        return mamba_chunk_scan_combined_varlen(**kwargs)

    result = warmup_ssd_kernels(layer, kernel=spy, max_num_tokens=70)
    assert result.calls == 3 and "70 tokens" in result.warmed[2]
    assert seen[2]["x"].shape[0] == 70 and seen[2]["cu_seqlens"].tolist() == [0, 70]
    assert seen[2]["initial_states"] is None
    assert warmup_ssd_kernels(layer, kernel=spy, max_num_tokens=70).calls == 0  # same config and size: warm


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_max_num_tokens_must_be_a_positive_int(bad, fresh_warm_set) -> None:
    with pytest.raises(ValueError, match="^max_num_tokens: expected a positive int"):
        warmup_ssd_kernels(small_layer(), max_num_tokens=bad)


@pytest.mark.gpu
def test_max_num_tokens_leaves_the_workspace_allocated(fresh_warm_set) -> None:
    """After a warmup sized for the engine's largest batch, the anchors' request allocates no
    new device memory: the caching allocator already holds its workspace."""
    layer = make_mixer2_layer(nheads=40, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256,
                              dtype=torch.bfloat16, state_dtype=torch.float32, seed=4, device="cuda")
    inputs = make_ssd_inputs(layer, [1000, 2048, 517, 3000], seed=5)
    out = torch.empty_like(inputs.x)
    warmup_ssd_kernels(layer, max_num_tokens=8192)
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["segment.all.allocated"]
    mamba_chunk_scan_combined_varlen(out=out, **inputs.kernel_kwargs(layer))
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["segment.all.allocated"] == before
