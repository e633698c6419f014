"""Checks against released peer kernels, installed by ``bash benchmarks/peers/setup.sh`` into
``.peers/venv`` (never a dependency). Skipped where the peer does not import: CI never has them.
On a machine without a GPU driver vLLM needs ``CUDA_VISIBLE_DEVICES`` set (even empty) to keep
its Triton ops: set it on the command line, never here (it would hide the GPU from every test
collected after this file).

    CUDA_VISIBLE_DEVICES= .peers/venv/bin/python -m pytest tests/peers -v     # or: tox -e peers
"""
import os
import sys

import pytest

# mamba-ssm's released package __init__ imports a CUDA extension that a Triton-only install
# lacks: its ops import from the copy in .peers/ops (benchmarks/peers/copy_ops.py), here and in
# the verdicts' fresh processes.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # peer_warmups, for the test modules
OPS = os.path.join(os.path.dirname(__file__), "..", "..", ".peers", "ops")
if os.path.isdir(OPS):
    sys.path.insert(0, os.path.abspath(OPS))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(OPS), os.environ.get("PYTHONPATH")]))


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # a half-installed peer is as absent as a missing one
        return False
    return True


def pytest_collection_modifyitems(config, items):
    for item in items:
        for peer, module in (("vllm", "vllm"), ("mamba_ssm", "mamba_ssm.ops.triton.ssd_combined")):
            if item.get_closest_marker(f"peer_{peer}") and not _importable(module):
                item.add_marker(pytest.mark.skip(reason=f"{peer} is not installed: bash benchmarks/peers/setup.sh"))


def pytest_configure(config):
    config.addinivalue_line("markers", "peer_vllm: needs a released vLLM (tests/peers)")
    config.addinivalue_line("markers", "peer_mamba_ssm: needs a released mamba-ssm (tests/peers)")
