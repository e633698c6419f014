"""The benchmarks' regression guard (benchmarks/regression_guard.py): pure data, no GPU, no timing.

Made-up rows in the guard's shape, plus the committed H200 results through the benchmarks'
``--check-only`` (a subprocess that imports no torch: well under a second).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("benchmarks_regression_guard", BENCHMARKS / "regression_guard.py")
guard = sys.modules.setdefault(SPEC.name, importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(guard)

H200 = "NVIDIA H200"


def row(dtype="bfloat16", device=H200, name="bundled", **figures):
    base = {"warmup_s": 5.0, "first_ms": 0.5, "first_events": 0, "steady_ms": 0.4}
    return {"name": name, "dtype": dtype, "device": device, **base, **figures}


def test_a_5_percent_slip_passes():
    result = guard.compare([row(steady_ms=0.42)], [row()])
    assert result.ok, result.report("base")
    steady = next(f for f in result.figures if f.figure == "steady_ms")
    assert steady.change == pytest.approx(0.05) and not steady.slipped
    assert len(result.figures) == 4


def test_an_11_percent_slip_fails_and_names_the_figure():
    result = guard.compare([row(steady_ms=0.444)], [row()])
    assert not result.ok
    assert [(f.entry, f.figure) for f in result.slipped] == [("bundled bfloat16", "steady_ms")]
    report = result.report("base.json")
    assert "guard FAILED: 1 of 4 figures slipped" in report
    assert "slipped: bundled bfloat16 steady_ms 0.4 -> 0.444 (+11.0%, tolerance 10%)" in report


def test_faster_figures_pass():
    result = guard.compare([row(warmup_s=2.0, first_ms=0.3, steady_ms=0.2)], [row()])
    assert result.ok
    assert all(f.change <= 0 for f in result.figures)


def test_a_rise_from_zero_fails():
    result = guard.compare([row(first_events=1)], [row()])
    assert [f.figure for f in result.slipped] == ["first_events"]
    assert "+inf" in result.report("base")


def test_the_tolerance_is_configurable_per_run_and_per_figure():
    now, base = [row(first_ms=0.65, steady_ms=0.46)], [row()]  # +30%, +15%
    assert [f.figure for f in guard.compare(now, base).slipped] == ["first_ms", "steady_ms"]
    assert guard.compare(now, base, tolerance=0.35).ok
    result = guard.compare(now, base, tolerances={"first_ms": 0.5})
    assert [f.figure for f in result.slipped] == ["steady_ms"]


def test_a_baseline_from_another_device_is_not_compared_and_fails():
    result = guard.compare([row(device="NVIDIA H100 80GB HBM3")], [row()])
    assert not result.ok and not result.figures
    assert result.failures == ("not compared: the baseline is from NVIDIA H200, this run from NVIDIA H100 80GB HBM3 "
                               "(--baseline-any-device compares them anyway)",)


def test_any_device_compares_across_devices_and_says_so():
    result = guard.compare([row(device="NVIDIA H100 80GB HBM3", steady_ms=0.5)], [row()], any_device=True)
    assert [f.figure for f in result.slipped] == ["steady_ms"]
    assert any(note.startswith("compared across devices: the baseline is from NVIDIA H200") for note in result.notes)


def test_a_baseline_entry_the_run_lacks_fails():
    result = guard.compare([row("bfloat16")], [row("bfloat16"), row("float32")])
    assert not result.ok and not result.slipped
    assert result.failures == ("not compared: bundled float32: in the baseline, not measured now",)
    assert "1 not compared" in result.report("base")


def test_a_baseline_figure_the_run_lacks_fails():
    now = row()
    del now["warmup_s"]
    result = guard.compare([now], [row()])
    assert result.failures == ("not compared: bundled bfloat16 warmup_s: in the baseline, not measured now",)


def test_a_figure_that_is_nan_now_was_not_measured_and_fails():
    result = guard.compare([row(steady_ms=float("nan"))], [row()])
    assert result.failures == ("not compared: bundled bfloat16 steady_ms: in the baseline, not measured now",)


def test_what_the_baseline_lacks_is_reported_and_passes():
    result = guard.compare([row("bfloat16", first_ratio=1.2), row("float16")], [row("bfloat16")])
    assert result.ok
    assert set(result.notes) == {"not compared: bundled bfloat16 first_ratio: not in the baseline",
                                 "not compared: bundled float16: no baseline entry (record a new baseline to guard it)"}
    report = result.report("base")
    assert all(note in report for note in result.notes)


def test_nothing_compared_fails():
    assert guard.compare([], [row()]).failures == ("not compared: this run has no entries",)
    assert guard.compare([row()], []).failures == ("not compared: the baseline has no entries",)
    bare = {"name": "bundled", "dtype": "bfloat16", "device": H200}
    assert guard.compare([row()], [bare]).failures == ("not compared: the baseline's entries hold no figures",)


# --- host-bound figures, judged against a reference kernel measured beside them ----------------

def referenced(reference="vllm", peer_warmup=50.0, **figures):
    """A row whose warmup_s has the peer's warmup of the same run as its reference."""
    return {**row(**figures), "reference": reference, "references": {"warmup_s": peer_warmup}}


def test_a_rise_the_reference_shares_is_the_host_and_passes():
    # +30% for ours, +28% for the peer: 1.3 / 1.28 - 1 = +1.6% against it
    result = guard.compare([referenced(warmup_s=6.5, peer_warmup=64.0)], [referenced()])
    assert result.ok, result.report("base")
    warmup = next(f for f in result.figures if f.figure == "warmup_s")
    assert warmup.change == pytest.approx(0.3) and warmup.relative_change == pytest.approx(1.3 / 1.28 - 1)
    assert warmup.moved_with_reference and not warmup.slipped
    report = result.report("base")
    assert "moved with vllm's (+28.0%): the host, not judged a slip" in report
    assert "bundled bfloat16 warmup_s 5 -> 6.5 (+30.0%, tolerance 10%); +1.6% against vllm's, which moved +28.0%" \
        in report


def test_a_rise_beyond_the_references_slips_and_says_both():
    result = guard.compare([referenced(warmup_s=6.5, peer_warmup=52.0)], [referenced()])  # +30% vs +4%
    assert [f.figure for f in result.slipped] == ["warmup_s"]
    assert "slipped: bundled bfloat16 warmup_s 5 -> 6.5 (+30.0%, tolerance 10%); +25.0% against vllm's, which " \
           "moved +4.0%" in result.report("base")


def test_a_figure_within_tolerance_passes_even_when_the_reference_got_faster():
    # +8% alone, +35% against a peer that sped up: an absolute rise within tolerance never slips
    result = guard.compare([referenced(warmup_s=5.4, peer_warmup=40.0)], [referenced()])
    assert result.ok and not any(f.moved_with_reference for f in result.figures)


def test_absolute_judges_host_bound_figures_alone():
    result = guard.compare([referenced(warmup_s=6.5, peer_warmup=64.0)], [referenced()], absolute=True)
    assert [f.figure for f in result.slipped] == ["warmup_s"] and result.figures[0].relative_change is None


@pytest.mark.parametrize("now, base", [
    (referenced(reference="mamba_ssm", warmup_s=6.5, peer_warmup=64.0), referenced()),  # another reference kernel
    (row(warmup_s=6.5), referenced()),  # no reference now
    (referenced(warmup_s=6.5, peer_warmup=64.0), row()),  # none in the baseline
    (referenced(warmup_s=6.5, peer_warmup=0.0), referenced()),  # not a usable value
])
def test_without_the_same_usable_reference_in_both_runs_the_figure_is_judged_alone(now, base):
    result = guard.compare([now], [base])
    assert [f.figure for f in result.slipped] == ["warmup_s"]


@pytest.mark.parametrize("rows, tolerances, message", [
    ([row(device=None)], None, "lacks ['device']"),
    ([row(), row()], None, "two rows for bundled bfloat16 NVIDIA H200"),
    ([row()], {"steady": 0.2}, "tolerance given for ['steady']"),
])
def test_bad_rows_and_tolerances_are_named(rows, tolerances, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        guard.compare(rows, [row()], tolerances=tolerances)


def _args(*argv):
    parser = argparse.ArgumentParser()
    guard.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_command_line_takes_a_tolerance_and_tolerances_per_figure(capsys):
    args = _args("--baseline", "base.json", "--tolerance", "0.2", "--tolerance", "first_ms=0.5")
    assert args.tolerance == [(None, 0.2), ("first_ms", 0.5)]
    assert guard.check([row(first_ms=0.7, steady_ms=0.46)], [row()], args)  # +40% and +15%
    assert "guard passed: 4 figures within tolerance" in capsys.readouterr().out
    assert not guard.check([row(steady_ms=0.5)], [row()], args)


@pytest.mark.parametrize("bad", ["=0.1", "-0.1", "ten", "nan", "first_ms="])
def test_a_bad_tolerance_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit):
        _args("--tolerance", bad)
    assert "expected FRACTION or FIGURE=FRACTION" in capsys.readouterr().err


def test_a_bad_row_on_the_command_line_exits_with_its_reason():
    with pytest.raises(SystemExit, match="regression guard: a guard row needs"):
        guard.check([row(device="")], [row()], _args())


def test_baseline_rows_loads_the_baseline_and_check_only_exits_with_the_verdict(capsys):
    files = {"base.json": [row()], "slow.json": [row(steady_ms=0.5)], "same.json": [row()]}

    def baseline_rows(*argv):
        parser = argparse.ArgumentParser()
        guard.add_arguments(parser)
        return guard.baseline_rows(parser, parser.parse_args(list(argv)), lambda report: report["rows"],
                                   lambda path: {"rows": files[path]})

    assert baseline_rows() is None
    assert baseline_rows("--baseline", "base.json") == [row()]
    for now, code in (("same.json", 0), ("slow.json", 1)):
        with pytest.raises(SystemExit) as done:
            baseline_rows("--baseline", "base.json", "--check-only", now)
        assert done.value.code == code
    with pytest.raises(SystemExit) as usage:
        baseline_rows("--check-only", "slow.json")
    assert usage.value.code == 2 and "--check-only NOW.json needs --baseline BASE.json" in capsys.readouterr().err


def test_measured_says_why_a_file_has_nothing_to_compare():
    assert guard.measured({"rows": [1]}, "rows", "bench_peers.py") == [1]
    with pytest.raises(SystemExit, match=r"skipped: no CUDA device"):
        guard.measured({"skipped": "no CUDA device: ..."}, "rows", "bench_peers.py")
    with pytest.raises(SystemExit, match=r"no 'rows': not a bench_peers.py result"):
        guard.measured({"results": []}, "rows", "bench_peers.py")


# --- the benchmarks' --check-only on the committed H200 results ---------------------------------

def _check_only(script: str, now: Path, baseline: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), "--check-only", str(now), "--baseline",
                           str(baseline), *extra], capture_output=True, text=True, timeout=60)


def _slipped_copy(tmp_path: Path, source: str, edit) -> Path:
    data = json.loads((BENCHMARKS / "results" / source).read_text())
    edited = copy.deepcopy(data)
    edit(edited)
    path = tmp_path / "now.json"
    path.write_text(json.dumps(edited))
    return path


def test_bench_peers_check_only_guards_the_bundled_kernel_of_the_committed_baseline(tmp_path):
    baseline = BENCHMARKS / "results" / "h200_bench_peers.json"
    same = _check_only("bench_peers.py", baseline, baseline)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "guard passed: 21 figures within tolerance" in same.stdout  # 3 dtypes x 7 figures, vLLM's not held

    def slip(data):
        for r in data["rows"]:
            if r["name"] == "bundled" and r["dtype"] == "float16":
                r["steady_ms"] = round(r["steady_ms"] * 1.11, 4)
            if r["name"] == "vllm":  # a peer's figures are its own business
                r["steady_ms"] *= 3

    slipped = _check_only("bench_peers.py", _slipped_copy(tmp_path, "h200_bench_peers.json", slip), baseline)
    assert slipped.returncode == 1
    was = next(r["steady_ms"] for r in json.loads(baseline.read_text())["rows"]
               if r["name"] == "bundled" and r["dtype"] == "float16")  # the baseline is re-recorded now and then
    assert f"slipped: bundled float16 steady_ms {was:g} -> {round(was * 1.11, 4):g} (+11.0%, tolerance 10%)" \
        in slipped.stdout
    assert "vllm" not in slipped.stdout


def test_bench_peers_judges_a_slower_lease_against_the_peer_measured_beside_it():
    """The committed run on a lease whose host compiled and launched ~35% slower (vLLM's warmups and
    first requests moved as much as ours): judged against vLLM's, only the float32 warmup rose past
    10% (+14% over vLLM's); alone, 7 figures slipped."""
    baseline = BENCHMARKS / "results" / "h200_bench_peers.json"
    slow = BENCHMARKS / "results" / "h200_bench_peers_slow_host.json"
    judged = _check_only("bench_peers.py", slow, baseline)
    assert judged.returncode == 1
    assert judged.stdout.count("the host, not judged a slip") == 6
    slipped = [line for line in judged.stdout.splitlines() if line.startswith("  slipped:")]
    assert len(slipped) == 1 and slipped[0].startswith("  slipped: bundled float32 warmup_s 3.99 -> 6.07"), slipped
    alone = _check_only("bench_peers.py", slow, baseline, "--absolute")
    assert alone.returncode == 1 and "guard FAILED: 7 of 21 figures slipped" in alone.stdout


def test_bench_peers_check_only_fails_on_another_device_unless_asked(tmp_path):
    baseline = BENCHMARKS / "results" / "h200_bench_peers.json"

    def other_device(data):
        for r in data["rows"]:
            r["gpu"] = "NVIDIA H100 80GB HBM3"

    now = _slipped_copy(tmp_path, "h200_bench_peers.json", other_device)
    strict = _check_only("bench_peers.py", now, baseline)
    assert strict.returncode == 1 and "not compared: the baseline is from NVIDIA H200" in strict.stdout
    assert _check_only("bench_peers.py", now, baseline, "--baseline-any-device").returncode == 0


def test_bench_kernel_check_only_reads_the_committed_runs(tmp_path):
    before, after = (BENCHMARKS / "results" / f"h200_bench_kernel_{w}.json" for w in ("before", "after"))
    result = _check_only("bench_kernel.py", after, before)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cold bfloat16  steady_ms" in result.stdout and "guard passed: 6 figures" in result.stdout

    def slow_warmup(data):
        data["results"][0]["warmup"]["seconds"] *= 1.5

    slipped = _check_only("bench_kernel.py", _slipped_copy(tmp_path, "h200_bench_kernel_after.json", slow_warmup),
                          after)
    assert slipped.returncode == 1 and "slipped: cold bfloat16 warmup_s" in slipped.stdout


# -- bench_peers --repeat: the guarded kernel in several fresh processes, its figures' medians --

@pytest.fixture
def bench_peers(monkeypatch):
    """benchmarks/bench_peers.py as a module (its siblings import by their plain names)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmarks_bench_peers", BENCHMARKS / "bench_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _process_row(first_ms, steady_ms, warmup_s, binaries=6):
    return {"kernel": "k", "dtype": "bfloat16", "warmup_s": warmup_s, "warmup_binaries": binaries,
            "warmup_autotune_keys": 0, "first_ms": first_ms, "first_events": 0, "steady_ms": steady_ms,
            "gpu": H200, "torch": "2.11", "triton": "3.6"}


def test_repeated_processes_make_one_row_of_medians(bench_peers):
    runs = [_process_row(0.62, 0.354, 5.3), _process_row(0.51, 0.351, 4.9), _process_row(0.55, 0.360, 6.1)]
    row = bench_peers.median_row([{"name": "bundled", **r} for r in runs])
    assert (row["first_ms"], row["steady_ms"], row["warmup_s"]) == (0.55, 0.354, 5.3)
    assert row["warmup_binaries"] == 6 and isinstance(row["warmup_binaries"], int)
    # the target's ratio per process, then the median (1.751, 1.453, 1.528), not 0.55 / 0.354
    assert row["first_ratio"] == 1.528
    assert [r["first_ms"] for r in row["repeats"]] == [0.62, 0.51, 0.55]
    report = {"rows": [row]}
    (guarded,) = bench_peers.guard_rows(report)
    assert guarded["first_ratio"] == 1.528 and guarded["first_ms"] == 0.55


def test_only_the_guarded_kernel_repeats(bench_peers, monkeypatch):
    calls = []

    def run_fresh(script, args, timeout):
        calls.append(args[1])
        return _process_row(0.5 + 0.01 * len(calls), 0.35, 5.0)

    monkeypatch.setattr(bench_peers.harness, "run_fresh", run_fresh)
    bundled = bench_peers._measure("bundled", "ours:f", "w:f", "bfloat16", 3, 60)
    peer = bench_peers._measure("vllm", "theirs:f", "w:g", "bfloat16", 3, 60)
    assert calls == ["ours:f"] * 3 + ["theirs:f"]
    assert len(bundled["repeats"]) == 3 and bundled["first_ms"] == 0.52
    assert "repeats" not in peer and peer["first_ms"] == 0.54


def test_a_repeat_below_one_is_refused():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_peers.py"), "out.json", "--repeat", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--repeat: expected a number of processes >= 1, got 0" in done.stderr


def _peers_report(peer_first_events=0):
    bundled = {"name": "bundled", **_process_row(0.45, 0.3, 4.5)}
    peer = {"name": "vllm", **_process_row(1.5, 0.6, 50.0), "first_events": peer_first_events}
    other = {"name": "mamba", **_process_row(9.0, 0.9, 40.0)}  # a second peer: the first one is the reference
    return {"rows": [bundled, peer, other, {"name": "bundled", "dtype": "float16", "kernel": "k", "failed": "boom"}]}


def test_bench_peers_rows_take_the_first_peer_of_their_dtype_as_the_reference(bench_peers):
    (row,) = bench_peers.guard_rows(_peers_report())
    assert row["reference"] == "vllm"
    # the ratio's reference is the peer's first request (host-bound), not the peer's own ratio
    assert row["references"] == {"warmup_s": 50.0, "first_ms": 1.5, "first_ratio": 1.5}
    assert set(bench_peers.HOST_BOUND) == set(row["references"])


def test_a_peer_whose_first_request_compiled_is_a_reference_for_the_warmup_only(bench_peers):
    (row,) = bench_peers.guard_rows(_peers_report(peer_first_events=3))
    assert row["references"] == {"warmup_s": 50.0}


def test_bench_peers_times_the_kernel_with_its_arguments_built_before(bench_peers):
    """A vLLM-style kernel's keyword arguments are built once, outside the timed call; a
    mamba_ssm-style kernel goes through the adapter's run."""
    built, called = [], []

    class Inputs:
        def kernel_kwargs(self, layer):
            built.append(layer)
            return {"x": "x-of-" + layer}

    class Kernel:
        def __init__(self, api):
            self.api = api
            self.fn = lambda **kwargs: called.append(("fn", kwargs))
            self.run = lambda layer, inputs, out: called.append(("run", layer, out))

    calls = bench_peers._bound_calls(Kernel("vllm"), "layer", [(Inputs(), "out0"), (Inputs(), "out1")])
    assert built == ["layer", "layer"] and called == []
    calls[1]()
    calls[1]()
    assert built == ["layer", "layer"] and called == [("fn", {"out": "out1", "x": "x-of-layer"})] * 2
    called.clear()
    (call,) = bench_peers._bound_calls(Kernel("mamba_ssm"), "layer", [(Inputs(), "out")])
    call()
    assert called == [("run", "layer", "out")]
