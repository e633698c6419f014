"""After the configured warmup, no request shape compiles a Triton binary or runs an autotune benchmark.

On a GPU the kernels really run. Without one, the whole module runs in compile-only mode: launches
go through Triton's real JIT path and compile for the target GPU, nothing executes.
"""
import contextlib

import pytest
import torch

from pytest_ssd.suite.cases import COVERAGE_LAYER, COVERAGE_REQUESTS


@pytest.fixture(scope="module")
def coverage_mode(request, ssd_mode):
    from pytest_ssd.plugin import ssd_session

    reason = ssd_session(request.config).coverage_skip_reason
    if reason:  # before any warmup or compile-only block: an interpreted kernel cannot compile
        pytest.skip(reason)
    mode = ssd_mode
    if mode.coverage_target and not mode.compile_only:
        from pytest_ssd.compile_only import compile_only

        ctx = compile_only(target=mode.coverage_target)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        yield mode


def _target(mode) -> str:
    """The compile-only target that predicts this session's binaries (None: not predictable here)."""
    if mode.coverage_target:
        return mode.coverage_target
    from pytest_ssd.compile_only import TARGETS

    major, minor = torch.cuda.get_device_capability()
    target = f"cuda:{major}{minor}"
    return target if target in TARGETS else None


@pytest.mark.parametrize("state_dtype", [torch.float32], ids=["fp32_states"])
def test_warmup_leaves_nothing_cold(coverage_mode, ssd_dtype, state_dtype, mixer2_layer, ssd_inputs, ssd_kernel,
                                    ssd_warmup, ssd_coverage_check):
    layer_kwargs = dict(COVERAGE_LAYER, dtype=ssd_dtype, state_dtype=state_dtype)
    layer = mixer2_layer(**layer_kwargs, device=coverage_mode.device)
    warm = ssd_warmup(layer)
    requests = [(seqlens, init) for seqlens in COVERAGE_REQUESTS for init in (False, True)]
    # What the same requests need from a cold start (a fresh compile-only process), so the report
    # can name warm binaries nothing needed.
    target = _target(coverage_mode)
    cold = None
    if target is not None:
        from pytest_ssd.cold_workload import record_cold, spec_for

        cold = record_cold(spec_for(ssd_kernel.name, ssd_kernel.api, layer_kwargs, COVERAGE_REQUESTS, target))
    ssd_coverage_check(warm, lambda: [ssd_kernel.run(layer, ssd_inputs(layer, s, with_initial_states=i))
                                      for s, i in requests],
                       what=f"{len(requests)} requests after warmup of {layer.dtype} layer", cold=cold)
