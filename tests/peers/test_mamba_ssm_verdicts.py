"""The warmth verdict on mamba-ssm's released Triton SSD (batched API), compile-only on a CPU.

Its kernels take the sequence length as a plain integer, so a warmup of one chunk (256 tokens,
divisible by 16) leaves the binaries for other lengths cold: the specialization the anchors
measured (3.5 s, 5 compiles on an H100 after the same-style warmup)."""
import json
import os

import pytest

from peer_warmups import MAMBA_ENTRY

pytestmark = pytest.mark.peer_mamba_ssm
HERE = os.path.dirname(__file__)


def test_a_one_chunk_warmup_leaves_the_seqlen_specializations_cold(pytester):
    pytester._monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    result = pytester.runpytest_subprocess(
        "-p", "pytest_ssd", "--pyargs", "pytest_ssd.suite", "-k", "coverage", "-p", "no:cacheprovider",
        "--ssd-dtype", "bf16", "--ssd-kernel", MAMBA_ENTRY, "--ssd-kernel-api", "mamba_ssm",
        "--ssd-warmup", "peer_warmups:warm_mamba_ssm", "--ssd-requests", "17;256,1", "--ssd-report", "r.json",
        timeout=1800)
    result.assert_outcomes(failed=1)
    (verdict,) = [v for w in json.loads((pytester.path / "r.json").read_text())["workers"] for v in w["verdicts"]]
    assert verdict["cold"], verdict
    specializations = [line for line in verdict["cold"] if "not divisible by 16; warmup used 256" in line
                       or "equal to 1" in line]
    assert specializations, verdict["cold"]
    assert any("17" in fix for fix in verdict["fixes"]), verdict["fixes"]
