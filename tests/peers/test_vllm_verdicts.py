"""The warmth verdicts on vLLM's released SSD kernels, through the suite itself, all dtypes in one
session, compile-only on a CPU (real launches on a GPU). Slow: each verdict compiles vLLM's
autotune candidates from an empty cache (about a minute per dtype on a 2-core CPU)."""
import json
import os

import pytest

from peer_warmups import ENTRY

pytestmark = pytest.mark.peer_vllm
HERE = os.path.dirname(__file__)


def _suite(pytester, warmup: str, *extra: str) -> tuple:
    # The verdict's fresh processes import peer_warmups too: through PYTHONPATH.
    pytester._monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    result = pytester.runpytest_subprocess(
        "-p", "pytest_ssd", "--pyargs", "pytest_ssd.suite", "-k", "coverage", "-p", "no:cacheprovider",
        "--ssd-kernel", ENTRY, "--ssd-warmup", warmup, "--ssd-report", "report.json", *extra, timeout=1800)
    with open(pytester.path / "report.json") as fh:
        report = json.load(fh)
    verdicts = [v for w in report["workers"] for v in w["verdicts"]]
    return result, verdicts


def test_vllm_own_warmup_is_warm(pytester):
    result, verdicts = _suite(pytester, "pytest_ssd.recipes.vllm:warm_ssd")
    result.assert_outcomes(passed=3)
    assert [v["cold"] for v in verdicts] == [[], [], []]
    assert all(v["candidate_binaries"] > 0 for v in verdicts)  # its autotuners' price, counted apart
    assert all(v["unused"] == [] for v in verdicts)


def test_warmup_without_initial_states_names_those_binaries_in_every_dtype(pytester):
    result, verdicts = _suite(pytester, "peer_warmups:warm_without_initial_states")
    result.assert_outcomes(failed=3)
    assert len(verdicts) == 3
    for v in verdicts:
        assert v["cold"], v["layer"]
        for line in v["cold"]:
            assert line.startswith(("_state_passing_fwd_kernel", "_chunk_scan_fwd_kernel")), line
            if " autotune key (" in line:  # initial_states joins the autotune key as one more tensor
                assert "initstates_ptr is a fp32 tensor; warmup passed no tensor there" in line, line
            else:
                assert "HAS_INITSTATES=True never warmed" in line, line
            assert " vs *" not in line, line  # never blamed on the model dtype (x_ptr: *fp16 vs *fp32)
        assert any("initial_states=True" in fix for fix in v["fixes"])


def test_warmup_without_the_serving_path_fails_naming_has_final_states(pytester):
    result, verdicts = _suite(pytester, "peer_warmups:warm_without_final_states_out")
    result.assert_outcomes(failed=3)
    for v in verdicts:
        assert v["cold"] and all(line.startswith("_state_passing_fwd_kernel") for line in v["cold"]), v["cold"]
        binaries = [line for line in v["cold"] if " autotune key (" not in line]
        assert binaries and all("HAS_FINAL_STATES=True never warmed" in line for line in binaries), binaries
        assert all("final_states_out" in fix for fix in v["fixes"])
