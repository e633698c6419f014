"""The kernel under test matches the float64 reference: whole output and final states."""
import pytest
import torch

from pytest_ssd.plugin import ssd_session
from pytest_ssd.suite.cases import CORRECTNESS_CASES


@pytest.mark.parametrize("case", CORRECTNESS_CASES, ids=lambda c: c.name)
def test_matches_reference(case, ssd_dtype, ssd_mode, mixer2_layer, ssd_inputs, ssd_kernel, ssd_warmup,
                           ssd_reference, ssd_assert_close, pytestconfig):
    if not ssd_mode.computes_results:
        pytest.skip(f"compile-only mode ({ssd_mode.compile_only}): kernels compile but do not run, "
                    f"so there are no results to compare")
    interpreter_fault = ssd_session(pytestconfig).interpreter_skip_reason(ssd_dtype)
    if interpreter_fault:  # a wrong interpreter must not be reported as a wrong kernel
        pytest.skip(interpreter_fault)
    scale = "gpu" if ssd_mode.device == "cuda" else "small"
    layer = mixer2_layer(**case.layer_kwargs(scale, ssd_dtype))
    ssd_warmup(layer)  # the numbers that count are the warmed kernel's
    inputs = ssd_inputs(layer, case.seqlens[scale], with_initial_states=case.initial_states)
    out, states = ssd_kernel.run(layer, inputs)  # into a NaN-poisoned buffer, after warmup
    if ssd_kernel.api == "vllm":  # the API that takes state_dtype: the float64 comparison would hide a wrong one
        assert states.dtype == layer.state_dtype, f"final states in {states.dtype}, the layer declares {layer.state_dtype}"
    ref_out, ref_states = ssd_reference(**inputs.reference_kwargs(layer), output_dtype=torch.float64)
    ssd_assert_close(out, states, ref_out, ref_states, dtype=ssd_dtype, cu_seqlens=inputs.cu_seqlens)
