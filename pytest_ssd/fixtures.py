"""pytest-ssd fixtures. Each is a thin handle on a library function, seeded from ``--ssd-seed``.

Factories derive a fresh seed per call from the test's seed, so every tensor of a test is
reproducible from the seed printed in the report header and in failure messages.
"""
from __future__ import annotations

import itertools
from typing import Callable

import pytest

from .plugin import ssd_session
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
    """This test's seed: derived from ``--ssd-seed`` and the test id (stable across order and workers)."""
    return test_seed(ssd_session(request.config).settings.seed, request.node.nodeid)


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

    Returns the Recording of that warmup (empty on later calls for the same config). Its time
    and binaries go into the pytest-ssd summary and JSON report.
    """
    return ssd_session(pytestconfig).warm


@pytest.fixture
def triton_events():
    """A :class:`~pytest_ssd.events.Recording` of every Triton compile/autotune during this test."""
    from .events import record_triton

    with record_triton() as rec:
        yield rec


@pytest.fixture
def ssd_assert_close(ssd_seed) -> Callable:
    """``ssd_assert_close(out, states, ref_out, ref_states, dtype=..., cu_seqlens=...)`` with this test's seed."""
    from .assertions import assert_ssd_close

    def check(*args, **kwargs):
        kwargs.setdefault("seed", ssd_seed)
        return assert_ssd_close(*args, **kwargs)

    return check
