"""Record what a workload needs from a cold start: a fresh process, compile-only mode.

Unused warm binaries are only knowable against a recording that saw *everything* a workload
needs, i.e. one taken with empty in-memory caches. This runs the workload (no warmup) in a new
Python process under :func:`pytest_ssd.compile_only.compile_only`, with a Triton cache dir of
its own, and returns its :class:`~pytest_ssd.events.Recording`. Compile-only predicts the GPU's
binaries (identical sets on an H100, see BENCHMARKS.md), so this works from a GPU session too,
for the target of that GPU.

    python -m pytest_ssd.cold_workload '{"kernel": ..., "api": ..., "layer": {...}, "requests": [...], "target": ...}'
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional, Sequence

from .events import Recording

_DTYPES = ("float32", "float16", "bfloat16")


def spec_for(kernel_spec: str, api: str, layer_kwargs: dict, requests: Sequence[Sequence[int]],
             target: str) -> dict:
    """A JSON-able description of the workload: the kernel, the layer config, the request shapes.

    Each request runs without and with initial states, as the suite's coverage test does.
    """
    from .validation import dtype_name

    layer = {k: (dtype_name(v) if k in ("dtype", "state_dtype") else v)
             for k, v in layer_kwargs.items() if k != "device"}
    return {"kernel": kernel_spec, "api": api, "layer": layer, "requests": [list(r) for r in requests],
            "target": target}


def record_cold(spec: dict, timeout: float = 600.0) -> Recording:
    """Run ``spec`` in a fresh process; returns what it compiled and autotuned. RuntimeError on failure.

    Cold means cold in memory: the process shares this one's Triton cache dir, so binaries come
    from disk where they can (a disk hit is recorded like a compile, with the same identity),
    which saves most of the compile time. It never reads or writes persisted autotune results:
    its fake benchmarker's timings must not reach anyone's cache.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    for name in ("TRITON_INTERPRET", "TRITON_CACHE_AUTOTUNING"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "pytest_ssd.cold_workload", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"cold workload recording failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return Recording.from_dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _run(spec: dict) -> Recording:
    import torch

    from .adapters import SSDKernel, poisoned_like
    from .compile_only import compile_only
    from .events import record_triton
    from .layer import make_mixer2_layer, make_ssd_inputs
    from .options import load_callable

    layer_kwargs = dict(spec["layer"])
    for key in ("dtype", "state_dtype"):
        if layer_kwargs.get(key) not in _DTYPES:
            raise ValueError(f"{key}: expected one of {_DTYPES}, got {layer_kwargs.get(key)!r}")
        layer_kwargs[key] = getattr(torch, layer_kwargs[key])
    if "dt_limit" in layer_kwargs:
        layer_kwargs["dt_limit"] = tuple(layer_kwargs["dt_limit"])
    kernel = SSDKernel(fn=load_callable(spec["kernel"], "kernel"), api=spec["api"], name=spec["kernel"])
    with compile_only(spec["target"]):
        layer = make_mixer2_layer(**layer_kwargs, seed=0, device="cpu")
        with record_triton() as rec:
            for i, seqlens in enumerate(spec["requests"]):
                for init in (False, True):
                    inputs = make_ssd_inputs(layer, seqlens, seed=i, with_initial_states=init)
                    kernel.run(layer, inputs, poisoned_like(inputs.x))
    return rec


def main(argv: Optional[list] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(_run(json.loads(argv[0])).to_dict()))


if __name__ == "__main__":
    main()
