"""The one place where Triton versions (3.2 to 3.9) differ for pytest-ssd.

Everything that depends on which Triton is installed lives in this package, so the rest of
pytest-ssd reads as if there were one Triton. One module per concern, as Triton's own
``triton/runtime/`` keeps jit, autotuner and driver apart; each starts with a table of what
differs by version for it:

- :mod:`.launch`: building and launching kernels (``kernel_pair``, ``autotune``, ``DirectLauncher``);
- :mod:`.interpreter_autotune`: autotuners of interpreted kernels, which have no driver;
- :mod:`.interpreter_patches`: undoing the interpreter's patches of ``triton.language`` (``language_restored``);
- :mod:`.observe`: the recorder's hook adapters (``observe_triton``, ``watch_jit_cache``), with
  :mod:`.jit_hooks`, :mod:`.autotune_hooks`, :mod:`.fields` and :mod:`._registry` under it;
- :mod:`.driver`: the driver swap and autotuning for compile-only mode;
- :mod:`.compile_ahead`: compiling a launch's binary ahead of it, from several threads (``precompile``);
- :mod:`._versions`: the installed version, and the only version test (``version_at_least``).

Callers import from here: ``from pytest_ssd.triton_compat import kernel_pair``.
"""
from ._versions import triton_release, triton_version, version_at_least
from .driver import LOADED_BINARY_STUB, autotune_with_active_driver, swap_active_driver
from .fields import named_tuning_key
from .interpreter_autotune import interpreter_autotuning, interpreter_benchmarker, tunes_interpreted
from .interpreter_patches import language_restored
from .launch import DIRECT_LAUNCH, DirectLauncher, KernelPair, autotune, jit_dispatch, kernel_pair
from ._registry import cached_binaries
from .observe import observe_triton, watch_jit_cache
from .compile_ahead import binary_key, precompile

__all__ = [
    "autotune", "autotune_with_active_driver", "binary_key", "cached_binaries", "DIRECT_LAUNCH", "DirectLauncher",
    "interpreter_autotuning", "interpreter_benchmarker", "jit_dispatch", "kernel_pair", "KernelPair",
    "language_restored", "LOADED_BINARY_STUB", "named_tuning_key", "observe_triton", "precompile",
    "swap_active_driver", "triton_release", "triton_version", "tunes_interpreted", "version_at_least",
    "watch_jit_cache",
]
