"""The one place where Triton versions (3.2 to 3.9) differ for pytest-ssd.

Everything that depends on which Triton is installed lives here, so the rest of the package
reads as if there were one Triton. This part builds kernels; the hook adapters used by the
event recorder follow below it.
"""
from __future__ import annotations

import inspect
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import triton

TRITON_VERSION: tuple = tuple(int(p) for p in triton.__version__.split("+")[0].split(".")[:2])


def version_at_least(major: int, minor: int) -> bool:
    return TRITON_VERSION >= (major, minor)


# --------------------------------------------------------------------------------------
# Building kernels that run both compiled (GPU, compile-only) and interpreted (CPU).
# --------------------------------------------------------------------------------------

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
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    compiled = JITFunction(fn)
    interpreted = InterpretedFunction(fn)
    if autotune_configs:
        compiled = autotune(compiled, autotune_configs, autotune_key)
        interpreted = autotune(interpreted, autotune_configs, autotune_key,
                               do_bench=interpreter_benchmarker(run_each_config=True))
    return KernelPair(compiled=compiled, interpreted=interpreted)


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


# --------------------------------------------------------------------------------------
# Autotuning that can be defined without a GPU.
# --------------------------------------------------------------------------------------

def bench_with_active_driver(kernel_call: Callable, quantiles: Sequence[float] = (0.5, 0.2, 0.8)) -> Any:
    """Benchmark with the driver active *now*: what Triton 3.4+ does by default.

    3.2/3.3 fetch the benchmarker once, when the kernel is defined; that fails without a GPU
    and would pin a kernel to the driver of that moment (e.g. compile-only's fake one).
    """
    from triton.runtime.driver import driver

    return driver.active.get_benchmarker()(kernel_call, quantiles=quantiles)


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
            raise ValueError(f"cache_results=True needs Triton >= 3.4; installed: {triton.__version__}")
        options["cache_results"] = True
    return Autotuner(fn, fn.arg_names, list(configs), list(key), None, None, **options)


# --------------------------------------------------------------------------------------
# Autotuning under the interpreter: there is no driver to benchmark with.
# --------------------------------------------------------------------------------------

def interpreter_benchmarker(*, run_each_config: bool = False) -> Callable:
    """A ``do_bench`` for an autotuner of an interpreted kernel: needs no driver, picks the first config.

    The interpreter's timings say nothing about a GPU, so none are taken: every config gets the
    same timing (0), and Triton keeps the first config of least timing, i.e. the first config
    left after its own pruning (``prune_configs_by``), on every Triton 3.2-3.9. Deterministic:
    the same config wins in every process and on every run. Without ``run_each_config`` no
    config is launched while tuning (an interpreted launch is slow, and the launch that follows
    runs the winner); with it, each config is launched once, in order, so that a config that
    fails under the interpreter fails the tuning call.
    """
    def do_bench(kernel_call: Callable, quantiles: Sequence[float] | None = None, **_: Any) -> Any:
        if run_each_config:
            kernel_call()
        return [0.0] * len(quantiles) if quantiles else 0.0

    return do_bench


def tunes_interpreted(tuner: Any) -> bool:
    """Whether an ``Autotuner`` (or the function it wraps) runs under Triton's interpreter: the
    ``.fn`` chain (heuristics, autotuners) ends in an ``InterpretedFunction``, not a ``JITFunction``."""
    from triton.runtime.interpreter import InterpretedFunction

    fn = tuner
    while fn is not None and not isinstance(fn, InterpretedFunction):
        fn = getattr(fn, "fn", None)
        if inspect.isfunction(fn):  # reached the Python function: a JITFunction wrapped it
            return False
    return fn is not None


@contextmanager
def interpreter_autotuning(*, run_each_config: bool = False) -> Iterator[None]:
    """While active, every autotuner of an interpreted kernel tunes with :func:`interpreter_benchmarker`.

    For ``triton.autotune`` kernels of any module, defined before or inside the block: on a CPU
    there is no driver, and Triton 3.8+ benchmarks through it (``RuntimeError: 0 active
    drivers``), as 3.2/3.3 do when the kernel is defined. A benchmarker the kernel brought
    itself is set aside too (it would time on a GPU). Autotuners of compiled kernels keep theirs,
    so compile-only blocks inside this one work as before.

    | Triton  | how                                                                              |
    |---------|----------------------------------------------------------------------------------|
    | 3.2     | as 3.3, and the interpreter drops every launch option a ``triton.Config`` passes |
    | 3.3     | ``Autotuner.__init__`` gets this benchmarker instead of looking the driver's up  |
    |         | (which raises without a GPU); ``Autotuner.do_bench`` returns it                  |
    | 3.4-3.9 | the lazy ``Autotuner.do_bench`` returns it                                       |
    """
    from triton.runtime.autotuner import Autotuner

    bench = interpreter_benchmarker(run_each_config=run_each_config)

    def do_bench_property(prior: Any, live: _Live) -> property:
        def get(tuner: Any) -> Any:
            if live.on and tunes_interpreted(tuner):
                return bench
            if hasattr(prior, "__get__"):  # 3.4+'s cached_property, or another block's property
                return prior.__get__(tuner, type(tuner))
            return vars(tuner)["do_bench"]  # 3.2/3.3: set by __init__

        def set_(tuner: Any, value: Any) -> None:
            if hasattr(prior, "__set__"):
                prior.__set__(tuner, value)
            else:
                vars(tuner)["do_bench"] = value

        return property(get, set_)

    def init_without_driver(prior: Callable, live: _Live) -> Callable:
        def __init__(self: Any, fn: Any, *args: Any, do_bench: Any = None, **kwargs: Any) -> None:
            if do_bench is None and live.on and tunes_interpreted(fn):
                do_bench = bench
            prior(self, fn, *args, do_bench=do_bench, **kwargs)

        return __init__

    patches = [_Patch.apply(Autotuner, "do_bench", do_bench_property)]
    if not version_at_least(3, 4):
        patches.append(_Patch.apply(Autotuner, "__init__", init_without_driver))
    if not version_at_least(3, 3):
        import triton.runtime.interpreter as interpreter_module

        patches.append(_Patch.apply(interpreter_module, "RESERVED_KWS", _with_config_launch_options))
    try:
        yield
    finally:
        for patch in reversed(patches):
            patch.undo()


def _with_config_launch_options(prior: list, _live: _Live) -> list:
    """3.2's interpreter drops only some launch options from a launch's keywords; a
    ``triton.Config`` passes more (the warp-specialization ones), which it then rejects."""
    return prior + [k for k in triton.Config({}).all_kwargs() if k not in prior]


# --------------------------------------------------------------------------------------
# Hook adapters: observe in-memory JIT misses and autotune benchmarks, Triton 3.2 to 3.9.
#
# Only miss paths are touched. Triton's JIT hooks fire on an in-memory cache miss; the
# Autotuner methods wrapped here (prune_configs, _bench, check_disk_cache) run only when an
# autotuner's in-memory cache misses. JITFunction.run and Autotuner.run stay untouched, so a
# warm launch costs exactly what it costs without us.
#
# | what                   | 3.2-3.3                                  | 3.4-3.9                           |
# |------------------------|------------------------------------------|-----------------------------------|
# | JIT miss, before/after | JITFunction.cache_hook / compiled_hook   | knobs.runtime.jit_cache_hook /    |
# |                        |                                          | jit_post_compile_hook             |
# | compiled vs disk hit   | put_group on the compile's cache manager | knobs.compilation.listener        |
# | autotune benchmark     | Autotuner.prune_configs + _bench         | same, + check_disk_cache          |
#
# knobs.autotuning.listener (3.8+) is deliberately not used: while it is set, Triton's
# Autotuner.run crashes for interpreted kernels (it walks `.fn` looking for a JITFunction),
# and the wrappers above give the same facts on every version.
#
# Anyone may assign these slots while we observe (torch 2.13 assigns jit_post_compile_hook
# when a kernel uses its nvshmem helpers). Every miss path of ours checks that our wrappers
# are still in place; one that was replaced is chained anew, in front of the newcomer, and the
# change is reported (on_hook_change). A second signal does not depend on hooks at all: the
# number of binaries in the JIT caches of every kernel we know (met in a hook, or registered
# with watch_jit_cache). A cache that grew by more binaries than were reported means someone
# blinded every hook of ours: stop() returns those kernels.
# --------------------------------------------------------------------------------------

_MISSING = object()
_INT_TYPES = frozenset({"i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"})


@dataclass
class _Live:
    """Whether one installed wrapper still acts. A wrapper someone else chained and that we
    could not take out stays in their chain switched off: it then only passes through."""

    on: bool = True


@dataclass
class _Patch:
    """One attribute we replaced, and how to put the original back."""

    owner: Any
    name: str
    saved: Any
    ours: Any
    live: _Live

    @classmethod
    def apply(cls, owner: Any, name: str, make: Callable[[Any, _Live], Any]) -> "_Patch":
        """Set ``owner.name = make(current value, live)``."""
        live = _Live()
        saved = vars(owner).get(name, _MISSING)
        ours = make(getattr(owner, name, None), live)
        setattr(owner, name, ours)
        return cls(owner, name, saved, ours, live)

    @property
    def in_place(self) -> bool:
        return vars(self.owner).get(self.name, _MISSING) is self.ours

    def undo(self) -> None:
        self.live.on = False
        if not self.in_place:  # replaced by someone after us: theirs stays
            return
        if self.saved is _MISSING:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.saved)


@dataclass(eq=False)
class _Observer:
    on_compile: Callable[[dict], None] | None
    on_autotune: Callable[[dict], None] | None
    on_tune_start: Callable[[Any, tuple], None] | None
    on_hook_change: Callable[[str], None] | None = None
    watch_caches: bool = False
    cache_sizes: dict = field(default_factory=dict)  # id(jit_fn) -> (jit_fn, binaries when first known)
    reported: dict = field(default_factory=dict)  # id(jit_fn) -> compiles reported to this observer


@dataclass
class _PendingCompile:
    """A JIT miss between Triton's before- and after-compile hooks (one thread)."""

    key: Any
    started: float
    int_values: dict[str, int] | None
    source: str | None = None


@dataclass
class _PendingTune:
    """An autotuner miss between prune_configs and its last benchmark (one thread)."""

    tuner: Any
    key_values: dict[str, Any]
    key_dtypes: dict[str, str]
    n_configs: int
    started: float
    results: list = field(default_factory=list)
    in_disk_check: bool = False


_lock = threading.Lock()
_observers: list[_Observer] = []
_compile_patches: list[_Patch] = []  # while an observer wants compiles
_tune_patches: list[_Patch] = []  # while any observer is registered
_persisted_autotune_writes = True
_local = threading.local()
_known_jit: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()  # id -> JITFunction


def observe_triton(
    *,
    on_compile: Callable[[dict], None] | None = None,
    on_autotune: Callable[[dict], None] | None = None,
    on_tune_start: Callable[[Any, tuple], None] | None = None,
    on_hook_change: Callable[[str], None] | None = None,
    watch_caches: bool = False,
) -> Callable[[], list[dict]]:
    """Call back on every JIT miss and autotune benchmark in this process; return ``stop``.

    ``on_compile(fields)`` gets the fields of :class:`pytest_ssd.events.CompileEvent`
    (without ``compile_only``); ``on_autotune(fields)`` those of ``AutotuneEvent``;
    ``on_tune_start(autotuner, key)`` fires when an autotuner misses its in-memory cache;
    ``on_hook_change(note)`` when one of our hooks was found replaced (and chained again).
    Callbacks run on the thread that compiled, outside any lock of ours.

    Compile hooks are in place while some observer wants compiles, chaining whatever hook
    was set before; they are put back when the last such observer stops. A hook that someone
    set over ours in the meantime (torch, vLLM) is chained anew at the next JIT miss, by the
    next observer, or at ``stop``, whichever comes first.

    ``stop()`` returns, with ``watch_caches``, one ``{"kernel", "module", "binaries",
    "reported"}`` per known kernel whose JIT caches grew by more binaries than ``on_compile``
    reported while observing (an empty list when hooks and caches agree).
    """
    observer = _Observer(on_compile, on_autotune, on_tune_start, on_hook_change, watch_caches)
    _check_hooks()  # observers already open learn of a change that this one would chain silently
    with _lock:
        if watch_caches:
            observer.cache_sizes = {key: (fn, _jit_cache_size(fn)) for key, fn in list(_known_jit.items())}
        _observers.append(observer)
        _sync_patches()

    def stop() -> list[dict]:
        _check_hooks()
        with _lock:
            if observer in _observers:
                _observers.remove(observer)
                _sync_patches()
        return _unreported_binaries(observer)

    return stop


def watch_jit_cache(*kernels: Any) -> None:
    """Count these kernels' JIT caches in every recording (``observe_triton(watch_caches=True)``),
    even if no hook of ours ever sees them compile. Autotuner and heuristics wrappers are
    unwrapped to their JITFunction; anything else (an interpreted kernel) is ignored."""
    from triton.runtime.jit import JITFunction

    for kernel in kernels:
        for _ in range(8):
            if isinstance(kernel, JITFunction) or not hasattr(kernel, "fn"):
                break
            kernel = kernel.fn
        if isinstance(kernel, JITFunction):
            _known_jit[id(kernel)] = kernel


def _jit_cache_size(jit_fn: Any) -> int:
    """Binaries in a JITFunction's in-memory caches, over all devices (3.2-3.9: each device's
    entry is a tuple whose first item is the dict of binaries by key)."""
    entries = list(getattr(jit_fn, "device_caches", {}).values())
    return sum(len(e[0]) for e in entries if isinstance(e, tuple) and e and isinstance(e[0], dict))


def _meet(jit_fn: Any) -> None:
    """A kernel reached one of our hooks: known from now on; an observer that did not know it
    takes its cache size now (from the before-compile hook: before this binary is stored)."""
    with _lock:
        _known_jit[id(jit_fn)] = jit_fn
        for observer in _observers:
            if observer.watch_caches and id(jit_fn) not in observer.cache_sizes:
                observer.cache_sizes[id(jit_fn)] = (jit_fn, _jit_cache_size(jit_fn))


def _unreported_binaries(observer: _Observer) -> list[dict]:
    found = []
    for key, (jit_fn, before) in list(observer.cache_sizes.items()):
        grew, reported = _jit_cache_size(jit_fn) - before, observer.reported.get(key, 0)
        if grew > reported:
            found.append({"kernel": jit_fn.fn.__qualname__, "module": jit_fn.fn.__module__, "binaries": grew,
                          "reported": reported})
    return found


def _check_hooks() -> None:
    """Chain ourselves again in front of any hook that replaced ours; tell the observers."""
    with _lock:
        replaced = [p for p in (*_compile_patches, *_tune_patches) if not p.in_place]
        if not replaced:
            return
        notes = [f"{_slot_name(p.owner)}.{p.name} was replaced while recording (now "
                 f"{_callable_name(vars(p.owner).get(p.name, getattr(p.owner, p.name, None)))}); pytest-ssd "
                 f"chained its hook in front of it again" for p in replaced]
        _sync_patches()
        callbacks = [o.on_hook_change for o in _observers if o.on_hook_change is not None]
    for callback in callbacks:
        for note in notes:
            callback(note)


def _slot_name(owner: Any) -> str:
    if isinstance(owner, type):
        return owner.__name__
    if isinstance(owner, type(sys)):
        return owner.__name__
    return f"triton.knobs.{type(owner).__name__.replace('_knobs', '')}"


def _callable_name(value: Any) -> str:
    if value is None:
        return "None"
    name = getattr(value, "__qualname__", None) or type(value).__name__
    module = getattr(value, "__module__", None)
    return f"{module}.{name}" if module else name


def _sync_patches() -> None:
    _sync(_compile_patches, any(o.on_compile for o in _observers), _compile_patch_specs)
    _sync(_tune_patches, bool(_observers), _tune_patch_specs)


def _sync(patches: list[_Patch], needed: bool, specs: Callable[[], list]) -> None:
    if not needed:
        while patches:
            patches.pop().undo()
        return
    if not patches:
        patches.extend(_Patch.apply(*spec) for spec in specs())
        return
    makers = {(id(owner), name): make for owner, name, make in specs()}
    for i, patch in enumerate(patches):
        if not patch.in_place:  # someone set their own over ours: chain theirs, switch ours off
            patch.live.on = False
            patches[i] = _Patch.apply(patch.owner, patch.name, makers[(id(patch.owner), patch.name)])


def _compile_patch_specs() -> list[tuple[Any, str, Callable]]:
    if version_at_least(3, 4):
        from triton import knobs

        return [(knobs.runtime, "jit_cache_hook", _before_compile_hook),
                (knobs.runtime, "jit_post_compile_hook", _after_compile_hook),
                (knobs.compilation, "listener", _compilation_listener)]
    import triton.compiler.compiler as compiler_module
    from triton.runtime.jit import JITFunction

    return [(JITFunction, "cache_hook", _before_compile_hook),
            (JITFunction, "compiled_hook", _after_compile_hook),
            (compiler_module, "get_cache_manager", _cache_manager_spy)]


def _tune_patch_specs() -> list[tuple[Any, str, Callable]]:
    from triton.runtime.autotuner import Autotuner

    specs = [(Autotuner, "prune_configs", _prune_configs_spy), (Autotuner, "_bench", _bench_spy)]
    if hasattr(Autotuner, "check_disk_cache"):
        specs.append((Autotuner, "check_disk_cache", _disk_cache_spy))
    return specs


def _emit(kind: str, *args: Any) -> None:
    with _lock:
        callbacks = [getattr(o, kind) for o in _observers]
    for callback in callbacks:
        if callback is not None:
            callback(*args)


def _pending_compiles() -> list[_PendingCompile]:
    if not hasattr(_local, "compiles"):
        _local.compiles = []
    return _local.compiles


def _pending_tunes() -> dict[int, _PendingTune]:
    if not hasattr(_local, "tunes"):
        _local.tunes = {}
    return _local.tunes


# -- JIT misses ---------------------------------------------------------------------------

def _before_compile_hook(prior: Callable | None, live: _Live) -> Callable:
    def before_compile(*args: Any, **kwargs: Any) -> Any:
        skip = prior(*args, **kwargs) if prior is not None else None
        if not skip and live.on:  # a truthy answer from the chained hook cancels the compile
            _check_hooks()  # before Triton reads the after-compile hook: a replaced one is chained in time
            jit_fn = kwargs["fn"].jit_function
            _meet(jit_fn)
            _pending_compiles().append(_PendingCompile(kwargs["key"], time.perf_counter(), _bound_int_args(jit_fn)))
        return skip

    return before_compile


def _after_compile_hook(prior: Callable | None, live: _Live) -> Callable:
    def after_compile(*args: Any, **kwargs: Any) -> Any:
        result = prior(*args, **kwargs) if prior is not None else None
        if live.on:
            jit_fn = kwargs["fn"].jit_function
            _meet(jit_fn)
            fields = _compile_fields(kwargs, _pop_pending(kwargs["key"]))
            with _lock:
                observers = list(_observers)
                for observer in observers:
                    if observer.on_compile is not None:
                        observer.reported[id(jit_fn)] = observer.reported.get(id(jit_fn), 0) + 1
            for observer in observers:
                if observer.on_compile is not None:
                    observer.on_compile(fields)
            _check_hooks()  # the before-compile hook may be the one that was replaced
        return result

    return after_compile


def _compilation_listener(prior: Callable | None, live: _Live) -> Callable:
    def listener(*args: Any, **kwargs: Any) -> Any:
        pending = _pending_compiles()
        if live.on and pending and pending[-1].source is None:
            pending[-1].source = "disk" if kwargs.get("cache_hit") else "compiled"
        return prior(*args, **kwargs) if prior is not None else None

    return listener


def _cache_manager_spy(prior: Callable, live: _Live) -> Callable:
    """3.2/3.3: a compile that stores a binary group compiled it; one that does not loaded it."""

    def get_cache_manager(*args: Any, **kwargs: Any) -> Any:
        manager = prior(*args, **kwargs)
        pending = _pending_compiles()
        if live.on and pending and pending[-1].source is None:
            current = pending[-1]
            current.source = "disk"
            put_group = manager.put_group

            def put_group_marking(*a: Any, **kw: Any) -> Any:
                current.source = "compiled"
                return put_group(*a, **kw)

            manager.put_group = put_group_marking
        return manager

    return get_cache_manager


def _pop_pending(key: Any) -> _PendingCompile | None:
    stack = _pending_compiles()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i].key == key:
            found = stack[i]
            del stack[i:]  # entries above it belong to compiles that raised
            return found
    return None


def _bound_int_args(jit_fn: Any) -> dict[str, int] | None:
    """Integer arguments of the launch being compiled, read from ``JITFunction.run``'s frame.

    Only runs on a miss. None where the frame is not there (e.g. ``preload``).
    """
    from triton.runtime.jit import JITFunction

    run_code = JITFunction.run.__code__
    frame = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            break
        if frame.f_code is run_code and frame.f_locals.get("self") is jit_fn:
            bound = frame.f_locals.get("bound_args")
            if not isinstance(bound, dict):
                return None
            values = {p.name: bound.get(p.name) for p in jit_fn.params if not p.is_constexpr}
            return {name: v for name, v in values.items() if isinstance(v, int) and not isinstance(v, bool)}
        frame = frame.f_back
    return None


def _compile_fields(hook_kwargs: dict, pending: _PendingCompile | None) -> dict:
    from triton.runtime.driver import driver

    info = hook_kwargs["compile"]
    jit_fn = hook_kwargs["fn"].jit_function
    read = _read_specialization if version_at_least(3, 3) else _read_specialization_32
    constexprs, signature, specializations = read(jit_fn, info)
    target = driver.active.get_current_target()
    return {
        "kernel": jit_fn.fn.__qualname__,
        "module": jit_fn.fn.__module__,
        "constexprs": constexprs,
        "signature": signature,
        "specializations": specializations,
        "int_values": pending.int_values if pending else None,
        "num_warps": int(info["num_warps"]),
        "num_stages": int(info["num_stages"]),
        "target": f"{target.backend}:{target.arch}",
        "source": (pending.source or "unknown") if pending else "unknown",
        "seconds": time.perf_counter() - pending.started if pending else None,
        "during_autotune": getattr(_local, "benchmarking", 0) > 0,
    }


def _read_specialization(jit_fn: Any, info: dict) -> tuple[dict, dict, dict]:
    """3.3+: constants and attributes arrive keyed by argument path ``(i,)``."""
    signature_in, constants = info["signature"], info["constants"]
    attrs = info["configs"][0] if info["configs"] else {}
    constexprs: dict[str, Any] = {}
    signature: dict[str, str] = {}
    specs: dict[str, str] = {}
    for p in jit_fn.params:
        path = (p.num,)
        if p.is_constexpr:
            constexprs[p.name] = jsonable(constants.get(path))
        elif signature_in.get(p.name) == "constexpr":  # Triton made a constant of it: ==1 or None
            signature[p.name], specs[p.name] = _constant_arg(constants.get(path))
        else:
            ty = signature_in.get(p.name)
            signature[p.name] = ty if isinstance(ty, str) else str(ty)
            divisible = any(a[0] == "tt.divisibility" for a in attrs.get(path, ()))
            spec = _arg_spec(p, signature[p.name], divisible)
            if spec:
                specs[p.name] = spec
    return constexprs, signature, specs


def _read_specialization_32(jit_fn: Any, info: dict) -> tuple[dict, dict, dict]:
    """3.2: constants by name; divisibility as argument indices in an AttrsDescriptor."""
    signature_in, constants = info["signature"], info["constants"]
    properties = info["configs"][0].arg_properties if info["configs"] else {}
    divisible_at = set(properties.get("tt.divisibility", ()))
    constexprs: dict[str, Any] = {}
    signature: dict[str, str] = {}
    specs: dict[str, str] = {}
    for p in jit_fn.params:
        if p.is_constexpr:
            constexprs[p.name] = jsonable(constants.get(p.name))
        elif p.name in constants:
            signature[p.name], specs[p.name] = _constant_arg(constants[p.name])
        else:
            signature[p.name] = str(signature_in.get(p.name))
            spec = _arg_spec(p, signature[p.name], p.num in divisible_at)
            if spec:
                specs[p.name] = spec
    return constexprs, signature, specs


def _constant_arg(value: Any) -> tuple[str, str]:
    """Signature type and specialization of an argument Triton compiled in as a constant."""
    if value is None:
        return "none", "None"
    return ("i32", "==1") if value == 1 else (type(value).__name__, f"={value}")


def _arg_spec(param: Any, ty: str, divisible: bool) -> str | None:
    """``==1``/``%16``/``none`` for integers, ``aligned``/``unaligned`` for pointers."""
    if ty.startswith("*"):
        if param.do_not_specialize or param.do_not_specialize_on_alignment:
            return "nospec"
        return "aligned" if divisible else "unaligned"
    if ty in _INT_TYPES:
        if param.do_not_specialize:
            return "nospec"
        return "%16" if divisible else "none"
    return None


def jsonable(value: Any) -> Any:
    """A JSON-safe, process-independent rendering of a kernel argument or constexpr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "value") and type(value).__name__ == "constexpr":
        return jsonable(value.value)
    if hasattr(value, "fn") and hasattr(value, "module"):  # a JITFunction passed as constexpr
        return f"{value.module}:{value.fn.__qualname__}"
    return str(value)


# -- Autotune misses ----------------------------------------------------------------------

def named_tuning_key(tuner: Any, kwargs: dict) -> tuple[tuple, dict[str, Any], dict[str, str]]:
    """The autotune key exactly as ``Autotuner.run`` builds it, plus the same facts by name.

    Triton's key is ``[values of key args] + [str(dtype) for each tensor arg]``.
    """
    all_args = {**(tuner.nargs or {}), **kwargs}
    args = {k: v for k, v in all_args.items() if k in tuner.arg_names}
    values = [args[k] for k in tuner.keys if k in args]
    dtypes = {k: str(v.dtype) for k, v in args.items() if hasattr(v, "dtype")}
    named_values = {k: jsonable(args[k]) for k in tuner.keys if k in args}
    return tuple(values + list(dtypes.values())), named_values, dtypes


def _prune_configs_spy(prior: Callable, live: _Live) -> Callable:
    def prune_configs(self: Any, kwargs: dict, *args: Any, **kw: Any) -> Any:
        pruned = prior(self, kwargs, *args, **kw)
        if live.on:
            _check_hooks()  # an autotune miss compiles next: our compile hooks must be in place
            key, values, dtypes = named_tuning_key(self, kwargs)
            _pending_tunes()[id(self)] = _PendingTune(self, values, dtypes, len(pruned), time.perf_counter())
            if key not in self.cache:  # Autotuner.warmup prunes too, without a miss
                _emit("on_tune_start", self, key)
        return pruned

    return prune_configs


def _bench_spy(prior: Callable, live: _Live) -> Callable:
    def _bench(self: Any, *args: Any, config: Any, **meta: Any) -> Any:
        _local.benchmarking = getattr(_local, "benchmarking", 0) + 1  # compiles in here are candidates
        try:
            timing = prior(self, *args, config=config, **meta)
        finally:
            _local.benchmarking -= 1
        pending = _pending_tunes().get(id(self)) if live.on else None
        if pending is not None and pending.tuner is self:
            pending.results.append((config, timing))
            if not pending.in_disk_check and len(pending.results) == pending.n_configs:
                # Triton picks the first config of least timing: min() over configs in order.
                _finish_tune(pending, "benchmarked", min(pending.results, key=lambda r: r[1])[0])
        return timing

    return _bench


def _disk_cache_spy(prior: Callable, live: _Live) -> Callable:
    def check_disk_cache(self: Any, tuning_key: Any, configs: Any, bench_fn: Callable, *args: Any, **kw: Any) -> Any:
        if not live.on:
            return prior(self, tuning_key, configs, bench_fn, *args, **kw)
        pending = _pending_tunes().get(id(self))
        if pending is not None:
            pending.in_disk_check = True
        if _persisted_autotune_writes:
            hit = prior(self, tuning_key, configs, bench_fn, *args, **kw)
        else:
            hit = _check_disk_cache_read_only(prior, self, tuning_key, configs, bench_fn, *args, **kw)
        if pending is not None and pending.tuner is self:
            _finish_tune(pending, "persisted" if hit else "benchmarked", self.cache.get(tuning_key))
        return hit

    return check_disk_cache


class _SkipPersist(Exception):
    """Raised right after benchmarking to stop check_disk_cache before it writes."""


def _check_disk_cache_read_only(prior: Callable, tuner: Any, tuning_key: Any, configs: Any, bench_fn: Callable,
                                *args: Any, **kw: Any) -> bool:
    """Load persisted results if there are any; never store new ones.

    In 3.4-3.9 ``check_disk_cache`` returns on a hit and otherwise benchmarks, then writes:
    stopping it right after the benchmark leaves the autotuner exactly as after a miss.
    """
    def bench_then_stop() -> None:
        bench_fn()
        raise _SkipPersist

    try:
        return prior(tuner, tuning_key, configs, bench_then_stop, *args, **kw)
    except _SkipPersist:
        return False


def _finish_tune(pending: _PendingTune, source: str, winner: Any) -> None:
    _pending_tunes().pop(id(pending.tuner), None)
    base = pending.tuner.base_fn
    _emit("on_autotune", {
        "kernel": base.__qualname__,
        "module": base.__module__,
        "key_values": pending.key_values,
        "key_dtypes": pending.key_dtypes,
        "configs_benchmarked": len(pending.results),
        "winner": config_fields(winner) if winner is not None else None,
        "source": source,
        "seconds": time.perf_counter() - pending.started,
    })


def config_fields(config: Any) -> dict:
    """A ``triton.Config`` as JSON: its kwargs, num_warps and num_stages."""
    return {"kwargs": jsonable(dict(config.kwargs)), "num_warps": config.num_warps,
            "num_stages": config.num_stages}


# --------------------------------------------------------------------------------------
# Compile-only support: swapping the driver, and autotuning against a fake one.
# --------------------------------------------------------------------------------------

# What a fake driver's ``utils.load_binary`` returns: (module, function, n_regs, n_spills[,
# n_max_threads]); 3.4+ added the thread limit.
LOADED_BINARY_STUB: tuple = (None, None, 0, 0, 1024) if version_at_least(3, 4) else (None, None, 0, 0)


def swap_active_driver(new: Any) -> Callable[[], None]:
    """Make ``new`` Triton's active driver; return a function that puts the previous one back.

    Restores the saved object itself: ``reset_active()`` would build the default driver,
    which raises without a GPU from 3.5 on.
    """
    from triton.runtime.driver import driver as config

    slot = "_active" if "_active" in vars(config) else "active"  # 3.5+ keeps it private
    saved = vars(config)[slot]
    setattr(config, slot, new)
    return lambda: setattr(config, slot, saved)


@contextmanager
def autotune_with_active_driver(*, persist: bool) -> Iterator[None]:
    """While active, every Autotuner benchmarks with ``driver.active``.

    3.4+ caches the benchmarker per autotuner on first use, 3.2/3.3 when the kernel is
    defined: without this, compile-only mode would either benchmark on a real GPU or leave
    its fake benchmarker behind. Unless ``persist``, Triton's persisted autotune results
    (``cache_results``, 3.4+) are read but never written, so fake timings stay out of the
    cache dir. Needs an active :func:`observe_triton` observer for that part.
    """
    global _persisted_autotune_writes
    from triton.runtime.autotuner import Autotuner

    def benchmarker(_tuner: Any) -> Callable:
        from triton.runtime.driver import driver

        return driver.active.get_benchmarker()

    def keep_instance_benchmarker(tuner: Any, value: Any) -> None:
        # 3.2/3.3 assign do_bench in __init__: keep a lazy one rather than the fake itself.
        from triton.runtime.driver import driver

        fake = value is driver.active.get_benchmarker()
        tuner.__dict__["do_bench"] = bench_with_active_driver if fake else value

    patch = _Patch.apply(Autotuner, "do_bench", lambda _prior, _live: property(benchmarker, keep_instance_benchmarker))
    _persisted_autotune_writes = persist
    try:
        yield
    finally:
        _persisted_autotune_writes = True
        patch.undo()
