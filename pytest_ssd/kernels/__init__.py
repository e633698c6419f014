"""The bundled Triton Mamba2 SSD kernel, with vLLM's varlen entry point.

``mamba_chunk_scan_combined_varlen`` (``combined``) checks its arguments, then launches four
kernels, one module each: ``chunk_state`` (dt, its cumsum, and each chunk's own state), ``bmm``
(C·B^T per chunk), ``state_passing`` (states across chunks) and ``chunk_scan`` (the output), with
launch configurations fixed per layer (``configs``). See docs/kernel.md.
"""
from ..chunking import ChunkMetadata, chunk_metadata
from .combined import mamba_chunk_scan_combined_varlen

__all__ = ["mamba_chunk_scan_combined_varlen", "chunk_metadata", "ChunkMetadata"]
