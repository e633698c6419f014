#!/usr/bin/env bash
# Install released peer kernels into a venv of their own (never a dependency of pytest-ssd):
#   .peers/venv   vLLM (its own CUDA torch and Triton) + mamba-ssm (Triton files only) + pytest-ssd -e
# and copy their SSD ops files into .peers/ops/ (git-ignored) so a GPU machine without network can
# carry them (device tool: carry ".peers/ops").
#   bash benchmarks/peers/setup.sh            # VLLM=0.33.0 MAMBA=2.3.2.post1 by default
# Never commit anything under .peers/: it is their code.
set -euo pipefail
cd "$(dirname "$0")/../.."
VLLM=${VLLM:-0.33.0}
MAMBA=${MAMBA:-2.3.2.post1}
venv=.peers/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
# The machine's local wheel cap (if any) must not pick vLLM's torch for it.
PIP_CONSTRAINT= "$py" -m pip install -q "vllm==$VLLM"
# mamba-ssm: skip its CUDA extension build (and the prebuilt-wheel download, which needs the network
# to GitHub): its Triton ops are plain Python.
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE PIP_CONSTRAINT= "$py" -m pip install -q --no-build-isolation --no-deps "mamba-ssm==$MAMBA"
PIP_CONSTRAINT= "$py" -m pip install -q einops pytest-xdist hypothesis
PIP_CONSTRAINT= "$py" -m pip install -q --no-deps -e .
"$py" - <<'PY'
import importlib.metadata as md
for name in ("vllm", "mamba-ssm", "torch", "triton"):
    print(name, md.version(name))
PY
bash benchmarks/peers/copy_ops.sh
