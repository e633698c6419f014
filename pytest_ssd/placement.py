"""Where an xdist worker runs: its GPU and its Triton cache dir, and when the plugin sets them.

No torch, no CUDA. Both are opt-in (``--ssd-place-gpus``,
``--ssd-isolate-cache``: ``auto``, ``on``, ``off``): ``auto`` turns them on only when the
command line runs the plugin's own conformance suite, so a repo that merely has the plugin
installed keeps its environment. The plugin applies the result in each worker's
``pytest_configure``, before anything initialises CUDA: ``CUDA_VISIBLE_DEVICES`` only works if
set before that (:func:`environment_changes`). The report header says what they do
(:func:`worker_lines`).
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


def _count_gpus_without_cuda_init() -> int:
    # CUDA_VISIBLE_DEVICES only works if set before CUDA initialises, so count GPUs from the
    # driver's /proc entries rather than through torch.
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def environment_changes(settings, worker: Optional[str], runs_suite: bool, environ: Mapping[str, str]) -> dict:
    """What a process sets in its environment (name -> value), and nothing unasked.

    ``settings``: the :class:`~pytest_ssd.options.Settings`; ``worker``: the xdist worker id, None
    without xdist. ``--ssd-persist-autotune DIR``: every process shares DIR on purpose (warmups
    take a file lock in turn). ``--ssd-isolate-cache``: each xdist worker its own Triton cache
    dir, never over a ``TRITON_CACHE_DIR`` the user set. ``--ssd-place-gpus``: each worker one GPU.
    """
    changes = {}
    if settings.persist_autotune:
        changes["TRITON_CACHE_DIR"] = os.path.abspath(settings.persist_autotune)
        changes["TRITON_CACHE_AUTOTUNING"] = "1"
    elif worker and switched_on(settings.isolate_cache, runs_suite):
        own = worker_cache_dir(worker, environ)
        if own:
            changes["TRITON_CACHE_DIR"] = own
    if worker and switched_on(settings.place_gpus, runs_suite):
        gpu = gpu_for_worker(worker, visible_gpus(environ.get("CUDA_VISIBLE_DEVICES"), _count_gpus_without_cuda_init()))
        if gpu is not None:
            changes["CUDA_VISIBLE_DEVICES"] = gpu
    return changes


def worker_lines(settings, runs_suite: bool, environ: Mapping[str, str]) -> list:
    """The report header's lines on what xdist workers do with the Triton cache dir and the GPUs."""
    def why(name: str) -> str:
        value = getattr(settings, name)
        return f"{name}={value}" + (", the suite runs" if value == "auto" and runs_suite else "")

    if settings.persist_autotune:
        cache = f"all share --ssd-persist-autotune {settings.persist_autotune} (warmups take turns)"
    elif not switched_on(settings.isolate_cache, runs_suite):
        cache = f"the Triton cache dir as set ({why('isolate_cache')})"
    elif environ.get("TRITON_CACHE_DIR"):
        cache = f"your TRITON_CACHE_DIR, never replaced ({why('isolate_cache')})"
    else:
        cache = (f"one Triton cache dir each ({why('isolate_cache')}): "
                 f"{default_triton_cache_dir(environ)}/pytest-ssd-gwN")
    gpus = (f"one GPU each through CUDA_VISIBLE_DEVICES ({why('place_gpus')})"
            if switched_on(settings.place_gpus, runs_suite) else f"the GPUs as set ({why('place_gpus')})")
    return [f"pytest-ssd: xdist workers: {cache}", f"pytest-ssd: xdist workers: {gpus}"]
