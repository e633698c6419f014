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


def warmup_without_initial_states(layer):
    # The seed's mistake, half of it: only the HAS_INITSTATES=False binaries get warmed.
    from pytest_ssd.layer import make_ssd_inputs

    inputs = make_ssd_inputs(layer, [layer.chunk_size + 3], seed=7)
    ours(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
"""

# --ssd-device cpu: the same checks on a GPU machine (interpreter numerics, compile-only coverage).
SUITE = ("-p", "pytest_ssd", "--pyargs", "pytest_ssd.suite", "-p", "no:cacheprovider", "--ssd-dtype", "fp32",
         "--ssd-device", "cpu")


def test_suite_passes_on_our_kernel(pytester):
    report = pytester.path / "suite.json"
    result = pytester.runpytest(*SUITE, "--ssd-seed", "3", f"--ssd-report={report}", "-rs")
    result.assert_outcomes(passed=13, skipped=1)  # 12 correctness cases + coverage; latency is GPU-only
    result.stdout.fnmatch_lines(["*latency is judged on a GPU only*"])
    data = json.loads(report.read_text())
    warmups = [w for wr in data["workers"] for w in wr["warmups"]]
    coverage = [w for w in warmups if "[compile-only " in w["layer"]]
    assert coverage and coverage[0]["compiles"] >= 4, "compile-only warmup compiled real binaries"
    assert any("HAS_INITSTATES=True" in b for b in coverage[0]["binaries"])
    assert data["totals"]["cold_events_call"] == 0


def test_suite_fails_on_a_wrong_sign(pytester):
    pytester.makepyfile(broken=BROKEN)
    pytester.syspathinsert()
    result = pytester.runpytest(*SUITE, "--ssd-kernel", "broken:wrong_sign", "--ssd-warmup", "broken:warm_wrong_sign",
                                "-k", "varlen_mix or D_per_channel")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*SSD kernel disagrees with the reference (float32):*", "*out: * elements outside*"])


def test_suite_fails_on_skipped_initial_states(pytester):
    pytester.makepyfile(broken=BROKEN)
    pytester.syspathinsert()
    result = pytester.runpytest(*SUITE, "--ssd-kernel", "broken:skips_initial_states",
                                "--ssd-warmup", "broken:warm_skips_initial_states", "-k",
                                "initial_states or everything or varlen_mix")
    # Only the cases with initial states catch it; varlen_mix has none and passes.
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*final_states: * elements outside*"])


def test_third_party_kernel_on_cpu_skips_coverage_with_the_reason(pytester):
    pytester.makepyfile(broken=BROKEN)
    pytester.syspathinsert()
    # In a fresh process: in-process, the outer session's already imported kernels hid a crash here.
    result = pytester.runpytest_subprocess(*SUITE, "--ssd-kernel", "broken:skips_initial_states",
                                           "--ssd-warmup", "broken:warm_skips_initial_states", "-k", "coverage", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*runs under Triton's interpreter on CPU, where nothing compiles*--ssd-compile-only*"])


def test_suite_fails_on_a_warmup_that_skips_has_initstates_true(pytester):
    pytester.makepyfile(broken=BROKEN)
    pytester.syspathinsert()
    # A fresh process: in this one, earlier tests may already hold the kernel's binaries in memory.
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(*SUITE, "--ssd-warmup", "broken:warmup_without_initial_states",
                                           "-k", "coverage", f"--ssd-report={report}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*Triton compile/autotune event(s) after warmup*",
        "*HAS_INITSTATES=True*never warmed (warmup had False)*",
    ])
    # Filed once, with the right reason: the watched call phase does not file the same events again.
    (cold,) = [c for w in json.loads(report.read_text())["workers"] for c in w["cold"]]
    assert cold["outcome"] == "failed" and cold["lines"]
    assert all("never warmed (warmup had False)" in line for line in cold["lines"]), cold["lines"]


def test_unused_warm_binaries_are_reported(pytester):
    pytester.makepyfile(broken=BROKEN)
    pytester.syspathinsert()
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(*SUITE, "--ssd-warmup", "broken:warmup_too_much", "-k", "coverage",
                                           f"--ssd-report={report}")
    result.assert_outcomes(passed=1)
    summary = pytest.LineMatcher(result.stdout.str().replace("\n        ", " ").splitlines())  # binary lines unwrapped
    summary.fnmatch_lines(["*unused warm binaries main: 2*", "*_chunk_scan_kernel*HAS_Z=True*"])
    data = json.loads(report.read_text())
    assert data["totals"]["unused_binaries"] == 2
    assert all("HAS_Z=True" in line for line in data["workers"][0]["unused_binaries"])
