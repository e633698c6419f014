"""Warm the SSD kernels of a layer at load time, so no request compiles or autotunes.

vLLM's warmup (PR #39822) runs one chunk of random input through both ``HAS_INITSTATES``
branches in the inference dtypes. That covers the autotune keys, but not Triton's
specializations: an integer argument that is 1, divisible by 16 or neither, and a pointer that
is 16-byte aligned or not, each select another binary, so a 6565-token request still compiled
one. The bundled kernel takes no request-dependent integer and only aligned pointers (see
:mod:`pytest_ssd.kernels.combined`), so here one small call per ``HAS_INITSTATES`` value
compiles every binary any later batch of the layer uses: any token count, any mix of sequence
lengths, with or without initial states.

Those calls compile six binaries for a float32 model (chunk state, C.B^T, state passing and
chunk scan, the last two once per ``HAS_INITSTATES`` value), five for a 16-bit one, whose C.B^T
tiles run inside chunk state's launch. For the bundled kernel they compile side by side, one thread
each, before the calls run (:func:`_compile_side_by_side`): Triton releases the GIL in its MLIR
and LLVM passes and ptxas is a subprocess, so the wall time comes near the slowest compile
instead of the sum. The calls then find every binary in the JIT cache.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from .validation import check_bool, check_positive_int, dtype_name

logger = logging.getLogger("pytest_ssd")

# Configurations warmed in this process: the kernels' caches are per process, so are we.
_WARMED: set = set()


@dataclass(frozen=True)
class WarmupResult:
    """What :func:`warmup_ssd_kernels` did: one description per call, wall seconds, number of calls."""

    warmed: list = field(default_factory=list)
    seconds: float = 0.0
    calls: int = 0


def warmup_ssd_kernels(
    layer,
    *,
    device: Optional[Union[str, torch.device]] = None,
    kernel: Optional[Callable] = None,
    with_z: Optional[bool] = None,
    max_num_tokens: Optional[int] = None,
) -> WarmupResult:
    """Run ``kernel`` (default: the bundled one) once with and once without initial states.

    ``layer`` is a :class:`pytest_ssd.layer.Mixer2Layer`: its local dims, chunk size, model dtype
    and SSM state dtype, A, dt_bias, D (of its shape), dt_softplus and dt_limit are exactly what
    inference passes. Inputs are random (randn, never zeros), two sequences: one a few tokens
    over a chunk boundary, one of a single token. ``with_z`` (default: ``layer.gated``) warms
    the gated output (vLLM's Mixer2 gates in its norm and passes ``z=None``).

    ``max_num_tokens`` (the engine's largest batch, e.g. vLLM's ``max_num_batched_tokens``)
    adds one call of that many tokens in one sequence. It compiles nothing new; it leaves the
    caching allocator holding a workspace of that size, so the first large request does not
    wait for a device allocation (about 0.5 ms for the anchors' 6565-token request on an H100,
    as much as the whole call). Without it, the first request larger than the warmup's pays it.

    A configuration already warmed in this process is skipped (``calls == 0``); the first
    warmup of each configuration logs one line on the ``pytest_ssd`` logger. Inside
    :func:`pytest_ssd.compile_only.compile_only` the same calls compile without executing.

    With the bundled kernel, where it compiles (CUDA tensors, or compile-only), the binaries of
    the two calls compile side by side first; should that fail, a warning is logged and the
    calls compile them one after another (raising what is really wrong, if anything is).
    """
    from .compile_only import active_target, compile_only_active
    from .kernels import mamba_chunk_scan_combined_varlen as bundled
    from .layer import Mixer2Layer, make_ssd_inputs

    if not isinstance(layer, Mixer2Layer):
        raise ValueError(f"layer: expected a pytest_ssd.layer.Mixer2Layer (make_mixer2_layer), got "
                         f"{type(layer).__name__}")
    if kernel is None:
        kernel = bundled
    elif not callable(kernel):
        raise ValueError(f"kernel: expected the SSD entry point (a callable), got {type(kernel).__name__}")
    device = torch.device(layer.device if device is None else device)
    with_z = layer.gated if with_z is None else with_z
    check_bool("with_z", with_z)
    if max_num_tokens is not None:
        check_positive_int("max_num_tokens", max_num_tokens)
    key = (getattr(kernel, "__module__", ""), getattr(kernel, "__qualname__", repr(kernel)), str(device),
           active_target(),  # compile-only binaries are not the real device's (nor another target's)
           layer.local_heads, layer.head_dim, layer.local_groups, layer.ssm_state_size, layer.chunk_size,
           layer.dtype, layer.state_dtype, tuple(layer.D.shape), layer.dt_softplus, tuple(layer.dt_limit),
           bool(with_z), max_num_tokens)
    if key in _WARMED:
        return WarmupResult()

    name = getattr(kernel, "__name__", repr(kernel))
    what = (f"{name}(H={layer.local_heads}, P={layer.head_dim}, G={layer.local_groups}, N={layer.ssm_state_size}, "
            f"chunk_size={layer.chunk_size}, x={dtype_name(layer.dtype)}, "
            f"states={dtype_name(layer.state_dtype)}, D={tuple(layer.D.shape)}, z={with_z}")
    calls = [([layer.chunk_size + 3, 1], False), ([layer.chunk_size + 3, 1], True)]
    if max_num_tokens is not None:
        calls.append(([max_num_tokens], False))
    params = {p: getattr(layer, p).to(device) for p in ("A", "D", "dt_bias")}  # the layer's own, on the device

    def call(inputs) -> None:
        kernel(out=torch.empty_like(inputs.x), **{**inputs.kernel_kwargs(layer), **params})

    warmed = []
    start = time.perf_counter()
    # Drawn once: the side-by-side compile below collects its launches from the same inputs.
    prepared = [make_ssd_inputs(layer, seqlens, seed=0, with_initial_states=with_initial_states, with_z=with_z,
                                device=device) for seqlens, with_initial_states in calls]
    if kernel is bundled and (device.type == "cuda" or compile_only_active()):
        try:  # the max_num_tokens call uses the first call's binaries (see pytest_ssd.kernels.combined)
            _compile_side_by_side(call, prepared[:2], device)
        except Exception as error:  # the calls below compile what is left, and raise what is real
            logger.warning("pytest-ssd: compiling the binaries of %s) side by side failed (%s: %s); the warmup "
                           "compiles them one call at a time", what, type(error).__name__, error)
    for (seqlens, with_initial_states), inputs in zip(calls, prepared):
        call(inputs)
        tokens = "" if len(calls) == 2 else f", {sum(seqlens)} tokens"
        warmed.append(f"{what}, HAS_INITSTATES={with_initial_states}{tokens})")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    _WARMED.add(key)
    logger.info("pytest-ssd: warmed %s in %.2f s (%d calls, HAS_INITSTATES False and True)",
                what + ")", seconds, len(warmed))
    return WarmupResult(warmed=warmed, seconds=seconds, calls=len(warmed))


def _compile_side_by_side(call: Callable[[object], None], prepared: Sequence[object], device: torch.device) -> None:
    """Compile every binary that ``call(inputs)`` of the bundled kernel launches for each of the
    ``prepared`` inputs (``make_ssd_inputs``), one thread per binary, up to one per usable CPU;
    launch nothing.

    The calls run once with their launches collected instead of launched
    (:func:`pytest_ssd.kernels.combined.collect_launches`); launches that pick one binary
    (:func:`pytest_ssd.triton_compat.binary_key`) compile once, with the very arguments the
    launch passes, so each thread fills the JIT cache entry the real call reads. Each thread
    compiles on the warmup's device: inside the compile-only block it joins, or with the
    CUDA device set (torch keeps the current device per thread). Compile hooks fire on the
    compiling thread, which the event recorder takes from any thread. Raises the first
    failure once every thread is done.
    """
    from .compile_only import compile_only_active, join_compile_only
    from .kernels.combined import collect_launches
    from .triton_compat import binary_key, precompile

    with collect_launches() as launches:
        for inputs in prepared:
            call(inputs)
    distinct: dict = {}
    for launch in launches:
        distinct.setdefault(binary_key(launch.kernel, launch.args, launch.constexprs), launch)
    if compile_only_active():
        on_device = join_compile_only
    else:
        on_device = functools.partial(torch.cuda.device, torch.cuda.current_device() if device.index is None
                                      else device.index)

    def compile_one(launch) -> None:
        with on_device():
            precompile(*launch)

    # Chunk scan, the last stage, takes longest to compile: with fewer CPUs than binaries it starts first.
    order = list(distinct.values())[::-1]
    with ThreadPoolExecutor(max_workers=min(len(order), _usable_cpus()),
                            thread_name_prefix="pytest-ssd-warmup") as pool:
        futures = [pool.submit(compile_one, launch) for launch in order]
    for future in futures:
        future.result()


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it), shared out among the
    pytest-xdist workers of its session (``PYTEST_XDIST_WORKER_COUNT``), which warm side by side."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    except ValueError:
        workers = 1
    return max(1, cpus // max(1, workers))
