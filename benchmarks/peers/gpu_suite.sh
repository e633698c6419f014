#!/usr/bin/env bash
# The suite on released peers' ops copied into .peers/ops (a GPU machine without network):
#   OUT/peers_vllm.json   vLLM's ops, all dtypes: correctness (CASES), and the warmth verdict (real
#                         launches) after a warmup like vLLM's own (peer_warmups.warm_like_vllm)
#                         in VERDICT_DTYPES
#   OUT/peers_vllm_noinit.json  the same verdict after a warmup without initial states (bf16)
#   OUT/peers_mamba.json  mamba-ssm's batched API: correctness, all dtypes
# Usage: bash benchmarks/peers/gpu_suite.sh OUT
set -uo pipefail
out=$1
[ -d .peers/ops/vllm_ssd_ops ] || { echo "no .peers/ops: run benchmarks/peers/copy_ops.sh and carry .peers/ops"; exit 1; }
export PYTHONPATH="$PWD/.peers/ops:$PWD/tests/peers:${PYTHONPATH:-}"
export PEER_VLLM_ENTRY=vllm_ssd_ops.ssd_combined:mamba_chunk_scan_combined_varlen
# vLLM autotunes every new layer config for ~10-50 s on an H200: a few cases keep this in one call.
CASES=${CASES:-"varlen_mix or initial_states"}
VERDICT_DTYPES=${VERDICT_DTYPES:-bf16}
suite=(python3 -m pytest -p pytest_ssd --pyargs pytest_ssd.suite -q -p no:cacheprovider -rs)
status=0
"${suite[@]}" --ssd-kernel "$PEER_VLLM_ENTRY" --ssd-warmup peer_warmups:warm_like_vllm -k "correctness and ($CASES)" \
  --ssd-report "$out/peers_vllm.json" 2>&1 | tail -12 || status=1
"${suite[@]}" --ssd-kernel "$PEER_VLLM_ENTRY" --ssd-warmup peer_warmups:warm_like_vllm -k coverage \
  --ssd-dtype "$VERDICT_DTYPES" --ssd-report "$out/peers_vllm_verdict.json" 2>&1 | tail -12 || status=1
"${suite[@]}" --ssd-kernel "$PEER_VLLM_ENTRY" --ssd-warmup peer_warmups:warm_without_initial_states \
  --ssd-dtype bf16 -k coverage --ssd-report "$out/peers_vllm_noinit.json" 2>&1 | tail -6
"${suite[@]}" --ssd-kernel mamba_ssm.ops.triton.ssd_combined:mamba_chunk_scan_combined --ssd-kernel-api mamba_ssm \
  --ssd-warmup peer_warmups:warm_mamba_ssm -k "correctness and ($CASES)" --ssd-report "$out/peers_mamba.json" \
  2>&1 | tail -8 || status=1
exit $status
