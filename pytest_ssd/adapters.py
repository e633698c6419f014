"""Call any SSD entry point the same way: vLLM's packed varlen style or mamba_ssm's batched style.

The conformance suite speaks one language (a :class:`~pytest_ssd.layer.Mixer2Layer` and an
:class:`~pytest_ssd.layer.SSDInputs`); :class:`SSDKernel` translates it to the kernel's API.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

API_STYLES = ("vllm", "mamba_ssm")


def detect_api(fn: Callable) -> Optional[str]:
    """``"vllm"`` / ``"mamba_ssm"`` from the parameter names, None when it cannot tell."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if "cu_chunk_seqlens" in params:
        return "vllm"
    if "return_final_states" in params:
        return "mamba_ssm"
    return None


def poisoned_like(x: torch.Tensor) -> torch.Tensor:
    """An output buffer full of NaN, so an element the kernel never writes fails the comparison."""
    return torch.full_like(x, float("nan"))


@dataclass(frozen=True)
class SSDKernel:
    """An SSD entry point under test, with its API style."""

    fn: Callable
    api: str
    name: str

    def __post_init__(self) -> None:
        if self.api not in API_STYLES:
            raise ValueError(f"api: expected one of {API_STYLES}, got {self.api!r}")

    def run(self, layer, inputs, out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run on packed varlen ``inputs``; returns ``(out (T,H,P), final_states (S,H,P,N))``.

        ``out`` defaults to a NaN-poisoned buffer.
        """
        out = poisoned_like(inputs.x) if out is None else out
        if self.api == "vllm":
            states = self.fn(out=out, **inputs.kernel_kwargs(layer))
            return out, states
        return self._run_mamba_ssm(layer, inputs, out)

    def _run_mamba_ssm(self, layer, inputs, out: torch.Tensor):
        # mamba_ssm's batched API takes (batch, seqlen, ...) and one initial state per batch
        # row; varlen with initial states is not part of it, so each sequence runs as a batch
        # of one. Slower, but exactly the public contract.
        kw = inputs.kernel_kwargs(layer)
        offsets = [int(v) for v in inputs.cu_seqlens.tolist()]
        states = []
        for s, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
            def seq(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
                return None if t is None else t[start:end].unsqueeze(0)

            init = kw.get("initial_states")
            y, final = self.fn(
                seq(kw["x"]), seq(kw["dt"]), kw["A"], seq(kw["B"]), seq(kw["C"]), kw["chunk_size"],
                D=kw.get("D"), z=seq(kw.get("z")), dt_bias=kw.get("dt_bias"),
                initial_states=None if init is None else init[s:s + 1],
                dt_softplus=kw.get("dt_softplus", False), dt_limit=kw.get("dt_limit", (0.0, float("inf"))),
                return_final_states=True,
            )
            out[start:end] = y[0]
            states.append(final[0])
        return out, torch.stack(states)
