"""Chunk metadata for the packed varlen layout, as vLLM's ``mamba_chunk_scan_combined_varlen`` takes it.

A *physical chunk* holds at most ``chunk_size`` tokens of exactly one sequence: every sequence
starts a new chunk, and a sequence longer than ``chunk_size`` is cut every ``chunk_size``
tokens from its own start. Example: ``cu_seqlens=[0, 3, 10]``, ``chunk_size=4`` gives chunks
``[0,3) [3,7) [7,10)``, so ``cu_chunk_seqlens=[0, 3, 7, 10]``, ``seq_idx=[0, 1, 1]`` (the
sequence of each chunk) and ``last_chunk_indices=[0, 2]`` (each sequence's last chunk).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from .validation import check_cu_seqlens, check_positive_int, check_power_of_two, short_list

# The kernel's metadata arguments, in its order.
METADATA_NAMES = ("cu_seqlens", "cu_chunk_seqlens", "seq_idx", "last_chunk_indices")


@dataclass(frozen=True)
class ChunkMetadata:
    """Chunk layout of one packed batch. All tensors int32 on ``cu_seqlens``'s device."""

    cu_chunk_seqlens: torch.Tensor  # (C+1,) token offset of each chunk, ends at T
    seq_idx: torch.Tensor  # (C,) sequence index of each chunk
    last_chunk_indices: torch.Tensor  # (S,) index of each sequence's last chunk

    @property
    def num_chunks(self) -> int:
        return int(self.seq_idx.numel())


def chunk_offsets(seqlens: Sequence[int], chunk_size: int) -> tuple:
    """Pure-Python core: ``(cu_chunk_seqlens, seq_idx, last_chunk_indices)`` as lists.

    ``seqlens`` are the positive sequence lengths (not offsets); no tensor is touched, so
    this also serves callers whose tensors live on a device that cannot be read ("meta").
    """
    check_power_of_two("chunk_size", chunk_size, minimum=1)  # 0 would loop forever below
    for length in seqlens:
        check_positive_int("seqlens", length)
    cu_chunks, seq_idx, last = [0], [], []
    start = 0
    for s, length in enumerate(seqlens):
        end = start + length
        pos = start
        while pos < end:
            pos = min(pos + chunk_size, end)
            cu_chunks.append(pos)
            seq_idx.append(s)
        last.append(len(seq_idx) - 1)
        start = end
    return cu_chunks, seq_idx, last


def chunk_metadata(cu_seqlens: torch.Tensor, chunk_size: int) -> ChunkMetadata:
    """Build :class:`ChunkMetadata` from ``cu_seqlens`` (S+1,) and a power-of-two ``chunk_size``."""
    offsets = check_cu_seqlens(cu_seqlens, None)  # T is whatever it ends at
    seqlens = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    cu_chunks, seq_idx, last = chunk_offsets(seqlens, chunk_size)  # checks chunk_size
    device = cu_seqlens.device

    def as_tensor(values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=device)

    meta = ChunkMetadata(as_tensor(cu_chunks), as_tensor(seq_idx), as_tensor(last))
    # Built from cu_seqlens here, so right by construction: the kernel need not read it back.
    CHECKED_METADATA.remember((cu_seqlens, meta.cu_chunk_seqlens, meta.seq_idx, meta.last_chunk_indices),
                              chunk_size, offsets[-1])
    return meta


def check_chunk_metadata(
    cu_seqlens: torch.Tensor,
    chunk_size: int,
    cu_chunk_seqlens: torch.Tensor,
    seq_idx: torch.Tensor,
    last_chunk_indices: torch.Tensor,
) -> None:
    """Raise ``ValueError`` when given chunk metadata disagrees with ``cu_seqlens``/``chunk_size``.

    Kernels index memory with these values, so a mismatch would read or write out of bounds.
    Reads every tensor back; the bundled kernel packs them into one copy and calls
    :func:`check_chunk_offsets` itself.
    """
    offsets = check_cu_seqlens(cu_seqlens, None)
    got = []
    for name, t in zip(METADATA_NAMES[1:], (cu_chunk_seqlens, seq_idx, last_chunk_indices)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D integer tensor, got {t!r:.80}")
        got.append(t.tolist())
    check_chunk_offsets(offsets, chunk_size, *got)


def check_chunk_offsets(offsets: list, chunk_size: int, cu_chunk_seqlens: list, seq_idx: list,
                        last_chunk_indices: list) -> None:
    """:func:`check_chunk_metadata` on values already read to the host (``offsets`` is a checked
    ``cu_seqlens``): each list must equal what :func:`chunk_offsets` builds."""
    seqlens = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    got = (cu_chunk_seqlens, seq_idx, last_chunk_indices)
    for name, have, want in zip(METADATA_NAMES[1:], got, chunk_offsets(seqlens, chunk_size)):
        if have != want:
            raise ValueError(
                f"{name}: disagrees with cu_seqlens={short_list(offsets, 16)} and chunk_size={chunk_size}: "
                f"expected {short_list(want, 16)}, got {short_list(have, 16)} "
                f"(build it with pytest_ssd.chunking.chunk_metadata)"
            )


class CheckedMetadata:
    """Metadata tensors known to agree with their ``cu_seqlens``: built by :func:`chunk_metadata`,
    or checked by the kernel once (a device-to-host copy the GPU idles behind). A model passes
    one batch's metadata to every layer, so a batch pays that copy at most once, and a batch
    built with :func:`chunk_metadata` never.

    A hit needs the very same tensor objects (held by weak reference, so a freed tensor whose
    memory is reused never matches) at the same ``_version`` (bumped by any in-place write).
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._entries: "OrderedDict[tuple, tuple]" = OrderedDict()

    @staticmethod
    def _key(tensors: tuple, chunk_size: int, total_tokens: int) -> tuple:
        return tuple((id(t), t._version) for t in tensors) + (chunk_size, total_tokens)

    def seen(self, tensors: tuple, chunk_size: int, total_tokens: int) -> bool:
        """True if ``(cu_seqlens, cu_chunk_seqlens, seq_idx, last_chunk_indices)`` is known good."""
        refs = self._entries.get(self._key(tensors, chunk_size, total_tokens))
        return refs is not None and all(ref() is t for ref, t in zip(refs, tensors))

    def remember(self, tensors: tuple, chunk_size: int, total_tokens: int) -> None:
        self._entries[self._key(tensors, chunk_size, total_tokens)] = tuple(weakref.ref(t) for t in tensors)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


CHECKED_METADATA = CheckedMetadata()
