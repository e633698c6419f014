"""On a GPU: the first request after warmup costs at most --ssd-max-spike x the steady state."""
import pytest

from pytest_ssd.suite.cases import COVERAGE_LAYER


def test_first_request_after_warmup_is_not_a_spike(ssd_mode, ssd_settings, ssd_dtype, mixer2_layer, ssd_inputs,
                                                   ssd_kernel, ssd_warmup, ssd_latency):
    if ssd_mode.device != "cuda":  # by the session's device (--ssd-device cpu too), not the gpu marker's check
        pytest.skip("latency is judged on a GPU only: CPU wall-clock timings are not a first-request latency")
    import torch

    layer = mixer2_layer(**COVERAGE_LAYER, dtype=ssd_dtype, state_dtype=torch.float32)
    ssd_warmup(layer)
    # The anchors' first request: 4 sequences, 6565 tokens; then more sets of the same shape.
    # Output buffers are allocated up front so the timings are the kernel's, not the allocator's.
    from pytest_ssd.adapters import poisoned_like

    sets = [(inputs, poisoned_like(inputs.x)) for inputs in
            (ssd_inputs(layer, [1000, 2048, 517, 3000]) for _ in range(4))]
    ssd_latency(lambda inputs, out: ssd_kernel.run(layer, inputs, out), sets, name="first request 1000/2048/517/3000",
                max_ratio=ssd_settings.max_spike)
