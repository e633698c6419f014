"""Benchmark the bundled SSD kernel: steady state, first request after warmup, warmup cost.

    python benchmarks/bench_kernel.py RESULT.json [--scenarios cold,disk_cache,no_warmup,rerun] [--repeat N] [--sweep]
    python benchmarks/bench_kernel.py RESULT.json --baseline SAVED.json [--tolerance 0.10]   # the regression guard
    python benchmarks/bench_kernel.py --check-only NOW.json --baseline SAVED.json             # two saved runs
    python benchmarks/bench_kernel.py RESULT.json --scenarios cold --trace TRACE.json         # profiling
    nsys profile python benchmarks/bench_kernel.py --profile-calls 50                          # profiling

Workload (the anchors'): a Mamba2-2.7B-like layer, 80 heads x 64, dstate 128, 1 group, chunk 256,
bf16 inputs, fp32 states; one request = 4 sequences of 1000/2048/517/3000 tokens. Without CUDA a
tiny layer runs under the interpreter (a smoke test of this script, not a measurement).

Each scenario runs in a fresh subprocess:

- ``cold``: empty TRITON_CACHE_DIR. Warmup (seconds, compiles; ``max_num_tokens=8192``), the
  first request without and with initial states (wall ms, compiles, autotune benchmarks), then
  the steady state.
- ``disk_cache``: a new process on ``cold``'s cache dir (every scenario runs with
  TRITON_CACHE_AUTOTUNING=1): the warmup loads binaries from disk (each still an in-memory JIT miss, counted), then the same.
- ``no_warmup``: empty cache dir, the first request with no warmup at all (for comparison).
- ``rerun``: empty cache dir, warmup and steady state again: the run-to-run spread.

Steady state is the median of ``triton.testing.do_bench`` over calls that rotate through 4 input
sets (each call includes the argument checks; metadata comes from ``chunk_metadata``), with
do_bench's L2 flush between calls (which also hides each call's host time). First request wall time is host time around one
call, synchronized before and after, its inputs drawn before the warmup so that it follows
the warmup at once; "first / do_bench" is the target's ratio. Warm calls timed like the first
request: "1 call" (median of 40) and "idle" (after 0.25 s of GPU idle each); the matmul
control times a bf16 5120^3 product the same two ways, so what an idle GPU costs any kernel
is on the same line. "loop" times calls issued back to back with CUDA events (rotating
inputs, no cache flush): a serving loop's view.
``--sweep`` times candidate launch configs per stage (one process) to pick ``kernels/configs.py``.

Profiling: ``--trace TRACE.json`` writes the Chrome trace (chrome://tracing, Perfetto) of the
20 warm calls ``cold`` profiles for its per-kernel device times (first round only).
``--profile-calls N`` measures nothing: in this process, the warmup then N calls on the
workload, for an external profiler (``nsys profile``, ``ncu --kernel-name regex:_chunk``).

``--baseline SAVED.json``: the regression guard. Per warmed scenario (``cold``, ``disk_cache``,
``rerun``; the median over ``--repeat`` rounds) the warmup s and JIT misses, the first request
ms, its ratio to the do_bench steady state, its compiles and autotune benchmarks, and the
steady ms are compared with the saved run's; a rise of more than ``--tolerance`` (default 10%),
a baseline from another device or a scenario the baseline has and this run lacks fails the run
(benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import harness
import regression_guard
from workload import LAYER, MAX_NUM_TOKENS, REQUEST, call_sets, do_bench_ms, kernel_device_ms, rotating

SMOKE_LAYER = dict(nheads=4, head_dim=16, n_groups=1, ssm_state_size=16, chunk_size=16)
SMOKE_REQUEST = [10, 33, 1]
SCENARIOS = ("cold", "disk_cache", "no_warmup", "rerun")
WARMED = ("cold", "disk_cache", "rerun")  # the scenarios with a warmup: the regression guard's entries


# --------------------------------------------------------------------------------------
# Child side: one scenario in this process.
# --------------------------------------------------------------------------------------

def _setup():
    import torch

    from pytest_ssd.layer import make_mixer2_layer

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dims = LAYER if cuda else SMOKE_LAYER
    layer = make_mixer2_layer(**dims, dtype=torch.bfloat16 if cuda else torch.float32,
                              state_dtype=torch.float32, seed=0, device=device)
    return torch, layer, device, (REQUEST if cuda else SMOKE_REQUEST)


def _sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(layer, request, device, with_init, n_sets=1, seed=0):
    return call_sets(layer, request, n=n_sets, seed=seed, with_initial_states=with_init, device=device)


def _first_request(torch, device, prepared, since: float):
    """``prepared``: ``(kwargs, out)`` drawn before the warmup, so the request follows it at once;
    ``since``: when the GPU's last work (the warmup, the request before) was synchronized.

    Between the two only what the measurement needs runs (the recorder's hooks, one free-memory
    query): an idle GPU slows any kernel down (the matmul control), and this figure is meant to
    show what is cold, not what is idle.
    """
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen

    from pytest_ssd.events import record_triton

    kwargs, out = prepared
    free_before = _free_device_memory(torch, device)
    with record_triton() as rec:
        _sync(torch, device)
        start = time.perf_counter()
        mamba_chunk_scan_combined_varlen(out=out, **kwargs)
        _sync(torch, device)
        ms = (time.perf_counter() - start) * 1e3
    idle_ms = round((start - since) * 1e3, 2)
    taken_mb = (free_before - _free_device_memory(torch, device)) / 2**20
    start = time.perf_counter()
    mamba_chunk_scan_combined_varlen(out=out, **kwargs)
    _sync(torch, device)
    second_ms = (time.perf_counter() - start) * 1e3
    return {"wall_ms": round(ms, 3), "gpu_idle_before_ms": idle_ms, "compiles": len(rec.compiles),
            "compiled": [e.describe() for e in rec.compiles], "autotune_benchmarks": len(rec.autotunes),
            "new_device_memory_mb": round(taken_mb, 1), "second_call_wall_ms": round(second_ms, 3)}


def _free_device_memory(torch, device) -> int:
    """Free device memory in bytes (one driver query): the caching allocator taking new memory
    from the driver during a request shows up as a drop. 0 on CPU."""
    return torch.cuda.mem_get_info()[0] if device == "cuda" else 0


def _steady(layer, request, device, with_init):
    call = rotating(_inputs(layer, request, device, with_init, n_sets=4, seed=2000))
    if device != "cuda":
        call()
        start = time.perf_counter()
        call()
        return {"median_ms": round((time.perf_counter() - start) * 1e3, 3), "timer": "host (smoke test)"}
    ms = do_bench_ms(call)
    return {"median_ms": round(ms[1], 4), "p20_ms": round(ms[0], 4), "p80_ms": round(ms[2], 4),
            "timer": "triton.testing.do_bench (CUDA events), 4 rotating input sets"}


def _loop(torch, layer, request, device, with_init) -> dict:
    """Per-call time of calls issued back to back (a serving loop): CUDA events around 40 calls
    rotating 4 input sets (no cache flush in between, unlike do_bench); median of 10 loops."""
    if device != "cuda":
        return {}
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen

    sets = _inputs(layer, request, device, with_init, n_sets=4, seed=7000)
    per_call = []
    for rep in range(11):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(40):
            kwargs, out = sets[i % len(sets)]
            mamba_chunk_scan_combined_varlen(out=out, **kwargs)
        end.record()
        torch.cuda.synchronize()
        if rep:  # the first loop warms up
            per_call.append(start.elapsed_time(end) / 40)
    return {"median_ms": round(statistics.median(per_call), 4), "min_ms": round(min(per_call), 4),
            "max_ms": round(max(per_call), 4),
            "timer": "CUDA events around 40 back-to-back calls, 4 rotating input sets, median of 10"}


def _isolated(torch, layer, request, device, with_init, n: int, idle_s: float = 0.0) -> dict:
    """Wall time of single warm calls measured like the first request: synchronize, call, synchronize.

    ``idle_s`` > 0 sleeps before each call, as a request arriving at an idle GPU would find it
    (clocks down): the fair comparison for the first request after a warmup.
    """
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen

    sets = _inputs(layer, request, device, with_init, n_sets=4, seed=6000)
    times = []
    for i in range(n):
        kwargs, out = sets[i % len(sets)]
        if idle_s:
            time.sleep(idle_s)
        _sync(torch, device)
        start = time.perf_counter()
        mamba_chunk_scan_combined_varlen(out=out, **kwargs)
        _sync(torch, device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
            "max_ms": round(max(times), 4), "n": n, "idle_s_before_each": idle_s}


def _per_kernel(torch, layer, request, device, trace=None):
    """Device time per kernel (torch.profiler; ``trace``: also a Chrome trace of the profiled
    calls), and the host cost of the metadata check."""
    if device != "cuda":
        return {}
    from pytest_ssd.chunking import METADATA_NAMES
    from pytest_ssd.kernels import combined

    sets = _inputs(layer, request, device, False, seed=3000)
    kernels = kernel_device_ms(rotating(sets), reps=20, trace=trace)
    kwargs = sets[0][0]
    meta = [kwargs[k] for k in METADATA_NAMES]
    T, S, C = kwargs["x"].shape[0], meta[0].numel() - 1, meta[2].numel()
    torch.cuda.synchronize()
    start = time.perf_counter()
    n = 200
    for _ in range(n):  # what a call with metadata not from chunk_metadata does once: copy back, check, seal
        combined._check_metadata(tuple(meta), S, C, layer.chunk_size, T, meta[0].device)
    check_ms = (time.perf_counter() - start) * 1e3 / n
    return {"kernels_ms_per_call": kernels, "foreign_metadata_check_ms": round(check_ms, 4)}


def _matmul_control(torch, device) -> dict:
    """A bf16 5120^3 matrix product (about the kernel's device time) timed like a request: after
    the GPU sat idle 0.25 s, and back to back. What the device's idle state costs any kernel."""
    if device != "cuda":
        return {}
    a, b = (torch.randn(5120, 5120, device=device, dtype=torch.bfloat16) for _ in range(2))
    torch.mm(a, b)

    def one(idle_s):
        time.sleep(idle_s)
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    idle = statistics.median(one(0.25) for _ in range(8))
    busy = statistics.median(one(0.0) for _ in range(40))
    return {"after_idle_ms": round(idle, 4), "back_to_back_ms": round(busy, 4), "ratio": round(idle / busy, 3),
            "timer": "host wall clock around a synchronized torch.mm"}


def run_scenario(name: str, trace=None) -> dict:
    torch, layer, device, request = _setup()
    from pytest_ssd.events import record_triton
    from pytest_ssd.warmup import warmup_ssd_kernels

    # Drawn before the warmup: the first request follows it at once, as in a server that
    # starts taking requests when its warmup returns (drawing takes seconds of CPU time, in
    # which an idle GPU drops its clocks: the idle figures below and the matmul control show
    # what that costs).
    prepared = {init: _inputs(layer, request, device, init, seed=1000 + init)[0] for init in (False, True)}
    _sync(torch, device)

    result = {"scenario": name, "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR"),
              "triton_cache_autotuning": os.environ.get("TRITON_CACHE_AUTOTUNING")}
    since = time.perf_counter()  # the GPU's last work was synchronized just above
    if name != "no_warmup":
        with record_triton() as rec:
            warm = warmup_ssd_kernels(layer, max_num_tokens=MAX_NUM_TOKENS if device == "cuda" else None)
            since = time.perf_counter()  # the warmup synchronizes before it returns
    result["first_request"] = _first_request(torch, device, prepared[False], since)
    result["first_request_initial_states"] = _first_request(torch, device, prepared[True], time.perf_counter())
    if name != "no_warmup":  # summarized after the first requests: none of it between warmup and request
        sources = [e.source for e in rec.compiles]
        result["warmup"] = {"seconds": round(warm.seconds, 3), "calls": warm.calls, "jit_misses": len(rec.compiles),
                            "compiled_fresh": sources.count("compiled"), "from_disk": sources.count("disk"),
                            "autotune_benchmarks": len(rec.autotunes), "summary": rec.summary(),
                            "warmed": warm.warmed}
    result["steady"] = _steady(layer, request, device, with_init=False)
    result["steady_initial_states"] = _steady(layer, request, device, with_init=True)
    result["loop"] = _loop(torch, layer, request, device, with_init=False)
    result["loop_initial_states"] = _loop(torch, layer, request, device, with_init=True)
    result["isolated"] = _isolated(torch, layer, request, device, with_init=False, n=40)
    result["isolated_after_idle"] = _isolated(torch, layer, request, device, with_init=False, n=8, idle_s=0.25)
    result["isolated_initial_states"] = _isolated(torch, layer, request, device, with_init=True, n=40)
    result["matmul_control"] = _matmul_control(torch, device)
    if name == "cold":
        result.update(_per_kernel(torch, layer, request, device, trace))
    return result


def run_calls(n: int) -> None:
    """Warmup, then ``n`` calls on the workload: something for an external profiler to attach to."""
    torch, layer, device, request = _setup()
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
    from pytest_ssd.warmup import warmup_ssd_kernels

    warmup_ssd_kernels(layer)
    (kwargs, out), = _inputs(layer, request, device, False, seed=5000)
    for _ in range(n):
        mamba_chunk_scan_combined_varlen(out=out, **kwargs)
    _sync(torch, device)


# --------------------------------------------------------------------------------------
# Config sweep (one process): candidate launch configs per stage, on the workload.
# --------------------------------------------------------------------------------------

def _candidates():
    """Launch configs to time per stage; the first of each is the default in kernels/configs.py.

    The grid the defaults were picked from (H100, the workload above, per-kernel device time):
    chunk_scan BLOCK_M 32/64/128, BLOCK_K 16/32/64, BLOCK_DSTATE 32/64/128, 2-8 warps, 1-3 stages;
    chunk_state BLOCK_N 64/128, BLOCK_K 16-128, 4/8 warps, 2-4 stages; bmm and state passing
    barely move (5.5 us, 51 us at the DRAM roofline). Below: the winners and their neighbours
    (the same picks won on an H200, 2026-12-01; float32 has its own, see fp32_precision.py --sweep;
    chunk_scan's register cap of 128 came from kernel_variants.py on an H200, 2026-12-02).
    """
    from pytest_ssd.kernels.configs import LaunchConfig as C

    return {
        "chunk_scan": [C(dict(BLOCK_M=m, BLOCK_N=64, BLOCK_K=k, BLOCK_DSTATE=s), num_warps=w, num_stages=st, maxnreg=r)
                       for m, k, s, w, st, r in [(64, 32, 128, 4, 1, 128), (64, 32, 128, 4, 1, None),
                                                 (64, 32, 64, 4, 1, 128), (64, 16, 128, 4, 1, 128),
                                                 (64, 32, 128, 4, 2, 128), (64, 64, 64, 4, 1, 128),
                                                 (32, 32, 64, 2, 1, None), (128, 32, 64, 8, 1, None)]],
        "chunk_state": [C(dict(BLOCK_M=64, BLOCK_N=n, BLOCK_K=k), num_warps=4, num_stages=st)
                        for n, k, st in [(128, 32, 3), (128, 16, 3), (64, 32, 3), (128, 32, 4), (128, 64, 2)]],
        "bmm_chunk": [C(dict(BLOCK_M=m, BLOCK_N=64, BLOCK_K=64), num_warps=4, num_stages=2) for m in (64, 128)],
        "state_passing": [C(dict(BLOCK=b), num_warps=w, num_stages=1) for b, w in [(1024, 4), (2048, 8)]],
    }


KERNEL_OF_STAGE = {"chunk_scan": "_chunk_scan_kernel", "chunk_state": "_chunk_state_kernel",
                   "bmm_chunk": "_bmm_chunk_kernel", "state_passing": "_state_passing_kernel"}


def run_sweep() -> dict:
    torch, layer, device, request = _setup()
    from pytest_ssd.kernels import configs, mamba_chunk_scan_combined_varlen

    sets = _inputs(layer, request, device, False, n_sets=4, seed=4000)
    call = rotating(sets)
    kwargs0, out0 = sets[0]
    mamba_chunk_scan_combined_varlen(out=out0, **kwargs0)
    reference = out0.float().clone()
    rows = []
    for stage, candidates in _candidates().items():
        for cfg in candidates:
            with configs.overridden(stage, cfg):
                start = time.perf_counter()
                try:
                    call()
                    _sync(torch, device)
                except Exception as e:  # a config that does not compile or fit: report, go on
                    rows.append({"stage": stage, "config": repr(cfg), "error": f"{type(e).__name__}: {e}"[:200]})
                    continue
                compile_s = time.perf_counter() - start
                mamba_chunk_scan_combined_varlen(out=out0, **kwargs0)
                diff = float((out0.float() - reference).abs().max())
                if device == "cuda":
                    ms = do_bench_ms(call, warmup=25, rep=200)
                    # one kernel's device time: far less noisy than the whole call
                    stage_ms = kernel_device_ms(call).get(KERNEL_OF_STAGE[stage], float("nan"))
                else:
                    ms, stage_ms = [0.0, 0.0, 0.0], 0.0
            rows.append({"stage": stage, "config": repr(cfg), "stage_device_ms": round(stage_ms, 4),
                         "call_median_ms": round(ms[1], 4), "call_p20_ms": round(ms[0], 4),
                         "call_p80_ms": round(ms[2], 4), "first_call_s": round(compile_s, 2),
                         "max_diff_vs_default": diff})
            print(f"{stage:14s} kernel {stage_ms:7.4f} ms | call {ms[1]:7.4f} ms [{ms[0]:.4f}, {ms[2]:.4f}] "
                  f"| first {compile_s:5.2f} s | diff {diff:.2e} | {cfg}", flush=True)
    return {"sweep": rows}


# --------------------------------------------------------------------------------------
# Parent side: fresh subprocesses, table, JSON.
# --------------------------------------------------------------------------------------

def _child(kind: str, cache_dir: str, timeout: int, trace=None) -> dict:
    """One scenario in a fresh process on ``cache_dir`` (with persisted autotune results)."""
    args = ["--child", kind] + (["--trace", trace] if trace and kind == "cold" else [])
    try:
        return harness.run_fresh(__file__, args, cache_dir=cache_dir, env={"TRITON_CACHE_AUTOTUNING": "1"},
                                 timeout=timeout, echo=True)
    except harness.ChildFailed as failure:  # the rounds before it still count
        return {"scenario": kind, "error": failure.reason, "output": failure.output}


def guard_rows(report: dict) -> list:
    """The regression guard's rows (``regression_guard``): per warmed scenario, the median over
    rounds of its warmup (s, JIT misses), first request (ms, over do_bench steady, compiles and
    autotune benchmarks) and do_bench steady state, without initial states."""
    results = regression_guard.measured(report, "results", "bench_kernel.py")
    # the layer tells the dtype: bf16 on a GPU, the smoke test's tiny layer in float32
    device, dtype = report["environment"]["device"], "bfloat16" if report["layer"] == LAYER else "float32"
    rows = []
    for scenario in WARMED:
        runs = [r for r in results if r.get("scenario") == scenario and "error" not in r]
        if not runs:
            continue
        figures = [{"warmup_s": r["warmup"]["seconds"], "warmup_binaries": r["warmup"]["jit_misses"],
                    "first_ms": r["first_request"]["wall_ms"],
                    "first_ratio": r["first_request"]["wall_ms"] / r["steady"]["median_ms"],
                    "first_events": r["first_request"]["compiles"] + r["first_request"]["autotune_benchmarks"],
                    "steady_ms": r["steady"]["median_ms"]} for r in runs]
        rows.append({"name": scenario, "dtype": dtype, "device": device,
                     **{k: round(statistics.median(f[k] for f in figures), 4) for k in figures[0]}})
    return rows


def _table(results: list) -> str:
    lines = [f"{'scenario':11s} {'warmup s':>9s} {'misses (fresh/disk)':>19s} | "
             f"{'1st req ms':>10s} {'cmp':>3s} {'tune':>4s} | "
             f"{'1st init ms':>11s} {'cmp':>3s} | {'do_bench':>8s} {'init':>6s} {'loop':>6s} {'init':>6s} | "
             f"{'1 call ms':>9s} {'idle':>6s} {'init':>6s} | first / do_bench | matmul idle / busy"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['scenario']:11s} ERROR {r['error']}")
            continue
        w = r.get("warmup", {})
        f1, f2 = r["first_request"], r["first_request_initial_states"]
        s1, s2 = r["steady"]["median_ms"], r["steady_initial_states"]["median_ms"]
        i1, i2, i3 = (r[k]["median_ms"] for k in ("isolated", "isolated_after_idle", "isolated_initial_states"))
        ratio = f"{f1['wall_ms'] / s1:.2f}x / {f2['wall_ms'] / s2:.2f}x" if s1 and s2 else "-"
        mm = r.get("matmul_control", {})
        control = f"{mm['after_idle_ms']:.3f} / {mm['back_to_back_ms']:.3f} ms" if mm else "-"
        misses = f"{w['jit_misses']} ({w['compiled_fresh']}/{w['from_disk']})" if w else "-"
        name = r["scenario"] + (f"#{r['round']}" if r.get("round", 1) > 1 else "")
        lines.append(f"{name:11s} {w.get('seconds', float('nan')):9.2f} {misses:>19s} | "
                     f"{f1['wall_ms']:10.3f} {f1['compiles']:3d} {f1['autotune_benchmarks']:4d} | "
                     f"{f2['wall_ms']:11.3f} {f2['compiles']:3d} | {s1:8.4f} {s2:6.4f} "
                     f"{r['loop'].get('median_ms', 0):6.4f} {r['loop_initial_states'].get('median_ms', 0):6.4f} | "
                     f"{i1:9.3f} {i2:6.3f} {i3:6.3f} | {ratio:>16s} | {control}")
    return "\n".join(lines)


def _first_request_summary(results: list) -> str:
    """The target's ratio over every process that warmed up: its first request (no initial
    states) over do_bench's steady state, and over a warm call timed the same way; the first
    request with initial states (the third call after the warmup) on a line of its own."""
    warmed = [r for r in results if "warmup" in r and "error" not in r]
    if not warmed:
        return "first request after warmup: no warmed process"
    lines = []
    for label, first, steady, alone in (
            ("first request after warmup", "first_request", "steady", "isolated"),
            ("first request with initial states", "first_request_initial_states", "steady_initial_states",
             "isolated_initial_states")):
        over_steady = [r[first]["wall_ms"] / r[steady]["median_ms"] for r in warmed]
        over_alone = [r[first]["wall_ms"] / r[alone]["median_ms"] for r in warmed]
        lines.append(f"{label}, {len(warmed)} processes: / do_bench steady median "
                     f"{statistics.median(over_steady):.2f}x ({min(over_steady):.2f}-{max(over_steady):.2f}x); "
                     f"/ a warm call timed alone median {statistics.median(over_alone):.2f}x "
                     f"({min(over_alone):.2f}-{max(over_alone):.2f}x)")
    return "\n".join(lines)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("result", nargs="?", help="write the JSON results here")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--sweep", action="store_true", help="also time candidate launch configs per stage")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per subprocess")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the scenarios this many times (a first request is one sample per process)")
    profiling = parser.add_argument_group("profiling (benchmarks/README.md)")
    profiling.add_argument("--profile-calls", type=int, default=0, metavar="N",
                           help="only run the warmup and N calls, in this process (under nsys or ncu)")
    profiling.add_argument("--trace", metavar="TRACE.json",
                           help="write a Chrome trace of cold's per-kernel profile (20 warm calls)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    regression_guard.add_arguments(parser)
    args = parser.parse_args()

    if args.profile_calls:
        run_calls(args.profile_calls)
        return
    if args.child:
        harness.send_to_parent(run_sweep() if args.child == "sweep" else run_scenario(args.child, args.trace))
        return
    baseline = regression_guard.baseline_rows(parser, args, guard_rows, harness.load_result)
    if not args.result:
        parser.error("the JSON result path is required")
    if args.repeat < 1:
        parser.error(f"--repeat: expected a positive count, got {args.repeat}")
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")

    root = tempfile.mkdtemp(prefix="ssd-bench-")
    dirs = {"cold": "shared", "disk_cache": "shared", "no_warmup": "no_warmup", "rerun": "rerun", "sweep": "sweep"}
    results = []
    order = (["sweep"] if args.sweep else []) + [s for s in SCENARIOS if s in scenarios]
    for round_ in range(1, args.repeat + 1):  # each round in fresh cache dirs: cold is cold again
        for kind in order if round_ == 1 else [k for k in order if k != "sweep"]:
            cache_dir = os.path.join(root, f"round{round_}", dirs[kind])
            if kind == "disk_cache" and "cold" not in scenarios:
                print("disk_cache needs cold first (it reuses cold's cache dir); skipped")
                continue
            print(f"--- {kind}, round {round_} (TRITON_CACHE_DIR={cache_dir})", flush=True)
            results.append(dict(_child(kind, cache_dir, args.timeout, args.trace if round_ == 1 else None),
                                round=round_))
    shutil.rmtree(root, ignore_errors=True)
    smoke = not harness.cuda_available()  # the children ran the tiny layer under the interpreter
    body = {"layer": SMOKE_LAYER if smoke else LAYER, "request": SMOKE_REQUEST if smoke else REQUEST,
            "results": results}
    if smoke:
        body["note"] = "interpreter smoke test of this script on a tiny layer: not a measurement"
    report = harness.write_result(args.result, body)
    print(json.dumps(report["environment"]))
    print(_table([r for r in results if r.get("scenario") in SCENARIOS]))
    print(_first_request_summary(results))
    guard_ok = regression_guard.check(guard_rows(report), baseline, args) if baseline is not None else True
    failed = [r["scenario"] for r in results if "error" in r]
    if failed:
        sys.exit(f"failed scenarios: {failed}")
    cold = [f"{r['scenario']}#{r['round']}" for r in results if r.get("scenario") in SCENARIOS
            and r["scenario"] != "no_warmup" and any(r[k]["compiles"] or r[k]["autotune_benchmarks"]
                                                     for k in ("first_request", "first_request_initial_states"))]
    if cold:  # the regression this benchmark exists to catch
        sys.exit(f"a first request after the warmup compiled or autotuned: {cold}")
    if not guard_ok:
        sys.exit("a figure slipped against the baseline, or was not compared (see the guard's report above)")


if __name__ == "__main__":
    main()
