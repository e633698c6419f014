"""Cases and checks shared by the kernel tests on CPU (interpreter) and GPU."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from pytest_ssd.adapters import poisoned_like
from pytest_ssd.assertions import Tolerance, assert_ssd_close, mismatch_report, tolerance_for
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
from pytest_ssd.reference import ssd_reference

F64 = torch.float64


@dataclasses.dataclass(frozen=True)
class KernelCase:
    name: str
    seqlens: list
    layer: dict = dataclasses.field(default_factory=dict)  # make_mixer2_layer overrides
    initial_states: bool = False
    z: bool = False
    slow_decay: bool = True  # |A| small, so states carry across chunks and sequences' initial states matter

    def __str__(self) -> str:
        return self.name


def with_slow_decay(layer, seed: int):
    """The layer with |A| in [0.01, 0.11]: Mamba2's A in [-16, -1] forgets a state within a few tokens,
    which would leave state passing and initial states untested."""
    gen = torch.Generator().manual_seed(seed)
    A = -(0.01 + 0.1 * torch.rand(layer.local_heads, generator=gen))
    return dataclasses.replace(layer, A=A.to(layer.A.device))


def make_case(case: "KernelCase", base: dict, *, device: str, seed: int, mixer2_layer, ssd_inputs):
    """The layer and inputs of ``case`` on ``device``: ``base`` layer kwargs, the case's own on
    top (``state_dtype="model"``: the model dtype), slow decay where the case asks for it."""
    kwargs = {**base, **case.layer}
    if kwargs.get("state_dtype") == "model":
        kwargs["state_dtype"] = kwargs["dtype"]
    layer = mixer2_layer(**kwargs, device=device)
    if case.slow_decay:
        layer = with_slow_decay(layer, seed)
    inputs = ssd_inputs(layer, case.seqlens, with_initial_states=case.initial_states, with_z=case.z, device=device)
    return layer, inputs


def run_kernel(layer, inputs, *, return_intermediate_states: bool = False):
    """The bundled kernel into a NaN-poisoned ``out``; returns ``(out, states)``."""
    out = poisoned_like(inputs.x)
    states = mamba_chunk_scan_combined_varlen(out=out, return_intermediate_states=return_intermediate_states,
                                              **inputs.kernel_kwargs(layer))
    return out, states


def reference(layer, inputs, **overrides):
    kwargs = dict(inputs.reference_kwargs(layer), output_dtype=F64)
    kwargs.update(overrides)
    return ssd_reference(**kwargs)


def reference_chunk_states(layer, inputs) -> torch.Tensor:
    """The state at the end of every chunk: the final state of each sequence cut at that chunk's end."""
    cu = inputs.cu_seqlens.tolist()
    chunk_ends = inputs.cu_chunk_seqlens.tolist()[1:]
    seq_of_chunk = inputs.seq_idx.tolist()
    index = torch.cat([torch.arange(cu[s], end) for s, end in zip(seq_of_chunk, chunk_ends)])
    lengths = [end - cu[s] for s, end in zip(seq_of_chunk, chunk_ends)]
    cu_prefix = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
    kw = inputs.reference_kwargs(layer)
    device = inputs.x.device
    for name in ("x", "dt", "B", "C", "z"):
        if kw[name] is not None:
            kw[name] = kw[name][index.to(device)]
    if kw["initial_states"] is not None:
        kw["initial_states"] = kw["initial_states"][torch.tensor(seq_of_chunk, device=device)]
    kw["cu_seqlens"] = cu_prefix.to(device)
    return ssd_reference(**kw, output_dtype=F64)[1]


def check_against_reference(layer, inputs, *, seed: int, state_tol: Optional[Tolerance] = None) -> None:
    """Whole ``out`` and whole final states against the float64 reference; NaN never passes."""
    out, states = run_kernel(layer, inputs)
    assert states.dtype == layer.state_dtype, \
        f"final states dtype {states.dtype}, expected the layer's {layer.state_dtype} (seed={seed})"
    ref_out, ref_states = reference(layer, inputs)
    assert_ssd_close(out, states, ref_out, ref_states, dtype=layer.dtype, seed=seed, cu_seqlens=inputs.cu_seqlens,
                     state_tol=state_tol or state_tolerance(layer))


def state_tolerance(layer) -> Tolerance:
    """States are returned in the state dtype: the looser of the model's and the state dtype's tolerance."""
    a, b = tolerance_for(layer.dtype), tolerance_for(layer.state_dtype)
    return Tolerance(atol=max(a.atol, b.atol), rtol=max(a.rtol, b.rtol))


def check_intermediate_states(layer, inputs, *, seed: int) -> None:
    out, chunk_states = run_kernel(layer, inputs, return_intermediate_states=True)
    nchunks = inputs.seq_idx.numel()
    assert chunk_states.shape == (nchunks, layer.local_heads, layer.head_dim, layer.ssm_state_size), \
        f"intermediate states shape {tuple(chunk_states.shape)} (seed={seed})"
    assert chunk_states.dtype == layer.state_dtype, f"intermediate states dtype {chunk_states.dtype} (seed={seed})"
    problem = mismatch_report("chunk_states", chunk_states, reference_chunk_states(layer, inputs),
                              state_tolerance(layer))
    assert problem is None, f"{problem}\nseed: {seed}"
    ref_out, _ = reference(layer, inputs)
    problem = mismatch_report("out", out, ref_out, tolerance_for(layer.dtype), token_axis=0)
    assert problem is None, f"{problem}\nseed: {seed}"


def assert_states_matter(layer, inputs, *, seed: int) -> None:
    """The test can fail: dropping the initial states moves the reference far beyond the tolerance."""
    with_init, _ = reference(layer, inputs)
    without, _ = reference(layer, inputs, initial_states=None)
    tol = tolerance_for(layer.dtype)
    moved = float((with_init - without).abs().max())
    assert moved > 10 * (tol.atol + tol.rtol), f"initial states barely change the output ({moved:.3g}) (seed={seed})"
