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
# How an engine can call a vLLM-style entry point (see :func:`call_variants`):
#   returned             the kernel returns the final states (the suite's correctness calls);
#   final_states_out     vLLM's serving prefill: final states written into a state cache at
#                        final_state_indices (constexpr HAS_FINAL_STATES in vLLM 0.33);
#   intermediate_states  vLLM's prefill with prefix caching: the state at every chunk's end.
CALL_VARIANTS = ("returned", "final_states_out", "intermediate_states")


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


def call_variants(fn: Callable, api: str) -> tuple:
    """The call variants of :data:`CALL_VARIANTS` that ``fn``'s signature accepts.

    A warmup must cover every way the engine calls the kernel: each variant can select other
    constexprs (another binary), so the warmth verdict runs every one the kernel takes.
    """
    if api != "vllm":
        return ("returned",)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return ("returned",)
    variants = ["returned"]
    if "final_states_out" in params and "final_state_indices" in params:
        variants.append("final_states_out")
    if "return_intermediate_states" in params:
        variants.append("intermediate_states")
    return tuple(variants)


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

    def run(self, layer, inputs, out: Optional[torch.Tensor] = None,
            variant: str = "returned") -> Tuple[torch.Tensor, torch.Tensor]:
        """Run on packed varlen ``inputs``; returns ``(out (T,H,P), states)``.

        ``states`` are the final states (S,H,P,N), read back from the state cache for
        ``final_states_out``, or the per-chunk states (C,H,P,N) for ``intermediate_states``.
        ``out`` defaults to a NaN-poisoned buffer.
        """
        if variant not in CALL_VARIANTS:
            raise ValueError(f"variant: expected one of {CALL_VARIANTS}, got {variant!r}")
        out = poisoned_like(inputs.x) if out is None else out
        if self.api != "vllm":
            if variant != "returned":
                raise ValueError(f"variant {variant!r} is a vllm-style call; {self.name} has the {self.api} API")
            return self._run_mamba_ssm(layer, inputs, out)
        kwargs = inputs.kernel_kwargs(layer)
        if variant == "intermediate_states":
            return out, self.fn(out=out, return_intermediate_states=True, **kwargs)
        if variant == "final_states_out":
            cache, slots = state_cache(layer, inputs)
            self.fn(out=out, final_states_out=cache, final_state_indices=slots, **kwargs)
            return out, cache[slots.long()]
        return out, self.fn(out=out, **kwargs)

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


def state_cache(layer, inputs) -> Tuple[torch.Tensor, torch.Tensor]:
    """A NaN-poisoned SSM state cache with two spare slots, and a shuffled slot per sequence
    (int32), as an engine's ``ssm_state`` and ``state_indices`` look."""
    S = len(inputs.seqlens)
    shape = (S + 2, layer.local_heads, layer.head_dim, layer.ssm_state_size)
    cache = torch.full(shape, float("nan"), dtype=layer.state_dtype, device=inputs.x.device)
    order = torch.randperm(S + 2, generator=torch.Generator().manual_seed(inputs.seed))[:S]
    return cache, order.to(device=inputs.x.device, dtype=torch.int32)
