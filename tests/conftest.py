"""Shared test fixtures. Add yours below; keep each one documented."""
from __future__ import annotations

import pytest


@pytest.fixture
def triton_cache_dir(tmp_path, monkeypatch):
    """A Triton cache dir of this test's own: its first compile of anything is a real compile.

    Triton reads ``TRITON_CACHE_DIR`` at each compile on every version (3.4+ through
    ``triton.knobs.cache.dir`` unless that was set explicitly).
    """
    path = tmp_path / "triton-cache"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(path))
    return path
