"""On a GPU: metadata written on the device behind the kernel's back never reaches the kernels, bad
metadata is an error, and the warm path never waits for the device.

Skipped without CUDA. Each write case runs in a process of its own: an illegal address would
poison the CUDA context (and could end the run), so it must fail one test only. Run them under
``compute-sanitizer --tool memcheck`` too: no report is expected.
"""
from __future__ import annotations

import pytest
import torch

from _metadata_scripts import prelude, run_script
from pytest_ssd.adapters import poisoned_like
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs

pytestmark = pytest.mark.gpu  # the plugin skips it without CUDA

SEED = 977
GPU_LAYER = dict(nheads=16, head_dim=64, ssm_state_size=128, chunk_size=64, seed=SEED, dtype=torch.bfloat16)


def _prelude(foreign: bool) -> str:
    return prelude(layer='nheads=16, head_dim=64, ssm_state_size=128, chunk_size=64, seed=3, dtype=torch.bfloat16, '
                         'device="cuda"', seqlens=[300, 1, 700], foreign=foreign, cuda=True)

# GPU-side writes: a kernel (through a DLPack alias or .data) does not bump the tensor's version.
DEVICE_WRITES = {
    "end offset far past T": "torch.from_dlpack(kw['cu_chunk_seqlens'])[-1] += 10**6",
    "every offset at int32 max": "kw['cu_chunk_seqlens'].data.fill_(2**31 - 1)",
    "seq_idx to 0": "kw['seq_idx'].data[1:] = 0",
    "last chunk index huge": "torch.from_dlpack(kw['last_chunk_indices']).fill_(10**6)",
    "negative offsets": "kw['cu_chunk_seqlens'].data.neg_()",
}


@pytest.mark.parametrize("foreign", [False, True], ids=["chunk_metadata", "foreign"])
@pytest.mark.parametrize("write", list(DEVICE_WRITES), ids=list(DEVICE_WRITES))
def test_device_writes_after_the_check_never_reach_the_kernels(write, foreign):
    done = run_script(_prelude(foreign) + f"""
first = run()
{DEVICE_WRITES[write]}
torch.cuda.synchronize()
second = run()
assert torch.equal(first, second) and not second.isnan().any(), "the result moved"
print("OK")
""")
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), \
        f"exit {done.returncode}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("write", list(DEVICE_WRITES), ids=list(DEVICE_WRITES))
def test_bad_device_metadata_before_the_first_call_is_an_error(write):
    done = run_script(_prelude(True) + f"""
{DEVICE_WRITES[write]}
try:
    run()
except ValueError as e:
    print("ValueError:", e)
""")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ValueError: " in done.stdout and ("disagrees with cu_seqlens" in done.stdout
                                               or "expected offsets in [0, 2**31 - 1]" in done.stdout), done.stdout


@pytest.mark.parametrize("foreign", [False, True], ids=["chunk_metadata", "foreign"])
def test_warm_calls_never_synchronize(foreign):
    """The sealed-metadata lookup is host-only: with torch's sync debug mode set to error, a warm
    call (metadata built by chunk_metadata, or foreign metadata already checked) does not sync."""
    layer = make_mixer2_layer(**GPU_LAYER, device="cuda")
    inputs = make_ssd_inputs(layer, [300, 1, 700], seed=SEED, with_initial_states=True)
    kwargs = inputs.kernel_kwargs(layer)
    if foreign:
        kwargs.update({k: kwargs[k].clone() for k in ("cu_seqlens", "cu_chunk_seqlens", "seq_idx",
                                                      "last_chunk_indices")})
    out = poisoned_like(inputs.x)
    mamba_chunk_scan_combined_varlen(out=out, **kwargs)  # compiles; foreign metadata is checked here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            mamba_chunk_scan_combined_varlen(out=out, **kwargs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
