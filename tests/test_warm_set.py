"""pytest_ssd.verdict.warm_set: the in-process warm set, on real compiles (compile-only, sm_90).

The plugin's own use of it (watched test phases, markers, fixtures) runs through pytester in
tests/test_plugin_warm.py; here the warm set is driven directly.
"""
from __future__ import annotations

import pytest
import torch

import kernels_for_tests as kt
from pytest_ssd.compile_only import compile_only
from pytest_ssd.events import record_triton
from pytest_ssd.layer import make_mixer2_layer
from pytest_ssd.report import WorkerReport
from pytest_ssd.verdict.warm_set import WarmSet

N = 1 << 12


@pytest.fixture
def scan_calls(triton_cache_dir):
    """(warmup, warm call, cold call): one fresh chunk_scan kernel, compile-only for sm_90."""
    torch.manual_seed(5)
    x, init, out = torch.randn(N), torch.randn(N), torch.full((N,), float("nan"))
    scan = kt.make_chunk_scan()

    def call(n: int, init_states: bool):
        return lambda *_: scan[(1,)](x, init, out, n, HAS_INITSTATES=init_states, BLOCK=64)

    with compile_only("cuda:90"):
        yield call(256, False), call(256, False), call(256, True)


@pytest.fixture
def warm_set() -> WarmSet:
    """An empty warm set, filing in a report of its own (``warm_set.report``)."""
    return WarmSet(WorkerReport(worker="main"), persist_dir=None)


LAYER = dict(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16, seed=11)


def test_a_warmup_runs_once_per_layer_config_and_is_filed(scan_calls, warm_set):
    warmup, _, _ = scan_calls
    layer = make_mixer2_layer(**LAYER)
    rec = warm_set.warm(layer, warmup)
    assert warm_set.warm(layer, warmup) is rec and len(rec.compiles) == 1
    (filed,) = warm_set.report.warmups
    assert filed.name == "fp32/fp32 h4x16 n16 g1 c16 compile-only cuda:90"
    assert filed.layer.endswith(" [compile-only cuda:90]") and filed.compiles == filed.compiled_fresh == 1
    assert warm_set.layers_in_test == [filed.layer, filed.layer]
    assert warm_set.unfiled(rec.events) == []  # a warmup's own events are warm


def test_a_cold_call_is_explained_against_the_warm_set_filed_once_and_fails_when_enforced(scan_calls, warm_set):
    warmup, warm_call, cold_call = scan_calls
    report = warm_set.report
    warm_set.warm(make_mixer2_layer(**LAYER), warmup)
    with record_triton() as phase:
        warm_call()
        cold_call()
    (event,) = warm_set.unfiled(phase.events)
    message = warm_set.file_call("t.py::test_x", [event], enforced_by="--ssd-require-warm", allow_reason=None)
    assert "constexpr HAS_INITSTATES=True never warmed (warmup had False)" in message
    assert "fix: add a warmup call with HAS_INITSTATES=True" in message and "(enforced by --ssd-require-warm)" in message
    (cold,) = report.cold
    assert (cold.phase, cold.outcome, cold.layer) == ("call", "failed", report.warmups[0].layer)
    assert warm_set.unfiled(phase.events) == []  # filed once, whichever recording holds it again


def test_unenforced_or_allowed_cold_calls_are_filed_without_a_failure(scan_calls, warm_set):
    _, _, cold_call = scan_calls
    report = warm_set.report
    with record_triton() as phase:
        cold_call()
    assert warm_set.file_call("t.py::a", phase.events, enforced_by=None, allow_reason=None) is None
    assert warm_set.file_call("t.py::b", phase.events, enforced_by="--ssd-require-warm", allow_reason="why") is None
    assert [(c.outcome, c.allow_reason, c.layer) for c in report.cold] == [("reported", None, None),
                                                                           ("allowed", "why", None)]
    assert "kernel never warmed" in report.cold[0].lines[0]


def test_what_a_fixture_compiled_is_warm_from_then_on(scan_calls, warm_set):
    _, warm_call, cold_call = scan_calls
    with record_triton() as setup:
        cold_call()
    warm_set.file_fixture_warmup("t.py::a", setup.events, [(setup.events[0], "engine")])
    (filed,) = warm_set.report.cold
    assert (filed.phase, filed.outcome) == ("setup", "warmup") and filed.lines[0].endswith("-- in fixture 'engine'")
    with record_triton() as call:
        warm_call()  # another binary of the same kernel: explained against the fixture's
    (event,) = warm_set.unfiled(call.events)
    assert "constexpr HAS_INITSTATES=False never warmed (warmup had True)" in warm_set.explain([event])[0]
