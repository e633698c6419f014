"""Building and launching kernels: a compiled and an interpreted twin, autotuned on any Triton,
and warm launches that go straight to the binary the JIT picked.

| what                           | 3.2              | 3.3              | 3.4-3.9                              |
|--------------------------------|------------------|------------------|--------------------------------------|
| ``triton.autotune(do_bench=)`` | dropped          | passed on        | passed on                            |
| an autotuner's benchmarker     | at definition    | at definition    | fetched when it tunes                |
| ``cache_results=True``         | not there        | not there        | persisted in Triton's cache dir      |
| a warm launch of a kept binary | through the JIT  | through the JIT  | ``CompiledKernel.run``, directly     |
| launch enter/exit hooks        | (not read)       | (not read)       | a callable or None; 3.6+ a ``HookChain`` |

So :func:`autotune` builds the ``Autotuner`` itself, and before 3.4 gives it
:func:`~.driver.bench_with_active_driver` (fetching a benchmarker at definition fails without a GPU).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ._versions import triton_version, version_at_least
from .driver import bench_with_active_driver
from .interpreter_autotune import interpreter_benchmarker
from .interpreter_patches import RESTORES, language_restored


@dataclass(frozen=True)
class KernelPair:
    """One Triton kernel built twice from the same Python source.

    ``compiled`` is a real ``JITFunction`` (optionally autotuned): it goes through Triton's
    binder, specialization, caches and hooks, on a GPU or under :func:`pytest_ssd.compile_only`.
    ``interpreted`` runs the same source on CPU tensors through Triton's interpreter. Building
    both explicitly (instead of reading ``TRITON_INTERPRET`` at decoration time) lets one
    process check numerics on CPU *and* record real compiles.
    """

    compiled: Any
    interpreted: Any

    def pick(self, interpret: bool) -> Any:
        return self.interpreted if interpret else self.compiled


def kernel_pair(
    fn: Callable,
    *,
    autotune_configs: Sequence[Any] | None = None,
    autotune_key: Sequence[str] = (),
) -> KernelPair:
    """Build a :class:`KernelPair` from a plain Python kernel function.

    ``autotune_configs``/``autotune_key`` wrap both kernels in an autotuner (:func:`autotune`);
    the interpreted one tunes with :func:`interpreter_benchmarker`: each config is launched once
    while tuning, and the first one wins (Triton 3.3+; on 3.2 only inside
    :func:`interpreter_autotuning`: 3.2's interpreter rejects launch options a ``triton.Config`` passes).
    ``@triton.jit`` helpers that ``fn`` calls run in both: see :func:`interpretable`. Before Triton
    3.6 the interpreted kernel undoes the interpreter's patches of ``triton.language`` after each
    launch, so kernels still compile in the process (:mod:`.interpreter_patches`).
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    compiled = JITFunction(fn)
    interpreted = _restoring(InterpretedFunction)(interpretable(fn))
    if autotune_configs:
        compiled = autotune(compiled, autotune_configs, autotune_key)
        interpreted = autotune(interpreted, autotune_configs, autotune_key,
                               do_bench=interpreter_benchmarker(run_each_config=True))
    return KernelPair(compiled=compiled, interpreted=interpreted)


def _restoring(interpreted_class: type) -> type:
    """``InterpretedFunction`` whose launches undo the interpreter's patches of ``triton.language``
    after them (Triton < 3.6: :mod:`.interpreter_patches`); the class itself on 3.6+. A launch is
    ``run`` (a method, or on some versions an attribute set in ``__init__``) or ``[grid]`` (which
    some versions send to a ``GridExecutor`` without ``run``): all of them are wrapped."""
    if not RESTORES:
        return interpreted_class

    def restored(launch: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            with language_restored():
                return launch(*args, **kwargs)
        return wrapper

    class Restoring(interpreted_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.run = restored(self.run)  # the method, or the attribute some versions' __init__ sets

        def __getitem__(self, grid):
            return restored(super().__getitem__(grid))

    return Restoring


def interpretable(fn: Callable, _done: dict | None = None) -> Callable:
    """``fn`` as Triton's interpreter can run it outside ``TRITON_INTERPRET``: a copy whose globals
    map each ``@triton.jit`` helper it names to an ``InterpretedFunction`` of that helper (made
    interpretable the same way). A helper called from an interpreted kernel must be one: the
    interpreter calls it as a device function, while a ``JITFunction`` refuses to be called outside
    a compiled kernel. The compiled kernel keeps ``fn`` and its helpers as they are. The copy's
    globals are the module's as they are now (build kernel pairs at the end of their module).
    """
    import types

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    done = {} if _done is None else _done
    if fn in done:
        return done[fn]
    helpers = {name: fn.__globals__[name] for name in fn.__code__.co_names
               if isinstance(fn.__globals__.get(name), JITFunction)}
    if not helpers:
        done[fn] = fn
        return fn
    copy = types.FunctionType(fn.__code__, dict(fn.__globals__), fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__module__, copy.__qualname__, copy.__doc__ = fn.__module__, fn.__qualname__, fn.__doc__
    done[fn] = copy  # before the helpers: a helper that calls back finds it
    for name, helper in helpers.items():
        copy.__globals__[name] = InterpretedFunction(interpretable(helper.fn, done))
    return copy


def autotune(
    fn: Any,
    configs: Sequence[Any],
    key: Sequence[str],
    *,
    do_bench: Callable | None = None,
    cache_results: bool = False,
) -> Any:
    """``triton.autotune(configs=..., key=...)(fn)`` that works on CPU on every Triton 3.2-3.9.

    ``cache_results=True`` persists tuning results in Triton's cache dir (Triton 3.4+ only).
    The ``Autotuner`` is built directly because 3.2's ``triton.autotune`` drops ``do_bench``.
    """
    from triton.runtime.autotuner import Autotuner

    options: dict[str, Any] = {}
    if do_bench is not None:
        options["do_bench"] = do_bench
    elif not version_at_least(3, 4):
        options["do_bench"] = bench_with_active_driver
    if cache_results:
        if not version_at_least(3, 4):
            raise ValueError(f"cache_results=True needs Triton >= 3.4; installed: {triton_version()}")
        options["cache_results"] = True
    return Autotuner(fn, fn.arg_names, list(configs), list(key), None, None, **options)


# --------------------------------------------------------------------------------------
# Launching a warm kernel without Triton's per-launch dispatch.
# --------------------------------------------------------------------------------------

# Triton 3.4-3.9 launch a cached binary as ``compiled.run(grid..., *bound_args.values())``,
# every parameter in signature order, constexprs included, and ``CompiledKernel[grid](*args)``
# does the same; read in each release's jit.py/compiler.py. 3.2/3.3 are not checked: there
# every launch goes through the JIT.
DIRECT_LAUNCH = version_at_least(3, 4)

try:  # 3.4+: where the launch hooks live
    from triton import knobs as _KNOBS
except ImportError:
    _KNOBS = None


_JIT_ONLY = [0]  # > 0 inside jit_dispatch(): no launch skips Triton's JIT


@contextmanager
def jit_dispatch() -> Iterator[None]:
    """Inside the block every :class:`DirectLauncher` launch goes through Triton's JIT.

    For warmup-coverage recordings: they must show what Triton would compile for each request,
    which is also the check that a direct launch's key fixes everything Triton specializes on.
    A direct launch never compiles, so a recording of direct launches could not see a miss.
    """
    _JIT_ONLY[0] += 1
    try:
        yield
    finally:
        _JIT_ONLY[0] -= 1


class DirectLauncher:
    """Launch JIT kernels through Triton once per key, then straight to the binary it picked.

    The first launch for a key goes through ``JITFunction.run`` (binding, specialization, cache
    lookup, compile on a miss, Triton's hooks); the ``CompiledKernel`` it returns is kept, and
    later launches with that key call its launcher directly: no argument binding or cache-key
    string per launch, which is most of a warm launch's host time. The caller's key must fix
    everything Triton specializes on (the constexprs, the dtype or None-ness of each pointer,
    pointer alignment, integer arguments' ==1 / %16 classes), so the kept binary is the one the
    JIT would pick; a request that needs a new binary brings a new key and goes through the JIT,
    where the event recorder sees it.
    """

    def __init__(self) -> None:
        self._compiled: dict = {}

    def stream(self, device_index: int) -> Any:
        """What a caller passes as ``stream`` to its launches on ``device_index``, looked up once
        for all of them: the raw CUDA stream, or None where kept binaries must go through
        Triton's runner (before Triton 3.4, or while a launch hook is set: a profiler's hook
        sees every launch with the metadata Triton builds for it)."""
        if not DIRECT_LAUNCH or _launch_hooks_set():
            return None
        return current_stream(device_index)

    def launch(self, jit: Any, grid: tuple, args: tuple, constexprs: dict, key: Any = None,
               stream: Any = None) -> None:
        """``jit[grid](*args, **constexprs)``; with a ``key``, later launches skip the JIT.

        ``args`` are the leading parameters, in order; ``constexprs`` the rest by name, plus
        launch options (``num_warps``, ``num_stages``). ``grid`` has three entries. With a
        ``stream`` (:meth:`stream`), kept binaries go straight to their launcher; without one,
        through ``CompiledKernel[grid]``.
        """
        kept = self._compiled.get(key) if key is not None and not _JIT_ONLY[0] else None
        if kept is not None:
            kept.launch(grid, args, stream)
            return
        compiled = jit[grid](*args, **constexprs)
        if key is None or not DIRECT_LAUNCH or not _plain_jit(jit) or not hasattr(compiled, "function"):
            return
        names = getattr(jit, "arg_names", ())[len(args):]
        if all(name in constexprs for name in names):
            self._compiled[key] = _KeptBinary(compiled, tuple(constexprs[name] for name in names))

    def clear(self) -> None:
        """Forget every kept binary: the next launch per key goes through the JIT again."""
        self._compiled.clear()


class _KeptBinary:
    """A ``CompiledKernel`` and the trailing (constexpr) parameters it is launched with."""

    __slots__ = ("compiled", "tail")

    def __init__(self, compiled: Any, tail: tuple) -> None:
        self.compiled, self.tail = compiled, tail

    def launch(self, grid: tuple, args: tuple, stream: Any) -> None:
        compiled = self.compiled
        if stream is None:  # CompiledKernel's own runner: stream lookup, launch metadata, hooks
            compiled[grid](*args, *self.tail)
            return
        # What that runner does when no launch hook is set, minus its per-launch closure,
        # stream lookup and metadata (3.4-3.9 alike); on 3.6+ the empty hook chains are not
        # called either.
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata,
                     None, None, None, *args, *self.tail)


def _launch_hooks_set() -> bool:
    """Whether Triton has a launch enter/exit hook to call (3.4-3.5: a callable or None; 3.6+:
    a ``HookChain``, set when it holds a callable)."""
    runtime = _KNOBS.runtime
    return _hook_set(runtime.launch_enter_hook) or _hook_set(runtime.launch_exit_hook)


def _hook_set(hook: Any) -> bool:
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return not isinstance(calls, list) or bool(calls)


def current_stream(device_index: int) -> Any:
    """The raw CUDA stream Triton would launch on for ``device_index`` (its own lookup)."""
    from triton.runtime.driver import driver

    return driver.active.get_current_stream(device_index)


def _plain_jit(fn: Any) -> bool:
    """A bare ``JITFunction``: an autotuner or heuristics wrapper picks its binary per call, so
    its first pick must not be kept."""
    from triton.runtime.jit import JITFunction

    return isinstance(fn, JITFunction)
