"""The benchmarks' shared harness (benchmarks/harness.py): fresh child processes, the result file.

The children are tiny scripts (no torch), so this runs on a CPU in a few seconds.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("benchmarks_harness", BENCHMARKS / "harness.py")
harness = sys.modules.setdefault(SPEC.name, importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(harness)

CHILD = """
import os, sys, time
import harness

mode = sys.argv[1]
if mode == "report":
    cache = os.environ["TRITON_CACHE_DIR"]
    harness.send_to_parent({"cache": cache, "cache_is_empty_dir": os.path.isdir(cache) and not os.listdir(cache),
                            "autotuning": os.environ.get("TRITON_CACHE_AUTOTUNING"),
                            "extra": os.environ.get("BENCH_TEST_EXTRA"), "args": sys.argv[2:]})
elif mode == "fail":
    print("measuring", flush=True)
    sys.exit("the child broke")
elif mode == "hang":
    print("started", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def child(tmp_path, monkeypatch):
    """The child script's path; the children import ``harness`` from benchmarks/ (as the scripts do)."""
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(BENCHMARKS), os.environ.get("PYTHONPATH", "")]))
    return str(path)


def test_a_child_gets_an_empty_cache_dir_of_its_own_and_sends_its_result(child, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "the parent's"))
    monkeypatch.setenv("TRITON_CACHE_AUTOTUNING", "1")
    result = harness.run_fresh(child, ["report", "a", "b"], env={"BENCH_TEST_EXTRA": "x"}, timeout=30)
    assert result["cache"] != str(tmp_path / "the parent's") and result["cache_is_empty_dir"]
    assert result["autotuning"] is None  # no TRITON_CACHE_* of the parent's reaches the child
    assert result["extra"] == "x" and result["args"] == ["a", "b"]
    assert not os.path.exists(result["cache"])  # the harness's own dir is removed afterwards


def test_a_cache_dir_given_is_shared_and_kept(child, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    result = harness.run_fresh(child, ["report"], cache_dir=str(shared),
                               env={"TRITON_CACHE_AUTOTUNING": "1", "BENCH_TEST_EXTRA": None}, timeout=30)
    assert result["cache"] == str(shared) and shared.is_dir()
    assert result["autotuning"] == "1" and result["extra"] is None


def test_a_failing_child_raises_with_its_last_line_and_output(child):
    with pytest.raises(harness.ChildFailed) as failed:
        harness.run_fresh(child, ["fail"], timeout=30)
    assert failed.value.reason == "exit 1: the child broke"
    assert failed.value.last_lines(2) == "measuring\nthe child broke"


def test_a_child_past_its_timeout_is_killed_and_says_so(child):
    with pytest.raises(harness.ChildFailed) as failed:
        harness.run_fresh(child, ["hang"], timeout=1)
    assert failed.value.reason == "timed out after 1 s" and "started" in failed.value.output


def test_a_child_that_sends_nothing_fails(child):
    with pytest.raises(harness.ChildFailed, match="exited 0 but sent no result"):
        harness.run_fresh(child, ["quiet"], timeout=30)


def test_a_child_run_by_hand_prints_its_result(capsys, monkeypatch):
    monkeypatch.delenv(harness.RESULT_ENV, raising=False)
    harness.send_to_parent({"steady_ms": 0.39})
    assert json.loads(capsys.readouterr().out) == {"steady_ms": 0.39}


def test_the_result_file_carries_the_environment(tmp_path):
    path = tmp_path / "result.json"
    report = harness.write_result(str(path), {"rows": [1]})
    assert json.loads(path.read_text()) == report
    assert set(report["environment"]) == {"date", "command", "python", "host", "torch", "triton", "device"}
    assert report["rows"] == [1]
    assert harness.load_result(str(path)) == report


def test_without_cuda_a_benchmark_writes_why_it_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "cuda_available", lambda: False)
    path = tmp_path / "result.json"
    assert harness.skip_without_cuda(str(path), "it times kernels")
    assert json.loads(path.read_text())["skipped"] == "no CUDA device: it times kernels"
    assert "skipped: no CUDA device: it times kernels" in capsys.readouterr().out
    monkeypatch.setattr(harness, "cuda_available", lambda: True)
    assert not harness.skip_without_cuda(str(tmp_path / "other.json"), "it times kernels")
    assert not (tmp_path / "other.json").exists()


@pytest.mark.parametrize("content, message", [(None, "cannot read the result file"), ("[1]", "expected a JSON object"),
                                              ("{", "cannot read the result file")])
def test_a_bad_result_file_is_named(tmp_path, content, message):
    path = tmp_path / "saved.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        harness.load_result(str(path))
