"""Metadata-write cases run as scripts, each in a process of its own (a crash, or an illegal
address on a GPU, must fail one test only): the script's prelude and its runner, for the CPU
cases (test_bad_inputs.py) and their GPU twins (test_metadata_gpu.py)."""
from __future__ import annotations

import os
import subprocess
import sys

_PRELUDE = """
import torch
from pytest_ssd.adapters import poisoned_like
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
layer = make_mixer2_layer({layer})
inputs = make_ssd_inputs(layer, {seqlens}, seed=3)
kw = inputs.kernel_kwargs(layer)
if {foreign}:
    kw.update({{k: kw[k].clone() for k in ("cu_seqlens", "cu_chunk_seqlens", "seq_idx", "last_chunk_indices")}})
def run():
    out = poisoned_like(inputs.x)
    mamba_chunk_scan_combined_varlen(out=out, **kw)
    {sync}
    return out
"""


def prelude(*, layer: str, seqlens: list, foreign: bool, cuda: bool) -> str:
    """The script's start: a layer (``make_mixer2_layer``'s keyword arguments, as source), inputs of
    ``seqlens`` tokens, ``kw`` (the kernel's arguments; with ``foreign`` its metadata cloned, so
    the kernel checks it instead of trusting ``chunk_metadata``) and ``run()``, one call on a
    poisoned ``out`` (synchronized on a GPU) that returns it."""
    return _PRELUDE.format(layer=layer, seqlens=seqlens, foreign=foreign,
                           sync="torch.cuda.synchronize()" if cuda else "")


def run_script(script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter that imports this checkout's pytest_ssd."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
