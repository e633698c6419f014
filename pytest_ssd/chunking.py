"""Chunk metadata for the packed varlen layout, as vLLM's ``mamba_chunk_scan_combined_varlen`` takes it.

A *physical chunk* holds at most ``chunk_size`` tokens of exactly one sequence: every sequence
starts a new chunk, and a sequence longer than ``chunk_size`` is cut every ``chunk_size``
tokens from its own start. Example: ``cu_seqlens=[0, 3, 10]``, ``chunk_size=4`` gives chunks
``[0,3) [3,7) [7,10)``, so ``cu_chunk_seqlens=[0, 3, 7, 10]``, ``seq_idx=[0, 1, 1]`` (the
sequence of each chunk) and ``last_chunk_indices=[0, 2]`` (each sequence's last chunk).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence

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
    """Build :class:`ChunkMetadata` from ``cu_seqlens`` (S+1,) and a power-of-two ``chunk_size``.

    Limits: every offset, hence T, fits int32 (``T <= 2**31 - 1``); ``chunk_size`` is a power of
    two (the bundled kernel takes 16 to :data:`pytest_ssd.validation.MAX_CHUNK_SIZE`).
    """
    offsets = check_cu_seqlens(cu_seqlens, None)  # T is whatever it ends at (within int32)
    seqlens = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    lists = chunk_offsets(seqlens, chunk_size)  # checks chunk_size
    # One host-to-device copy for the three tensors (views of one buffer, each 16-byte aligned),
    # and a device-side clone that only the kernel reads: what it was built from is what it runs.
    buffer, handed_out = packed_int32(lists, cu_seqlens.device)
    SEALED.seal((cu_seqlens, *handed_out), chunk_size, offsets[-1], _views_like(buffer.clone(), handed_out))
    return ChunkMetadata(*handed_out)


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


def packed_int32(lists: Sequence[list], device: torch.device) -> tuple:
    """``(buffer, views)``: the int32 lists as contiguous views of one new tensor on ``device``,
    each view 16-byte aligned (one host-to-device copy for all of them)."""
    starts, total = [], 0
    for values in lists:
        starts.append(total)
        total += -(-max(len(values), 1) // _ALIGN_INT32) * _ALIGN_INT32
    flat = [0] * total
    for start, values in zip(starts, lists):
        flat[start:start + len(values)] = values
    buffer = torch.tensor(flat, dtype=torch.int32).to(device)
    return buffer, tuple(buffer[start:start + len(values)] for start, values in zip(starts, lists))


def _views_like(buffer: torch.Tensor, views: tuple) -> tuple:
    """``views``' slices of another buffer of the same layout (a clone of theirs)."""
    return tuple(buffer[v.storage_offset():v.storage_offset() + v.numel()] for v in views)


_ALIGN_INT32 = 4  # int32 elements per 16 bytes


class SealedMetadata(NamedTuple):
    """The chunk metadata the bundled kernel reads: int32, aligned, on the kernel's device, and
    private (no caller holds these tensors), so no write after the check can reach the kernels."""

    cu_chunk_seqlens: torch.Tensor  # (C+1,)
    seq_idx: torch.Tensor  # (C,)
    last_chunk_indices: torch.Tensor  # (S,)


def _version(t: torch.Tensor) -> Optional[int]:
    """``t._version``, or None for an inference tensor (it has no version counter)."""
    return None if t.is_inference() else t._version


class SealedStore:
    """Private checked copies of the metadata of recent batches, by the caller's tensors.

    A model passes one batch's metadata to every layer: the kernel checks it once (one small
    device-to-host copy, or none when :func:`chunk_metadata` built it) and keeps what it checked
    as a :class:`SealedMetadata`. Later calls with the very same tensor objects (held by weak
    reference: a freed tensor's id never matches) at the same ``_version`` (bumped by in-place
    writes through torch ops), the same T, S, C and chunk size use that copy. Writes that bypass the version counter (``.data``,
    ``.numpy()``, DLPack, another kernel) are not seen; they cannot reach the kernels either,
    which read only the private copy.

    Inference tensors (``torch.inference_mode()``, how vLLM serves) have no version counter, so
    an engine that refills the same metadata tensors in place for the next batch would get the
    previous batch's copy: a caller's inference tensors are never kept (``keep=False``), and each
    call checks them again. What :func:`chunk_metadata` built is kept: it made those tensors for
    one batch.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._entries: dict = {}  # key -> (weak refs of the caller's tensors, SealedMetadata)
        self._lock = threading.RLock()  # a weakref callback may run (GC) while seal() holds it

    @staticmethod
    def _key(tensors: tuple, chunk_size: int, total_tokens: int) -> tuple:
        # The sizes too: ``t.data = other`` swaps a tensor's memory and shape with no version bump,
        # and the kernels' grids and outputs take S and C from the caller's tensors.
        # Spelled out, not a generator: a request pays for this key on every call.
        cu_seqlens, cu_chunk_seqlens, seq_idx, last_chunk_indices = tensors
        return (id(cu_seqlens), _version(cu_seqlens), id(cu_chunk_seqlens), _version(cu_chunk_seqlens),
                id(seq_idx), _version(seq_idx), id(last_chunk_indices), _version(last_chunk_indices),
                chunk_size, total_tokens, last_chunk_indices.shape[0], seq_idx.shape[0])

    def lookup(self, tensors: tuple, chunk_size: int, total_tokens: int) -> Optional[SealedMetadata]:
        """The sealed copy of ``(cu_seqlens, cu_chunk_seqlens, seq_idx, last_chunk_indices)`` for
        these tensors as they are now (same objects, versions, sizes), or None."""
        entry = self._entries.get(self._key(tensors, chunk_size, total_tokens))
        if entry is None:
            return None
        refs = entry[0]
        if (refs[0]() is not tensors[0] or refs[1]() is not tensors[1] or refs[2]() is not tensors[2]
                or refs[3]() is not tensors[3]):
            return None
        return entry[1]

    def seal(self, tensors: tuple, chunk_size: int, total_tokens: int, sealed: tuple,
             keep: bool = True) -> SealedMetadata:
        """Keep ``sealed`` (a private copy of what was checked) for the caller's ``tensors``;
        ``keep=False`` only wraps it (tensors whose in-place writes cannot be seen)."""
        key = self._key(tensors, chunk_size, total_tokens)
        sealed = SealedMetadata(*sealed)
        if not keep:
            return sealed

        def forget(_ref: Any) -> None:  # any of the caller's tensors died: its id may be reused
            with self._lock:
                self._entries.pop(key, None)

        refs = tuple(weakref.ref(t, forget) for t in tensors)
        with self._lock:
            self._entries[key] = (refs, sealed)
            while len(self._entries) > self._size:
                self._entries.pop(next(iter(self._entries)))
        return sealed


SEALED = SealedStore()
