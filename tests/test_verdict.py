"""pytest_ssd.verdict (its fresh-process run) and its parts: call variants, autotune candidates, fixes, unused, the spec.

The fresh-process verdicts themselves run through the suite in tests/test_suite.py (bundled
kernel) and tests/peers/ (released vLLM).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import kernels_for_tests as kt
from pytest_ssd.adapters import SSDKernel, call_variants
from pytest_ssd.compile_only import compile_only
from pytest_ssd.events import Recording, record_triton
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen as ours
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
from pytest_ssd.verdict import WorkloadSpec, analyse, autotune_candidates


def vllm_033_style(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx, out,
                   D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False,
                   dt_limit=(0.0, float("inf")), return_intermediate_states=False, state_dtype=None,
                   final_states_out=None, final_state_indices=None):
    """vLLM 0.33's signature over our kernel: final states written into a state cache."""
    states = ours(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx, out, D=D,
                  z=z, dt_bias=dt_bias, initial_states=initial_states, dt_softplus=dt_softplus, dt_limit=dt_limit,
                  return_intermediate_states=return_intermediate_states, state_dtype=state_dtype)
    if final_states_out is None:
        return states
    final_states_out[final_state_indices.long()] = states
    return None


def mamba_style(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False):
    raise AssertionError("not called")


def test_call_variants_follow_the_signature():
    assert call_variants(vllm_033_style, "vllm") == ("returned", "final_states_out", "intermediate_states")
    assert call_variants(ours, "vllm") == ("returned", "intermediate_states")
    assert call_variants(mamba_style, "mamba_ssm") == ("returned",)


def test_the_serving_variant_reads_states_back_from_the_cache(ssd_seed):
    print("seed", ssd_seed)
    layer = make_mixer2_layer(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16, seed=ssd_seed)
    inputs = make_ssd_inputs(layer, [19, 1, 16], seed=ssd_seed + 1, with_initial_states=True)
    kernel = SSDKernel(fn=vllm_033_style, api="vllm", name="test:vllm_033_style")
    out, returned = kernel.run(layer, inputs)
    out2, served = kernel.run(layer, inputs, variant="final_states_out")
    assert served.shape == returned.shape == (3, 4, 16, 16)
    assert torch.isfinite(served).all() and torch.equal(served, returned)
    assert torch.equal(out, out2)
    _, chunks = kernel.run(layer, inputs, variant="intermediate_states")
    assert chunks.shape[0] == inputs.cu_chunk_seqlens.numel() - 1
    with pytest.raises(ValueError, match="variant: expected one of"):
        kernel.run(layer, inputs, variant="served")


@pytest.fixture(scope="module")
def tuned_recording(tmp_path_factory):
    """A compile-only recording of one autotuned kernel: two configs for one key."""
    x, states, out = torch.randn(4096), torch.randn(4096), torch.randn(4096)
    with pytest.MonkeyPatch.context() as mp, compile_only("cuda:90"):
        mp.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton-cache")))
        scan, tuned = kt.make_chunk_scan(), kt.make_tuned_heads()
        with record_triton() as rec:
            scan[(1,)](x, states, out, 256, HAS_INITSTATES=False, BLOCK=64)
            tuned[(1,)](x, states, out, 80, 256)
            tuned[(1,)](x, states, out, 80, 255)  # same key, another specialization: not a candidate
    return rec


def test_autotune_candidates_are_the_compiles_of_its_benchmark(tuned_recording):
    (group,) = autotune_candidates(tuned_recording)
    assert group.tune.kernel == "tuned_heads" and len(group.binaries) == len(kt.TUNED_CONFIGS)
    assert all(b.during_autotune for b in group.binaries)
    assert [b.during_autotune for b in tuned_recording.compiles if b.kernel == "tuned_heads"] == [True, True, False]
    assert group.winner is None and group.lost == []  # compile-only times nothing
    assert "2 candidate binaries, winner unknown (compile-only)" in group.describe()
    # With a known winner (a GPU run), the other config lost.
    winner = {"kwargs": {"BLOCK": 128}, "num_warps": 8, "num_stages": 3}
    (known,) = autotune_candidates(Recording(events=[*group.binaries, dataclasses.replace(group.tune, winner=winner)]))
    assert [b.constexprs["BLOCK"] for b in known.lost] == [64]


def _call(seqlens, init, variant, events):
    return {"seqlens": list(seqlens), "initial_states": init, "variant": variant,
            "recording": Recording(events=list(events)).to_dict()}


def test_analyse_attributes_each_miss_to_the_call_that_paid_and_merges_fixes(tuned_recording):
    scan = [e for e in tuned_recording.compiles if e.kernel == "chunk_scan"][0]
    tuned = [e for e in tuned_recording.events if e.kernel == "tuned_heads"]
    init_true = dataclasses.replace(scan, constexprs={**scan.constexprs, "HAS_INITSTATES": True})
    odd = dataclasses.replace(scan, specializations={**scan.specializations, "seqlen": "none"},
                              int_values={"seqlen": 17})
    warmup = Recording(events=[scan, *tuned[:3]])  # chunk_scan, 2 candidates, the autotune event
    result = {"warmup": warmup.to_dict(), "warmup_seconds": 1.5, "triton": "3.9.0", "calls": [
        _call([256], False, "returned", []),
        _call([17], False, "returned", [odd]),
        _call([256], True, "returned", [init_true]),
    ]}
    spec = WorkloadSpec(kernel="k:f", api="vllm", warmup="w:f", layer={}, requests=((256,), (17,)))
    # From a cold start the workload needs the key but not the candidates the warmup benchmarked.
    cold = Recording(events=[scan, tuned[2], init_true, odd])
    verdict = analyse(spec, result, cold)
    assert not verdict.ok and [c.call.seqlens for c in verdict.cold] == [(17,), (256,)]
    assert "seqlen=17 not divisible by 16; warmup used 256" in verdict.cold[0].line()
    assert "a fresh machine pays" in verdict.cold[0].line()
    assert verdict.cold[0].miss.fix == "add a warmup call with seqlen not divisible by 16 (e.g. 17)"
    assert verdict.cold[1].miss.fix == "add a warmup call with HAS_INITSTATES=True"
    assert verdict.fixes() == [
        "a call like seqlens [17] (17 tokens), initial_states=False, returned: 1 event(s); "
        "needs seqlen not divisible by 16 (e.g. 17)",
        "a call like seqlens [256] (256 tokens), initial_states=True, returned: 1 event(s); needs HAS_INITSTATES=True",
    ]
    assert verdict.unused == ()  # the candidates are not "unused", though the cold run did not need them
    text = verdict.format()
    assert text.startswith("COLD: 2 Triton compile/autotune event(s) in 3 calls") and "Warmup calls to add:" in text
    # Without the cold recording, unused is unknown, not zero.
    assert analyse(spec, result, None).unused is None
    assert analyse(spec, {**result, "calls": result["calls"][:1]}, cold).ok


def test_a_verdict_is_filed_under_its_layer_name_with_its_cold_events(tuned_recording):
    scan = [e for e in tuned_recording.compiles if e.kernel == "chunk_scan"][0]
    odd = dataclasses.replace(scan, specializations={**scan.specializations, "seqlen": "none"},
                              int_values={"seqlen": 17})
    result = {"warmup": Recording(events=[scan]).to_dict(), "warmup_seconds": 2.0, "triton": "3.9.0",
              "calls": [_call([17], False, "returned", [odd]), _call([256], True, "returned", [])]}
    layer = dict(nheads=80, head_dim=64, ssm_state_size=128, chunk_size=256, dtype=torch.bfloat16, gated=True)
    spec = WorkloadSpec.for_layer(layer_kwargs=layer, kernel="k:f", api="vllm", warmup="w:f", requests=[[17], [256]])
    record, cold = analyse(spec, result, None).records("t.py::test_x")
    assert record.layer == cold.layer == spec.layer_name() == "bf16/fp32 h80x64 n128 g1 c256 z"
    assert (record.where, record.calls, record.warmup_binaries, record.unused) == ("compile-only cuda:90", 2, 1, None)
    assert record.warmup_manifest["measured"]["where"] == "compile-only cuda:90"
    assert (cold.nodeid, cold.phase, cold.outcome) == ("t.py::test_x", "call", "failed")
    assert cold.lines == record.cold and len(cold.lines) == 1 and "seqlen=17 not divisible by 16" in cold.lines[0]
    warm = analyse(spec, {**result, "calls": result["calls"][1:]}, None)
    assert warm.records("t.py::test_x")[1] is None


def test_a_warm_binary_no_request_needs_is_unused_but_a_candidate_is_not(tuned_recording):
    scan = [e for e in tuned_recording.compiles if e.kernel == "chunk_scan"][0]
    tuned = [e for e in tuned_recording.events if e.kernel == "tuned_heads"]
    spare = dataclasses.replace(scan, constexprs={**scan.constexprs, "HAS_INITSTATES": True})
    warmup = Recording(events=[scan, spare, *tuned[:3]])
    result = {"warmup": warmup.to_dict(), "warmup_seconds": 1.0, "triton": "3.9.0",
              "calls": [_call([256], False, "returned", [])]}
    spec = WorkloadSpec(kernel="k:f", api="vllm", warmup="w:f", layer={}, requests=((256,),))
    verdict = analyse(spec, result, Recording(events=[scan]))
    assert [e.identity for e in verdict.unused] == [spare.identity, tuned[2].identity]  # the key too
    assert sum(len(g.binaries) for g in verdict.candidates) == 2


def test_spec_checks_and_round_trip():
    spec = WorkloadSpec.for_layer(layer_kwargs=dict(nheads=8, dtype=torch.bfloat16, device="cpu", seed=3),
                                  kernel="k:f", api="vllm", warmup="w:f", requests=[[1, 2], [3]],
                                  variants=["returned"])
    assert spec.layer == {"nheads": 8, "dtype": "bfloat16"} and spec.requests == ((1, 2), (3,))
    assert WorkloadSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda'"):
        dataclasses.replace(spec, device="tpu")
    with pytest.raises(ValueError, match="needs a target"):
        dataclasses.replace(spec, target=None)
    with pytest.raises(ValueError, match="expected one of"):
        dataclasses.replace(spec, layer={"dtype": "float64"})


def test_verdict_module_refuses_a_bad_command_line():
    from pytest_ssd.verdict.child import main

    with pytest.raises(SystemExit, match="usage: python -m pytest_ssd.verdict"):
        main(["explain", "{}"])
