"""The kernel reads a batch's metadata back at most once (never when chunk_metadata built it), and
never trusts a stale check."""
import pytest
import torch

from pytest_ssd.chunking import CHECKED_METADATA, chunk_metadata
from pytest_ssd.adapters import poisoned_like
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
    out = poisoned_like(inputs.x)
    mamba_chunk_scan_combined_varlen(out=out, **kwargs)
    return out


def _foreign_metadata(inputs) -> dict:
    """The same metadata as new tensors, as a model that builds its own would pass them."""
    return {k: getattr(inputs, k).clone() for k in ("cu_seqlens", "cu_chunk_seqlens", "seq_idx", "last_chunk_indices")}


def test_metadata_from_chunk_metadata_is_never_read_back(counted):
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)  # metadata from pytest_ssd.chunking.chunk_metadata
    out = _run(layer, inputs)
    assert counted == [], f"seed {SEED}"
    assert not out.isnan().any()


def test_same_metadata_tensors_are_checked_once(counted):
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
    meta = _foreign_metadata(inputs)
    first = _run(layer, inputs, **meta)
    second = _run(layer, inputs, **meta)  # "the next layer", same batch metadata
    assert counted == [1], f"seed {SEED}"
    assert torch.equal(first, second) and not first.isnan().any()


@pytest.mark.parametrize("built_by", ["chunk_metadata", "the model"])
def test_in_place_edit_is_checked_again(counted, built_by):
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
    meta = {} if built_by == "chunk_metadata" else _foreign_metadata(inputs)
    _run(layer, inputs, **meta)
    seq_idx = meta.get("seq_idx", inputs.seq_idx)
    seq_idx[1] = 0  # now disagrees with cu_seqlens
    with pytest.raises(ValueError, match="seq_idx: disagrees with cu_seqlens"):
        _run(layer, inputs, **meta)
    assert len(counted) == (1 if built_by == "chunk_metadata" else 2)


def test_equal_but_new_tensors_are_checked_again(counted):
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
    _run(layer, inputs)
    _run(layer, inputs, cu_seqlens=inputs.cu_seqlens.clone())
    assert counted == [1]


def test_chunk_metadata_registers_only_what_it_built():
    cu = torch.tensor([0, 5, 22], dtype=torch.int32)
    meta = chunk_metadata(cu, 16)
    trio = (meta.cu_chunk_seqlens, meta.seq_idx, meta.last_chunk_indices)
    assert CHECKED_METADATA.seen((cu,) + trio, 16, 22)
    assert not CHECKED_METADATA.seen((cu,) + trio, 32, 22)  # another chunk size
    assert not CHECKED_METADATA.seen((cu.clone(),) + trio, 16, 22)


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.gpu),
])
def test_make_ssd_inputs_metadata_is_vouched_for_on_its_device(device, counted):
    """The tensors the kernel gets are the ones chunk_metadata registered (not CPU originals moved)."""
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED, device=device)
    inputs = make_ssd_inputs(layer, [5, 17, 1], seed=SEED)
    meta = (inputs.cu_seqlens, inputs.cu_chunk_seqlens, inputs.seq_idx, inputs.last_chunk_indices)
    assert all(t.device.type == device for t in meta)
    assert CHECKED_METADATA.seen(meta, 16, 23)
    out = _run(layer, inputs)
    assert counted == [] and not out.isnan().any()
