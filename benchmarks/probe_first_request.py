"""Where does the first request's extra time go after a good warmup? (GPU probe, one process each)

Times, in fresh processes: the first request after warmup; the same request warm after the GPU
sat idle 0.25 s; warm back to back. Variant "reserve": the warmup is followed by one allocation
of the request's workspace size, so the caching allocator already holds the block.

    python benchmarks/probe_first_request.py [plain|reserve]
"""
import json
import statistics
import subprocess
import sys
import time


def child(variant: str) -> dict:
    import torch

    from pytest_ssd.adapters import poisoned_like
    from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen as kernel
    from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
    from pytest_ssd.suite.cases import COVERAGE_LAYER
    from pytest_ssd.warmup import warmup_ssd_kernels

    layer = make_mixer2_layer(**COVERAGE_LAYER, dtype=torch.bfloat16, state_dtype=torch.float32, device="cuda")
    warmup_ssd_kernels(layer)
    sets = [make_ssd_inputs(layer, [1000, 2048, 517, 3000], seed=i) for i in range(4)]
    outs = [poisoned_like(s.x) for s in sets]
    if variant == "reserve":
        torch.empty(40 * 1024 * 1024, dtype=torch.float32, device="cuda")  # ~160 MB, freed to the cache

    def call(i):
        torch.cuda.synchronize()
        t = time.perf_counter()
        kernel(out=outs[i % 4], **sets[i % 4].kernel_kwargs(layer))
        torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1e3

    time.sleep(0.25)
    first = call(0)
    idle = []
    for i in range(1, 11):
        time.sleep(0.25)
        idle.append(call(i))
    busy = [call(i) for i in range(40)]
    return {"variant": variant, "first_ms": round(first, 3), "idle_warm_median_ms": round(statistics.median(idle), 3),
            "back_to_back_median_ms": round(statistics.median(busy), 3)}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        for variant in (sys.argv[1:] or ["plain", "reserve", "plain", "reserve"]):
            out = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True)
            print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else out.stderr[-2000:])
