#!/usr/bin/env bash
# Copy the peers' SSD ops files from the installed releases in .peers/venv into .peers/ops/,
# laid out as importable packages (vllm_ssd_ops, mamba_ssd_ops), for a GPU machine that has no
# network. .peers/ is git-ignored: this is their code and is never committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
site=$(.peers/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf .peers/ops; mkdir -p .peers/ops
.peers/venv/bin/python benchmarks/peers/copy_ops.py "$site" .peers/ops
ls -R .peers/ops | head -40
