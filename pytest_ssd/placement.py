"""Which GPU an xdist worker uses: one GPU per worker, spread round-robin.

Pure functions (no torch, no CUDA): the plugin calls :func:`gpu_for_worker` in each worker's
``pytest_configure``, before anything initialises CUDA, and pins the worker with
``CUDA_VISIBLE_DEVICES`` so every ``"cuda"`` tensor of that worker lands on its own GPU.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

_WORKER_RE = re.compile(r"^gw(\d+)$")


def worker_index(worker_id: str) -> int:
    """``"gw3"`` -> 3. ValueError for anything that is not an xdist worker id."""
    match = _WORKER_RE.match(worker_id or "")
    if not match:
        raise ValueError(f"worker_id: expected an xdist worker id like 'gw0', got {worker_id!r}")
    return int(match.group(1))


def visible_gpus(cuda_visible_devices: Optional[str], device_count: int) -> list:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    Respects a list the user already set (``"2,3"`` -> ``["2", "3"]``); otherwise all
    ``device_count`` GPUs by index. An empty string means no GPU, as CUDA reads it.
    """
    if cuda_visible_devices is not None:
        return [d.strip() for d in cuda_visible_devices.split(",") if d.strip()]
    return [str(i) for i in range(device_count)]


def gpu_for_worker(worker_id: str, gpus: Sequence[str]) -> Optional[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value for this worker, or None when there is <= 1 GPU.

    With more workers than GPUs, workers share GPUs round-robin (gw0 and gw2 on GPU 0 of 2).
    """
    if len(gpus) <= 1:
        return None
    return gpus[worker_index(worker_id) % len(gpus)]
