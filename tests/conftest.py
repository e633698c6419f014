"""Shared test fixtures. Add yours below; keep each one documented."""
from __future__ import annotations

import os

import pytest

# pytester runs inner sessions in this process and afterwards drops the modules they imported;
# Triton's native extension cannot be imported twice (nanobind aborts the process), so the
# outer session imports it once, here.
import torch  # noqa: F401
import triton  # noqa: F401


@pytest.fixture
def triton_cache_dir(tmp_path, monkeypatch):
    """A Triton cache dir of this test's own: its first compile of anything is a real compile.

    Triton reads ``TRITON_CACHE_DIR`` at each compile on every version (3.4+ through
    ``triton.knobs.cache.dir`` unless that was set explicitly).
    """
    path = tmp_path / "triton-cache"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def _restore_triton_interpret():
    """Keep ``TRITON_INTERPRET`` as it was: an in-process (pytester) session on CPU sets it for a
    third-party kernel, and later ``@triton.jit`` kernels would silently become interpreted."""
    before = os.environ.get("TRITON_INTERPRET")
    yield
    if before is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = before
