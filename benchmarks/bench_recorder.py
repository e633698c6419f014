"""Two checks of the event recorder that need a GPU (run through the device tool).

1. Launch overhead: a warm Triton kernel launched many times with and without
   ``record_triton()`` active; the recorder must keep >= 98% of the launch rate (it adds nothing
   to a warm launch: hooks fire only on misses).
2. Compile-only prediction: our warmup plus the coverage workload, recorded in a fresh process
   on the GPU and in a fresh process in compile-only mode for cuda:90; the sets of binary and
   autotune-key identities must be equal.

    python benchmarks/bench_recorder.py OUT.json [--timeout S]

Without CUDA it prints why and writes ``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import harness


def launch_overhead(rounds: int = 7, launches: int = 20000) -> dict:
    import torch
    import triton
    import triton.language as tl

    from pytest_ssd.events import record_triton

    @triton.jit
    def add_one(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1, mask=offs < n)

    x = torch.randn(1024, device="cuda")

    def burst() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(launches):
            add_one[(1,)](x, 1024, BLOCK=1024)
        torch.cuda.synchronize()
        return launches / (time.perf_counter() - start)

    burst()  # compile outside the timing
    without, with_rec = [], []
    for _ in range(rounds):  # interleaved, so clock drift hits both alike
        without.append(burst())
        with record_triton() as rec:
            with_rec.append(burst())
        assert not rec.events, "a warm kernel must not produce events"
    rate_without, rate_with = statistics.median(without), statistics.median(with_rec)
    return {"launches_per_round": launches, "rounds": rounds,
            "rate_without_per_s": round(rate_without), "rate_with_per_s": round(rate_with),
            "ratio": round(rate_with / rate_without, 4), "spread_without": [round(min(without)), round(max(without))],
            "spread_with": [round(min(with_rec)), round(max(with_rec))]}


def record_workload(mode: str) -> dict:
    """In this (fresh) process: warmup + coverage workload on the GPU or in compile-only mode."""
    import contextlib

    import torch

    from pytest_ssd.compile_only import compile_only
    from pytest_ssd.events import record_triton
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
    from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
    from pytest_ssd.suite.cases import COVERAGE_LAYER, COVERAGE_REQUESTS
    from pytest_ssd.warmup import warmup_ssd_kernels

    device = "cuda" if mode == "gpu" else "cpu"
    ctx = compile_only("cuda:90") if mode == "compile-only" else contextlib.nullcontext()
    with ctx:
        layer = make_mixer2_layer(**COVERAGE_LAYER, dtype=torch.bfloat16, state_dtype=torch.float32, seed=1,
                                  device=device)
        with record_triton() as warm:
            warmup_ssd_kernels(layer)
        with record_triton() as work:
            for i, seqlens in enumerate(COVERAGE_REQUESTS):
                for init in (False, True):
                    inputs = make_ssd_inputs(layer, seqlens, seed=100 + i, with_initial_states=init)
                    out = torch.empty_like(inputs.x)
                    mamba_chunk_scan_combined_varlen(out=out, **inputs.kernel_kwargs(layer))
        if device == "cuda":
            torch.cuda.synchronize()
    return {"mode": mode,
            "warmup_binaries": sorted(warm.binaries()), "warmup_autotune_keys": sorted(warm.autotune_keys()),
            "workload_events": [e.describe() for e in work.events],
            "describe": {k: e.describe() for k, e in {**warm.binaries(), **warm.autotune_keys()}.items()}}


def prediction(timeout: int) -> dict:
    """The warmup's binaries and autotune keys on the GPU and compile-only, a fresh process each."""
    results = {}
    for mode in ("gpu", "compile-only"):
        try:
            results[mode] = harness.run_fresh(__file__, ["--child", mode], timeout=timeout)
        except harness.ChildFailed as failure:
            sys.exit(f"the {mode} child failed: {failure.reason}\n{failure.output}")
    gpu, cpu = results["gpu"], results["compile-only"]
    only_gpu = sorted(set(gpu["warmup_binaries"] + gpu["warmup_autotune_keys"])
                      - set(cpu["warmup_binaries"] + cpu["warmup_autotune_keys"]))
    only_cpu = sorted(set(cpu["warmup_binaries"] + cpu["warmup_autotune_keys"])
                      - set(gpu["warmup_binaries"] + gpu["warmup_autotune_keys"]))
    return {"gpu_binaries": len(gpu["warmup_binaries"]), "compile_only_binaries": len(cpu["warmup_binaries"]),
            "gpu_autotune_keys": len(gpu["warmup_autotune_keys"]),
            "compile_only_autotune_keys": len(cpu["warmup_autotune_keys"]),
            "identical": not only_gpu and not only_cpu,
            "only_on_gpu": [gpu["describe"][k] for k in only_gpu],
            "only_in_compile_only": [cpu["describe"][k] for k in only_cpu],
            "gpu_workload_events": gpu["workload_events"], "compile_only_workload_events": cpu["workload_events"]}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("out", nargs="?", help="write the JSON result here")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per child process")
    parser.add_argument("--child", choices=("gpu", "compile-only"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        harness.send_to_parent(record_workload(args.child))
        return
    if harness.skip_without_cuda(args.out, "the launch overhead and the GPU's binaries need one"):
        return
    result = harness.write_result(args.out, {"launch_overhead": launch_overhead(),
                                             "compile_only_prediction": prediction(args.timeout)})
    print(json.dumps(result, indent=2))
    lo, pr = result["launch_overhead"], result["compile_only_prediction"]
    print(f"\nlaunch rate with recorder / without: {lo['ratio']:.4f} (target >= 0.98)")
    print(f"compile-only prediction == GPU binaries: {pr['identical']} "
          f"({pr['gpu_binaries']} GPU / {pr['compile_only_binaries']} compile-only binaries); "
          f"workload events GPU {len(pr['gpu_workload_events'])}, compile-only {len(pr['compile_only_workload_events'])}")
    if lo["ratio"] < 0.98 or not pr["identical"]:
        sys.exit("a recorder target was missed (see above)")


if __name__ == "__main__":
    main()
