"""Where does the first request's extra time go after a good warmup? (GPU probe)

Each child process warms the bundled kernel for the anchors' layer, then times single calls
(synchronize, call, synchronize: what a request arriving alone sees) after the GPU sat idle for
0 to 250 ms, with a new batch's metadata per call (built by ``chunk_metadata``, and as foreign
tensors the kernel must read back once). Per call it splits the wall time into host time
before the first launch, the launches, the device span (CUDA events around the launches: 3 for
a 16-bit model, 4 for float32) and the tail; a plain bf16 matrix product of about the same
device time is timed the same way, so what is the device waking up and what is ours can be
told apart. The children share one Triton cache dir (the first compiles, the others load).

    python benchmarks/probe_first_request.py [RESULT.json] [--children N]
    python benchmarks/probe_first_request.py --host [RESULT.json]  # host cost of each step, and of a launch
    python benchmarks/probe_first_request.py --profile              # cProfile of the first call vs warm ones
    python benchmarks/probe_first_request.py --steps bfloat16,float16 [RESULT.json] [--children N]

``--steps``: bench_peers' own first request (inputs drawn before the warmup, ``warm_bundled``
under a recording, the call under a new one, its arguments built before the clock), then 10
warm lone calls, in ``--children`` fresh processes per dtype with their own cache dirs; each
call split by host clocks into: to the entry's checks, to the first launch, the first launch,
the other launches, the return, and the synchronize (the device work still queued).
``--host`` and ``--profile`` run in this process. ``--profile`` prints, for the first request
after the warmup and the two after it (each after 0.25 s of idle), the 14 functions with the most
host time of their own under cProfile: what differs is the first call's host-side extra.
Without CUDA it prints why and writes ``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import harness
from workload import LAYER, MAX_NUM_TOKENS, REQUEST

IDLE_GAPS_S = (0.0, 0.002, 0.01, 0.05, 0.25)
STEP_LABELS = ("checks", "plans+guard", "workspace", "stream")  # the stamped steps, in call order
CALLS_PER_GAP = 12


def _layer(torch):
    """The anchors' layer in bf16 with float32 states, on the GPU."""
    from pytest_ssd.layer import make_mixer2_layer

    return make_mixer2_layer(**LAYER, dtype=torch.bfloat16, state_dtype=torch.float32, seed=0, device="cuda")


def _instrumented(combined):
    """Wrap the entry's launches with host clocks and CUDA events; returns the per-call log."""
    log = {}
    launch, check = combined._launch, combined._check_metadata

    def timed_launch(*args):
        if not log["launch_host"]:
            log["t_first_launch"] = time.perf_counter()
            log["events"][0].record()
        t = time.perf_counter()
        launch(*args)
        log["launch_host"].append(time.perf_counter() - t)
        log["events"][len(log["launch_host"])].record()  # made before the call: no allocation timed

    def timed_check(*args, **kwargs):
        log["checked"] = True
        return check(*args, **kwargs)

    def stamped(label, fn):  # host clock when each step before the first launch returns
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            if not log["launch_host"]:
                log["stamps"].append((label, time.perf_counter()))
            return result
        return wrapper

    combined._launch, combined._check_metadata = timed_launch, timed_check
    combined.fast_sizes = stamped("checks", combined.fast_sizes)
    combined._device_guard = stamped("plans+guard", combined._device_guard)
    combined._Workspace.carve = stamped("workspace", combined._Workspace.carve)
    combined._LAUNCHER.stream = stamped("stream", combined._LAUNCHER.stream)
    return log


def child() -> dict:
    import torch

    from pytest_ssd.adapters import poisoned_like
    from pytest_ssd.chunking import METADATA_NAMES, chunk_metadata
    from pytest_ssd.kernels import combined
    from pytest_ssd.layer import make_ssd_inputs
    from pytest_ssd.warmup import warmup_ssd_kernels

    layer = _layer(torch)
    warmed = warmup_ssd_kernels(layer, max_num_tokens=MAX_NUM_TOKENS)
    sets = [make_ssd_inputs(layer, REQUEST, seed=i) for i in range(4)]
    outs = [poisoned_like(s.x) for s in sets]
    a = torch.randn(5120, 5120, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(5120, 5120, device="cuda", dtype=torch.bfloat16)
    log = _instrumented(combined)

    def kernel_call(i: int, foreign: bool = False) -> dict:
        kwargs = sets[i % 4].kernel_kwargs(layer)
        if foreign:  # a new batch's metadata built by the model: checked once, with a copy to the host
            kwargs.update({k: kwargs[k].clone() for k in METADATA_NAMES})
        else:  # a new batch's metadata from pytest_ssd.chunking.chunk_metadata: right by construction
            cu_seqlens = kwargs["cu_seqlens"].clone()
            meta = chunk_metadata(cu_seqlens, layer.chunk_size)
            kwargs.update(cu_seqlens=cu_seqlens, cu_chunk_seqlens=meta.cu_chunk_seqlens, seq_idx=meta.seq_idx,
                          last_chunk_indices=meta.last_chunk_indices)
        log.update(launch_host=[], events=[torch.cuda.Event(enable_timing=True) for _ in range(5)], checked=False,
                   stamps=[])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        combined.mamba_chunk_scan_combined_varlen(out=outs[i % 4], **kwargs)
        t_launched = time.perf_counter()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        ev = log["events"][:len(log["launch_host"]) + 1]  # before the first launch, then after each (3 or 4)
        return {"wall": (t1 - t0) * 1e3, "before_launch": (log["t_first_launch"] - t0) * 1e3,
                "launches_host": sum(log["launch_host"]) * 1e3, "after_launch_host": (t1 - t_launched) * 1e3,
                "device_span": ev[0].elapsed_time(ev[-1]), "metadata_read_back": float(log["checked"]),
                "stages": [ev[j].elapsed_time(ev[j + 1]) for j in range(len(ev) - 1)],
                # host ms from the call's start to the end of each step before the first launch
                "pre_launch_steps": [(t - t0) * 1e3 for _, t in log["stamps"]]}

    def matmul_call() -> dict:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        torch.mm(a, b)
        end.record()
        torch.cuda.synchronize()
        return {"wall": (time.perf_counter() - t0) * 1e3, "device_span": start.elapsed_time(end)}

    result = {"warmup_s": round(warmed.seconds, 3), "gaps": {}}
    time.sleep(0.25)
    result["first_request"] = kernel_call(0)
    time.sleep(0.25)
    result["first_matmul"] = matmul_call()
    for gap in IDLE_GAPS_S:
        kern, foreign, mm = [], [], []
        for i in range(CALLS_PER_GAP):
            time.sleep(gap)
            kern.append(kernel_call(i + 1))
            time.sleep(gap)
            foreign.append(kernel_call(i + 1, foreign=True))
            time.sleep(gap)
            mm.append(matmul_call())
        result["gaps"][str(gap)] = {"kernel": _medians(kern), "foreign_metadata": _medians(foreign),
                                    "matmul": _medians(mm)}
    return result


def profile_first_calls() -> None:
    """cProfile the first request after warmup and a warm request after the same idle time:
    the functions whose time differs are the first call's host-side extra."""
    import cProfile
    import pstats

    import torch

    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen as kernel
    from pytest_ssd.layer import make_ssd_inputs
    from pytest_ssd.warmup import warmup_ssd_kernels

    layer = _layer(torch)
    sets = [make_ssd_inputs(layer, REQUEST, seed=i) for i in range(3)]
    outs = [torch.empty_like(s.x) for s in sets]
    warmup_ssd_kernels(layer, max_num_tokens=MAX_NUM_TOKENS)
    for i, label in enumerate(("first request", "second request", "third request")):
        time.sleep(0.25)
        kwargs = sets[i].kernel_kwargs(layer)
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        kernel(out=outs[i], **kwargs)
        prof.disable()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        stats = pstats.Stats(prof).stats  # {(file, line, name): (calls, _, own s, cumulative s, callers)}
        print(f"=== {label}: host {1e3 * (t1 - t0):.3f} ms (profiled), wall {1e3 * (t2 - t0):.3f} ms")
        for (path, line, name), (_, calls, own, cum, _) in sorted(stats.items(), key=lambda kv: -kv[1][2])[:14]:
            print(f"  {own * 1e6:8.1f} us own {cum * 1e6:8.1f} us cum {calls:3d}x {os.path.basename(path)}:{line} {name}")


def host_pieces() -> dict:
    """Microseconds of host time per step of a warm call, on this machine's CPU (timeit, best of
    5), and per warm launch of one stage three ways: Triton's JIT dispatch, the CompiledKernel's
    runner, and pytest-ssd's kept-binary launch (stream looked up once per call, no hooks)."""
    import math
    import timeit

    import torch

    from pytest_ssd import chunking, triton_compat
    from pytest_ssd.kernels import combined
    from pytest_ssd.layer import make_ssd_inputs
    from pytest_ssd.warmup import warmup_ssd_kernels

    layer = _layer(torch)
    warmup_ssd_kernels(layer, max_num_tokens=MAX_NUM_TOKENS)
    inputs = make_ssd_inputs(layer, REQUEST, seed=0)
    kw = inputs.kernel_kwargs(layer)
    x, B, C, dt = kw["x"], kw["B"], kw["C"], kw["dt"]
    meta = tuple(kw[k] for k in chunking.METADATA_NAMES)
    out, device = torch.empty_like(x), x.device
    tensors = (x, dt, layer.A, B, C, out, layer.D, None, layer.dt_bias, None)
    # The flat key the entry point builds for this call: planned again by one call, and read back
    # (not rebuilt here, where it would drift from the entry point's).
    combined._PLANS.clear()
    combined.mamba_chunk_scan_combined_varlen(out=out, **kw)
    (key,) = combined._PLANS
    plans = combined._PLANS[key]
    T, nchunks = x.shape[0], meta[2].shape[0]

    def guard():
        with torch.cuda.device(device):
            pass

    steps = {
        "argument checks (fast_sizes)": lambda: combined.fast_sizes(*tensors, meta, 256, (0.0, math.inf), None,
                                                                       layer.dt_softplus, False),
        "launch plans (key + cache)": lambda: combined._PLANS.get(key),
        "device guard": guard,
        "metadata: its sealed copy (lookup)": lambda: chunking.SEALED.lookup(meta, 256, T),
        "workspace (1 alloc, 1 split)": lambda: plans.workspace.carve(nchunks, device),
        "stream lookup (with the launch-hook check)": lambda: combined._LAUNCHER.stream(device.index),
    }
    result = {"steps_us": {}, "launch_us": {}}
    for name, fn in steps.items():
        result["steps_us"][name] = round(min(timeit.repeat(fn, number=2000, repeat=5)) / 2000 * 1e6, 2)
    # One warm bmm launch on a one-chunk batch (a few microseconds of GPU work: the host is the
    # bottleneck, so the launch queue never fills and back-pressure is not timed).
    small = make_ssd_inputs(layer, [200], seed=1).kernel_kwargs(layer)
    cu_chunks, CB = small["cu_chunk_seqlens"], torch.empty((1, 1, 256, 256), device=device)
    stage = plans.bmm
    grid, args = (stage.tiles, 1, 1), (small["C"], small["B"], cu_chunks, CB)
    launcher = triton_compat.DirectLauncher()
    launcher.launch(stage.kernel, grid, args, stage.constexprs, key="probe")
    kept = launcher._compiled["probe"]
    stream = launcher.stream(device.index)
    ways = {
        "Triton JIT dispatch": lambda: stage.kernel[grid](*args, **stage.constexprs),
        "CompiledKernel runner": lambda: kept.compiled[grid](*args, *kept.tail),
        "kept binary, stream given": lambda: launcher.launch(stage.kernel, grid, args, stage.constexprs, "probe",
                                                             stream),
    }
    for name, fn in ways.items():
        torch.cuda.synchronize()
        result["launch_us"][name] = round(min(timeit.repeat(fn, number=500, repeat=5)) / 500 * 1e6, 2)
    torch.cuda.synchronize()
    # A whole warm call's host time with the GPU busy (no sync inside: the host never waits).
    host = []
    for i in range(40):
        if i % 8 == 0:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        combined.mamba_chunk_scan_combined_varlen(out=out, **kw)
        host.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    result["whole_call_host_us_median"] = round(statistics.median(host), 2)
    return result


def _stamp_steps(combined, log: list) -> None:
    """Host clocks at the entry's checks and around each launch, appended to ``log``."""
    launch, fast = combined._launch, combined.fast_sizes

    def fast_sizes(*args, **kwargs):
        log.append(("entry", time.perf_counter()))
        return fast(*args, **kwargs)

    def timed_launch(*args):
        log.append(("launch_start", time.perf_counter()))
        launch(*args)
        log.append(("launch_end", time.perf_counter()))

    combined.fast_sizes, combined._launch = fast_sizes, timed_launch


def _steps_us(log: list, t0: float, t_return: float, t_synced: float) -> dict:
    starts = [t for what, t in log if what == "launch_start"]
    ends = [t for what, t in log if what == "launch_end"]
    entry = next(t for what, t in log if what == "entry")
    span = [t0, entry, starts[0], ends[0], ends[-1], t_return, t_synced]
    names = ("to_entry", "entry_to_launch1", "launch1", "other_launches", "to_return", "synchronize")
    return {**{name: round((b - a) * 1e6, 1) for name, a, b in zip(names, span, span[1:])},
            "wall": round((t_synced - t0) * 1e6, 1)}


def steps_child(dtype: str) -> dict:
    """``--steps``: one process's first request and warm lone calls, in bench_peers' flow."""
    import torch

    from pytest_ssd.adapters import poisoned_like
    from pytest_ssd.events import record_triton
    from pytest_ssd.kernels import combined
    from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
    from workload import warm_bundled

    layer = make_mixer2_layer(**LAYER, dtype=getattr(torch, dtype), state_dtype=torch.float32, seed=0, device="cuda")
    sets = [make_ssd_inputs(layer, REQUEST, seed=1 + i) for i in range(4)]
    calls = [(s.kernel_kwargs(layer), poisoned_like(s.x)) for s in sets]
    log: list = []

    def timed(i: int) -> dict:
        kwargs, out = calls[i % len(calls)]
        log.clear()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        combined.mamba_chunk_scan_combined_varlen(out=out, **kwargs)
        t_return = time.perf_counter()
        torch.cuda.synchronize()
        return _steps_us(log, t0, t_return, time.perf_counter())

    with record_triton():
        warm_bundled(layer)
        torch.cuda.synchronize()
    _stamp_steps(combined, log)
    with record_triton():
        first = timed(0)
    return {"dtype": dtype, "first": first, "lone": _medians([timed(i) for i in range(1, 11)])}


def _medians(rows: list) -> dict:
    out = {}
    for key, value in rows[0].items():
        if isinstance(value, list):
            out[key] = [round(statistics.median(r[key][j] for r in rows), 4) for j in range(len(value))]
        else:
            out[key] = round(statistics.median(r[key] for r in rows), 4)
    return out


def _round(d: dict) -> dict:
    return {k: ([round(x, 4) for x in v] if isinstance(v, list) else round(v, 4)) for k, v in d.items()}


def _print_run(run: dict) -> None:
    first = run["first_request"]
    print(f"first request: wall {first['wall']:.3f} ms, "
          f"before 1st launch {first['before_launch']:.3f}, launches {first['launches_host']:.3f}, "
          f"device span {first['device_span']:.3f}, stages {first['stages']}; "
          f"first matmul wall {run['first_matmul']['wall']:.3f} / device {run['first_matmul']['device_span']:.3f}")
    print("steps before the first launch (ms from the call's start, each step's end): "
          + ", ".join(f"{label} {t:.3f}" for label, t in zip(STEP_LABELS, first["pre_launch_steps"])))
    print(f"{'idle s':>7} | {'kern wall':>9} {'pre-launch':>10} {'launches':>8} {'dev span':>8} | "
          f"{'foreign':>7} | {'mm wall':>8} {'mm dev':>7} | stages")
    for gap, row in run["gaps"].items():
        k, f, m = row["kernel"], row["foreign_metadata"], row["matmul"]
        print(f"{gap:>7} | {k['wall']:9.3f} {k['before_launch']:10.3f} {k['launches_host']:8.3f} "
              f"{k['device_span']:8.3f} | {f['wall']:7.3f} | {m['wall']:8.3f} {m['device_span']:7.3f} | "
              f"{k['stages']} steps {k['pre_launch_steps']}")


def steps(args: argparse.Namespace) -> int:
    """``--steps``: ``--children`` fresh processes per dtype (own cache dirs: each compiles)."""
    runs = []
    for dtype in args.steps.split(","):
        for _ in range(args.children):
            try:
                run = harness.run_fresh(__file__, ["--steps-child", dtype], timeout=args.timeout)
            except harness.ChildFailed as failure:
                print(f"a child failed: {failure.reason}\n{failure.output}")
                return 1
            print(f"{dtype}: first {run['first']}\n{' ' * len(dtype)}  lone  {run['lone']}", flush=True)
            runs.append(run)
    harness.write_result(args.result, {"unit": "us", "runs": runs})
    return 0


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("result", nargs="?", help="write the JSON result here")
    parser.add_argument("--children", type=int, default=3, help="child processes, one first request each")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per child process")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--host", action="store_true", help="host time per step of a warm call, in this process")
    modes.add_argument("--profile", action="store_true", help="cProfile the first request and two warm ones")
    modes.add_argument("--steps", metavar="DTYPES",
                       help="bench_peers' first request, step by step (comma-separated dtypes)")
    modes.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    modes.add_argument("--steps-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.children < 1:
        parser.error(f"--children: expected a positive count, got {args.children}")
    if args.child:
        harness.send_to_parent(child())
        return 0
    if args.steps_child:
        harness.send_to_parent(steps_child(args.steps_child))
        return 0
    if harness.skip_without_cuda(args.result, "the probe times calls on a GPU"):
        return 0
    if args.profile:
        profile_first_calls()
        return 0
    if args.steps:
        return steps(args)
    if args.host:
        pieces = host_pieces()
        print(json.dumps(pieces, indent=1))
        harness.write_result(args.result, pieces)
        return 0
    runs = []
    with tempfile.TemporaryDirectory(prefix="probe-cache-") as shared:
        for _ in range(args.children):
            try:
                run = harness.run_fresh(__file__, ["--child"], cache_dir=shared, timeout=args.timeout)
            except harness.ChildFailed as failure:
                print(f"a child failed: {failure.reason}\n{failure.output}")
                return 1
            run["first_request"], run["first_matmul"] = _round(run["first_request"]), _round(run["first_matmul"])
            runs.append(run)
            _print_run(run)
    harness.write_result(args.result, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
