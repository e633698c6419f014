"""pytest-ssd: prove a Mamba2 SSD Triton kernel correct and warm.

Loaded by pytest through the ``pytest11`` entry point or ``pytest -p pytest_ssd``; both
register this package, whose ``pytest_plugins`` pulls in the hooks in :mod:`pytest_ssd.plugin`.
The library modules (reference, layer, kernels, warmup, events, coverage, latency) work
without pytest.
"""
__version__ = "0.1.0"

pytest_plugins = ["pytest_ssd.plugin", "pytest_ssd.fixtures"]
