"""Latency measurement on CPU: known sleeps, a first call that compiles (compile-only), the report."""
import json
import time

import pytest
import torch
import triton
import triton.language as tl

from pytest_ssd.compile_only import compile_only
from pytest_ssd.latency import assert_no_latency_spike, measure_latency


def test_sleep_of_known_length_is_measured():
    calls = []

    def fn(ms):
        calls.append(ms)
        time.sleep(ms / 1e3 if len(calls) > 1 else 0.05)  # the first call sleeps 50 ms

    result = measure_latency(fn, [(5.0,), (5.0,)], repeats=5, warmup_runs=1)
    assert result.timer == "wall-clock" and not result.decides
    assert 50 <= result.first_ms < 50 + 40, result.format()
    assert 5 <= result.steady_median_ms < 5 + 20, result.format()
    assert result.ratio == pytest.approx(result.first_ms / result.steady_median_ms)
    assert len(calls) == 1 + 1 + 5
    assert "informative only" in result.format()


def test_steady_state_rotates_through_input_sets():
    seen = []
    measure_latency(lambda i: seen.append(i), [(0,), (1,), (2,)], repeats=6, warmup_runs=0)
    assert seen == [0, 0, 1, 2, 0, 1, 2]


def _make_kernel():
    # A fresh kernel object per test, so its first launch really compiles.
    def double(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)

    return triton.jit(double)


def test_first_call_that_compiles_is_reported(triton_cache_dir):
    kernel = _make_kernel()
    x = torch.randn(64)
    with compile_only("cuda:90"):
        result = measure_latency(lambda: kernel[(1,)](x, 64, BLOCK=64), [()], repeats=5, warmup_runs=1)
    assert result.first_call_compiles == 1 and result.first_call_autotunes == 0
    assert "double[BLOCK=64]" in result.first_call_events[0]
    assert result.first_ms > result.steady_median_ms


def test_cold_first_call_fails_even_on_cpu(triton_cache_dir):
    kernel = _make_kernel()
    x = torch.randn(64)
    with compile_only("cuda:90"), pytest.raises(AssertionError, match=r"first call was cold.*1 compiles"):
        assert_no_latency_spike(lambda: kernel[(1,)](x, 64, BLOCK=64), [()], max_ratio=1000.0, repeats=3)


def test_cpu_ratio_never_fails():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.03 if len(calls) == 1 else 0.0)

    result = assert_no_latency_spike(fn, [()], max_ratio=1.01, repeats=3, warmup_runs=0)
    assert result.ratio > 1.01 and not result.decides


@pytest.mark.parametrize("kwargs, match", [({"input_sets": []}, "input_sets: expected a non-empty list"),
                                           ({"input_sets": [()], "repeats": 1}, "repeats: expected an int >= 3"),
                                           ({"input_sets": [()], "warmup_runs": -1},
                                            "warmup_runs: expected an int >= 0")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_latency(lambda: None, **kwargs)


def test_latency_lands_in_json_report(pytester):
    pytester.makepyfile("""
        import time
        def test_lat(ssd_latency):
            state = {"n": 0}
            def fn():
                state["n"] += 1
                time.sleep(0.02 if state["n"] == 1 else 0.001)
            r = ssd_latency(fn, [()], name="sleepy", repeats=5)
            assert r.ratio > 2
    """)
    report = pytester.path / "r.json"
    result = pytester.runpytest("--ssd-device", "cpu", f"--ssd-report={report}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["latency (first call vs steady state)", "  main *::test_lat",
                                 "      sleepy: first * ms, steady * ms*wall-clock*"])
    data = json.loads(report.read_text())
    (lat,) = [r for w in data["workers"] for r in w["latency"]]
    assert lat["name"] == "sleepy" and lat["ratio"] > 2 and lat["timer"] == "wall-clock"
