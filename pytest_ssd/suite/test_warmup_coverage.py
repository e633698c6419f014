"""After the configured warmup, no request compiles a Triton binary or runs an autotune benchmark.

Judged in a fresh process per layer config and dtype (:mod:`pytest_ssd.verdict`), as production
meets the kernel: the warmup, then every request (``--ssd-requests``) without and with initial
states, in every call variant the kernel takes (or ``--ssd-workload``). On a GPU the kernels
really run; without one the fresh process runs in compile-only mode: launches go through
Triton's real JIT path and compile for the target GPU, nothing executes. So a third-party kernel
that runs under Triton's interpreter for numerics is still judged on real compiles here.
"""
import pytest
import torch

from pytest_ssd.suite.cases import COVERAGE_LAYER


@pytest.mark.parametrize("state_dtype", [torch.float32], ids=["fp32_states"])
def test_warmup_leaves_nothing_cold(ssd_dtype, state_dtype, ssd_verdict):
    ssd_verdict(dict(COVERAGE_LAYER, dtype=ssd_dtype, state_dtype=state_dtype))
