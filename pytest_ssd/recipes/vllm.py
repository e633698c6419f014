"""vLLM's Mamba2 SSD kernels: its own warmup, on a pytest-ssd layer.

    pytest -p pytest_ssd --pyargs pytest_ssd.suite \\
        --ssd-kernel vllm.model_executor.layers.mamba.ops.ssd_combined:mamba_chunk_scan_combined_varlen \\
        --ssd-warmup pytest_ssd.recipes.vllm:warm_ssd

``warm_ssd(layer)`` runs vLLM's ``MambaMixer2._warmup_ssd_kernels`` (vLLM 0.22+) on a stand-in
for the mixer that carries the layer's dims, parameters, chunk size and state dtype, so the
verdict judges exactly the warmup vLLM runs at load time. vLLM's warmup logs and swallows a
failing call; here such a failure raises, so a warmup that did nothing never passes.

On a machine without a GPU driver vLLM turns its Triton ops off at import unless
``CUDA_VISIBLE_DEVICES`` is set (even to the empty string): set it in the environment.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch


class _FailedWarmup(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "warmup failed" in record.getMessage():
            self.failures.append(self.format(record))


def _stand_in(layer) -> SimpleNamespace:
    """What ``_warmup_ssd_kernels`` reads of a ``MambaMixer2`` (vLLM 0.33)."""
    return SimpleNamespace(
        _ssd_kernels_warmed_up=False, prefix="pytest-ssd", num_heads=layer.nheads, tp_size=layer.tp_size,
        n_groups=layer.n_groups, head_dim=layer.head_dim, ssm_state_size=layer.ssm_state_size,
        A=layer.A, D=layer.D, dt_bias=layer.dt_bias,
        model_config=SimpleNamespace(get_mamba_chunk_size=lambda: layer.chunk_size),
        get_state_dtype=lambda: (layer.dtype, layer.state_dtype),
    )


def warm_ssd(layer) -> None:
    """Run vLLM's own SSD warmup for ``layer`` (a :class:`pytest_ssd.layer.Mixer2Layer`)."""
    from vllm.model_executor.layers.mamba.mamba_mixer2 import MambaMixer2

    # vLLM's warmup always calls with z=None, dt_softplus=True and dt_limit=(0, inf), whatever the
    # layer: a verdict on a gated or limited layer then shows what that leaves cold, as it would.
    handler = _FailedWarmup()
    logger = logging.getLogger("vllm")
    logger.addHandler(handler)
    try:
        projected = torch.empty(1, 1, device=layer.device, dtype=layer.dtype)  # only its device and dtype are read
        MambaMixer2._warmup_ssd_kernels(_stand_in(layer), projected)
    finally:
        logger.removeHandler(handler)
    if handler.failures:
        raise RuntimeError("vLLM's SSD warmup failed (it only logs this): " + "; ".join(handler.failures))
