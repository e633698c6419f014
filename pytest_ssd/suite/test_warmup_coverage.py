"""After the configured warmup, no request shape compiles a Triton binary or runs an autotune benchmark.

On a GPU the kernels really run. Without one, the whole module runs in compile-only mode: launches
go through Triton's real JIT path and compile for the target GPU, nothing executes.
"""
import contextlib

import pytest
import torch

from pytest_ssd.suite.cases import COVERAGE_LAYER, COVERAGE_REQUESTS


@pytest.fixture(scope="module")
def coverage_mode(pytestconfig):
    from pytest_ssd.plugin import ssd_session

    mode = ssd_session(pytestconfig).mode
    if mode.coverage_target and not mode.compile_only:
        from pytest_ssd.compile_only import compile_only

        ctx = compile_only(target=mode.coverage_target)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        yield mode


@pytest.mark.parametrize("state_dtype", [torch.float32], ids=["fp32_states"])
def test_warmup_leaves_nothing_cold(coverage_mode, ssd_dtype, state_dtype, mixer2_layer, ssd_inputs, ssd_kernel,
                                    ssd_warmup, ssd_coverage_check):
    layer = mixer2_layer(**COVERAGE_LAYER, dtype=ssd_dtype, state_dtype=state_dtype, device=coverage_mode.device)
    warm = ssd_warmup(layer)
    requests = [(seqlens, init) for seqlens in COVERAGE_REQUESTS for init in (False, True)]
    ssd_coverage_check(warm, lambda: [ssd_kernel.run(layer, ssd_inputs(layer, s, with_initial_states=i))
                                      for s, i in requests],
                       what=f"{len(requests)} requests after warmup of {layer.dtype} layer")
