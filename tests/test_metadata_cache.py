"""The kernel reads a batch's metadata back at most once (never when chunk_metadata built it), never
trusts a stale check, and runs only what it checked: writes that bypass the version counter do not
reach the kernels."""
import pytest
import torch

from pytest_ssd.chunking import SEALED, chunk_metadata
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
    sealed = SEALED.lookup((cu,) + trio, 16, 22)
    assert sealed is not None
    assert all(torch.equal(a, b) for a, b in zip(sealed, trio))
    assert not any(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() for a, b in zip(sealed, trio))
    assert SEALED.lookup((cu,) + trio, 32, 22) is None  # another chunk size
    assert SEALED.lookup((cu.clone(),) + trio, 16, 22) is None


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
    assert SEALED.lookup(meta, 16, 23) is not None
    out = _run(layer, inputs)
    assert counted == [] and not out.isnan().any()


def _reference_out(layer, inputs):
    from pytest_ssd.reference import ssd_reference

    return ssd_reference(**inputs.reference_kwargs(layer), output_dtype=torch.float64)[0]


@pytest.mark.parametrize("write", ["data", "numpy", "dlpack"])
@pytest.mark.parametrize("built_by", ["chunk_metadata", "the model"])
def test_writes_that_bypass_the_version_counter_never_reach_the_kernels(counted, write, built_by):
    """The issue's crash (`cu_chunk_seqlens.numpy()[-1] += 10**6`) and silent wrong result
    (`seq_idx.data[1] = 0`): the kernels read the private copy of what was checked."""
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
    meta = {} if built_by == "chunk_metadata" else _foreign_metadata(inputs)
    first = _run(layer, inputs, **meta)
    cu_chunks = meta.get("cu_chunk_seqlens", inputs.cu_chunk_seqlens)
    seq_idx = meta.get("seq_idx", inputs.seq_idx)
    version = cu_chunks._version
    if write == "data":
        cu_chunks.data[-1] += 10**6
        seq_idx.data[1] = 0
    elif write == "numpy":
        cu_chunks.numpy()[-1] += 10**6
        seq_idx.numpy()[1] = 0
    else:
        torch.from_dlpack(cu_chunks)[-1] += 10**6  # a new tensor object on the same memory
        torch.from_dlpack(seq_idx)[1] = 0
    assert cu_chunks._version == version, "the write was meant to bypass the version counter"
    second = _run(layer, inputs, **meta)
    assert torch.equal(first, second) and not second.isnan().any(), f"seed {SEED}"
    assert len(counted) == (0 if built_by == "chunk_metadata" else 1)  # no second read: nothing was seen
    ref = _reference_out(layer, inputs)
    assert float((second.double() - ref).abs().max()) < 1e-2, f"seed {SEED}"


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_metadata_is_sealed_and_found_again_in_serving_modes(counted, mode):
    """Inference tensors have no version counter: chunk_metadata and the kernel work without one.
    A caller's inference tensors are checked on every call (a refill in place would go unseen);
    tensors with a version counter are checked once."""
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    with getattr(torch, mode)():
        inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
        meta = _foreign_metadata(inputs)
        first = _run(layer, inputs, **meta)
        second = _run(layer, inputs, **meta)
        built = _run(layer, inputs)
    assert counted == ([1, 1] if mode == "inference_mode" else [1]), f"seed {SEED}"
    assert torch.equal(first, second) and torch.equal(first, built) and not first.isnan().any()


def test_a_swapped_tensor_body_is_checked_again(counted):
    """``t.data = other`` changes a tensor's size with no version bump: the sizes are part of the key."""
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
    inputs = make_ssd_inputs(layer, [5, 17], seed=SEED)
    meta = _foreign_metadata(inputs)
    _run(layer, inputs, **meta)
    meta["seq_idx"].data = torch.zeros(40, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"cu_chunk_seqlens: expected shape \(41\)"):
        _run(layer, inputs, **meta)


def test_a_dead_batch_leaves_the_store():
    cu = torch.tensor([0, 5, 22], dtype=torch.int32)
    meta = chunk_metadata(cu, 16)
    before = len(SEALED._entries)
    del meta
    assert len(SEALED._entries) == before - 1
