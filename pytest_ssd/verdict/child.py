"""What runs in a verdict's fresh process: ``python -m pytest_ssd.verdict judge|cold SPEC``.

``judge``: import the kernel, run the warmup, then every workload call, one recording each.
``cold``: the workload alone, in compile-only mode, so the recording holds everything it needs
from a cold start. Either prints one JSON result on stdout's last line for
:func:`pytest_ssd.verdict.judge`, in the parent process, to read.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Optional, Sequence

from ..events import Recording
from .fresh_process import WorkloadSpec


def _layer(spec: WorkloadSpec, device: str):
    import torch

    from ..layer import make_mixer2_layer

    kwargs = dict(spec.layer)
    for key in ("dtype", "state_dtype"):
        if key in kwargs:
            kwargs[key] = getattr(torch, kwargs[key])
    if "dt_limit" in kwargs:
        kwargs["dt_limit"] = tuple(kwargs["dt_limit"])
    return make_mixer2_layer(**kwargs, seed=spec.seed, device=device)


def _workload_calls(spec: WorkloadSpec, layer, record: bool) -> list[dict]:
    """Every request, without and with initial states, in every variant; one recording each."""
    import torch

    from ..adapters import SSDKernel
    from ..events import record_triton
    from ..layer import make_ssd_inputs
    from ..options import load_callable
    from ..triton_compat import jit_dispatch

    kernel = SSDKernel(fn=load_callable(spec.kernel, "kernel"), api=spec.api, name=spec.kernel)
    workload = load_callable(spec.workload, "workload") if spec.workload else None
    variants = ("workload",) if workload else spec.variants
    calls = []
    for i, seqlens in enumerate(spec.requests):
        for init in (False, True):
            inputs = make_ssd_inputs(layer, list(seqlens), seed=spec.seed + 1 + i, with_initial_states=init)
            for variant in variants:
                # Through Triton's JIT on every launch: what Triton would compile for this call.
                with (record_triton() if record else contextlib.nullcontext(Recording())) as rec, jit_dispatch():
                    if workload:
                        workload(layer, inputs)
                    else:
                        kernel.run(layer, inputs, variant=variant)
                    if layer.device.type == "cuda":
                        torch.cuda.synchronize()
                calls.append({"seqlens": list(seqlens), "initial_states": init, "variant": variant,
                              "recording": rec.to_dict()})
    return calls


def _judge_here(spec: WorkloadSpec) -> dict:
    import torch

    from ..compile_only import compile_only
    from ..events import record_triton
    from ..options import load_callable
    from ..triton_compat import triton_version

    mode = compile_only(spec.target) if spec.device == "cpu" else contextlib.nullcontext()
    with mode:
        warmup = load_callable(spec.warmup, "warmup")
        layer = _layer(spec, spec.device)
        with record_triton() as warm:
            start = time.perf_counter()
            warmup(layer)
            if spec.device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        calls = _workload_calls(spec, layer, record=True)
    return {"warmup": warm.to_dict(), "warmup_seconds": seconds, "calls": calls, "triton": triton_version()}


def _cold_here(spec: WorkloadSpec) -> dict:
    from ..compile_only import compile_only
    from ..events import record_triton

    with compile_only(spec.target), record_triton() as rec:
        _workload_calls(spec, _layer(spec, "cpu"), record=False)
    return {"workload": rec.to_dict()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 2 or argv[0] not in ("judge", "cold"):
        raise SystemExit("usage: python -m pytest_ssd.verdict judge|cold '<WorkloadSpec JSON>'")
    spec = WorkloadSpec.from_json(argv[1])
    result = _judge_here(spec) if argv[0] == "judge" else _cold_here(spec)
    print(json.dumps(result))
