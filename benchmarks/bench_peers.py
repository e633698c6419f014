"""Our kernel beside peer SSD kernels, each in a fresh process with an empty Triton cache.

    python benchmarks/bench_peers.py RESULT.json [--kernel NAME=MODULE:FN@WARMUP_MODULE:FN ...] [--dtypes bf16,fp16,fp32]
    python benchmarks/bench_peers.py --from RESULT.json --plot PNG      # a chart of a saved run

Per kernel and model dtype (the anchors' layer: 80 heads x 64, dstate 128, 1 group, chunk 256,
fp32 states; request 1000/2048/517/3000 tokens): the warmup's wall time and binaries, the first
request after it (wall ms around one synchronized call, compiles), and the steady state
(``triton.testing.do_bench`` median over 4 rotating input sets). Peers are given by import path:
copy them from an installed release with ``benchmarks/peers/copy_ops.sh`` and put ``.peers/ops``
on PYTHONPATH (never commit them). Default: the bundled kernel, and vLLM's ops where importable.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

LAYER = dict(nheads=80, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256)
REQUEST = [1000, 2048, 517, 3000]
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_KERNELS = (
    "bundled=pytest_ssd.kernels:mamba_chunk_scan_combined_varlen@pytest_ssd.warmup:warmup_ssd_kernels",
    "vllm=vllm_ssd_ops.ssd_combined:mamba_chunk_scan_combined_varlen@peer_warmups:warm_like_vllm",
)


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
    sets = [(inputs, poisoned_like(inputs.x)) for inputs in inputs_sets]
    torch.cuda.synchronize()
    with record_triton() as warm:
        start = time.perf_counter()
        load_callable(warmup, "warmup")(layer)
        torch.cuda.synchronize()
        warmup_s = time.perf_counter() - start
    with record_triton() as first:
        start = time.perf_counter()
        ssd.run(layer, *sets[0])
        torch.cuda.synchronize()
        first_ms = (time.perf_counter() - start) * 1e3
    rotation = itertools.cycle(sets)

    def call() -> None:
        ssd.run(layer, *next(rotation))

    steady_ms = triton.testing.do_bench(call, warmup=100, rep=500, return_mode="median")
    return {"kernel": kernel, "dtype": dtype, "warmup_s": round(warmup_s, 2), "warmup_binaries": len(warm.binaries()),
            "warmup_autotune_keys": len(warm.autotune_keys()), "first_ms": round(first_ms, 3),
            "first_events": len(first.events), "steady_ms": round(steady_ms, 4),
            "torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name()}


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
            ax.bar_label(bars, fmt="%.2f" if key == "steady_ms" else "%.0f", fontsize=8)
        ax.set_xticks(range(len(dtypes)), dtypes)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    first = rows[0]
    fig.suptitle(f"{first['gpu']}, torch {first['torch']}, Triton {first['triton']}, {saved['date']}: "
                 f"80 heads x 64, dstate 128, chunk 256, request {'/'.join(map(str, saved['request']))}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", nargs="?")
    parser.add_argument("--kernel", action="append", help="NAME=MODULE:FN@WARMUP_MODULE:FN (repeatable)")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32")
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--from", dest="from_json", help="plot a saved RESULT.json instead of running")
    parser.add_argument("--plot", help="write a PNG chart (with --from)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        if not args.plot:
            parser.error("--from needs --plot PNG")
        plot(saved, args.plot)
        return
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    rows, failed = [], 0
    for entry in args.kernel or DEFAULT_KERNELS:
        name, _, spec = entry.partition("=")
        kernel, _, warmup = spec.partition("@")
        for short in args.dtypes.split(","):
            env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="bench-peers-"))
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", kernel, warmup, DTYPES[short]], env=env,
                                      capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                proc = None
            if proc is None or proc.returncode != 0:
                failed += 1
                why = "timed out" if proc is None else proc.stderr.strip().splitlines()[-1:]
                print(f"{name} {short}: FAILED {why}", flush=True)
                rows.append({"name": name, "dtype": short, "failed": str(why)})
                continue
            row = {"name": name, "dtype": short, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{name:8} {short}: warmup {row['warmup_s']:6.1f}s {row['warmup_binaries']:3d} binaries | first "
                  f"{row['first_ms']:8.2f} ms ({row['first_events']} events) | steady {row['steady_ms']:.3f} ms",
                  flush=True)
    if args.result:
        with open(args.result, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), "layer": LAYER, "request": REQUEST, "rows": rows}, fh,
                      indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
