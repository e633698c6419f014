"""The pytest-ssd conformance suite for an SSD kernel.

Run it with ``pytest -p pytest_ssd --pyargs pytest_ssd.suite [--ssd-kernel module:fn --ssd-warmup module:fn]``.
It checks the kernel against the float64 reference over the dtype matrix (``--ssd-dtype``) and
that the configured warmup leaves nothing cold for varied request shapes. On a machine without a
GPU, numerics run under Triton's interpreter and warmup coverage in compile-only mode.
"""
