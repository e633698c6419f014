"""Chunk metadata: physical chunks never cross a sequence start and hold at most chunk_size tokens."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ssd.chunking import ChunkMetadata, check_chunk_metadata, chunk_metadata, chunk_offsets


def cu(*offsets: int) -> torch.Tensor:
    return torch.tensor(offsets, dtype=torch.int32)


def test_docstring_example() -> None:
    meta = chunk_metadata(cu(0, 3, 10), 4)
    assert meta.cu_chunk_seqlens.tolist() == [0, 3, 7, 10]
    assert meta.seq_idx.tolist() == [0, 1, 1]
    assert meta.last_chunk_indices.tolist() == [0, 2]
    assert meta.num_chunks == 3


@pytest.mark.parametrize(
    "seqlens, chunk_size, cu_chunks",
    [
        ([1], 16, [0, 1]),
        ([16], 16, [0, 16]),  # an exact multiple: no empty chunk after it
        ([17], 16, [0, 16, 17]),
        ([5, 5], 1, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        ([2, 8, 1], 4, [0, 2, 6, 10, 11]),  # the second sequence is cut from its own start, not at 4 and 8
    ],
)
def test_known_layouts(seqlens: list, chunk_size: int, cu_chunks: list) -> None:
    got, _, _ = chunk_offsets(seqlens, chunk_size)
    assert got == cu_chunks


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_tensors_are_int32_on_the_input_device(dtype: torch.dtype) -> None:
    meta = chunk_metadata(torch.tensor([0, 5, 9], dtype=dtype), 4)
    for t in (meta.cu_chunk_seqlens, meta.seq_idx, meta.last_chunk_indices):
        assert t.dtype == torch.int32 and t.device == torch.device("cpu")


@settings(max_examples=25, deadline=None)
@given(
    seqlens=st.lists(st.integers(1, 70), min_size=1, max_size=6),
    chunk_size=st.sampled_from([1, 2, 4, 16, 32]),
)
def test_chunk_invariants(seqlens: list, chunk_size: int) -> None:
    offsets = [0]
    for n in seqlens:
        offsets.append(offsets[-1] + n)
    meta = chunk_metadata(torch.tensor(offsets, dtype=torch.int32), chunk_size)
    bounds, seq_idx, last = (t.tolist() for t in (meta.cu_chunk_seqlens, meta.seq_idx, meta.last_chunk_indices))
    assert bounds[0] == 0 and bounds[-1] == offsets[-1]
    assert len(seq_idx) == len(bounds) - 1 == sum(-(-n // chunk_size) for n in seqlens)
    for c, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        s = seq_idx[c]
        assert 0 < b - a <= chunk_size, f"chunk {c} has {b - a} tokens"
        assert offsets[s] <= a and b <= offsets[s + 1], f"chunk {c} [{a}, {b}) leaves sequence {s}"
        assert (a - offsets[s]) % chunk_size == 0, f"chunk {c} is not cut from its sequence's start"
    assert seq_idx == sorted(seq_idx) and set(seq_idx) == set(range(len(seqlens)))
    assert last == [max(c for c, s in enumerate(seq_idx) if s == i) for i in range(len(seqlens))]
    assert [bounds[i + 1] for i in last] == offsets[1:], "each sequence's last chunk ends where it ends"


def test_check_chunk_metadata_accepts_what_chunk_metadata_builds() -> None:
    meta = chunk_metadata(cu(0, 3, 10), 4)
    check_chunk_metadata(cu(0, 3, 10), 4, meta.cu_chunk_seqlens, meta.seq_idx, meta.last_chunk_indices)


@pytest.mark.parametrize(
    "name, bad",
    [
        ("cu_chunk_seqlens", cu(0, 4, 8, 10)),  # cut at the global multiples of 4: crosses a sequence start
        ("seq_idx", cu(0, 0, 1)),
        ("last_chunk_indices", cu(1, 2)),
        ("last_chunk_indices", cu(0)),
        ("seq_idx", [0, 1, 1]),
        ("seq_idx", cu(0, 1, 1)[None]),  # right values, 2-D
    ],
)
def test_check_chunk_metadata_names_the_wrong_argument(name: str, bad: object) -> None:
    good = chunk_metadata(cu(0, 3, 10), 4)
    args = {"cu_chunk_seqlens": good.cu_chunk_seqlens, "seq_idx": good.seq_idx,
            "last_chunk_indices": good.last_chunk_indices, name: bad}
    with pytest.raises(ValueError, match=rf"^{name}: "):
        check_chunk_metadata(cu(0, 3, 10), 4, **args)


@pytest.mark.parametrize(
    "cu_seqlens, chunk_size, match",
    [
        (cu(0, 3, 10), 3, r"^chunk_size: expected a power of two >= 1, got 3"),
        (cu(0, 3, 10), 0, r"^chunk_size: expected a power of two"),
        (cu(1, 3, 10), 4, r"^cu_seqlens: expected to start at 0"),
        (cu(0, 3, 3), 4, r"^cu_seqlens: expected strictly increasing"),
        (cu(0), 4, r"^cu_seqlens: expected at least 2 entries"),
        (torch.tensor([[0, 3]]), 4, r"^cu_seqlens: expected a 1-D integer tensor"),
        ([0, 3], 4, r"^cu_seqlens: expected a 1-D integer tensor"),
        (torch.tensor([0.0, 3.0]), 4, r"^cu_seqlens: expected an integer dtype"),
    ],
)
def test_chunk_metadata_rejects_bad_arguments(cu_seqlens: object, chunk_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chunk_metadata(cu_seqlens, chunk_size)


@pytest.mark.parametrize(
    "seqlens, chunk_size, match",
    [([3, 0], 4, r"^seqlens: expected a positive int, got 0"), ([3], 0, r"^chunk_size:"), ([2.5], 4, r"^seqlens:")],
)
def test_chunk_offsets_rejects_bad_arguments(seqlens: list, chunk_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chunk_offsets(seqlens, chunk_size)


def test_metadata_is_frozen() -> None:
    meta = chunk_metadata(cu(0, 3), 4)
    assert isinstance(meta, ChunkMetadata)
    with pytest.raises(AttributeError):
        meta.seq_idx = cu(1)

