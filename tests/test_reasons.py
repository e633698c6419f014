"""pytest_ssd.verdict.reasons on recordings of real compiles (compile-only, sm_90).

One warmup and one workload are recorded once for the module; each test checks that one
kind of gap in the warmup is found and explained in words.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import kernels_for_tests as kt
from pytest_ssd.compile_only import compile_only
from pytest_ssd.events import AutotuneEvent, Recording, record_triton
from pytest_ssd.verdict.reasons import CoverageReport, compare

N = 1 << 16


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(warmup, workload, workload_cold) recordings of one scenario with known gaps."""
    torch.manual_seed(0)
    x, init, out = torch.randn(N), torch.randn(N), torch.randn(N)
    states32 = torch.randn(N)
    states16 = states32.to(torch.bfloat16)

    def workload(scan, tuned, fill):
        scan[(1,)](x, init, out, 256, HAS_INITSTATES=False, BLOCK=64)  # warmed
        scan[(1,)](x, init, out, 256, HAS_INITSTATES=True, BLOCK=64)  # constexpr never warmed
        scan[(1,)](x, init, out, 6565, HAS_INITSTATES=False, BLOCK=64)  # not %16
        scan[(1,)](x, init, out, 1, HAS_INITSTATES=False, BLOCK=64)  # ==1
        scan[(1,)](x[1:], init, out, 256, HAS_INITSTATES=False, BLOCK=64)  # unaligned pointer
        tuned[(1,)](x, states32, out, 80, 256)  # warmed
        tuned[(1,)](x, states16, out, 80, 256)  # another dtype in the autotune key
        tuned[(1,)](x, states32, out, 40, 256)  # another autotune key value
        fill[(1,)](out, 0.5, 256, BLOCK=64)  # kernel never warmed

    with pytest.MonkeyPatch.context() as mp, compile_only("cuda:90"):
        mp.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton-cache")))
        scan, tuned, scale = kt.make_chunk_scan(), kt.make_tuned_heads(), kt.make_scale()
        with record_triton() as warmup:
            scan[(1,)](x, init, out, 256, HAS_INITSTATES=False, BLOCK=64)
            tuned[(1,)](x, states32, out, 80, 256)
            scale[(1,)](x, out, 256, 1, BLOCK=64, DOUBLE=False)  # the workload never needs it
        with record_triton() as warm_run:
            workload(scan, tuned, kt.make_fill())
        with record_triton() as cold_run:  # fresh kernel objects: everything the workload needs
            workload(kt.make_chunk_scan(), kt.make_tuned_heads(), kt.make_fill())
    return warmup, warm_run, cold_run


@pytest.fixture(scope="module")
def report(recorded) -> CoverageReport:
    warmup, workload, cold = recorded
    return compare(warmup, workload, workload_cold=cold)


def reasons(report: CoverageReport, kernel: str, kind: str = "compile") -> list[str]:
    return [m.reason for m in report.missing if m.event.kernel == kernel and m.event.kind == kind]


def test_every_workload_event_is_missing_with_a_reason(recorded, report):
    _, workload, _ = recorded
    assert not report.ok
    assert [m.event for m in report.missing] == workload.events
    assert all(m.reason for m in report.missing)


def test_constexpr_never_warmed(report):
    assert "constexpr HAS_INITSTATES=True never warmed (warmup had False)" in reasons(report, "chunk_scan")


def test_integer_not_divisible_by_16_names_both_values(report):
    assert "seqlen=6565 not divisible by 16; warmup used 256" in reasons(report, "chunk_scan")


def test_integer_equal_to_one(report):
    assert "seqlen=1 equal to 1 (compiled in as a constant); warmup used 256" in reasons(report, "chunk_scan")


def test_pointer_not_aligned(report):
    assert "x_ptr: pointer not 16-byte aligned" in reasons(report, "chunk_scan")


def test_dtype_in_the_autotune_key(report):
    assert "dtype bf16 vs fp32 in the autotune key (states_ptr)" in reasons(report, "tuned_heads", "autotune")
    # ... and each config then compiles for the new pointer type
    assert reasons(report, "tuned_heads").count("states_ptr: *bf16 vs *fp32 in warmup") == 2


def test_new_autotune_key_value(report):
    assert "new autotune key (nheads=40; warmup had 80)" in reasons(report, "tuned_heads", "autotune")
    # 40 is not a multiple of 16 where 80 was: a new binary per config as well
    assert reasons(report, "tuned_heads").count("nheads=40 not divisible by 16; warmup used 80") == 2


def test_kernel_never_warmed(report):
    assert reasons(report, "fill") == ["kernel never warmed"]


def test_unused_needs_a_cold_recording(recorded, report):
    warmup, workload, _ = recorded
    assert [(e.kind, e.kernel) for e in report.unused] == [("compile", "scale")]
    assert compare(warmup, workload).unused is None


def test_report_text_and_json(report):
    text = report.format()
    assert text.splitlines()[0].startswith("Triton coverage FAILED: 9 compiles and 2 autotunes after warmup "
                                           "(warmup: 4 binaries, 1 autotune keys):")
    assert "  compile  fill[BLOCK=64] (out_ptr:*fp32 aligned, value:fp32, n:i32=256 %16=True)" in text
    assert "           why: kernel never warmed" in text
    assert "Warmed but not needed by the workload (1):" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and len(data["missing"]) == 11 and len(data["unused"]) == 1
    assert data["missing"][0]["reason"] == report.missing[0].reason


def test_a_warm_workload_is_ok(recorded):
    warmup, _, _ = recorded
    report = compare(warmup, Recording())
    assert report.ok and report.missing == []
    assert report.format().startswith("Triton coverage OK: the workload compiled and autotuned nothing "
                                      "(warmup: 4 binaries, 1 autotune keys).")
    assert "unknown (pass workload_cold" in report.format()


def test_same_binary_compiled_again_is_explained(recorded):
    warmup, _, _ = recorded
    again = Recording(events=[warmup.compiles[0]])  # e.g. a worker process that never warmed
    (miss,) = compare(warmup, again).missing
    assert miss.reason.startswith("identical binary was warmed, yet compiled again")


def test_launch_options_and_target_are_explained(recorded):
    warmup, _, _ = recorded
    warm = warmup.compiles[0]
    other = dataclasses.replace(warm, num_warps=8, target="cuda:80")
    (miss,) = compare(warmup, Recording(events=[other])).missing
    assert miss.reason == "num_warps 8 vs 4 in warmup; target cuda:80 vs cuda:90 in warmup"


def test_a_register_cap_is_a_binary_of_its_own_and_its_reason(tmp_path, monkeypatch):
    """Two real compiles (compile-only, sm_90) that differ only in ``maxnreg``: two binaries, and
    the one after the warmup is explained by that option, not as the warmed binary compiled again."""
    torch.manual_seed(0)
    x, init, out = torch.randn(N), torch.randn(N), torch.randn(N)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    with compile_only("cuda:90"):
        scan = kt.make_chunk_scan()
        with record_triton() as warmup:
            scan[(1,)](x, init, out, 256, HAS_INITSTATES=False, BLOCK=64, maxnreg=128)
        with record_triton() as workload:
            scan[(1,)](x, init, out, 256, HAS_INITSTATES=False, BLOCK=64, maxnreg=128)  # warm
            scan[(1,)](x, init, out, 256, HAS_INITSTATES=False, BLOCK=64)  # no cap: another binary
    (warm,) = warmup.compiles
    (uncapped,) = workload.compiles
    assert warm.options == {"maxnreg": 128} and uncapped.options == {}
    assert warm.identity != uncapped.identity and "maxnreg=128" in warm.describe()
    (miss,) = compare(warmup, workload).missing
    assert miss.reason == "launch option maxnreg=None vs 128 in warmup"
    assert "launch option maxnreg=None" in miss.fix


def test_autotune_of_a_kernel_only_compiled_in_warmup(recorded):
    warmup, _, _ = recorded
    scan = warmup.compiles[0]
    tune = AutotuneEvent(scan.kernel, scan.module, {"seqlen": 256}, {}, 2, None, "benchmarked", 0.1)
    (miss,) = compare(warmup, Recording(events=[tune])).missing
    assert miss.reason == "kernel compiled during warmup but never autotuned"


def test_a_tensor_missing_from_the_autotune_key(recorded):
    warmup, _, _ = recorded
    warm = warmup.autotunes[0]
    fewer = dataclasses.replace(warm, key_dtypes={k: v for k, v in warm.key_dtypes.items() if k != "states_ptr"})
    (miss,) = compare(warmup, Recording(events=[fewer])).missing
    assert miss.reason == "states_ptr passed no tensor; warmup passed fp32 (one dtype less in the autotune key)"
