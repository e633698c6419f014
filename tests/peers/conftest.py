"""Checks against released peer kernels, installed by ``bash benchmarks/peers/setup.sh`` into
``.peers/venv`` (never a dependency). Skipped where the peer does not import: CI never has them.

    CUDA_VISIBLE_DEVICES= .peers/venv/bin/python -m pytest tests/peers -v     # or: tox -e peers
"""
import os

import pytest


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # a half-installed peer is as absent as a missing one
        return False
    return True


def pytest_collection_modifyitems(config, items):
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    for item in items:
        for peer in ("vllm", "mamba_ssm"):
            if item.get_closest_marker(f"peer_{peer}") and not _importable(peer):
                item.add_marker(pytest.mark.skip(reason=f"{peer} is not installed: bash benchmarks/peers/setup.sh"))


def pytest_configure(config):
    config.addinivalue_line("markers", "peer_vllm: needs a released vLLM (tests/peers)")
    config.addinivalue_line("markers", "peer_mamba_ssm: needs a released mamba-ssm (tests/peers)")
