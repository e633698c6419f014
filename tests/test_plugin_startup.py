"""A --ssd-kernel or --ssd-warmup that cannot be used is one usage error at startup (exit 4), a
few lines, before any test runs: given on the command line, in the environment or in an ini
file, whether or not the session collects the suite."""
import pytest

USER_CODE = """
    import os
    IMPORTED_WITH_INTERPRET = os.environ.get("TRITON_INTERPRET")

    def vllm_style(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx, out):
        pass

    def no_api_style(x, y):
        pass

    NOT_CALLABLE = 3

    def warm(layer):
        pass

    def warm_nothing():
        pass

    def warm_two(layer, engine):
        pass

    def warm_keyword_only(*, layer):
        pass

    def warm_with_options(layer, *, max_num_tokens=None):
        pass
"""
# A repo with no SSD test at all: it never collects the suite, and still hears about a bad path.
UNRELATED_TEST = "def test_unrelated(): pass"


@pytest.fixture
def repo(pytester):
    pytester.makepyfile(usercode=USER_CODE, test_unrelated=UNRELATED_TEST)
    pytester.syspathinsert()
    return pytester


def _usage_error(result, *expected: str) -> str:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (result.ret, result.outlines, result.errlines)
    text = "\n".join(result.outlines + result.errlines)
    for part in expected:
        assert part in text, text
    assert len([line for line in text.splitlines() if line.strip()]) < 20, text
    assert "test_unrelated" not in text and "passed" not in text, "no test may run"
    return text


@pytest.mark.parametrize("args, expected", [
    (["--ssd-kernel", "no_such_module_xyz:fn", "--ssd-warmup", "usercode:warm"],
     ["--ssd-kernel 'no_such_module_xyz:fn': module 'no_such_module_xyz' does not import",
      "ModuleNotFoundError"]),
    (["--ssd-kernel", "usercode:missing", "--ssd-warmup", "usercode:warm"], ["'usercode' has no attribute 'missing'"]),
    (["--ssd-kernel", "usercode:NOT_CALLABLE", "--ssd-warmup", "usercode:warm"], ["is not callable (got int)"]),
    (["--ssd-kernel", "usercode:no_api_style", "--ssd-warmup", "usercode:warm"],
     ["cannot tell the API style", "pass --ssd-kernel-api"]),
    (["--ssd-warmup", "no_such_module_xyz:warm"], ["--ssd-warmup 'no_such_module_xyz:warm'", "does not import"]),
    (["--ssd-warmup", "usercode:warm_nothing"], ["called as fn(layer)", "signature () does not accept that"]),
    (["--ssd-warmup", "usercode:warm_two"], ["signature (layer, engine)"]),
    (["--ssd-warmup", "usercode:warm_keyword_only"], ["signature (*, layer)"]),
    (["--ssd-kernel", "usercode:vllm_style"], ["--ssd-kernel usercode:vllm_style needs --ssd-warmup",
                                               "warms the bundled kernel, not this one"]),
])
def test_bad_entry_point_is_one_usage_error_at_startup(repo, args, expected):
    _usage_error(repo.runpytest(*args), *expected)


def test_under_xdist_too(repo):
    _usage_error(repo.runpytest_subprocess("-n", "2", "--ssd-kernel", "no_such_module_xyz:fn",
                                           "--ssd-warmup", "usercode:warm"), "does not import")


def test_from_the_environment_and_ini(repo, monkeypatch):
    monkeypatch.setenv("PYTEST_SSD_WARMUP", "usercode:warm_two")
    _usage_error(repo.runpytest(), "--ssd-warmup 'usercode:warm_two'")
    monkeypatch.delenv("PYTEST_SSD_WARMUP")
    repo.makeini("[pytest]\nssd_kernel = usercode:vllm_style\n")
    _usage_error(repo.runpytest(), "needs --ssd-warmup")


def test_an_import_error_inside_user_code_says_where(repo):
    repo.makepyfile(brokenkernel="import os\nraise RuntimeError('no GPU build here')\n")
    text = _usage_error(repo.runpytest("--ssd-kernel", "brokenkernel:fn", "--ssd-warmup", "usercode:warm"),
                        "RuntimeError: no GPU build here")
    assert "brokenkernel.py:2" in text


def test_good_entry_points_pass_and_the_kernel_imports_after_triton_interpret(repo):
    # On CPU a third-party kernel runs under Triton's interpreter, which Triton reads when the
    # kernel is decorated: the startup check imports it only after TRITON_INTERPRET=1 is set.
    repo.makepyfile(test_interpret="""
        import usercode
        def test_interpret(ssd_kernel):
            assert usercode.IMPORTED_WITH_INTERPRET == "1"
            assert ssd_kernel.api == "vllm"
    """)
    result = repo.runpytest("--ssd-kernel", "usercode:vllm_style", "--ssd-warmup", "usercode:warm_with_options",
                            "--ssd-device", "cpu")
    result.assert_outcomes(passed=2)


def test_the_bundled_defaults_are_not_imported_at_startup(pytester):
    # An idle session imports neither torch's kernels nor Triton for a check it does not need.
    pytester.makepyfile("""
        import sys
        def test_nothing_imported():
            assert "pytest_ssd.kernels" not in sys.modules and "pytest_ssd.warmup" not in sys.modules
    """)
    pytester.runpytest_subprocess("-p", "pytest_ssd", "--ssd-compile-only", "cuda:90").assert_outcomes(passed=1)
