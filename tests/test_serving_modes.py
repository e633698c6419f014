"""Every public function works under ``torch.inference_mode()`` (how vLLM serves) and ``torch.no_grad()``.

Inference tensors have no version counter: reading ``_version`` raises. The paths of the
conformance suite run here under both modes, on CPU (the interpreter, and compile-only for the
warmup) and on a GPU (``gpu`` marker): layer, inputs, chunk metadata, the kernel against the
reference, the comparison, the warmup, the recorder.
"""
from __future__ import annotations

import pytest
import torch

from _ssd_cases import with_slow_decay
from pytest_ssd import warmup as warmup_module
from pytest_ssd.adapters import poisoned_like
from pytest_ssd.assertions import assert_ssd_close
from pytest_ssd.chunking import chunk_metadata
from pytest_ssd.compile_only import compile_only
from pytest_ssd.events import record_triton
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
from pytest_ssd.reference import ssd_reference
from pytest_ssd.warmup import warmup_ssd_kernels

SEED = 4242
MODES = ["inference_mode", "no_grad"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _serving(mode: str):
    return getattr(torch, mode)()


def _kernel_against_reference(device: str, seqlens: list, **layer_kwargs) -> None:
    layer = with_slow_decay(make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED,
                                              device=device, **layer_kwargs), SEED)
    inputs = make_ssd_inputs(layer, seqlens, seed=SEED, with_initial_states=True, with_z=True)
    out = poisoned_like(inputs.x)
    states = mamba_chunk_scan_combined_varlen(out=out, **inputs.kernel_kwargs(layer))
    ref_out, ref_states = ssd_reference(**inputs.reference_kwargs(layer), output_dtype=torch.float64)
    assert_ssd_close(out, states, ref_out, ref_states, dtype=layer.dtype, state_dtype=layer.state_dtype, seed=SEED,
                     cu_seqlens=inputs.cu_seqlens)
    # Foreign metadata (new tensors, as a model builds its own) is checked and sealed without a version counter.
    foreign = {k: getattr(inputs, k).clone() for k in ("cu_seqlens", "cu_chunk_seqlens", "seq_idx",
                                                         "last_chunk_indices")}
    again = poisoned_like(inputs.x)
    mamba_chunk_scan_combined_varlen(out=again, **{**inputs.kernel_kwargs(layer), **foreign})
    assert torch.equal(out, again), f"seed {SEED}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_kernel_layer_inputs_and_reference_in_serving_mode(mode, device):
    with _serving(mode):
        _kernel_against_reference(device, [5, 17, 1])


@pytest.mark.parametrize("mode", MODES)
def test_a_layer_built_in_serving_mode_serves_outside_it(mode):
    """Parameters made under inference_mode are inference tensors; the kernel still takes them later."""
    with _serving(mode):
        layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
        inputs = make_ssd_inputs(layer, [20], seed=SEED)
    out = poisoned_like(inputs.x)
    mamba_chunk_scan_combined_varlen(out=out, **inputs.kernel_kwargs(layer))
    assert torch.isfinite(out).all(), f"seed {SEED}"


@pytest.mark.parametrize("mode", MODES)
def test_chunk_metadata_in_serving_mode(mode):
    with _serving(mode):
        meta = chunk_metadata(torch.tensor([0, 3, 10], dtype=torch.int32), 4)
    assert meta.cu_chunk_seqlens.tolist() == [0, 3, 7, 10]
    assert meta.seq_idx.tolist() == [0, 1, 1] and meta.last_chunk_indices.tolist() == [0, 2]


@pytest.mark.parametrize("mode", MODES)
def test_warmup_in_serving_mode_compiles_in_compile_only(mode, monkeypatch, triton_cache_dir):
    monkeypatch.setattr(warmup_module, "_WARMED", set())  # this process may have warmed the layer already
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    with _serving(mode), compile_only("cuda:90"), record_triton() as rec:
        result = warmup_ssd_kernels(layer)
    assert result.calls == 2 and rec.unrecorded == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_warmup_in_serving_mode_runs(mode, device, monkeypatch):
    monkeypatch.setattr(warmup_module, "_WARMED", set())
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED, device=device)
    with _serving(mode):
        assert warmup_ssd_kernels(layer).calls == 2


def test_metadata_refilled_in_place_under_inference_mode_is_read_anew():
    """An engine that copies the next batch's metadata into the same inference tensors (no
    version counter to see the write) gets that batch's result, not the previous batch's."""
    layer = with_slow_decay(make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED),
                            SEED)
    with torch.inference_mode():
        first = make_ssd_inputs(layer, [5, 20, 1], seed=SEED)
        second = make_ssd_inputs(layer, [20, 5, 1], seed=SEED)  # same T, S and C; other boundaries
        names = ("cu_seqlens", "cu_chunk_seqlens", "seq_idx", "last_chunk_indices")
        engine = {k: getattr(first, k).clone() for k in names}  # the engine's own persistent buffers
        kwargs = first.kernel_kwargs(layer)
        mamba_chunk_scan_combined_varlen(out=poisoned_like(first.x), **{**kwargs, **engine})
        for k in names:
            engine[k].copy_(getattr(second, k))
        refilled = poisoned_like(first.x)
        mamba_chunk_scan_combined_varlen(out=refilled, **{**kwargs, **engine})
        expected = poisoned_like(first.x)
        mamba_chunk_scan_combined_varlen(out=expected, **{**kwargs, **{k: getattr(second, k) for k in names}})
    assert torch.isfinite(refilled).all() and torch.equal(refilled, expected), f"seed {SEED}"
