"""pytest_ssd.manifest: the warmup manifest, its diff against a committed one, and the budget.

The inner sessions judge the bundled kernel on two small layer configs (compile-only cuda:90,
real Triton compiles, one fresh process per verdict); a warmup that also warms the gated
branch (``with_z=True``) stands for a kernel change that adds a constexpr branch.
"""
from __future__ import annotations

import json

import pytest
import torch

from pytest_ssd import manifest as mf
from pytest_ssd.report import VerdictRecord

TOY = """
import pytest
import torch

LAYERS = {"narrow": dict(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16),
          "wide": dict(nheads=8, head_dim=16, ssm_state_size=16, chunk_size=16)}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_coverage(name, ssd_verdict):
    ssd_verdict(dict(LAYERS[name], dtype=torch.float32, state_dtype=torch.float32))
"""

WARMUPS = """
import os

from pytest_ssd.warmup import warmup_ssd_kernels


def warmup(layer):
    warmup_ssd_kernels(layer)
    if os.environ.get("TOY_WARMS_THE_GATE"):  # the edit under review: a new constexpr branch (HAS_Z=True)
        warmup_ssd_kernels(layer, with_z=True)
"""

FAST = ("-p", "pytest_ssd", "-p", "no:cacheprovider", "--ssd-device", "cpu", "--ssd-requests", "17",
        "--ssd-warmup", "toy_warmups:warmup")


@pytest.fixture
def toy(pytester):
    pytester.makepyfile(test_toy=TOY, toy_warmups=WARMUPS)
    pytester.syspathinsert()
    return pytester


def compared(manifest: dict) -> dict:
    """A manifest without what varies run to run."""
    return {**manifest, "layers": [{k: v for k, v in e.items() if k != "measured"} for e in manifest["layers"]]}


def test_a_manifest_is_written_and_is_stable_across_runs_and_xdist(toy):
    first, second = toy.path / "first.json", toy.path / "second.json"
    result = toy.runpytest(*FAST, "--ssd-seed", "1", f"--ssd-manifest={first}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*warmup manifest: 2 layer config(s), 12 binaries written to *first.json"])
    data = json.loads(first.read_text())
    assert data["format"] == mf.FORMAT and data["triton"] == __import__("triton").__version__
    assert [e["layer"] for e in data["layers"]] == ["fp32/fp32 h4x16 n16 g1 c16", "fp32/fp32 h8x16 n16 g1 c16"]
    for entry in data["layers"]:
        assert entry["counts"] == {"binaries": 6, "autotune_candidates": 0, "autotune_keys": 0,
                                   "configs_benchmarked": 0}
        kernels = [b["kernel"] for b in entry["binaries"]]
        assert kernels == sorted(kernels) and kernels.count("_chunk_scan_kernel") == 2
        assert {b["constexprs"]["HAS_INITSTATES"] for b in entry["binaries"] if "HAS_INITSTATES" in b["constexprs"]} \
            == {False, True}
        assert all(b["target"] == "cuda:90" for b in entry["binaries"])
        assert entry["measured"]["where"] == "compile-only cuda:90" and entry["measured"]["compile_seconds"] > 0

    # Another seed, two xdist workers: the same manifest, and the check against the first passes.
    result = toy.runpytest_subprocess(*FAST, "-n", "2", "--ssd-seed", "2", f"--ssd-manifest={second}",
                                      f"--ssd-manifest-check={first}")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*fp32/fp32 h4x16 n16 g1 c16 [[]compile-only cuda:90, gw?[]]: warm, * calls | warmup *s, 6 binaries, 0 configs",
        "*fp32/fp32 h8x16 n16 g1 c16 [[]compile-only cuda:90, gw?[]]: warm, * calls | warmup *s, 6 binaries, 0 configs",
        "*warmup bill: 2 warmup(s) on 2 worker(s), 12 binaries, 0 autotune configs benchmarked, *s compiling (compile-only)",
        "*warmup manifest matches *first.json: 2 layer config(s), 12 binaries",
    ])
    again = json.loads(second.read_text())
    assert compared(again) == compared(data)
    assert mf.dumps(compared(again)) == mf.dumps(compared(data))  # byte for byte, but the seconds


def test_a_new_constexpr_branch_fails_the_check_until_it_is_accepted(toy, monkeypatch):
    committed = toy.path / "manifest.json"
    check = ("-k", "narrow", f"--ssd-manifest-check={committed}")
    result = toy.runpytest(*FAST, *check, "--ssd-manifest-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*warmup manifest updated: *manifest.json accepts the changes of 1 layer config(s):",
                                 "*+ layer fp32/fp32 h4x16 n16 g1 c16: 6 binaries, 0 autotune keys "
                                 "(not in the committed manifest)"])
    before = committed.read_text()

    monkeypatch.setenv("TOY_WARMS_THE_GATE", "1")  # the verdict's fresh process inherits it
    result = toy.runpytest(*FAST, *check)
    result.assert_outcomes(passed=1)  # the verdict is warm: the warmup only does more
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*WARMUP MANIFEST CHANGED: this session's warmups differ from *manifest.json:",
        "*  layer fp32/fp32 h4x16 n16 g1 c16: 6 -> 8 binaries",
        "*    + 2 binaries of `_chunk_scan_kernel` (HAS_Z=True, z_ptr:*fp32 aligned)",
        "*accept it with --ssd-manifest-check *manifest.json --ssd-manifest-update (rewrites the file)*",
        "*the session fails on the warmup manifest or budget above (exit 1)",
    ])
    assert committed.read_text() == before  # a failed check writes nothing

    result = toy.runpytest(*FAST, *check, "--ssd-manifest-update")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*warmup manifest updated: *manifest.json accepts the changes of 1 layer config(s):",
                                 "*+ 2 binaries of `_chunk_scan_kernel` (HAS_Z=True, z_ptr:*fp32 aligned)"])
    result = toy.runpytest(*FAST, *check)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*warmup manifest matches *manifest.json: 1 layer config(s), 8 binaries"])


def test_the_budget_fails_a_warmup_over_the_limit(toy):
    result = toy.runpytest(*FAST, "-k", "narrow", "--ssd-max-warmup-binaries", "5", "--ssd-max-warmup-seconds",
                           "0.001")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*WARMUP OVER BUDGET: warmup of fp32/fp32 h4x16 n16 g1 c16 [[]compile-only cuda:90[]] compiled 6 "
        "binaries, over --ssd-max-warmup-binaries 5 (toy_warmups:warmup)",
        "*--ssd-max-warmup-seconds not applied to 1 compile-only verdict(s): seconds count only on a real GPU",
    ])
    result = toy.runpytest(*FAST, "-k", "narrow", "--ssd-max-warmup-binaries", "6")
    assert result.ret == 0


# ---- the parts, on hand-made entries ------------------------------------------------------

def binary(kernel="_k", candidate=False, **constexprs) -> dict:
    return {"kernel": kernel, "module": "m", "constexprs": {"H": 8, **constexprs}, "args": {"x_ptr": "*bf16 aligned"},
            "num_warps": 4, "num_stages": 2, "target": "cuda:90", "candidate": candidate}


def tune(configs: int, **key) -> dict:
    return {"kernel": "_t", "module": "m", "key_values": key, "key_dtypes": {"x": "torch.bfloat16"}, "configs": configs}


def entry(binaries, autotune=(), seconds=1.0, **config) -> dict:
    return {"layer": "L", "config": {"nheads": 8, **config}, "kernel": "k:f", "warmup": "w:f",
            "binaries": mf._sorted(binaries), "autotune": mf._sorted(autotune),
            "counts": mf._counts(list(binaries), list(autotune)),
            "measured": {"where": "compile-only cuda:90", "warmup_seconds": seconds}}


def test_the_diff_reads_like_a_review():
    old = mf.build([entry([binary(A=0), binary(A=1)], [tune(4, n=8), tune(2, n=16)])])
    new = mf.build([entry([binary(A=0), binary(A=1), binary(A=0, F=True), binary(A=1, F=True), binary("_new")],
                          [tune(8, n=8), tune(1, n=32)], seconds=9.0)])
    assert mf.diff(old, new) == [
        "layer L: 2 -> 5 binaries",
        "  + 2 binaries of `_k` (F=True)",
        "  + 1 binary of `_new` (a kernel not compiled before)",
        "  + autotune key of `_t` (n=32; x:torch.bfloat16), 1 configs",
        "  - autotune key of `_t` (n=16; x:torch.bfloat16), 2 configs",
        "  ~ autotune key of `_t` (n=8; x:torch.bfloat16): 4 -> 8 configs",
    ]
    # Seconds are never compared; a layer config judged or not is.
    assert mf.diff(old, mf.build([entry([binary(A=1), binary(A=0)], [tune(2, n=16), tune(4, n=8)], seconds=5.0)])) == []
    other = mf.build([entry([binary(A=0)], nheads=16)])
    assert mf.diff(old, other) == ["+ layer L: 1 binaries, 0 autotune keys (not in the committed manifest)",
                                   "- layer L: 2 binaries (not judged in this session)"]
    renamed = mf.build([{**entry([binary(A=0), binary(A=1)], [tune(4, n=8), tune(2, n=16)]), "warmup": "w:g"}])
    assert mf.diff(old, renamed) == ["layer L: 2 -> 2 binaries", "  ~ warmup: 'w:f' -> 'w:g'"]


def test_a_binary_with_no_word_of_its_own_is_named_against_its_closest():
    old = mf.build([entry([binary(A=0, B=0), binary(A=1, B=1)])])
    new = mf.build([entry([binary(A=0, B=0), binary(A=1, B=1), binary(A=0, B=1)])])
    assert mf.diff(old, new)[1:] == ["  + 1 binary of `_k` (B=1)"]


def test_a_launch_option_is_a_word_and_its_absence_is_named():
    capped = {**binary(A=0), "options": {"maxnreg": 128}}
    old = mf.build([entry([binary(A=0)])])
    new = mf.build([entry([capped])])
    assert mf.diff(old, new)[1:] == ["  + 1 binary of `_k` (maxnreg=128)",
                                     "  - 1 binary of `_k` (without maxnreg=128)"]


def test_accepting_keeps_the_seconds_of_unchanged_entries():
    committed = mf.build([entry([binary(A=0)], seconds=1.0), entry([binary(A=0)], seconds=2.0, nheads=4)])
    session = mf.build([entry([binary(A=0)], seconds=7.0), entry([binary(A=1)], seconds=8.0, nheads=4)])
    accepted = mf.accept(committed, session)
    assert [e["measured"]["warmup_seconds"] for e in accepted["layers"]] == [8.0, 1.0]  # changed: the new seconds
    assert mf.diff(accepted, session) == []


def test_entries_of_one_layer_merge_and_the_json_is_stable(tmp_path):
    merged = mf.build([entry([binary(A=1)]), entry([binary(A=0)]), entry([binary(A=1)])])
    (layer,) = merged["layers"]
    assert [b["constexprs"]["A"] for b in layer["binaries"]] == [0, 1] and layer["counts"]["binaries"] == 2
    mf.write(merged, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert mf.load(tmp_path / "m.json") == json.loads(text) and text == mf.dumps(json.loads(text))
    assert '"constexprs": {"H": 8, "A": 0}' in text  # flat dicts on one line: small diffs in review


def test_a_manifest_of_another_format_is_refused(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": 99, "layers": []}))
    with pytest.raises(ValueError, match="expected a pytest-ssd warmup manifest of format 1, got format 99"):
        mf.load(path)
    path.write_text(json.dumps({"format": 1, "layers": [{"layer": "L", "config": {}}]}))
    with pytest.raises(ValueError, match=r"layers\[0\] lacks kernel, warmup, binaries, autotune"):
        mf.load(path)


def record(where: str, binaries: int, seconds: float) -> VerdictRecord:
    return VerdictRecord(nodeid="t", layer="L", kernel="k:f", warmup="w:f", where=where, warmup_seconds=seconds,
                         warmup_binaries=binaries, autotune_keys=0, calls=1, warmup_compile_seconds=seconds / 2)


def test_seconds_count_only_on_a_gpu():
    failures, notes = mf.over_budget([record("cuda", 6, 50.0), record("compile-only cuda:90", 6, 90.0)], 10, 40.0)
    assert failures == ["warmup of L [cuda] took 50.00s, over --ssd-max-warmup-seconds 40 (6 binaries, 25.00s "
                        "compiling; w:f)"]
    assert notes == ["--ssd-max-warmup-seconds not applied to 1 compile-only verdict(s): seconds count only on a "
                     "real GPU"]
    assert mf.over_budget([record("cuda", 6, 5.0)], 6, 40.0) == ([], [])


def test_the_manifest_options_are_checked_at_startup(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "pytest_ssd", "--ssd-manifest-update")
    result.stderr.fnmatch_lines(["*--ssd-manifest-update needs --ssd-manifest-check PATH*"])
    result = pytester.runpytest("-p", "pytest_ssd", "--ssd-manifest-check", "missing.json")
    result.stderr.fnmatch_lines(["*--ssd-manifest-check *missing.json*: no such file; write it first with "
                                 "--ssd-manifest-check missing.json --ssd-manifest-update"])
    result = pytester.runpytest("-p", "pytest_ssd", "--ssd-max-warmup-binaries", "0")
    result.stderr.fnmatch_lines(["*bad value '0' for --ssd-max-warmup-binaries: accepted: a positive integer"])
    result = pytester.runpytest("-p", "pytest_ssd", "--ssd-max-warmup-seconds", "soon")
    result.stderr.fnmatch_lines(["*bad value 'soon' for --ssd-max-warmup-seconds: accepted: a positive number*"])


def test_the_budget_reads_the_environment_and_ini(pytester, monkeypatch):
    pytester.makepyfile("def test_nothing(): pass")
    pytester.makeini("[pytest]\nssd_max_warmup_seconds = 30\n")
    monkeypatch.setenv("PYTEST_SSD_MAX_WARMUP_BINARIES", "70")
    result = pytester.runpytest("-p", "pytest_ssd")
    result.stdout.fnmatch_lines(["*max_warmup_binaries=70 (env), max_warmup_seconds=30.0 (ini)*"])
    assert result.ret == 0  # no verdict: nothing over budget


# ---- on a GPU: real launches compile what compile-only predicts ------------------------------

@pytest.mark.gpu
def test_a_gpu_warmup_compiles_the_binaries_compile_only_predicts():
    from pytest_ssd.suite.cases import COVERAGE_LAYER
    from pytest_ssd.verdict import WorkloadSpec, gpu_target, judge

    target = gpu_target()
    if target is None:
        pytest.skip("no compile-only target predicts this GPU's binaries")
    manifests = {}
    for device in ("cuda", "cpu"):
        spec = WorkloadSpec.for_layer(
            layer_kwargs=dict(COVERAGE_LAYER, dtype=torch.bfloat16, state_dtype=torch.float32),
            kernel="pytest_ssd.kernels:mamba_chunk_scan_combined_varlen", api="vllm",
            warmup="pytest_ssd.warmup:warmup_ssd_kernels", requests=[[17]], device=device, target=target)
        manifests[device] = mf.build([mf.layer_entry(judge(spec), "coverage layer bf16")])
    assert mf.diff(manifests["cpu"], manifests["cuda"]) == []
    (gpu,) = manifests["cuda"]["layers"]
    assert gpu["measured"]["where"] == "cuda" and gpu["counts"]["binaries"] == 5  # bf16: bmm inside chunk_state


def test_the_committed_manifest_covers_the_suites_layers():
    # CI checks it against a real run (.ci/run); here: it is one, for every dtype the suite judges.
    from pathlib import Path

    import pytest_ssd.suite
    from pytest_ssd.suite.cases import COVERAGE_LAYER

    data = mf.load(Path(pytest_ssd.suite.__file__).with_name("manifest_cuda90.json"))
    configs = [e["config"] for e in data["layers"]]
    assert configs == [dict(sorted({**COVERAGE_LAYER, "dtype": d, "state_dtype": "float32"}.items()))
                       for d in ("bfloat16", "float16", "float32")]
    assert all(b["target"] == "cuda:90" for e in data["layers"] for b in e["binaries"])
    assert [e["counts"]["binaries"] for e in data["layers"]] == [5, 5, 6]  # bf16, fp16: bmm inside chunk_state
