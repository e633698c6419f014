"""The bundled kernel's float32 models under each dot precision: time, accuracy, warmup.

    python benchmarks/fp32_precision.py RESULT.json [--precisions bf16x3,tf32x3,ieee,tf32] [--sweep]

Workload (the anchors'): a Mamba2-2.7B-like layer, 80 heads x 64, dstate 128, 1 group, chunk 256,
float32 model and states; one request = 4 sequences of 1000/2048/517/3000 tokens. Per precision
(``pytest_ssd.kernels.configs.FP32_DOT_PRECISIONS``), in a fresh process with an empty
``TRITON_CACHE_DIR``:

- warmup: ``warmup_ssd_kernels(layer)`` wall time, synchronized, cold (as bench_peers.py times it),
  and the binaries it compiled;
- steady: ``triton.testing.do_bench`` median over 4 rotating input sets, without and with
  initial states (as bench_kernel.py times it), and device time per kernel (torch.profiler);
- accuracy: ``out`` and the final states against the float64 reference
  (``pytest_ssd.reference.ssd_reference``) on the same inputs, for the layer as built (Mamba2's
  fast decay) and with slow decay (|A| in [0.01, 0.11]: states carry across chunks), each with
  initial states: the largest absolute error, the largest relative error where |reference| > atol,
  the largest share of the allowed error ``atol + rtol * |reference|`` used (<= 1 passes), and
  whether ``assert_ssd_close`` passes at the fp32 tolerance (``TOLERANCES[torch.float32]``).

``--sweep`` also times a few float32 launch configs of chunk_scan and chunk_state under the
default precision (per-kernel device time), to pick fp32 entries of ``kernels/configs.py``.
Without CUDA it prints why and writes ``{"skipped": ...}``: nothing to measure on a CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import harness
from workload import LAYER, REQUEST, call_sets, do_bench_ms, gpu_layer, kernel_device_ms, rotating


# --------------------------------------------------------------------------------------
# Child side: one precision in this process.
# --------------------------------------------------------------------------------------

def _layer(torch, slow_decay: bool = False):
    return gpu_layer(torch.float32, slow_decay=slow_decay)


def _call_sets(layer, with_init: bool, seed: int, n: int = 4) -> list:
    return call_sets(layer, REQUEST, n=n, seed=seed, with_initial_states=with_init, device="cuda")


def _steady_ms(sets: list) -> float:
    return round(do_bench_ms(rotating(sets))[1], 4)


def _errors(torch, name: str, got, ref, tol) -> dict:
    err = (got.double() - ref).abs()
    big = ref.abs() > tol.atol
    rel = (err[big] / ref.abs()[big]).max().item() if big.any() else 0.0
    used = (err / (tol.atol + tol.rtol * ref.abs())).max().item()
    return {f"{name}_max_abs": float(f"{err.max().item():.3g}"), f"{name}_max_rel": float(f"{rel:.3g}"),
            f"{name}_tolerance_used": float(f"{used:.3g}"), f"{name}_finite": bool(torch.isfinite(got).all())}


def _accuracy(torch, slow_decay: bool) -> dict:
    from pytest_ssd.adapters import poisoned_like
    from pytest_ssd.assertions import TOLERANCES, assert_ssd_close
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
    from pytest_ssd.layer import make_ssd_inputs
    from pytest_ssd.reference import ssd_reference

    layer = _layer(torch, slow_decay)
    inputs = make_ssd_inputs(layer, REQUEST, seed=9000, with_initial_states=True, device="cuda")
    out = poisoned_like(inputs.x)
    states = mamba_chunk_scan_combined_varlen(out=out, **inputs.kernel_kwargs(layer))
    ref_out, ref_states = ssd_reference(**inputs.reference_kwargs(layer), output_dtype=torch.float64)
    tol = TOLERANCES[torch.float32]
    result = {"decay": "slow (|A| in [0.01, 0.11])" if slow_decay else "Mamba2 (the layer's A)",
              **_errors(torch, "out", out, ref_out, tol), **_errors(torch, "states", states, ref_states, tol)}
    try:
        assert_ssd_close(out, states, ref_out, ref_states, dtype=torch.float32, seed=9000,
                         cu_seqlens=inputs.cu_seqlens)
        result["passes_fp32_tolerance"] = True
    except AssertionError as failure:
        result["passes_fp32_tolerance"] = False
        result["failure"] = str(failure)[:600]
    return result


def _sweep(torch) -> dict:
    """Per-kernel device time of a few float32 launch configs, the default first."""
    from pytest_ssd.kernels import configs
    from pytest_ssd.kernels.configs import LaunchConfig as C

    # The float32 defaults (kernels/configs.py) and their neighbours on the H200 (docs/kernel.md).
    candidates = {
        "chunk_scan": [None] + [C(dict(BLOCK_M=m, BLOCK_N=64, BLOCK_K=k, BLOCK_DSTATE=s), num_warps=w, num_stages=st,
                                  maxnreg=128)
                                for m, k, s, w, st in [(64, 32, 128, 4, 1), (64, 32, 64, 4, 1), (64, 32, 16, 4, 1),
                                                       (64, 16, 32, 4, 1), (64, 32, 32, 4, 2), (128, 32, 32, 8, 1)]],
        "chunk_state": [None] + [C(dict(BLOCK_M=64, BLOCK_N=n, BLOCK_K=k), num_warps=w, num_stages=st)
                                 for n, k, w, st in [(128, 32, 4, 3), (128, 16, 4, 4), (64, 16, 4, 3),
                                                     (128, 16, 4, 2)]],
    }
    kernel_names = {"chunk_scan": "_chunk_scan_kernel", "chunk_state": "_chunk_state_kernel"}
    sets = _call_sets(_layer(torch), False, seed=4000, n=1)
    rows = []
    for stage, configs_of_stage in candidates.items():
        for config in configs_of_stage:
            override = configs.overridden(stage, config) if config is not None else contextlib.nullcontext()
            with override:
                ms = kernel_device_ms(rotating(sets)).get(kernel_names[stage])
            rows.append({"stage": stage, "config": "default" if config is None else
                         {"blocks": config.blocks, "num_warps": config.num_warps, "num_stages": config.num_stages},
                         "device_ms": ms})
    return {"sweep": rows}


def run_child(precision: str, sweep: bool) -> dict:
    import torch
    import triton

    from pytest_ssd.events import record_triton
    from pytest_ssd.kernels import configs
    from pytest_ssd.warmup import warmup_ssd_kernels

    with configs.fp32_dot_precision_set(precision):
        layer = _layer(torch)
        steady_sets = {init: _call_sets(layer, init, seed=2000 + 10 * init) for init in (False, True)}
        torch.cuda.synchronize()
        with record_triton() as rec:
            start = time.perf_counter()
            warmup_ssd_kernels(layer)
            torch.cuda.synchronize()
            warmup_s = time.perf_counter() - start
        result = {"precision": precision, "warmup_s": round(warmup_s, 2), "warmup_binaries": len(rec.binaries()),
                  "steady_ms": _steady_ms(steady_sets[False]),
                  "steady_initial_states_ms": _steady_ms(steady_sets[True]),
                  "kernels_ms_per_call": kernel_device_ms(rotating(steady_sets[False][:1]))}
        del steady_sets
        result["accuracy"] = [_accuracy(torch, slow) for slow in (False, True)]
        if sweep:
            result.update(_sweep(torch))
    result.update(torch=torch.__version__, triton=triton.__version__, gpu=torch.cuda.get_device_name())
    return result


# --------------------------------------------------------------------------------------
# Parent side: one fresh process per precision, a table, the JSON.
# --------------------------------------------------------------------------------------

def _row(r: dict) -> str:
    if "failed" in r:
        return f"{r['precision']:7} FAILED: {r['failed']}"
    acc = " | ".join(f"{'pass' if a['passes_fp32_tolerance'] else 'FAIL'} out {a['out_max_abs']:.2g} "
                     f"states {a['states_max_abs']:.2g} "
                     f"(tol used {max(a['out_tolerance_used'], a['states_tolerance_used']):.2g})"
                     for a in r["accuracy"])
    return (f"{r['precision']:7} {r['steady_ms']:8.3f} {r['steady_initial_states_ms']:8.3f} {r['warmup_s']:7.1f} "
            f"{r['warmup_binaries']:4d}   {acc}")


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("result", help="where to write the JSON")
    parser.add_argument("--precisions", default="bf16x3,tf32x3,ieee,tf32")
    parser.add_argument("--sweep", action="store_true", help="also time fp32 launch configs (default precision)")
    parser.add_argument("--timeout", type=int, default=150, help="seconds per child process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        harness.send_to_parent(run_child(args.child, args.sweep))
        return
    if harness.skip_without_cuda(args.result, "this benchmark measures the compiled kernel on a GPU"):
        return
    from pytest_ssd.kernels import configs

    precisions = args.precisions.split(",")
    unknown = [p for p in precisions if p not in configs.FP32_DOT_PRECISIONS]
    if unknown:
        parser.error(f"--precisions: expected names from {configs.FP32_DOT_PRECISIONS}, got {unknown}")
    default = configs.fp32_dot_precision()
    print(f"{'dots':7} {'steady':>8} {'w/ init':>8} {'warmup':>7} {'bins':>4}   accuracy (Mamba2 decay | slow decay), "
          f"ms / s; default precision: {default}", flush=True)
    rows, failed = [], 0
    for precision in precisions:
        command = [args.result, "--child", precision] + (["--sweep"] if args.sweep and precision == default else [])
        try:
            rows.append(harness.run_fresh(__file__, command, timeout=args.timeout))
        except harness.ChildFailed as failure:
            failed += 1
            rows.append({"precision": precision, "failed": f"{failure.reason}\n{failure.last_lines(5)}"})
        print(_row(rows[-1]), flush=True)
        for line in rows[-1].get("sweep", []):
            print(f"   sweep {line['stage']:11} {line['device_ms']} ms  {line['config']}", flush=True)
    harness.write_result(args.result, {"layer": LAYER, "request": REQUEST, "model_dtype": "float32",
                                       "state_dtype": "float32", "default_precision": default, "rows": rows})
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
