"""The conformance suite, run in inner sessions: it passes on our kernel and fails, clearly, on
broken kernels and on a warmup that skips HAS_INITSTATES=True.

CPU only here: numerics through Triton's interpreter, warmup coverage in compile-only mode.
"""
import json

import pytest

BROKEN = """
import torch
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen as ours


def wrong_sign(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx, out, **kw):
    # A sign error in the skip connection: y = C h - D x instead of C h + D x.
    states = ours(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx, out, **kw)
    D = kw["D"]
    skip = (D[None, :, None] if D.dim() == 1 else D[None]) * x.float()
    out.copy_((out.float() - 2 * skip).to(out.dtype))
    return states


def skips_initial_states(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx,
                         out, **kw):
    kw["initial_states"] = None
    return ours(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx, out, **kw)


def warm_wrong_sign(layer):
    from pytest_ssd.warmup import warmup_ssd_kernels

    warmup_ssd_kernels(layer, kernel=wrong_sign)


def warm_skips_initial_states(layer):
    from pytest_ssd.warmup import warmup_ssd_kernels

    warmup_ssd_kernels(layer, kernel=skips_initial_states)


def warmup_too_much(layer):
    # Warms the gated (HAS_Z=True) binaries too, which an ungated layer's requests never use.
    from pytest_ssd.warmup import warmup_ssd_kernels

    warmup_ssd_kernels(layer)
    warmup_ssd_kernels(layer, with_z=True)


def gated_workload(layer, inputs):
    # An engine that gates inside the SSD call (z given) on a layer warmed without z.
    z = torch.randn(inputs.x.shape, dtype=inputs.x.dtype, device=inputs.x.device)
    ours(out=torch.empty_like(inputs.x), **{**inputs.kernel_kwargs(layer), "z": z})


def warmup_without_initial_states(layer):
    # The seed's mistake, half of it: only the HAS_INITSTATES=False binaries get warmed.
    from pytest_ssd.layer import make_ssd_inputs

    inputs = make_ssd_inputs(layer, [layer.chunk_size + 3], seed=7)
    ours(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
"""

# --ssd-device cpu: the same checks on a GPU machine (interpreter numerics, compile-only coverage).
ANY_DTYPE = ("-p", "pytest_ssd", "--pyargs", "pytest_ssd.suite", "-p", "no:cacheprovider", "--ssd-device", "cpu")
SUITE = (*ANY_DTYPE, "--ssd-dtype", "fp32")


@pytest.fixture
def broken(pytester):
    """The BROKEN module (wrong kernels, partial warmups) importable in the inner session."""
    pytester.makepyfile(broken=BROKEN)
    pytester.syspathinsert()


def test_suite_passes_on_our_kernel(pytester):
    report = pytester.path / "suite.json"
    result = pytester.runpytest(*SUITE, "--ssd-seed", "3", f"--ssd-report={report}", "-rs")
    result.assert_outcomes(passed=14, skipped=1)  # 13 correctness cases + coverage; latency is GPU-only
    result.stdout.fnmatch_lines(["*h80x64*: warm, 28 calls*", "*latency is judged on a GPU only*"])
    data = json.loads(report.read_text())
    (verdict,) = [v for wr in data["workers"] for v in wr["verdicts"]]
    assert verdict["where"] == "compile-only cuda:90" and verdict["warmup_binaries"] == 6, verdict
    assert verdict["cold"] == [] and verdict["unused"] == []
    assert data["totals"]["cold_events_call"] == 0


def test_the_default_limit_case_without_softplus_has_negative_dt():
    """The case exists for the clamp of a negative dt' to 0: its inputs must have some, and positive ones."""
    import torch

    from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
    from pytest_ssd.suite.cases import CORRECTNESS_CASES

    (case,) = [c for c in CORRECTNESS_CASES if c.name == "no_softplus_default_limit"]
    for scale in ("small", "gpu"):
        layer = make_mixer2_layer(**case.layer_kwargs(scale, torch.float32), seed=5, device="cpu")
        assert (layer.dt_softplus, layer.dt_limit) == (False, (0.0, float("inf")))
        inputs = make_ssd_inputs(layer, case.seqlens[scale], seed=6, with_initial_states=case.initial_states)
        dt_prime = inputs.dt + layer.dt_bias
        assert 0.2 < float((dt_prime < 0).float().mean()) < 0.8, scale


def test_suite_fails_on_a_wrong_sign(pytester, broken):
    result = pytester.runpytest(*SUITE, "--ssd-kernel", "broken:wrong_sign", "--ssd-warmup", "broken:warm_wrong_sign",
                                "-k", "varlen_mix or D_per_channel")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*SSD kernel disagrees with the reference (float32):*", "*out: * elements outside*"])


def test_suite_fails_on_skipped_initial_states(pytester, broken):
    result = pytester.runpytest(*SUITE, "--ssd-kernel", "broken:skips_initial_states",
                                "--ssd-warmup", "broken:warm_skips_initial_states", "-k",
                                "initial_states or everything or varlen_mix")
    # Only the cases with initial states catch it; varlen_mix has none and passes.
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*final_states: * elements outside*"])


def test_third_party_kernel_on_cpu_is_judged_on_real_compiles(pytester, broken):
    # Numerics run under the interpreter in this session; the verdict's fresh process compiles
    # for real (compile-only), so the kernel's warmth is still judged.
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(*SUITE, "--ssd-kernel", "broken:skips_initial_states",
                                           "--ssd-warmup", "pytest_ssd.warmup:warmup_ssd_kernels", "-k", "coverage",
                                           f"--ssd-report={report}")
    result.assert_outcomes(passed=1)
    (verdict,) = json.loads(report.read_text())["workers"][0]["verdicts"]
    # It drops initial states, so its requests never need the HAS_INITSTATES=True binaries.
    assert verdict["unused"] and all("HAS_INITSTATES=True" in line for line in verdict["unused"]), verdict


def test_suite_fails_on_a_warmup_that_skips_has_initstates_true(pytester, broken):
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(*SUITE, "--ssd-warmup", "broken:warmup_without_initial_states",
                                           "-k", "coverage", f"--ssd-report={report}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*COLD: 2 Triton compile/autotune event(s) in 28 calls after the warmup, in a fresh process*",
        "*HAS_INITSTATES=True*never warmed (warmup had False)*-- a fresh machine pays *s (compile-only)",
        "*paid by: seqlens ?1? (1 tokens), initial_states=True, returned",
        "*fix: add a warmup call with HAS_INITSTATES=True, initial_states_ptr as *fp32",
        "Warmup calls to add:",
        "*1. a call like seqlens ?1? (1 tokens), initial_states=True, returned: 2 event(s); needs HAS_INITSTATES=True*",
    ])
    # Filed once, with the right reason: the watched call phase does not file the same events again.
    (cold,) = [c for w in json.loads(report.read_text())["workers"] for c in w["cold"]]
    assert cold["outcome"] == "failed" and len(cold["lines"]) == 2
    assert all("never warmed (warmup had False)" in line for line in cold["lines"]), cold["lines"]


def test_each_dtype_is_judged_alone(pytester, broken):
    # The state-passing binary does not depend on the model dtype (fp32 states): in one process
    # the fp32 test's workload would compile it and the fp16 test would look warm. Each verdict
    # has a process of its own, so both name it.
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(*ANY_DTYPE, "--ssd-dtype", "fp32,fp16",
                                           "--ssd-warmup", "broken:warmup_without_initial_states",
                                           "-k", "coverage", f"--ssd-report={report}")
    result.assert_outcomes(failed=2)
    verdicts = json.loads(report.read_text())["workers"][0]["verdicts"]
    assert [v["layer"].split()[0] for v in verdicts] == ["fp32/fp32", "fp16/fp32"]
    for v in verdicts:
        kernels = sorted(line.split("[")[0] for line in v["cold"])
        assert kernels == ["_chunk_scan_kernel", "_state_passing_kernel"], v["cold"]
        assert all("HAS_INITSTATES=True never warmed" in line and " vs *" not in line for line in v["cold"])


def test_a_workload_of_ones_own_is_judged(pytester, broken):
    result = pytester.runpytest_subprocess(*SUITE, "--ssd-workload", "broken:gated_workload", "-k", "coverage",
                                           "--ssd-requests", "17;256,3")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*in 4 calls after the warmup*", "*HAS_Z=True never warmed (warmup had False)*",
                                 "*paid by: seqlens ?17? (17 tokens), initial_states=False, workload"])


def test_unused_warm_binaries_are_reported(pytester, broken):
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(*SUITE, "--ssd-warmup", "broken:warmup_too_much", "-k", "coverage",
                                           f"--ssd-report={report}")
    result.assert_outcomes(passed=1)
    summary = pytest.LineMatcher(result.stdout.str().replace("\n    ", " ").splitlines())  # lines unwrapped
    summary.fnmatch_lines(["*warm, 28 calls*candidates 0 (0 lost), unused 2 *unused: _chunk_scan_kernel*HAS_Z=True*"])
    data = json.loads(report.read_text())
    assert data["totals"]["unused_binaries"] == 2
    assert all("HAS_Z=True" in line for line in data["workers"][0]["verdicts"][0]["unused"])
