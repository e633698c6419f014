"""The anchors' workload and the timers the GPU benchmarks share.

The workload: a Mamba2-2.7B-like layer (80 heads x 64, dstate 128, 1 group, chunk 256: the
suite's ``COVERAGE_LAYER``) with float32 SSM states; one request = 4 sequences of
1000/2048/517/3000 tokens (6565). A warmup that takes ``max_num_tokens`` gets 8192, the engine's
largest batch (vLLM's ``max_num_batched_tokens``).

Steady state is ``triton.testing.do_bench`` over calls that rotate through a few input sets
(each call includes the entry point's argument checks; do_bench flushes L2 between calls);
device time per kernel comes from ``torch.profiler``.
"""
from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence, Tuple

LAYER = dict(nheads=80, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256)
REQUEST = [1000, 2048, 517, 3000]
MAX_NUM_TOKENS = 8192


def gpu_layer(dtype, *, slow_decay: bool = False):
    """The anchors' layer in model ``dtype`` with float32 states, on the GPU (seed 0).

    ``slow_decay``: |A| drawn in [0.01, 0.11] instead of the layer's Mamba2 decay, so states carry
    across chunks (the accuracy checks' second case)."""
    import dataclasses

    import torch

    from pytest_ssd.layer import make_mixer2_layer

    layer = make_mixer2_layer(**LAYER, dtype=dtype, state_dtype=torch.float32, seed=0, device="cuda")
    if slow_decay:
        gen = torch.Generator().manual_seed(0)
        A = -(0.01 + 0.1 * torch.rand(layer.local_heads, generator=gen))
        layer = dataclasses.replace(layer, A=A.to(layer.A.device))
    return layer


def call_sets(layer, seqlens: Sequence[int], *, n: int, seed: int, with_initial_states: bool = False,
              device: Optional[str] = None) -> list:
    """``n`` ``(kwargs, out)`` pairs for the bundled entry point: randn inputs drawn from seeds
    ``seed`` .. ``seed + n - 1`` (``kernel_kwargs`` of ``make_ssd_inputs``), ``out`` an empty
    (T, H, P) buffer in the model dtype."""
    import torch

    from pytest_ssd.layer import make_ssd_inputs

    sets = []
    for i in range(n):
        inputs = make_ssd_inputs(layer, seqlens, seed=seed + i, with_initial_states=with_initial_states,
                                 device=device)
        sets.append((inputs.kernel_kwargs(layer), torch.empty_like(inputs.x)))
    return sets


def run_bundled(kwargs: dict, out) -> None:
    """One call of the bundled entry point on a ``(kwargs, out)`` pair of ``call_sets``."""
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen

    mamba_chunk_scan_combined_varlen(out=out, **kwargs)


def rotating(sets: Sequence[tuple], run: Callable[..., object] = run_bundled) -> Callable[[], None]:
    """A call that runs ``run(*pair)`` on the next pair of ``sets`` each time (cycling)."""
    pairs = itertools.cycle(sets)

    def call() -> None:
        run(*next(pairs))

    return call


def do_bench_ms(call: Callable[[], None], warmup: int = 100, rep: int = 500) -> Tuple[float, float, float]:
    """``triton.testing.do_bench`` of ``call``: (p20, median, p80) in ms over ``rep`` ms of calls,
    after ``warmup`` ms of untimed ones (CUDA events, L2 flushed between calls)."""
    import triton

    p20, median, p80 = triton.testing.do_bench(call, warmup=warmup, rep=rep, quantiles=[0.2, 0.5, 0.8])
    return p20, median, p80


def kernel_device_ms(call: Callable[[], None], reps: int = 10, trace: Optional[str] = None) -> dict:
    """Device time per kernel and call, ms: ``{kernel name: ms}`` from ``torch.profiler`` over
    ``reps`` calls, after one untimed call (a new launch config compiles outside the profile).
    ``trace``: also write the profiled calls as a Chrome trace (chrome://tracing, Perfetto)."""
    import torch

    call()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    if trace:
        prof.export_chrome_trace(trace)
    kernels = {}
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total and event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.key] = round(total / reps / 1e3, 4)
    return kernels


def warm_bundled(layer) -> None:
    """The bundled kernel's warmup as an engine runs it: with its largest batch
    (``max_num_tokens``), so the caching allocator already holds a large request's workspace
    (without it the first request after the warmup pays a fresh device allocation)."""
    from pytest_ssd.warmup import warmup_ssd_kernels

    warmup_ssd_kernels(layer, max_num_tokens=MAX_NUM_TOKENS)
