"""Warm the SSD kernels of a layer at load time, so no request compiles or autotunes.

vLLM's warmup (PR #39822) runs one chunk of random input through both ``HAS_INITSTATES``
branches in the inference dtypes. That covers the autotune keys, but not Triton's
specializations: an integer argument that is 1, divisible by 16 or neither, and a pointer that
is 16-byte aligned or not, each select another binary, so a 6565-token request still compiled
one. The bundled kernel takes no request-dependent integer and only aligned pointers (see
:mod:`pytest_ssd.kernels.combined`), so here one small call per ``HAS_INITSTATES`` value
compiles every binary any later batch of the layer uses: any token count, any mix of sequence
lengths, with or without initial states.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

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
    """
    from .compile_only import active_target
    from .layer import Mixer2Layer, make_ssd_inputs

    if not isinstance(layer, Mixer2Layer):
        raise ValueError(f"layer: expected a pytest_ssd.layer.Mixer2Layer (make_mixer2_layer), got "
                         f"{type(layer).__name__}")
    if kernel is None:
        from .kernels import mamba_chunk_scan_combined_varlen as kernel
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
    warmed = []
    start = time.perf_counter()
    for seqlens, with_initial_states in calls:
        inputs = make_ssd_inputs(layer, seqlens, seed=0, with_initial_states=with_initial_states, with_z=with_z,
                                 device=device)
        kernel(out=torch.empty_like(inputs.x), **{**inputs.kernel_kwargs(layer), **params})
        tokens = "" if len(calls) == 2 else f", {sum(seqlens)} tokens"
        warmed.append(f"{what}, HAS_INITSTATES={with_initial_states}{tokens})")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    _WARMED.add(key)
    logger.info("pytest-ssd: warmed %s in %.2f s (%d calls, HAS_INITSTATES False and True)",
                what + ")", seconds, len(warmed))
    return WarmupResult(warmed=warmed, seconds=seconds, calls=len(warmed))
