"""The kernel checks each batch's metadata once, not once per layer, and never trusts stale checks."""
import pytest
import torch

from pytest_ssd.kernels import combined, mamba_chunk_scan_combined_varlen
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs

SEED = 31


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = combined._check_metadata

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(combined, "_check_metadata", spy)
    return calls


def _run(layer, inputs, **override):
    kwargs = {**inputs.kernel_kwargs(layer), **override}
    out = torch.full_like(inputs.x, float("nan"))
    mamba_chunk_scan_combined_varlen(out=out, **kwargs)
    return out


def test_same_metadata_tensors_are_checked_once(counted):
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
    first = _run(layer, inputs)
    second = _run(layer, inputs)  # "the next layer", same batch metadata
    assert counted == [1], f"seed {SEED}"
    assert torch.equal(first, second) and not first.isnan().any()


def test_in_place_edit_is_checked_again(counted):
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
    _run(layer, inputs)
    inputs.seq_idx[1] = 0  # now disagrees with cu_seqlens
    with pytest.raises(ValueError, match="seq_idx: disagrees with cu_seqlens"):
        _run(layer, inputs)
    assert counted == [1, 1]


def test_equal_but_new_tensors_are_checked_again(counted):
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
    _run(layer, inputs)
    _run(layer, inputs, cu_seqlens=inputs.cu_seqlens.clone())
    assert counted == [1, 1]
