"""Deliberately incomplete warmups of vLLM's SSD kernels, each missing one path vLLM serves.

Our own calls into vLLM's released entry point (nothing of vLLM's code is copied): one chunk of
randn input per call, like vLLM's warmup, with one combination left out.
"""
import os

import torch

from pytest_ssd.adapters import state_cache
from pytest_ssd.layer import make_ssd_inputs
from pytest_ssd.options import load_callable

# The released package here; a copy of its ops on a GPU machine without vLLM
# (benchmarks/peers/copy_ops.py: vllm_ssd_ops.ssd_combined:mamba_chunk_scan_combined_varlen).
ENTRY = os.environ.get("PEER_VLLM_ENTRY",
                       "vllm.model_executor.layers.mamba.ops.ssd_combined:mamba_chunk_scan_combined_varlen")


def _call(layer, initial_states: bool, final_states_out: bool) -> None:
    mamba_chunk_scan_combined_varlen = load_callable(ENTRY, "PEER_VLLM_ENTRY")
    inputs = make_ssd_inputs(layer, [layer.chunk_size], seed=0, with_initial_states=initial_states)
    kwargs = inputs.kernel_kwargs(layer)
    if final_states_out:
        cache, slots = state_cache(layer, inputs)
        kwargs.update(final_states_out=cache, final_state_indices=slots)
    mamba_chunk_scan_combined_varlen(out=torch.empty_like(inputs.x), **kwargs)


def warm_like_vllm(layer) -> None:
    """The four calls vLLM 0.33's own warmup makes: initial states x final_states_out."""
    for init in (False, True):
        for final in (False, True):
            _call(layer, init, final)


def warm_without_initial_states(layer) -> None:
    """vLLM's warmup less ``HAS_INITSTATES=True``: the failure mode of TensorRT-LLM#16177."""
    for final in (False, True):
        _call(layer, False, final)


def warm_without_final_states_out(layer) -> None:
    """vLLM's warmup less ``final_states_out=`` (constexpr HAS_FINAL_STATES=True): the serving path."""
    for init in (False, True):
        _call(layer, init, False)


def warm_only_final_states_out(layer) -> None:
    """Only the serving path: the returned-states path stays cold."""
    for init in (False, True):
        _call(layer, init, True)


MAMBA_ENTRY = "mamba_ssm.ops.triton.ssd_combined:mamba_chunk_scan_combined"


def warm_mamba_ssm(layer) -> None:
    """The seed's recipe on mamba_ssm's batched API: one chunk of randn, without and with
    initial states, in the inference dtypes (its own kernels take the integer ``seqlen``)."""
    from pytest_ssd.adapters import SSDKernel

    kernel = SSDKernel(fn=load_callable(MAMBA_ENTRY, "mamba_ssm entry"), api="mamba_ssm", name=MAMBA_ENTRY)
    for init in (False, True):
        inputs = make_ssd_inputs(layer, [layer.chunk_size], seed=0, with_initial_states=init)
        kernel.run(layer, inputs)
