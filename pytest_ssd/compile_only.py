"""Compile-only mode: run Triton's real JIT path for a GPU target without a GPU.

``with compile_only(target="cuda:90"):`` makes a fake driver Triton's active driver. Kernel
launches then go through the binder, specialization, cache key, hooks and a real compile for
that target with Triton's bundled ``ptxas``, and execute nothing: the launcher is a no-op and
kernels receive CPU tensors (their pointers matter only for alignment). Autotuned kernels
compile every config through a fake benchmarker; the autotune key is still recorded.

What compile-only cannot know: kernel results (outputs stay as they were), timings (the fake
benchmarker reports equal times), hence the autotune winner (Triton keeps the first config;
:class:`pytest_ssd.events.AutotuneEvent` reports ``winner=None``), and what the real device
would reject at load time beyond shared memory and threads per block.

It behaves as a separate virtual device per target. Binaries are cached under a device id of
its own (``compile-only:cuda:90``), so a kernel first used here gets a fresh binder for the
target and a later real GPU run of the same kernel starts cold, as it must. Autotune results
reached here are taken out of each autotuner when the block ends and put back when a block
for the same target begins: fake choices never reach a real run. Triton's persisted autotune
cache (``cache_results``, 3.4+) is read inside the block but written only with
``persist_autotune=True``: the fake timings would make a real run reuse the first config.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, Sequence

from . import triton_compat

# (backend, arch, warp size, device properties like the flagship part of that target).
_TARGETS: dict[str, tuple[str, Any, int, dict[str, int]]] = {
    "cuda:80": ("cuda", 80, 32, {"max_shared_mem": 166912, "multiprocessor_count": 108, "max_num_regs": 65536,
                                 "warpSize": 32, "sm_clock_rate": 1410000, "mem_clock_rate": 1215000,
                                 "mem_bus_width": 5120}),
    "cuda:90": ("cuda", 90, 32, {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536,
                                 "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000,
                                 "mem_bus_width": 5120}),
    "cuda:100": ("cuda", 100, 32, {"max_shared_mem": 232448, "multiprocessor_count": 148, "max_num_regs": 65536,
                                   "warpSize": 32, "sm_clock_rate": 1965000, "mem_clock_rate": 4000000,
                                   "mem_bus_width": 8192}),
    "hip:gfx942": ("hip", "gfx942", 64, {"max_shared_mem": 65536, "multiprocessor_count": 304, "max_num_regs": 65536,
                                         "warpSize": 64, "sm_clock_rate": 2100000, "mem_clock_rate": 1300000,
                                         "mem_bus_width": 8192}),
}
TARGETS: tuple[str, ...] = tuple(_TARGETS)


def _fake_benchmark(kernel_call: Callable, quantiles: Sequence[float] | None = None, **_: Any) -> Any:
    """Run the config once (that compiles it) and report the same time for every config."""
    kernel_call()
    return [1.0 for _ in quantiles] if quantiles else 1.0


class _Utils:
    def __init__(self, properties: dict[str, int]) -> None:
        self._properties = properties

    def load_binary(self, *_: Any) -> tuple:
        return triton_compat.LOADED_BINARY_STUB

    def get_device_properties(self, _device: Any) -> dict[str, int]:
        return dict(self._properties)

    def unload_module(self, _module: Any) -> None:
        pass


def _no_launch(*_: Any, **__: Any) -> None:
    pass


class CompileOnlyThreadWarning(UserWarning):
    """A thread that did not enter ``compile_only`` launched a kernel while it was active: the
    driver is process-wide, so that launch compiled and ran nothing (its outputs are unwritten)."""


class _FakeDriver:
    """Enough of a Triton driver to compile for ``target`` and launch nothing."""

    def __init__(self, name: str) -> None:
        from triton.backends.compiler import GPUTarget

        backend, arch, warp_size, properties = _TARGETS[name]
        self.target = GPUTarget(backend, arch, warp_size)
        self.device = f"compile-only:{name}"  # keys JITFunction caches apart from real devices
        self.utils = _Utils(properties)
        self.launcher_cls = lambda _src, _metadata: _no_launch

    def get_current_device(self) -> str:
        # Triton asks on every launch: the place to notice a launch from a thread outside the block.
        _warn_if_foreign_thread()
        return self.device

    def set_current_device(self, _device: Any) -> None:
        pass

    def get_current_stream(self, _device: Any = None) -> int:
        return 0

    def get_current_target(self) -> Any:
        return self.target

    def get_active_torch_device(self) -> Any:
        import torch

        return torch.device("cpu")

    def get_benchmarker(self) -> Callable:
        return _fake_benchmark


_lock = threading.Lock()
_depth = 0
_owners: dict[int, int] = {}  # thread id -> depth of its compile_only blocks
_warned: set[int] = set()  # threads warned during the active block
_settings: tuple[str, bool] | None = None  # (target, persist_autotune) of the active block
_exit_stack: ExitStack | None = None
# Autotune results reached in compile-only mode, per autotuner and target, kept out of the
# autotuners between blocks.
_stash: "weakref.WeakKeyDictionary[Any, dict[str, dict]]" = weakref.WeakKeyDictionary()


def compile_only_active() -> bool:
    """True while a ``compile_only(...)`` block is active in this process."""
    return _depth > 0


def active_target() -> str | None:
    """The target of the active ``compile_only(...)`` block (``"cuda:90"``), or None outside one.

    What was warmed or compiled under one target (or for real) is not warm for another: caches
    of warm work key on this.
    """
    return _settings[0] if _depth else None


@contextmanager
def compile_only(target: str = "cuda:90", *, persist_autotune: bool = False) -> Iterator[None]:
    """Compile for ``target`` (``cuda:80``, ``cuda:90``, ``cuda:100``, ``hip:gfx942``), run nothing.

    Process-wide (Triton's driver is global). Blocks nest only with the same settings. A thread
    that launches a kernel while another thread's block is active gets a
    :class:`CompileOnlyThreadWarning` (once per block): its launch compiled and ran nothing.
    Threads meant to compile enter the block themselves (same settings), which nests.
    ``cuda:100`` needs Triton >= 3.3 (its ptxas); ``hip:gfx942`` needs a Triton that bundles
    ``ld.lld`` (3.5+) or ``TRITON_HIP_LLD_PATH``. ``persist_autotune=True`` lets autotuners
    with ``cache_results`` write their (fake) results: only for a cache dir of its own.
    """
    global _depth, _settings, _exit_stack
    if target not in _TARGETS:
        raise ValueError(f"compile_only target must be one of {', '.join(TARGETS)}; got {target!r}")
    from .validation import check_bool  # it imports torch: not at this module's import

    check_bool("compile_only persist_autotune", persist_autotune)
    settings = (target, persist_autotune)
    me = threading.get_ident()
    with _lock:
        if _depth and _settings != settings:
            raise RuntimeError(f"compile_only{settings} inside compile_only{_settings}: one setting at a time")
        if not _depth:
            _exit_stack = _enter(target, persist_autotune)
            _settings = settings
        _depth += 1
        _owners[me] = _owners.get(me, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            _owners[me] -= 1
            if not _owners[me]:
                del _owners[me]
            if not _depth:
                stack, _exit_stack, _settings = _exit_stack, None, None
                _warned.clear()
                stack.close()


@contextmanager
def join_compile_only() -> Iterator[None]:
    """In a worker thread: enter the ``compile_only`` block that another thread holds open, with
    its settings, for as long as that thread waits for this one. RuntimeError when none is."""
    with _lock:
        settings = _settings if _depth else None
    if settings is None:
        raise RuntimeError("join_compile_only(): no compile_only block is active to join")
    with compile_only(settings[0], persist_autotune=settings[1]):
        yield


def _warn_if_foreign_thread() -> None:
    me = threading.get_ident()
    if me in _owners or me in _warned:
        return
    _warned.add(me)
    target = active_target()
    warnings.warn(CompileOnlyThreadWarning(
        f"thread {threading.current_thread().name!r} launched a Triton kernel while compile_only({target!r}) "
        f"was active on another thread: the driver is process-wide, so the launch compiled and ran nothing and "
        f"its outputs are unwritten; enter compile_only in this thread too, or launch after the block"
    ), stacklevel=2)


def _enter(target: str, persist_autotune: bool) -> ExitStack:
    """Install the fake driver and the autotune bookkeeping; closing the stack undoes it."""
    tuned: list[tuple[Any, Any]] = []  # (autotuner, key) tuned while the block runs
    for tuner, per_target in list(_stash.items()):
        for key, config in per_target.get(target, {}).items():
            if key not in tuner.cache:
                tuner.cache[key] = config
                tuned.append((tuner, key))
    stack = ExitStack()
    stack.callback(_stash_away, tuned, target)
    try:
        stack.callback(triton_compat.swap_active_driver(_FakeDriver(target)))
        # GPU kernels get CPU tensors here: `with torch.cuda.device(x.device.index)` (mamba_ssm's
        # launchers) must be the no-op torch documents for a CPU tensor's index (None).
        from .interpreter import cpu_device_guards

        stack.enter_context(cpu_device_guards())
        stack.enter_context(triton_compat.autotune_with_active_driver(persist=persist_autotune))
        stack.callback(triton_compat.observe_triton(on_tune_start=lambda tuner, key: tuned.append((tuner, key))))
    except BaseException:
        stack.close()
        raise
    return stack


def _stash_away(tuned: list[tuple[Any, Any]], target: str) -> None:
    for tuner, key in tuned:
        config = tuner.cache.pop(key, None)
        if config is not None:
            _stash.setdefault(tuner, {}).setdefault(target, {})[key] = config
