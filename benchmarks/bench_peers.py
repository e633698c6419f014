"""Our kernel beside peer SSD kernels, each in a fresh process with an empty Triton cache.

    python benchmarks/bench_peers.py RESULT.json [--kernel NAME=MODULE:FN@WARMUP_MODULE:FN ...] [--dtypes bf16,fp16,fp32]
    python benchmarks/bench_peers.py RESULT.json --baseline benchmarks/results/h200_bench_peers.json [--tolerance 0.10] [--repeat 3]
    python benchmarks/bench_peers.py --check-only NOW.json --baseline BASE.json   # compare two saved runs
    python benchmarks/bench_peers.py --from RESULT.json --plot PNG      # a chart of a saved run

Per kernel and model dtype (the anchors' layer: 80 heads x 64, dstate 128, 1 group, chunk 256,
fp32 states; request 1000/2048/517/3000 tokens): the warmup's wall time and binaries, the first
request after it (wall ms around one synchronized call of the kernel, with its arguments built
before the clock starts; compiles), a warm lone call timed the
same way (``single_ms``, the median of 10 after the first: not guarded), and the steady state
(``triton.testing.do_bench`` median over 4 rotating input sets). Peers are given by import path:
copy them from an installed release with ``benchmarks/peers/copy_ops.sh`` and put ``.peers/ops``
on PYTHONPATH (never commit them). Default: the bundled kernel, warmed as an engine warms it
(``workload.warm_bundled``: ``warmup_ssd_kernels`` with the largest batch, 8192 tokens), and
vLLM's ops where importable, warmed like vLLM (``tests/peers/peer_warmups.py``).

``--baseline``: the regression guard. After measuring (and writing RESULT.json), each figure of
the bundled kernel (warmup s, binaries and autotune keys, first request ms and its ratio to the
steady state, events after warmup, steady ms) is compared with the baseline's entry of the same
dtype and device; the run fails when one rises more than ``--tolerance``, or when the baseline
is from another device (unless ``--baseline-any-device``) or has an entry this run lacks. The
host-bound figures (warmup, first request, its ratio) are judged against the peer's same-run
figures too: a rise the peer shares is the lease's host, reported and not failed
(``--absolute`` judges them alone; benchmarks/README.md, "Regression guard").
Without CUDA it prints why and writes ``{"skipped": ...}`` (and fails when a baseline was given).

``--repeat N``: the bundled kernel runs in N fresh processes per dtype, and its row holds the
median of each figure (the processes' own rows under ``"repeats"``). The first request is one
synchronized call per process, and that figure moved 10-30% between processes on the H200
(host time before the first launch, the GPU waking up): a median of 3 is what the guard should
hold to 10%. Peers run once.
"""
from __future__ import annotations

import argparse
import sys
import time
import harness
import regression_guard
from workload import LAYER, REQUEST, do_bench_ms, rotating

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_KERNELS = (
    "bundled=pytest_ssd.kernels:mamba_chunk_scan_combined_varlen@workload:warm_bundled",
    "vllm=vllm_ssd_ops.ssd_combined:mamba_chunk_scan_combined_varlen@peer_warmups:warm_like_vllm",
)
GUARDED = "bundled"  # the kernel --baseline holds to its figures; a peer's are its own business
GUARDED_FIGURES = ("warmup_s", "warmup_binaries", "warmup_autotune_keys", "first_ms", "first_events", "steady_ms")
# Figures the lease's host moves (compile time; host time before the first launch): judged against the peer's
HOST_BOUND = ("warmup_s", "first_ms", "first_ratio")


def _child(kernel: str, warmup: str, dtype: str) -> dict:
    import torch
    import triton

    from pytest_ssd.adapters import SSDKernel, detect_api, poisoned_like
    from pytest_ssd.events import record_triton
    from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
    from pytest_ssd.options import load_callable

    fn = load_callable(kernel, "kernel")
    ssd = SSDKernel(fn=fn, api=detect_api(fn) or "vllm", name=kernel)
    layer = make_mixer2_layer(**LAYER, dtype=getattr(torch, dtype), state_dtype=torch.float32, seed=0, device="cuda")
    inputs_sets = [make_ssd_inputs(layer, REQUEST, seed=1 + i) for i in range(4)]
    calls = _bound_calls(ssd, layer, [(inputs, poisoned_like(inputs.x)) for inputs in inputs_sets])
    torch.cuda.synchronize()
    with record_triton() as warm:
        start = time.perf_counter()
        load_callable(warmup, "warmup")(layer)
        torch.cuda.synchronize()
        warmup_s = time.perf_counter() - start
    with record_triton() as first:
        start = time.perf_counter()
        calls[0]()
        torch.cuda.synchronize()
        first_ms = (time.perf_counter() - start) * 1e3
    single_ms = _single_call_ms(torch, lambda i: calls[i % len(calls)]())
    _, steady_ms, _ = do_bench_ms(rotating([(call,) for call in calls], lambda call: call()))
    return {"kernel": kernel, "dtype": dtype, "warmup_s": round(warmup_s, 2), "warmup_binaries": len(warm.binaries()),
            "warmup_autotune_keys": len(warm.autotune_keys()), "first_ms": round(first_ms, 3),
            "first_events": len(first.events), "steady_ms": round(steady_ms, 4), "single_ms": round(single_ms, 3),
            "torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name()}


def _bound_calls(ssd, layer, sets: list) -> list:
    """One call per ``(inputs, out)`` pair that takes no arguments: a vLLM-style kernel's keyword
    arguments are built here, so the clocks time the kernel's own call, not the adapter's
    dictionary (10-30 us of host time on the H200, before the kernel's first launch). A
    mamba_ssm-style kernel goes through the adapter: its per-sequence calls are that API."""
    if ssd.api != "vllm":
        return [lambda inputs=inputs, out=out: ssd.run(layer, inputs, out) for inputs, out in sets]
    return [lambda kwargs=inputs.kernel_kwargs(layer), out=out: ssd.fn(out=out, **kwargs) for inputs, out in sets]


def _single_call_ms(torch, call, calls: int = 10) -> float:
    """The median wall ms of ``calls`` warm calls, each timed as the first request is (synchronize,
    call, synchronize): what a request arriving alone waits for once nothing is cold. Not guarded;
    it tells the first request's own cost from what any lone call pays over do_bench's figure."""
    import statistics

    times = []
    for i in range(1, calls + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call(i)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def plot(saved: dict, path: str) -> None:
    """Two panels, one bar per kernel and dtype: steady state (ms) and cold warmup (s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in saved["rows"] if "failed" not in r]
    names = list(dict.fromkeys(r["name"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(names)
    for ax, key, label in ((axes[0], "steady_ms", "steady state, ms (do_bench median)"),
                           (axes[1], "warmup_s", "warmup from an empty cache, s")):
        for i, name in enumerate(names):
            values = [next((r[key] for r in rows if r["name"] == name and r["dtype"] == d), 0) for d in dtypes]
            bars = ax.bar([x + (i - (len(names) - 1) / 2) * width for x in range(len(dtypes))], values, width,
                          label=name)
            ax.bar_label(bars, fmt="%.3f" if key == "steady_ms" else "%.1f", fontsize=8)
        ax.set_xticks(range(len(dtypes)), dtypes)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    first = rows[0]
    date = saved["environment"]["date"] if "environment" in saved else saved["date"]  # files before the header
    fig.suptitle(f"{first['gpu']}, torch {first['torch']}, Triton {first['triton']}, {date[:10]}: "
                 f"80 heads x 64, dstate 128, chunk 256, request {'/'.join(map(str, saved['request']))}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def guard_rows(report: dict) -> list:
    """The regression guard's rows (``regression_guard``): the bundled kernel's measured rows, with
    the first request over the steady state as a figure of its own (the target's ratio).

    Each row takes the first peer of its dtype as the reference of its host-bound figures
    (``HOST_BOUND``): a lease whose host compiles and launches slower moves the peer's alike,
    and the guard judges those figures against it. The first request's ratio is judged against
    the peer's first request (its host-bound part), not the peer's ratio, whose steady state
    moves with the peer's own autotuning picks. First-request references only where the peer's
    first request was warm (no compile in it)."""
    rows = [r for r in regression_guard.measured(report, "rows", "bench_peers.py") if "failed" not in r]
    peers: dict = {}
    for r in rows:
        if r["name"] != GUARDED:
            peers.setdefault(r["dtype"], r)
    guarded = []
    for r in rows:
        if r["name"] != GUARDED:
            continue
        row = {"name": r["name"], "dtype": r["dtype"], "device": r["gpu"], **{k: r[k] for k in GUARDED_FIGURES},
               "first_ratio": r.get("first_ratio", round(r["first_ms"] / r["steady_ms"], 3))}
        peer = peers.get(r["dtype"])
        if peer is not None:
            figures = HOST_BOUND if peer["first_events"] == 0 else ("warmup_s",)
            row.update(reference=peer["name"],
                       references={f: peer["first_ms" if f == "first_ratio" else f] for f in figures})
        guarded.append(row)
    return guarded


def _guard(report: dict, baseline: list, args: argparse.Namespace, dtypes: set) -> bool:
    """Compare ``report`` with the ``baseline``'s rows, of those only the ``dtypes`` measured."""
    left_out = sorted({r["dtype"] for r in baseline} - dtypes)
    if left_out:
        print(f"regression guard: the baseline's {left_out} left out (not in --dtypes)")
    return regression_guard.check(guard_rows(report), [r for r in baseline if r["dtype"] in dtypes], args)


def median_row(rows: list) -> dict:
    """One row for several processes' rows of one kernel and dtype: the median of each guarded
    figure (``statistics.median``; a count stays an int where the middle is one), the other
    fields from the first, and the rows themselves under ``"repeats"``."""
    import statistics

    merged = dict(rows[0])
    for figure in GUARDED_FIGURES:
        middle = statistics.median(r[figure] for r in rows)
        merged[figure] = int(middle) if all(isinstance(r[figure], int) for r in rows) and middle == int(middle) \
            else round(middle, 4)
    if all("single_ms" in r for r in rows):
        merged["single_ms"] = round(statistics.median(r["single_ms"] for r in rows), 3)
    # the target's ratio per process, then its median: not the ratio of two medians
    merged["first_ratio"] = round(statistics.median(r["first_ms"] / r["steady_ms"] for r in rows), 3)
    merged["repeats"] = rows
    return merged


def _measure(name: str, kernel: str, warmup: str, dtype: str, repeat: int, timeout: int) -> dict:
    """The row of one kernel and dtype: ``repeat`` fresh processes for the guarded kernel
    (median figures), one for a peer. Raises ``harness.ChildFailed``."""
    runs = [{"name": name, **harness.run_fresh(__file__, ["--child", kernel, warmup, dtype], timeout=timeout)}
            for _ in range(repeat if name == GUARDED else 1)]
    return runs[0] if len(runs) == 1 else median_row(runs)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("result", nargs="?", help="write the JSON result here")
    parser.add_argument("--kernel", action="append", help="NAME=MODULE:FN@WARMUP_MODULE:FN (repeatable)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated subset of {list(DTYPES)}")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per child process")
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh processes per dtype for the bundled kernel; its row holds the medians")
    parser.add_argument("--from", dest="from_json", help="plot a saved RESULT.json instead of running")
    parser.add_argument("--plot", help="write a PNG chart (with --from)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    regression_guard.add_arguments(parser)
    args = parser.parse_args()
    if args.child:
        harness.send_to_parent(_child(*args.child))
        return
    if args.from_json:
        if not args.plot:
            parser.error("--from needs --plot PNG")
        plot(harness.load_result(args.from_json), args.plot)
        return
    baseline = regression_guard.baseline_rows(parser, args, guard_rows, harness.load_result)
    shorts = [d for d in args.dtypes.split(",") if d]
    unknown = [d for d in shorts if d not in DTYPES]
    if unknown or not shorts:
        parser.error(f"--dtypes: expected a comma-separated subset of {list(DTYPES)}, got {args.dtypes!r}")
    if args.repeat < 1:
        parser.error(f"--repeat: expected a number of processes >= 1, got {args.repeat}")
    if harness.skip_without_cuda(args.result, "this benchmark times compiled kernels on a GPU"):
        sys.exit("regression guard: not compared: nothing was measured" if baseline is not None else 0)
    rows, failed = [], 0
    for entry in args.kernel or DEFAULT_KERNELS:
        name, _, spec = entry.partition("=")
        kernel, _, warmup = spec.partition("@")
        for short in shorts:
            try:
                row = _measure(name, kernel, warmup, DTYPES[short], args.repeat, args.timeout)
            except harness.ChildFailed as failure:
                failed += 1
                print(f"{name} {short}: FAILED {failure.reason}", flush=True)
                rows.append({"name": name, "dtype": DTYPES[short], "kernel": kernel, "failed": failure.reason})
                continue
            rows.append(row)
            of = f" (median of {len(row['repeats'])})" if "repeats" in row else ""
            print(f"{name:8} {short}: warmup {row['warmup_s']:6.1f}s {row['warmup_binaries']:3d} binaries | first "
                  f"{row['first_ms']:8.2f} ms ({row['first_ms'] / row['steady_ms']:.2f}x steady, "
                  f"{row['first_events']} events; a warm lone call {row['single_ms']:.2f} ms) | "
                  f"steady {row['steady_ms']:.3f} ms{of}", flush=True)
    report = harness.write_result(args.result, {"layer": LAYER, "request": REQUEST, "rows": rows})
    guard_ok = _guard(report, baseline, args, {DTYPES[s] for s in shorts}) if baseline is not None else True
    sys.exit(0 if guard_ok and not failed else 1)


if __name__ == "__main__":
    main()
