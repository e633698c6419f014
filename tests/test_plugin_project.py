"""What the project promises about itself holds: one version, the license, the report schema in
docs/report.md, every option in the README, and the README's "6 binaries per layer config"."""
import json
import re
from pathlib import Path

import pytest_ssd
from pytest_ssd.options import OPTIONS
from pytest_ssd.report import REPORT_FORMAT, SessionReport, WorkerReport

ROOT = Path(__file__).resolve().parent.parent


def test_one_version_in_the_package_pyproject_and_changelog():
    pyproject = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert pytest_ssd.__version__ == pyproject
    assert f"## {pyproject}" in (ROOT / "CHANGELOG.md").read_text()


def test_license_is_the_full_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_docs_report_md_names_the_format_and_every_totals_key():
    doc = (ROOT / "docs" / "report.md").read_text()
    assert f'"{REPORT_FORMAT}"' in doc
    totals = SessionReport(seed=0, settings={}, workers=[WorkerReport(worker="main")]).totals()
    missing = [key for key in totals if f"`{key}`" not in doc]
    assert not missing, f"docs/report.md lacks totals keys {missing}"
    for key in ("warmups", "cold", "latency", "unused_binaries", "enforced_by", "layer", "name", "outcome"):
        assert f"`{key}`" in doc, key


def test_readme_lists_every_option():
    readme = (ROOT / "README.md").read_text()
    for opt in OPTIONS:
        assert f"`{opt.flag}" in readme and f"`{opt.env}`" in readme and f"`{opt.ini}`" in readme, opt.flag


WARM_TWO_DTYPES = """
    import torch

    def test_warm(mixer2_layer, ssd_warmup):
        for dtype in (torch.float32, torch.float16):
            ssd_warmup(mixer2_layer(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16, dtype=dtype))
"""


def test_six_binaries_per_layer_config_in_a_fresh_process_three_for_a_second_dtype(pytester):
    """The README's promise, and the reason the summary shows 3 for the second dtype: the two
    state-passing binaries see only the (shared) fp32 state dtype, so the fp32 warmup compiled them,
    and a 16-bit model's bmm tiles run inside its chunk_state binary."""
    pytester.makepyfile(WARM_TWO_DTYPES)
    result = pytester.runpytest_subprocess("--ssd-compile-only", "cuda:90", "--ssd-report=r.json",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    fp32, fp16 = json.loads((pytester.path / "r.json").read_text())["workers"][0]["warmups"]
    assert (fp32["compiles"], fp16["compiles"]) == (6, 3)
    assert sum("_state_passing_kernel" in b for b in fp32["binaries"]) == 2
    assert not any("_state_passing_kernel" in b for b in fp16["binaries"])
    readme = (ROOT / "README.md").read_text()
    assert "6 binaries per float32 layer config in a fresh process, 5 per 16-bit one" in readme
    assert "the summary counts 3" in readme
