"""--ssd-require-warm, the markers, fixture compiles, reports and xdist, in real inner sessions.

The inner sessions run a small Triton kernel in compile-only mode (``--ssd-compile-only
cuda:90``): real Triton compiles for sm_90 on this CPU, so every event is genuine.
"""
import json

import pytest

from kernels_for_tests import SCALE_KERNEL_TESTS

KERNEL_TESTS = SCALE_KERNEL_TESTS + """

    @pytest.fixture
    def warmed():
        launch(False)

    def test_warm(warmed):
        launch(False)

    def test_cold(warmed):
        launch(True)

    @pytest.mark.ssd_allow_cold(reason="first use of n=33")
    def test_allowed(warmed):
        launch(False, n=33)
"""


def _run(pytester, *args):
    pytester.makepyfile(test_kernels=KERNEL_TESTS)
    return pytester.runpytest("--ssd-compile-only", "cuda:90", "-p", "no:cacheprovider", *args)


def test_cold_compile_passes_without_the_flag(pytester):
    result = _run(pytester)
    result.assert_outcomes(passed=3)


def test_require_warm_fails_only_the_cold_test_and_names_kernel_and_reason(pytester):
    result = _run(pytester, "--ssd-require-warm")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*test_cold*",
        "*pytest-ssd: 1 Triton compile/autotune event(s) in the call phase after warmup*",
        "*scale_kernel[[]FLAG=True, BLOCK=64[]]*FLAG=True*never warmed*",
    ])
    # The fixture compile is the test's own warmup, named by fixture; the allowed test is reported with its reason.
    summary = pytest.LineMatcher(result.stdout.str().replace("\n        ", " ").splitlines())  # binary lines unwrapped
    summary.fnmatch_lines(["warmed in fixtures (setup phase*", "  warmup [[]main[]] *: test_kernels.py::test_warm",
                           "      scale_kernel[[]FLAG=False, BLOCK=64[]] * -- in fixture 'warmed'"])
    result.stdout.fnmatch_lines(["  allowed (first use of n=33) [[]main[]] *: test_kernels.py::test_allowed"])
    assert "never warmed" not in "\n".join(line for line in result.outlines if "FLAG=False" in line)


def test_marker_opts_in_without_the_flag(pytester):
    pytester.makepyfile(test_kernels=KERNEL_TESTS.replace("def test_cold(", "@pytest.mark.ssd_requires_warm\n    def test_cold("))
    result = pytester.runpytest("--ssd-compile-only", "cuda:90", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*Triton compile/autotune event(s) in the call phase after warmup*",
                                 "*FLAG=True*never warmed*"])
    result.stdout.fnmatch_lines(["*FAILED*test_cold*"])


def test_json_report_has_cold_events_seed_and_environment(pytester):
    report = pytester.path / "ssd.json"
    result = _run(pytester, "--ssd-require-warm", "--ssd-seed", "99", f"--ssd-report={report}")
    result.assert_outcomes(passed=2, failed=1)
    data = json.loads(report.read_text())
    assert data["seed"] == 99
    assert data["environment"]["triton"] and data["environment"]["torch"]
    cold = [c for w in data["workers"] for c in w["cold"]]
    failed = [c for c in cold if c["outcome"] == "failed"]
    assert [c["nodeid"] for c in failed] == ["test_kernels.py::test_cold"]
    assert "FLAG=True" in failed[0]["lines"][0]
    assert data["totals"]["cold_tests_failed"] == 1


def test_xdist_workers_merge_into_one_summary_and_report(pytester):
    report = pytester.path / "ssd.json"
    pytester.makepyfile(test_kernels=KERNEL_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "--ssd-compile-only", "cuda:90", "--ssd-require-warm",
                                           "--ssd-seed", "5", f"--ssd-report={report}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    data = json.loads(report.read_text())
    workers = {w["worker"] for w in data["workers"]}
    assert workers == {"gw0", "gw1"}, workers  # both workers' reports merged
    cold = [c for w in data["workers"] for c in w["cold"]]
    # every test's fixture compiled in its own worker or was warm; exactly one call-phase failure
    assert sum(c["outcome"] == "failed" for c in cold) == 1 == data["totals"]["cold_tests_failed"]
    assert data["totals"]["cold_events_call"] == sum(len(c["lines"]) for c in cold if c["phase"] == "call")
    result.stdout.fnmatch_lines(["*pytest-ssd*", "after warmup: * 1 test(s) failed*"])
    assert "seed=5" in result.stdout.str()


def test_fixture_compiles_never_fail(pytester):
    pytester.makepyfile(test_kernels=KERNEL_TESTS + """
    def test_only_fixture(warmed):
        pass
""")
    result = pytester.runpytest("--ssd-compile-only", "cuda:90", "--ssd-require-warm", "-p", "no:cacheprovider",
                                "-k", "only_fixture")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["  warmup [[]main[]] *: test_kernels.py::test_only_fixture"])


@pytest.mark.parametrize("worker, gpus, expected", [
    ("gw0", ["0", "1"], "0"), ("gw1", ["0", "1"], "1"), ("gw2", ["0", "1"], "0"),
    ("gw3", ["4", "5", "6"], "4"), ("gw1", ["0"], None), ("gw0", [], None),
])
def test_gpu_placement_round_robin(worker, gpus, expected):
    from pytest_ssd.placement import gpu_for_worker

    assert gpu_for_worker(worker, gpus) == expected


def test_visible_gpus_respects_the_users_list():
    from pytest_ssd.placement import visible_gpus

    assert visible_gpus("2, 3", 8) == ["2", "3"]
    assert visible_gpus(None, 2) == ["0", "1"]
    assert visible_gpus("", 4) == []


def test_placement_rejects_non_worker_ids():
    from pytest_ssd.placement import worker_index

    with pytest.raises(ValueError, match="worker_id: expected an xdist worker id like 'gw0', got 'main'"):
        worker_index("main")


def test_persisted_caches_show_cold_vs_persisted_warmup(pytester, tmp_path):
    """Two fresh processes share --ssd-persist-autotune DIR: the second warms from disk."""
    cache = tmp_path / "persist"
    pytester.makepyfile(test_warm="""
        import torch

        def test_warm(ssd_warmup, mixer2_layer):
            ssd_warmup(mixer2_layer(nheads=4, head_dim=16, ssm_state_size=16, chunk_size=16, dtype=torch.bfloat16))
    """)
    args = ("-p", "pytest_ssd", "--ssd-compile-only", "cuda:90", f"--ssd-persist-autotune={cache}",
            "-p", "no:cacheprovider")
    first = pytester.runpytest_subprocess(*args, f"--ssd-report={tmp_path / 'a.json'}")
    first.assert_outcomes(passed=1)
    second = pytester.runpytest_subprocess(*args, f"--ssd-report={tmp_path / 'b.json'}")
    second.assert_outcomes(passed=1)
    (cold,) = json.loads((tmp_path / "a.json").read_text())["workers"][0]["warmups"]
    (warm,) = json.loads((tmp_path / "b.json").read_text())["workers"][0]["warmups"]
    assert cold["compiles"] == cold["compiled_fresh"] > 0
    assert warm["compiles"] == cold["compiles"] and warm["compiled_fresh"] == 0, "all from Triton's disk cache"
    assert warm["cold_seconds"] == cold["seconds"]
    # The table's last column, only with persisted caches: this layer's warmup with empty caches.
    second.stdout.fnmatch_lines(["*layer config (ssd_warmup)*uncached",
                                 f"  bf16/fp32 h4x16 n16 g1 c16 compile-only cuda:90 * {cold['seconds']:.2f}s"])


BLINDING_TESTS = """
    import pytest
    import torch
    import triton
    import triton.language as tl

    from pytest_ssd import triton_compat

    @triton.jit
    def scale_kernel(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)

    def launch(n):
        scale_kernel[(1,)](torch.randn(64), n, BLOCK=64)

    def slots():
        if triton_compat.version_at_least(3, 4):
            from triton import knobs
            return [(knobs.runtime, "jit_cache_hook"), (knobs.runtime, "jit_post_compile_hook"),
                    (knobs.compilation, "listener")]
        from triton.runtime.jit import JITFunction
        import triton.compiler.compiler as compiler
        return [(JITFunction, "cache_hook"), (JITFunction, "compiled_hook"),
                (compiler, "get_cache_manager")]

    def blind(monkeypatch, owner, name):
        prior = getattr(owner, name)
        # get_cache_manager must still work; the JIT hooks just stop chaining ours
        monkeypatch.setattr(owner, name, (lambda *a, **k: prior(*a, **k)) if name == "get_cache_manager"
                            else (lambda *a, **k: None))

    def test_post_compile_hook_replaced(monkeypatch):
        blind(monkeypatch, *slots()[1])  # what torch 2.13 does
        launch(7)

    @pytest.mark.ssd_allow_cold(reason="the compile is allowed; the blinded recorder is not")
    def test_every_hook_replaced(monkeypatch):
        launch(7)  # warm (the test before compiled it); the recorder knows the kernel since then
        for owner, name in slots():
            blind(monkeypatch, owner, name)
        launch(1)  # ==1: another binary, and no hook of ours sees it
"""


def test_a_replaced_hook_is_chained_again_and_a_blinded_recorder_fails_the_test(pytester):
    pytester.makepyfile(test_blinding=BLINDING_TESTS)
    result = pytester.runpytest("--ssd-compile-only", "cuda:90", "-p", "no:cacheprovider", "--ssd-require-warm",
                                "-W", "default::pytest_ssd.events.RecorderHookWarning")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        # re-chained in time: the compile is seen, and fails the test as any cold compile does
        "*test_post_compile_hook_replaced*",
        "*1 Triton compile/autotune event(s) in the call phase after warmup*",
        "*scale_kernel*never warmed*",
    ])
    result.stdout.fnmatch_lines([
        "*test_every_hook_replaced*",
        "*the Triton event recorder and the JIT caches disagree in the call phase*",
        "*test_blinding.scale_kernel: its JIT cache grew by 1 binary, the hooks reported 0 compile(s)*",
        "*was replaced while recording*",
    ])
    # the hook's name: knobs' jit_post_compile_hook (Triton 3.3+), JITFunction.compiled_hook (3.2)
    result.stdout.re_match_lines([r".*RecorderHookWarning.*(jit_post_compile_hook|JITFunction\.compiled_hook) was replaced "
                                  r"while recording.*"])
