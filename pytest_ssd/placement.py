"""Where an xdist worker runs: its GPU and its Triton cache dir, and when the plugin sets them.

Pure functions (no torch, no CUDA). Both are opt-in (``--ssd-place-gpus``,
``--ssd-isolate-cache``: ``auto``, ``on``, ``off``): ``auto`` turns them on only when the
command line runs the plugin's own conformance suite, so a repo that merely has the plugin
installed keeps its environment. The plugin applies the result in each worker's
``pytest_configure``, before anything initialises CUDA: ``CUDA_VISIBLE_DEVICES`` only works if
set before that.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Optional, Sequence

_WORKER_RE = re.compile(r"^gw(\d+)$")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
SUITE_DIR = os.path.join(PACKAGE_DIR, "suite")
SUITE_MODULE = "pytest_ssd.suite"


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


def names_the_suite(args: Sequence[str], pyargs: bool, invocation_dir: str) -> bool:
    """Whether pytest's positional ``args`` run the conformance suite (or the whole package).

    ``--pyargs pytest_ssd.suite[.module]`` or ``pytest_ssd``, or a path inside the suite's
    directory or the package's own. The suite is not imported: that would import torch.
    """
    for arg in args:
        target = str(arg).split("::", 1)[0]
        if pyargs and (target in (SUITE_MODULE, "pytest_ssd") or target.startswith(SUITE_MODULE + ".")):
            return True
        path = os.path.realpath(os.path.join(invocation_dir, target))
        if path == PACKAGE_DIR or path == SUITE_DIR or path.startswith(SUITE_DIR + os.sep):
            return True
    return False


def switched_on(value: str, runs_suite: bool) -> bool:
    """An ``auto``/``on``/``off`` option's effect: ``auto`` is on only for a session that runs the suite."""
    return value == "on" or (value == "auto" and runs_suite)


def default_triton_cache_dir(environ: Mapping[str, str]) -> str:
    """Triton's default cache dir when ``TRITON_CACHE_DIR`` is unset: ``$TRITON_HOME`` (or ``~``)/.triton/cache."""
    home = environ.get("TRITON_HOME") or os.path.expanduser("~")
    return os.path.join(home, ".triton", "cache")


def worker_cache_dir(worker_id: str, environ: Mapping[str, str]) -> Optional[str]:
    """This worker's own Triton cache dir, or None where the user set ``TRITON_CACHE_DIR``.

    A dir the user set is theirs (a pre-warmed shared cache, say): rewriting it would make it
    cold, so it is never replaced. Otherwise ``<default dir>/pytest-ssd-gwN``, so workers do not
    race on one dir (triton#11512).
    """
    worker_index(worker_id)  # a clear error for anything but an xdist worker id
    if environ.get("TRITON_CACHE_DIR"):
        return None
    return os.path.join(default_triton_cache_dir(environ), f"pytest-ssd-{worker_id}")
