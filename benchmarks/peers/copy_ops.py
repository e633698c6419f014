"""Copy released peers' SSD ops from an installed site-packages into an ignored folder, importable
without the rest of the peer (a GPU machine here has no network and no vLLM):

    python benchmarks/peers/copy_ops.py SITE_PACKAGES .peers/ops

  .peers/ops/vllm_ssd_ops/   vLLM's ops/ssd_*.py + triton_helpers.py, imports pointed at plain
                             triton and two small stand-ins written here (platform, softplus)
  .peers/ops/mamba_ssm/      mamba-ssm's package as installed (its Triton files are plain Python),
                             with an empty package __init__: the released one imports the CUDA
                             extension (selective_scan_cuda) that MAMBA_SKIP_CUDA_BUILD leaves out

The kernels are theirs and stay out of git (.peers/ is ignored). Then, e.g.
``--ssd-kernel vllm_ssd_ops.ssd_combined:mamba_chunk_scan_combined_varlen`` with
``PYTHONPATH=.peers/ops``.
"""
from __future__ import annotations

import argparse
import ast
import os
import shutil

VLLM_OPS = "vllm/model_executor/layers/mamba/ops"
VLLM_FILES = ("ssd_bmm.py", "ssd_chunk_scan.py", "ssd_chunk_state.py", "ssd_combined.py", "ssd_state_passing.py",
              "triton_helpers.py")
REWRITES = (
    ("from vllm.triton_utils import tl, triton", "import triton\nimport triton.language as tl"),
    ("from vllm.triton_utils import triton", "import triton"),
    ("from vllm.model_executor.layers.mamba.ops.triton_helpers import", "from .triton_helpers import"),
    ("from vllm.platforms import current_platform", "from ._platform import current_platform"),
)
# What the ops ask of vLLM's platform object: enough to answer on a CUDA machine.
PLATFORM = '''"""Stand-in for vllm.platforms.current_platform (written by pytest-ssd's copy_ops.py)."""
import torch


class _Platform:
    def is_cpu(self):
        return False

    def is_cuda(self):
        return torch.cuda.is_available()

    def is_device_capability(self, capability):
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor == capability


current_platform = _Platform()
'''


def _function_source(path: str, name: str) -> str:
    """The first top-level or if-nested ``def name`` of ``path``, with its decorators."""
    text = open(path, encoding="utf-8").read()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
            lines = text.splitlines()[start:node.end_lineno]
            indent = len(lines[0]) - len(lines[0].lstrip())
            return "\n".join(line[indent:] for line in lines) + "\n"
    raise SystemExit(f"{path}: no function {name}: the release changed, update copy_ops.py")


def copy_vllm(site: str, dest: str) -> None:
    src = os.path.join(site, VLLM_OPS)
    out = os.path.join(dest, "vllm_ssd_ops")
    os.makedirs(out)
    for name in VLLM_FILES:
        text = open(os.path.join(src, name), encoding="utf-8").read()
        for old, new in REWRITES:
            text = text.replace(old, new)
        # vLLM's CPU fallback is imported only where the platform is a CPU: never on the stand-in.
        left = [line for line in text.splitlines() if "vllm" in line and "import" in line and ".ops.cpu." not in line]
        if left:
            raise SystemExit(f"{name}: imports of vLLM left after the rewrites: {left}")
        open(os.path.join(out, name), "w", encoding="utf-8").write(text)
    open(os.path.join(out, "_platform.py"), "w", encoding="utf-8").write(PLATFORM)
    softplus = _function_source(os.path.join(src, "mamba_ssm.py"), "softplus")
    open(os.path.join(out, "mamba_ssm.py"), "w", encoding="utf-8").write(
        "import triton\nimport triton.language as tl\n\n\n" + softplus)
    open(os.path.join(out, "__init__.py"), "w").write("")


def copy_mamba_ssm(site: str, dest: str) -> None:
    shutil.copytree(os.path.join(site, "mamba_ssm"), os.path.join(dest, "mamba_ssm"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    with open(os.path.join(dest, "mamba_ssm", "__init__.py"), "w") as fh:
        fh.write("# Emptied by pytest-ssd's copy_ops.py: the released __init__ imports its CUDA extension.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", help="the site-packages holding the installed releases")
    parser.add_argument("dest", help="the folder to copy them into (git-ignored: .peers/ops)")
    args = parser.parse_args()
    copy_vllm(args.site, args.dest)
    copy_mamba_ssm(args.site, args.dest)


if __name__ == "__main__":
    main()
