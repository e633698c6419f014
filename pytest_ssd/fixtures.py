"""pytest-ssd fixtures. Each is a thin handle on a library function, seeded from ``--ssd-seed``.

Factories derive a fresh seed per call from the test's seed, so every tensor of a test is
reproducible from the seed printed in the report header and in failure messages.
"""
from __future__ import annotations

import itertools
from typing import Callable

import pytest

from .plugin import SEED_KEY, ssd_session
from .session import Mode, test_seed


@pytest.fixture(scope="session")
def ssd_settings(pytestconfig):
    """The effective pytest-ssd settings (CLI > env > ini > default)."""
    return ssd_session(pytestconfig).settings


@pytest.fixture(scope="session")
def ssd_mode(pytestconfig) -> Mode:
    """Where kernels run (``device``), and whether results are computed (not in compile-only mode)."""
    return ssd_session(pytestconfig).mode


@pytest.fixture
def ssd_seed(request) -> int:
    """This test's seed: derived from ``--ssd-seed`` and the test id (stable across order and workers).

    Noted on the test, so a failure of a test that used a seed (directly or through a fixture
    such as ``mixer2_layer``) says how to reproduce it, and only such a failure.
    """
    seed = test_seed(ssd_session(request.config).settings.seed, request.node.nodeid)
    request.node.stash[SEED_KEY] = seed
    return seed


@pytest.fixture
def mixer2_layer(ssd_seed, ssd_mode) -> Callable:
    """Factory: ``mixer2_layer(nheads=8, head_dim=16, ..., dtype=torch.bfloat16)`` -> Mixer2Layer.

    Parameters are random and non-zero, built as Mamba2 initialises them, seeded per call.
    """
    from .layer import make_mixer2_layer

    counter = itertools.count()

    def make(**kwargs):
        kwargs.setdefault("seed", ssd_seed + next(counter))
        kwargs.setdefault("device", ssd_mode.device)
        return make_mixer2_layer(**kwargs)

    return make


@pytest.fixture
def ssd_inputs(ssd_seed) -> Callable:
    """Factory: ``ssd_inputs(layer, [1000, 17, 1], with_initial_states=True)`` -> SSDInputs (randn)."""
    from .layer import make_ssd_inputs

    counter = itertools.count(1000)

    def make(layer, seqlens, **kwargs):
        kwargs.setdefault("seed", ssd_seed + next(counter))
        return make_ssd_inputs(layer, seqlens, **kwargs)

    return make


@pytest.fixture(scope="session")
def ssd_reference() -> Callable:
    """The float64 PyTorch reference :func:`pytest_ssd.reference.ssd_reference`."""
    from .reference import ssd_reference as reference

    return reference


@pytest.fixture(scope="session")
def ssd_kernel(pytestconfig):
    """The configured SSD entry point (``--ssd-kernel``) as an :class:`~pytest_ssd.adapters.SSDKernel`."""
    return ssd_session(pytestconfig).kernel


@pytest.fixture(scope="session")
def ssd_warmup(pytestconfig) -> Callable:
    """``ssd_warmup(layer)`` runs the configured warmup once per layer config in this process.

    Returns the Recording of that warmup (the same one on later calls for the same config). Its
    time and binaries go into the pytest-ssd summary and JSON report, and what it compiled is warm
    for every later test of the process (:class:`pytest_ssd.verdict.warm_set.WarmSet`).
    """
    session = ssd_session(pytestconfig)

    def warm(layer):
        return session.warm_set.warm(layer, session.warmup_fn)

    return warm


@pytest.fixture
def triton_events():
    """A :class:`~pytest_ssd.events.Recording` of every Triton compile/autotune during this test."""
    from .events import record_triton

    with record_triton() as rec:
        yield rec


@pytest.fixture
def ssd_assert_close(request, ssd_seed) -> Callable:
    """``ssd_assert_close(out, states, ref_out, ref_states, dtype=..., cu_seqlens=...)`` with this test's seed."""
    from .assertions import assert_ssd_close

    base = ssd_session(request.config).settings.seed
    how = f"{ssd_seed} (this test's, from --ssd-seed={base} and its id; rerun it with --ssd-seed={base})"

    def check(*args, **kwargs):
        kwargs.setdefault("seed", how)
        return assert_ssd_close(*args, **kwargs)

    return check


@pytest.fixture
def ssd_coverage_check(request) -> Callable:
    """``ssd_coverage_check(warm_recording, workload, what=...)``: run ``workload()`` in this
    process and fail if it compiles or autotunes anything, each event explained against this
    process's warmups.

    In-process, so earlier tests' binaries can hide a miss: for a verdict that cannot be fooled,
    use ``ssd_verdict`` (a fresh process).
    """
    session = ssd_session(request.config)

    def check(warm, workload: Callable, what: str = "workload") -> None:
        from .events import record_triton
        from .triton_compat import jit_dispatch

        if session.coverage_skip_reason:
            pytest.skip(session.coverage_skip_reason)
        with record_triton() as rec, jit_dispatch():  # what Triton would compile, launch by launch
            workload()
        if rec.events:  # filed here once: the test phase's watcher skips them
            lines = session.warm_set.file_cold(request.node.nodeid, "call", "failed", rec.events,
                                               enforced_by="ssd_coverage_check")
            pytest.fail(f"{what}: {len(rec.events)} Triton compile/autotune event(s) after warmup "
                        f"({len(warm.events)} event(s) in the warmup):\n  " + "\n  ".join(lines), pytrace=False)

    return check


@pytest.fixture
def ssd_verdict(request) -> Callable:
    """``ssd_verdict(layer_kwargs, requests=None)`` -> :class:`pytest_ssd.verdict.Verdict`: the
    warmth verdict of the configured kernel and warmup, from a fresh process.

    ``layer_kwargs``: :func:`pytest_ssd.layer.make_mixer2_layer` arguments (torch dtypes).
    ``requests``: sequence lengths per request (default ``--ssd-requests``, else the suite's).
    Fails the test with every cold binary, its reason, what a fresh machine pays, and the
    warmup calls to add; files the verdict in the report either way.
    """
    session = ssd_session(request.config)

    def judge(layer_kwargs: dict, requests=None):
        verdict = session.judge(request.node.nodeid, layer_kwargs, requests)
        if not verdict.ok:
            pytest.fail(verdict.format(), pytrace=False)
        return verdict

    return judge


@pytest.fixture
def ssd_latency(request, ssd_mode) -> Callable:
    """``ssd_latency(fn, input_sets, name=..., max_ratio=None)`` -> LatencyResult, filed in the report.

    With ``max_ratio`` it asserts (see :func:`pytest_ssd.latency.assert_no_latency_spike`): a cold
    first call always fails; the ratio fails only with device timings on a GPU.
    """
    import torch

    from .latency import assert_no_latency_spike, measure_latency
    from .report import LatencyRecord

    session = ssd_session(request.config)
    device = torch.device(ssd_mode.device)

    def measure(fn: Callable, input_sets, *, name: str = None, max_ratio: float = None, **kwargs):
        if max_ratio is None:
            result = measure_latency(fn, input_sets, device=device, name=name, **kwargs)
        else:
            try:
                result = assert_no_latency_spike(fn, input_sets, device=device, name=name, max_ratio=max_ratio,
                                                 **kwargs)
            except AssertionError as e:
                pytest.fail(str(e), pytrace=False)
        session.report.latency.append(LatencyRecord(
            nodeid=request.node.nodeid, name=result.name, first_ms=round(result.first_ms, 4),
            steady_median_ms=round(result.steady_median_ms, 4), steady_iqr_ms=round(result.steady_iqr_ms, 4),
            ratio=round(result.ratio, 3), timer=result.timer, first_call_events=result.first_call_events))
        return result

    return measure

