"""First-request latency and the warmup bill, per scenario, each in a fresh process (GPU).

Scenarios (for every --kernel/--warmup pair given; default: the bundled kernel and warmup):
  cold       no warmup, empty Triton cache: the first request pays every compile and autotune
  warmup     warmup with an empty cache, then the first request and the steady state (a warmup
             with a ``max_num_tokens`` parameter, as the bundled one, gets 8192)
  persisted  warmup again in a new process with the cache dir primed by `warmup` and persisted
             autotune results (TRITON_CACHE_AUTOTUNING=1, Triton 3.4+), then the first request

Workload (the anchors'): Mamba2-2.7B-like layer, 80 heads x 64, dstate 128, 1 group, chunk 256,
bf16 inputs, fp32 states; request = 4 sequences of 1000/2048/517/3000 tokens, first without
then with initial states.

    python benchmarks/bench_latency.py OUT.json [--kernel mod:fn --warmup mod:fn ...] [--rounds N] [--plot OUT.png]
    python benchmarks/bench_latency.py --plot OUT.png --from OUT.json      # plot a saved run
"""
from __future__ import annotations

import argparse
import inspect
import sys
import tempfile

import harness
from workload import LAYER, MAX_NUM_TOKENS, REQUEST


def child(kernel_spec: str, warmup_spec: str, scenario: str) -> dict:
    """One scenario in this fresh process."""
    import time

    import torch

    from pytest_ssd.adapters import SSDKernel, detect_api, poisoned_like
    from pytest_ssd.events import record_triton
    from pytest_ssd.latency import measure_latency
    from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
    from pytest_ssd.options import load_callable

    fn = load_callable(kernel_spec, "--kernel")
    kernel = SSDKernel(fn=fn, api=detect_api(fn) or "vllm", name=kernel_spec)
    layer = make_mixer2_layer(**LAYER, dtype=torch.bfloat16, state_dtype=torch.float32, seed=0,
                              device="cuda")
    result: dict = {"scenario": scenario, "kernel": kernel_spec, "warmup": warmup_spec}
    # The requests are drawn before the warmup, so the first one follows it at once: drawing
    # them takes seconds of CPU time, long enough for an idle GPU to drop its clocks, and that
    # costs any kernel (bench_kernel.py's matmul control) rather than telling a cold one apart.
    requests = {init: [(inputs, poisoned_like(inputs.x)) for inputs in
                       (make_ssd_inputs(layer, REQUEST, seed=10 + i, with_initial_states=init) for i in range(4))]
                for init in (False, True)}
    torch.cuda.synchronize()
    if scenario != "cold":
        warmup = load_callable(warmup_spec, "--warmup")
        sized = "max_num_tokens" in inspect.signature(warmup).parameters
        with record_triton() as rec:
            start = time.perf_counter()
            warmup(layer, max_num_tokens=MAX_NUM_TOKENS) if sized else warmup(layer)
            torch.cuda.synchronize()
            result["warmup_s"] = round(time.perf_counter() - start, 3)
        result["warmup_compiles"] = len(rec.compiles)
        result["warmup_compiles_from_disk"] = sum(e.source == "disk" for e in rec.compiles)
        result["warmup_autotunes"] = len(rec.autotunes)
        result["warmup_autotunes_persisted"] = sum(e.source == "persisted" for e in rec.autotunes)
    for init in (False, True):
        lat = measure_latency(lambda inputs, out: kernel.run(layer, inputs, out), requests[init],
                              device=torch.device("cuda"), repeats=100, warmup_runs=10)
        tag = "init" if init else "noinit"
        result[f"first_ms_{tag}"] = round(lat.first_ms, 4)
        result[f"first_compiles_{tag}"] = lat.first_call_compiles
        result[f"first_autotunes_{tag}"] = lat.first_call_autotunes
        result[f"first_events_{tag}"] = lat.first_call_events
        result[f"steady_median_ms_{tag}"] = round(lat.steady_median_ms, 4)
        result[f"steady_p20_p80_ms_{tag}"] = [round(lat.steady_p20_ms, 4), round(lat.steady_p80_ms, 4)]
        result[f"ratio_{tag}"] = round(lat.ratio, 3)
    return result


def run_child(kernel: str, warmup: str, scenario: str, cache_dir: str, persist: bool, timeout: int) -> dict:
    """One scenario in a fresh process on ``cache_dir``; ``persist``: with TRITON_CACHE_AUTOTUNING=1."""
    try:
        return harness.run_fresh(__file__, ["--child", scenario, "--kernel", kernel, "--warmup", warmup],
                                 cache_dir=cache_dir, env={"TRITON_CACHE_AUTOTUNING": "1"} if persist else {},
                                 timeout=timeout)
    except harness.ChildFailed as failure:
        return {"scenario": scenario, "kernel": kernel, "error": failure.reason, "output": failure.output}


def table(results: list) -> str:
    head = (f"{'kernel':<28} {'scenario':<10} {'warmup s':>8} {'compiles':>9} | {'1st ms':>9} {'cmp':>3} {'tune':>4} | "
            f"{'1st init':>9} {'cmp':>3} | {'steady ms':>9} {'ratio':>6}")
    rows = [head, "-" * len(head)]
    for r in results:
        name = r["kernel"].split(":")[-1][:28]
        if "error" in r:
            rows.append(f"{name:<28} {r['scenario']:<10} ERROR {r['error'][:80]}")
            continue
        warm = f"{r['warmup_s']:8.2f}" if "warmup_s" in r else f"{'-':>8}"
        comp = (f"{r['warmup_compiles']:>4}({r['warmup_compiles_from_disk']}d)" if "warmup_compiles" in r
                else f"{'-':>9}")
        scenario = r["scenario"] + (f"#{r['round']}" if r.get("round", 1) > 1 else "")
        rows.append(f"{name:<28} {scenario:<10} {warm} {comp:>9} | {r['first_ms_noinit']:9.3f} "
                    f"{r['first_compiles_noinit']:>3} {r['first_autotunes_noinit']:>4} | {r['first_ms_init']:9.3f} "
                    f"{r['first_compiles_init']:>3} | {r['steady_median_ms_noinit']:9.4f} {r['ratio_noinit']:6.2f}")
    return "\n".join(rows)


def ratio_summary(results: list) -> str:
    """First request / steady over every warmed process, per kernel: the first request after the
    warmup, and the first with initial states (which comes after the other's steady state)."""
    import statistics

    lines = []
    for kernel in dict.fromkeys(r["kernel"] for r in results):
        warmed = [r for r in results if r["kernel"] == kernel and "warmup_s" in r and "error" not in r]
        for tag, label in (("noinit", "first request after warmup"), ("init", "first request with initial states")):
            ratios = [r[f"ratio_{tag}"] for r in warmed]
            if ratios:
                lines.append(f"{kernel}: {label} / steady, {len(ratios)} processes: median "
                             f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x")
    return "\n".join(lines)


def plot(results: list, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    labels = [f"{r['kernel'].split(':')[-1][:22]}\n{r['scenario']}" for r in ok]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(ok)), 4.5))
    xs = range(len(ok))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [r["first_ms_noinit"] for r in ok], width, label="first request")
    ax.bar([x + width / 2 for x in xs], [r["first_ms_init"] for r in ok], width, label="first request with initial states")
    for x, r in zip(xs, ok):
        ax.hlines(r["steady_median_ms_noinit"], x - 0.45, x + 0.45, colors="black", linestyles="dashed")
    ax.set_yscale("log")
    ax.set_ylabel("wall time, ms (log); dashed: steady-state median")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("out", nargs="?", help="write the JSON results here")
    parser.add_argument("--kernel", action="append", help="module:callable of an SSD entry point (repeatable)")
    parser.add_argument("--warmup", action="append", help="module:callable of its warmup (one per --kernel)")
    parser.add_argument("--timeout", type=int, default=280, help="seconds per scenario process")
    parser.add_argument("--plot", help="write a PNG of first-request latency per scenario")
    parser.add_argument("--from", dest="from_json", help="plot/print a saved JSON instead of running")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the warmup and persisted scenarios in this many fresh cache dirs "
                             "(a first request is one sample per process)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds: expected a positive count, got {args.rounds}")
    if args.child:
        harness.send_to_parent(child(args.kernel[0], args.warmup[0], args.child))
        return
    if args.from_json:
        data = harness.load_result(args.from_json)
    else:
        from pytest_ssd.options import DEFAULT_KERNEL, DEFAULT_WARMUP

        kernels = args.kernel or [DEFAULT_KERNEL]
        warmups = args.warmup or [DEFAULT_WARMUP]
        if len(kernels) != len(warmups):
            parser.error(f"--kernel given {len(kernels)} times but --warmup {len(warmups)}: give one warmup per kernel")
        if harness.skip_without_cuda(args.out, "this benchmark times first requests on a GPU"):
            return
        results = []
        for kernel, warmup in zip(kernels, warmups):
            with tempfile.TemporaryDirectory() as cold:
                results.append(run_child(kernel, warmup, "cold", cold, False, args.timeout))
            for round_ in range(1, args.rounds + 1):
                with tempfile.TemporaryDirectory() as shared:
                    for scenario in ("warmup", "persisted"):
                        results.append(dict(run_child(kernel, warmup, scenario, shared, True, args.timeout),
                                            round=round_))
        data = harness.write_result(args.out, {"request": REQUEST, "results": results})
    env = data.get("environment", data)  # files before the header kept these keys at the top
    print(f"{env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}")
    print(table(data["results"]))
    print(ratio_summary(data["results"]))
    failed = [r["scenario"] for r in data["results"] if "error" in r]
    if failed and not args.from_json:
        sys.exit(f"failed scenarios: {failed}")
    cold = [r["scenario"] for r in data["results"] if r["scenario"] != "cold" and "error" not in r
            and any(r[f"first_{what}_{tag}"] for what in ("compiles", "autotunes") for tag in ("noinit", "init"))]
    if cold and not args.from_json:  # the regression this benchmark exists to catch
        sys.exit(f"a first request after the warmup compiled or autotuned: {cold}")
    if args.plot:  # one bar group per scenario: the first round's
        plot([r for r in data["results"] if r.get("round", 1) == 1], args.plot,
             f"first request after each scenario, {env['device']}, triton {env['triton']}")


if __name__ == "__main__":
    main()
