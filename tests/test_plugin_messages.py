"""What a user reads says what happened: who enforced a failure, a fixture that warms named as a
warmup, totals that add up, the seed only where one was used, a hint without a GPU driver, a
summary within 120 columns, and the header naming compile-only wherever it is in effect.

Inner sessions run small Triton kernels in compile-only mode (real sm_90 compiles on this CPU).
"""
import json

import pytest
import torch

from kernels_for_tests import SCALE_KERNEL_TESTS
from pytest_ssd.report import WIDTH, ColdRecord, SessionReport, WarmupRecord, WorkerReport

KERNEL = SCALE_KERNEL_TESTS  # a module of inner tests: the kernel and launch(flag, n)

COMPILE_ONLY = ("--ssd-compile-only", "cuda:90", "-p", "no:cacheprovider")


def _section(result) -> list:
    """The lines of the pytest-ssd terminal summary."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if line.strip("= ") == "pytest-ssd" and line.startswith("="))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("=")), len(lines))
    return lines[start + 1:end]


def test_a_failure_enforced_by_the_marker_says_so_not_the_flag(pytester):
    pytester.makepyfile(KERNEL + """
    @pytest.fixture
    def warmed():
        launch(False)

    @pytest.mark.ssd_requires_warm
    def test_cold(warmed):
        launch(True)
""")
    result = pytester.runpytest(*COMPILE_ONLY)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*in the call phase after warmup, * spent "
                                 "(enforced by @pytest.mark.ssd_requires_warm):"])
    assert "--ssd-require-warm" not in result.stdout.str()


@pytest.mark.parametrize("how, expected", [
    ("cli", "enforced by --ssd-require-warm)"),
    ("ini", "enforced by --ssd-require-warm (ini ssd_require_warm))"),
    ("env", "enforced by --ssd-require-warm (env PYTEST_SSD_REQUIRE_WARM))"),
])
def test_a_failure_enforced_by_the_flag_says_where_it_was_set(pytester, monkeypatch, how, expected):
    pytester.makepyfile(KERNEL + """
    def test_cold():
        launch(False)
        launch(True)
""")
    args = list(COMPILE_ONLY)
    if how == "cli":
        args.append("--ssd-require-warm")
    elif how == "ini":
        pytester.makeini("[pytest]\nssd_require_warm = true\n")
    else:
        monkeypatch.setenv("PYTEST_SSD_REQUIRE_WARM", "1")
    result = pytester.runpytest(*args, "--ssd-report=r.json")
    result.assert_outcomes(failed=1)
    assert expected in result.stdout.str()
    (cold,) = [c for w in json.loads((pytester.path / "r.json").read_text())["workers"] for c in w["cold"]]
    assert cold["outcome"] == "failed" and cold["enforced_by"] == expected[len("enforced by "):-1]


def test_a_fixture_that_warms_is_a_warmup_and_totals_add_up(pytester):
    pytester.makepyfile(KERNEL + """
    @pytest.fixture
    def engine():
        launch(False)
        launch(False, n=33)

    def test_a(engine):
        launch(False)

    def test_b(engine):
        launch(True)
""")
    result = pytester.runpytest(*COMPILE_ONLY, "--ssd-require-warm", "--ssd-report=r.json")
    result.assert_outcomes(passed=1, failed=1)
    section = _section(result)
    assert section[0] == "warmed in fixtures (setup phase: the tests' own warmup, never failed)", section
    fixture_lines = [line for line in section if "in fixture 'engine'" in line]
    assert len(fixture_lines) == 2 and not any("never warmed" in line for line in section[:4])
    data = json.loads((pytester.path / "r.json").read_text())
    t = data["totals"]
    assert (t["cold_events_setup"], t["fixture_tests"], t["cold_events_call"], t["cold_tests_failed"]) == (2, 1, 1, 1)
    # One line says where every event went, and its parts add up.
    result.stdout.fnmatch_lines(["warmup total: 2 compile/autotune events = 0 in 0 ssd_warmup runs (0.00s) + "
                                 "2 in fixtures of 1 test (*s)",
                                 "after warmup: 1 event (*s): 1 test(s) failed, 0 allowed, 0 reported"])


def test_ssd_warmup_in_a_fixture_is_filed_as_that_warmup(pytester):
    pytester.makepyfile("""
        import pytest
        import torch

        @pytest.fixture
        def warm_layer(mixer2_layer, ssd_warmup):
            layer = mixer2_layer(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16, dtype=torch.float16)
            ssd_warmup(layer)
            return layer

        def test_uses_it(warm_layer):
            pass
    """)
    result = pytester.runpytest(*COMPILE_ONLY, "--ssd-require-warm")
    result.assert_outcomes(passed=1)
    section = _section(result)
    assert "warmed in fixtures" not in "\n".join(section), section  # the warmup's own events, in its own row
    assert any(line.startswith("  fp16/fp32 h4x16 n16 g1 c16 compile-only cuda:90 ") for line in section), section


def test_the_seed_section_only_for_tests_that_used_a_seed(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.fixture
        def my_data(ssd_seed):
            return ssd_seed

        def test_direct(ssd_seed):
            assert False

        def test_through_a_fixture(my_data):
            assert False

        def test_through_ours(mixer2_layer):
            assert False

        def test_no_seed():
            assert False
    """)
    result = pytester.runpytest("--ssd-seed", "5", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=4)
    out = result.stdout.str()
    for name in ("test_direct", "test_through_a_fixture", "test_through_ours"):
        assert f"reproduce with --ssd-seed=5 test_the_seed_section_only_for_tests_that_used_a_seed.py::{name} " in out
    assert "::test_no_seed (this test's own seed" not in out
    assert out.count("(this test's own seed") == 3


# What a launch does on a machine without a GPU driver: a machine with one launches for real.
NO_GPU_DRIVER = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU driver")


@NO_GPU_DRIVER
def test_without_a_gpu_driver_the_failure_hints_at_compile_only(pytester):
    pytester.makepyfile(KERNEL + """
    def test_launch():
        launch(False)
""")
    result = pytester.runpytest_subprocess("-p", "pytest_ssd", "--ssd-require-warm", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*0 active drivers*", "*pytest-ssd: no GPU driver*",
                                 "*add --ssd-compile-only TARGET (e.g. cuda:90)*"])
    assert "1 test(s) failed with Triton's '0 active drivers'" in "\n".join(_section(result))


@NO_GPU_DRIVER
def test_an_idle_session_adds_no_hint(pytester):
    pytester.makepyfile(KERNEL + """
    def test_launch():
        launch(False)
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*0 active drivers*"])  # the failure the hint is for
    assert "pytest-ssd: no GPU driver" not in result.stdout.str()


def test_the_header_shows_compile_only_wherever_it_is_in_effect(pytester):
    pytester.makepyfile("def test_ok(): pass")
    cpu = pytester.runpytest("-p", "pytest_ssd", "--ssd-device", "cpu")
    cpu.stdout.fnmatch_lines(["pytest-ssd *: device=cpu (cli): numerics under Triton's interpreter; "
                              "warmup coverage in compile-only mode for cuda:90 (fresh processes)"])
    whole = pytester.runpytest("--ssd-compile-only", "cuda:80")
    whole.stdout.fnmatch_lines(["pytest-ssd *: compile-only cuda:80 (cli) for the whole session*nothing runs*"])


def _report(**kw) -> SessionReport:
    layer_a = "Mixer2Layer(nheads=80, ..., dtype=bfloat16) [compile-only cuda:90]"
    layer_b = "Mixer2Layer(nheads=80, ..., dtype=float16) [compile-only cuda:90]"
    long_line = ("_chunk_scan_kernel[H=80, G=1, P=64, N=128, CHUNK_SIZE=256, HAS_INITSTATES=True, HAS_D=True, "
                 "D_HAS_HDIM=False, HAS_Z=False] (x_ptr:*bf16 aligned, " + "y_ptr:*fp32 aligned, " * 8 + ") warps=4 "
                 "stages=2 cuda:90 compiled 0.41s (compile-only) -- constexpr HAS_INITSTATES=True never warmed "
                 "(warmup had False)")
    workers = [
        WorkerReport(worker="gw1", gpu="1", warmups=[
            WarmupRecord(layer=layer_a, name="bf16/fp32 h80x64 n128 g1 c256 compile-only cuda:90", seconds=7.3,
                         compiles=6, compiled_fresh=5, autotunes=1, autotunes_persisted=0)],
            cold=[ColdRecord(nodeid="pytest_ssd/suite/test_warmup_coverage.py::test_warmup_leaves_nothing_cold"
                                    "[bf16-fp32_states]" + "x" * 60, phase="call", outcome="failed", seconds=0.8,
                             lines=[long_line, long_line], enforced_by="--ssd-require-warm", layer=layer_a),
                  ColdRecord(nodeid="t.py::test_b", phase="setup", outcome="warmup", seconds=0.5,
                             lines=["k[] () warps=4 stages=3 cuda:90 compiled 0.5s -- in fixture 'engine'"])]),
        WorkerReport(worker="gw0", warmups=[
            WarmupRecord(layer=layer_b, name=None, seconds=2.1, compiles=4, compiled_fresh=4, autotunes=0,
                         autotunes_persisted=0)]),
    ]
    return SessionReport(seed=1, settings={}, workers=workers, **kw)


def test_the_summary_is_a_table_within_120_columns_with_cold_counts_per_layer():
    lines = _report().summary_lines()
    assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
    table = lines[:lines.index("  binaries: new in this process (a dtype-independent one an earlier warmup compiled "
                                     "is not counted again),")]
    assert table[0] == "warmups" and table[1].split() == ["layer", "config", "(ssd_warmup)", "worker", "time",
                                                          "binaries", "disk", "tunes", "cold"]
    # gw0's row (no short name: the full identity, cut to fit) first; cold events counted under their layer.
    assert table[2].split()[-6:] == ["gw0", "2.10s", "4", "0", "0", "0"]
    assert table[3].startswith("  bf16/fp32 h80x64 n128 g1 c256 compile-only cuda:90")
    assert table[3].split()[-8:] == ["gw1", "GPU", "1", "7.30s", "6", "1", "1", "2"]
    text = "\n".join(lines)
    assert "HAS_INITSTATES=True never warmed (warmup had False)" in text.replace("\n        ", " ")  # wrapped, not cut
    assert "FAILED (--ssd-require-warm) [gw1 GPU 1] 0.80s: pytest_ssd/suite/" in text
    assert ("warmup total: 12 compile/autotune events = 11 in 2 ssd_warmup runs (9.40s) + "
            "1 in fixtures of 1 test") in text
    assert "after warmup: 2 events (0.80s): 1 test(s) failed, 0 allowed, 0 reported" in text


def test_the_json_report_names_its_format_and_version(tmp_path):
    import pytest_ssd

    path = tmp_path / "r.json"
    _report(environment={"pytest_ssd": pytest_ssd.__version__}).write_json(str(path))
    data = json.loads(path.read_text())
    assert data["format"] == "pytest-ssd-report-v1"
    assert list(data) == ["format", "seed", "settings", "environment", "totals", "workers"]
    warmup = data["workers"][0]["warmups"][0]
    assert warmup["layer"].startswith("Mixer2Layer(") and warmup["name"].startswith("bf16/fp32")  # full and short
    assert data["workers"][0]["cold"][0]["layer"] == warmup["layer"]
