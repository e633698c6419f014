"""Launch-config variants of chunk_scan and chunk_state: device time and accuracy, side by side.

    python benchmarks/kernel_variants.py RESULT.json [--dtypes bfloat16,float16,float32] [--only NAME,...]

Workload (the anchors'): 80 heads x 64, dstate 128, 1 group, chunk 256, float32 states; one
request = 4 sequences of 1000/2048/517/3000 tokens. One process: each variant is a config
override (``kernels.configs.overridden``), so it compiles binaries of its own. Per variant:

- device time per kernel and call (``torch.profiler``, 20 calls) and the whole call's
  ``do_bench`` median;
- accuracy on a request with initial states, for the layer as built and with slow decay
  (|A| in [0.01, 0.11]): the largest share of the allowed error ``atol + rtol * |ref|`` used by
  ``out`` and by the final states against the float64 reference (<= 1 passes the dtype's
  tolerance in ``pytest_ssd.assertions.TOLERANCES``), and whether anything is not finite.

The variants (``variants``): this round's changes. Without CUDA it prints why and
writes ``{"skipped": ...}``. Earlier rounds (results/h200_kernel_variants_*.json, docs/kernel.md)
timed register caps and tiles, register prefetching of the k-loop, single 16-bit roundings of
the float32 operands and a branch below the diagonal; their variant lists are in git history.
"""
from __future__ import annotations

import contextlib
import sys

import harness
from workload import LAYER, REQUEST, call_sets, do_bench_ms, gpu_layer, kernel_device_ms, rotating

KERNELS = {"chunk_scan": "_chunk_scan_kernel", "chunk_state": "_chunk_state_kernel",
           "state_passing": "_state_passing_kernel", "bmm_chunk": "_bmm_chunk_kernel"}


def variants(dims) -> dict:
    """name -> {stage: LaunchConfig}: the default first, then changes to one stage each.

    This round (docs/kernel.md, "Per kernel"): bmm's tiles in extra programs of chunk_state's
    launch (``FUSE_BMM``, the default for 16-bit models) against a launch of their own (the
    default for float32), and follow-ups that moved nothing beyond the noise (bmm's BLOCK_K 32,
    state passing at 2 or 8 warps: ..._fused_bmm_followups.json). Earlier rounds: state passing's
    loads one chunk ahead and its block size (results/h200_kernel_variants_fused_bmm_prefetch.json:
    not kept), bf16 pieces rounded two
    per instruction (results/h200_kernel_variants_packed_bf16.json), chunk_scan's factored decay and
    a TF32 state term (..._factored_decay.json), chunk_state's ``SCALE_X`` and tiles
    (..._chunk_state_scale.json), chunk_scan's pipelining and token tile (..._scan_pipelining.json).
    """
    from pytest_ssd.kernels import configs
    from pytest_ssd.kernels.configs import LaunchConfig

    base = configs.default_configs(dims)

    def changed(stage, num_warps=None, **blocks):
        c = base[stage]
        return {stage: LaunchConfig({**c.blocks, **blocks}, num_warps or c.num_warps, c.num_stages, c.maxnreg)}

    fused = base["chunk_state"].blocks["FUSE_BMM"]
    return {"default": {}, f"bmm {'on its own launch' if fused else 'in chunk_state'}":
            changed("chunk_state", FUSE_BMM=not fused),
            "bmm BLOCK_K 32": changed("bmm_chunk", BLOCK_K=32),
            "state passing 8 warps": changed("state_passing", num_warps=8),
            "state passing 2 warps": changed("state_passing", num_warps=2)}


def _share_used(got, ref, tol) -> float:
    return float(f"{((got.double() - ref).abs() / (tol.atol + tol.rtol * ref.abs())).max().item():.3g}")


def _accuracy(torch, cases) -> dict:
    from pytest_ssd.adapters import poisoned_like
    from pytest_ssd.assertions import TOLERANCES
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen

    result = {}
    for name, (layer, inputs, ref_out, ref_states) in cases.items():
        out = poisoned_like(inputs.x)
        states = mamba_chunk_scan_combined_varlen(out=out, **inputs.kernel_kwargs(layer))
        tol = TOLERANCES[layer.dtype]
        result[name] = {"out_used": _share_used(out, ref_out, tol), "states_used": _share_used(states, ref_states, tol),
                        "finite": bool(torch.isfinite(out).all() and torch.isfinite(states).all())}
    return result


def run(dtypes, only) -> dict:
    import torch
    import triton

    from pytest_ssd.kernels import configs
    from pytest_ssd.kernels.configs import LayerDims
    from pytest_ssd.layer import make_ssd_inputs
    from pytest_ssd.reference import ssd_reference

    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        layer = gpu_layer(dtype)
        sets = call_sets(layer, REQUEST, n=4, seed=4000, device="cuda")
        cases = {}
        for case, slow in (("mamba2 decay", False), ("slow decay", True)):
            case_layer = gpu_layer(dtype, slow_decay=slow)
            inputs = make_ssd_inputs(case_layer, REQUEST, seed=9000, with_initial_states=True, device="cuda")
            ref_out, ref_states = ssd_reference(**inputs.reference_kwargs(case_layer), output_dtype=torch.float64)
            cases[case] = (case_layer, inputs, ref_out, ref_states)
        dims = LayerDims(LAYER["nheads"], LAYER["n_groups"], LAYER["head_dim"], LAYER["ssm_state_size"],
                         LAYER["chunk_size"], dtype)
        for name, overrides in variants(dims).items():
            if only and name not in only:
                continue
            with contextlib.ExitStack() as stack:
                for stage, config in overrides.items():
                    stack.enter_context(configs.overridden(stage, config))
                try:
                    kernels = kernel_device_ms(rotating(sets), reps=20)
                    call_ms = do_bench_ms(rotating(sets), warmup=25, rep=200)[1]
                    accuracy = _accuracy(torch, cases)
                except Exception as e:  # a variant that does not compile or fit: report it, go on
                    rows.append({"dtype": dtype_name, "variant": name, "error": f"{type(e).__name__}: {e}"[:300]})
                    print(f"{dtype_name} {name:28s} failed: {rows[-1]['error']}", flush=True)
                    continue
            row = {"dtype": dtype_name, "variant": name,
                   "kernels_ms": {k: kernels.get(v) for k, v in KERNELS.items()}, "call_ms": round(call_ms, 4),
                   "accuracy": accuracy,
                   "overrides": {s: {"blocks": c.blocks, "num_warps": c.num_warps, "num_stages": c.num_stages,
                                     "maxnreg": c.maxnreg}
                                 for s, c in overrides.items()}}
            rows.append(row)
            k = row["kernels_ms"]
            worst = max(max(a["out_used"], a["states_used"]) for a in accuracy.values())
            print(f"{dtype_name} {name:28s} call {call_ms:.4f} | scan {k['chunk_scan']} state {k['chunk_state']} "
                  f"passing {k['state_passing']} bmm {k['bmm_chunk']} | tolerance used {worst:.3f} "
                  f"finite {all(a['finite'] for a in accuracy.values())}", flush=True)
        del sets, cases
    return {"rows": rows, "torch": torch.__version__, "triton": triton.__version__,
            "gpu": torch.cuda.get_device_name()}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("result", nargs="?")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = parser.parse_args()
    if harness.skip_without_cuda(args.result, "kernel variants"):
        return
    only = {n for n in args.only.split(",") if n}
    body = run(args.dtypes.split(","), only)
    harness.write_result(args.result, body)


if __name__ == "__main__":
    sys.exit(main())
