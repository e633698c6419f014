#!/usr/bin/env bash
# One device-tool call that checks everything GPU-facing and writes results under $OUT:
#   tests.log    the whole test suite (GPU tests included) on the device's torch/triton
#   suite.log    the conformance suite on the bundled kernel, all dtypes, real launches
#   suite.json   its pytest-ssd JSON report
#   latency.json benchmarks/bench_latency.py (fresh process per scenario)
#   recorder.json benchmarks/bench_recorder.py (launch overhead, compile-only prediction)
#   bench.json   benchmarks/bench_kernel.py (steady state, first request, warmup; fresh processes)
#   probe.json   benchmarks/probe_first_request.py (where a request's wall time goes, idle vs busy GPU)
#   host.json    benchmarks/probe_first_request.py --host (host time per step of a warm call, per launch path)
#   gpu.log      only the gpu-marked tests (a quicker subset of tests)
#   peers_*.json the suite on vLLM's released ops (correctness, warmth verdicts with real launches,
#                latency) and mamba-ssm's; needs .peers/ops (benchmarks/peers/copy_ops.sh; carry ".peers/ops")
#   peers.json   benchmarks/bench_peers.py: our kernel beside vLLM's ops, fresh processes, 3 dtypes;
#                ours in PEERS_REPEAT (3) processes per dtype, medians; fails when one slips >10% against PEERS_BASELINE (default: the committed
#                benchmarks/results/h200_bench_peers.json; benchmarks/README.md, "Regression guard")
#   fp32.json    benchmarks/fp32_precision.py (fp32 dot precision: time, error, warmup)
#   variants.json benchmarks/kernel_variants.py (16-bit kernel variants: time per kernel, accuracy)
# Usage (device tool): bash benchmarks/gpu_check.sh [tests|gpu|suite|fp32|variants|latency|recorder|kernel|probe|host|peers|benchpeers ...]
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-tests suite latency recorder}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
# The image has no network: install our package (entry point included) without its dependencies.
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 \
  || { tail -5 "$OUT/pip.log"; echo "installing the package failed"; exit 1; }
status=0
for step in $steps; do
  echo "=== $step"
  case $step in
    tests)    python3 -m pytest -p pytest_ssd -n 8 -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/tests.log" ;;
    gpu)      python3 -m pytest -p pytest_ssd -m gpu -n 4 -q -p no:cacheprovider -rs tests 2>&1 | tee "$OUT/gpu.log" ;;
    peers)    bash benchmarks/peers/gpu_suite.sh "$OUT" ;;
    benchpeers) PYTHONPATH="$PWD/.peers/ops:$PWD/tests/peers:$PYTHONPATH" \
                PEER_VLLM_ENTRY=vllm_ssd_ops.ssd_combined:mamba_chunk_scan_combined_varlen \
                python3 benchmarks/bench_peers.py "$OUT/peers.json" --timeout 240 --repeat "${PEERS_REPEAT:-3}" \
                  --baseline "${PEERS_BASELINE:-benchmarks/results/h200_bench_peers.json}" 2>&1 | tail -40 ;;
    suite)    python3 -m pytest -p pytest_ssd --pyargs pytest_ssd.suite -q -p no:cacheprovider -rs \
                --ssd-report "$OUT/suite.json" --ssd-manifest "$OUT/manifest_gpu.json" \
                --ssd-manifest-check pytest_ssd/suite/manifest_cuda90.json 2>&1 | tee "$OUT/suite.log" ;;
    fp32)     python3 benchmarks/fp32_precision.py "$OUT/fp32.json" 2>&1 | tail -14 ;;
    variants) python3 benchmarks/kernel_variants.py "$OUT/variants.json" ${VARIANTS:+--only "$VARIANTS"} 2>&1 | tail -40 ;;
    latency)  python3 benchmarks/bench_latency.py "$OUT/latency.json" --rounds 3 2>&1 | tail -12 ;;
    recorder) python3 benchmarks/bench_recorder.py "$OUT/recorder.json" 2>&1 | tail -6 ;;
    kernel)   python3 benchmarks/bench_kernel.py "$OUT/bench.json" --timeout 200 --repeat 2 2>&1 | tail -12 ;;
    probe)    python3 benchmarks/probe_first_request.py "$OUT/probe.json" --children 3 2>&1 | tail -24 ;;
    host)     python3 benchmarks/probe_first_request.py --host "$OUT/host.json" 2>&1 | tail -24 ;;
    *) echo "unknown step $step"; false ;;
  esac
  rc=$?; [ $rc -ne 0 ] && { echo "step $step failed: $rc"; status=1; }
done
exit $status
