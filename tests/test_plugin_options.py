"""The plugin loads, its options resolve CLI > env > ini > default, bad values are usage errors."""
import json
import os

import pytest
import torch

PRINT_SETTINGS = """
    import json
    def test_settings(ssd_settings, ssd_seed):
        print("SETTINGS=" + json.dumps({"dtype": ssd_settings.dtype, "seed": ssd_settings.seed,
                                        "device": ssd_settings.device, "sources": ssd_settings.sources,
                                        "test_seed": ssd_seed}))
"""


def _settings(result) -> dict:
    for line in result.outlines:
        if "SETTINGS=" in line:
            return json.loads(line.split("SETTINGS=", 1)[1])
    raise AssertionError("inner test printed no settings:\n" + "\n".join(result.outlines))


def test_entry_point_loads_plugin_and_an_idle_session_prints_one_header_line(pytester):
    pytester.makepyfile("def test_ok(ssd_settings): assert ssd_settings.seed >= 0")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)  # its fixtures work without any option
    ours = [line for line in result.outlines if line.startswith("pytest-ssd")]
    assert ours == ["pytest-ssd 0.1.0: idle (no --ssd-* option given); -p no:pytest_ssd unloads it"], ours


def test_a_session_that_asks_gets_the_full_header(pytester):
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess("--ssd-dtype", "bf16")
    device = ("pytest-ssd 0.1.0: device=cuda (auto): kernels run on the GPU" if torch.cuda.is_available() else
              "pytest-ssd 0.1.0: device=cpu (auto): numerics under Triton's interpreter; "
              "warmup coverage in compile-only mode for cuda:90 (fresh processes)")
    result.stdout.fnmatch_lines([device,
                                 "pytest-ssd: kernel=pytest_ssd.kernels:*",
                                 "pytest-ssd: require_warm=False, dtype=bf16 (cli), seed=*reproduce with --ssd-seed=*"])


def test_gpu_marker_skips_without_cuda_and_runs_with_it(pytester):
    import torch

    pytester.makepyfile("""
        import pytest
        @pytest.mark.gpu
        def test_on_gpu():
            import torch
            assert torch.cuda.is_available()
        def test_anywhere():
            pass
    """)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*marked gpu: needs a CUDA GPU*"])


def test_dash_p_with_entry_point_is_not_registered_twice(pytester):
    pytester.makepyfile("def test_ok(ssd_settings): pass")
    result = pytester.runpytest_subprocess("-p", "pytest_ssd")
    result.assert_outcomes(passed=1)
    assert "already registered" not in result.stderr.str() + result.stdout.str()


def test_dash_p_without_autoload(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile("def test_ok(ssd_settings, mixer2_layer): pass")
    result = pytester.runpytest_subprocess("-p", "pytest_ssd")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-ssd: *seed=*"])  # -p pytest_ssd asks for it: the full header


def test_precedence_cli_over_env_over_ini(pytester, monkeypatch):
    pytester.makeini("[pytest]\nssd_dtype = fp16\nssd_seed = 11\nssd_device = cpu\n")
    pytester.makepyfile(PRINT_SETTINGS)
    monkeypatch.setenv("PYTEST_SSD_SEED", "22")
    result = pytester.runpytest("-s", "--ssd-seed", "33")
    got = _settings(result)
    assert got["seed"] == 33 and got["sources"]["seed"] == "cli"
    assert got["dtype"] == ["fp16"] and got["sources"]["dtype"] == "ini"
    monkeypatch.setenv("PYTEST_SSD_DTYPE", "bf16,fp32")
    got = _settings(pytester.runpytest("-s"))
    assert got["seed"] == 22 and got["sources"]["seed"] == "env"
    assert got["dtype"] == ["bf16", "fp32"] and got["sources"]["dtype"] == "env"


def test_test_seed_is_reproducible_from_the_base_seed(pytester):
    pytester.makepyfile(PRINT_SETTINGS)
    first = _settings(pytester.runpytest("-s", "--ssd-seed", "1234"))
    second = _settings(pytester.runpytest("-s", "--ssd-seed", "1234"))
    other = _settings(pytester.runpytest("-s", "--ssd-seed", "1235"))
    assert first["test_seed"] == second["test_seed"] != other["test_seed"]


def test_random_seed_is_printed_and_reusable(pytester):
    pytester.makepyfile(PRINT_SETTINGS)
    result = pytester.runpytest("-s", "-p", "pytest_ssd")
    got = _settings(result)
    result.stdout.fnmatch_lines([f"*seed={got['seed']} (random; reproduce with --ssd-seed={got['seed']})*"])


def test_failure_message_names_the_seed(pytester):
    pytester.makepyfile("def test_fails(ssd_seed): assert False")
    result = pytester.runpytest("--ssd-seed", "77")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*pytest-ssd*", "*seed 77: reproduce with --ssd-seed=77 "
                                 "test_failure_message_names_the_seed.py::test_fails "
                                 "(this test's own seed, *, comes from it and the test id)"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ssd-dtype", "fp8"], "accepted: one or more of fp32, fp16, bf16"),
        (["--ssd-seed", "-3"], "accepted: a non-negative integer"),
        (["--ssd-device", "tpu"], "accepted: auto, cpu, cuda"),
        (["--ssd-kernel", "no_colon_here"], "accepted: 'package.module:callable'"),
        (["--ssd-compile-only", "sm90"], "accepted: cuda:80, cuda:90, cuda:100, hip:gfx942"),
        (["--ssd-kernel-api", "jax"], "accepted: auto, vllm, mamba_ssm"),
        (["--ssd-max-spike", "0.5"], "accepted: a number > 1"),
        (["--ssd-max-spike", "nan"], "accepted: a number > 1"),
        (["--ssd-max-spike", "inf"], "accepted: a number > 1"),
    ],
)
def test_bad_option_values_are_usage_errors(pytester, args, expected):
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected in result.stderr.str()


def test_bad_env_value_names_the_variable(pytester, monkeypatch):
    pytester.makepyfile("def test_ok(): pass")
    monkeypatch.setenv("PYTEST_SSD_REQUIRE_WARM", "sometimes")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "environment variable PYTEST_SSD_REQUIRE_WARM" in result.stderr.str()


def test_kernel_api_autodetect_and_override(pytester):
    pytester.makepyfile(mykernels="""
        def vllm_style(x, dt, A, B, C, chunk_size, cu_seqlens, cu_chunk_seqlens, last_chunk_indices, seq_idx, out):
            pass
        def mamba_style(x, dt, A, B, C, chunk_size, D=None, return_final_states=False):
            pass
        def unknown(x):
            pass
        def warm(layer):
            pass
    """)
    pytester.makepyfile("def test_k(ssd_kernel): print('API=' + ssd_kernel.api)")
    warm = ("--ssd-warmup", "mykernels:warm")
    pytester.runpytest("-s", "--ssd-kernel", "mykernels:vllm_style", *warm).stdout.fnmatch_lines(["*API=vllm*"])
    pytester.runpytest("-s", "--ssd-kernel", "mykernels:mamba_style", *warm).stdout.fnmatch_lines(["*API=mamba_ssm*"])
    pytester.runpytest("-s", "--ssd-kernel", "mykernels:unknown", "--ssd-kernel-api", "vllm", *warm
                       ).stdout.fnmatch_lines(["*API=vllm*"])


def test_markers_are_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["*ssd_allow_cold(reason)*", "*ssd_requires_warm*"])


def test_strict_markers_accept_ours(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.ssd_allow_cold(reason="x")
        def test_a(): pass
        @pytest.mark.ssd_requires_warm
        def test_b(): pass
    """)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=2)


def test_compile_targets_match_compile_only():
    from pytest_ssd.compile_only import TARGETS
    from pytest_ssd.options import COMPILE_TARGETS

    assert COMPILE_TARGETS == TARGETS


@pytest.mark.parametrize("make_path, why", [
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: tmp / "missing-dir" / "report.json", "does not exist"),
    (lambda tmp: tmp / "a-file" / "report.json", "does not exist"),  # its "directory" is a file
])
def test_a_report_path_that_cannot_be_written_is_a_usage_error_at_startup(pytester, tmp_path, make_path, why):
    (tmp_path / "a-file").write_text("not a directory")
    pytester.makepyfile("def test_never_runs(): raise AssertionError('ran')")
    result = pytester.runpytest("--ssd-report", str(make_path(tmp_path)))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pytest-ssd: --ssd-report" in result.stderr.str() and why in result.stderr.str()
    assert "ran" not in result.stdout.str()


def test_an_unwritable_report_path_is_a_usage_error(pytester, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: permissions cannot make a path unwritable")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("--ssd-report", str(locked / "report.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "cannot be written" in result.stderr.str()


def test_a_relative_report_path_is_kept_absolute_and_a_probe_leaves_no_file(pytester):
    pytester.makepyfile("""
        import os

        def test_moves_away(ssd_settings, tmp_path):
            assert os.path.isabs(ssd_settings.report) and os.path.isabs(ssd_settings.persist_autotune)
            assert not os.path.exists(ssd_settings.report)  # the startup check removed its probe
            os.chdir(tmp_path)  # the report and the persist dir must not move with the test
    """)
    (pytester.path / "out").mkdir()
    result = pytester.runpytest("--ssd-report", "out/report.json", "--ssd-persist-autotune", "cache")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "out" / "report.json").is_file() and (pytester.path / "cache").is_dir()


@pytest.mark.parametrize("via_env", [False, True])
def test_a_persist_dir_that_is_a_file_is_a_usage_error_at_startup(pytester, tmp_path, monkeypatch, via_env):
    afile = tmp_path / "cache-file"
    afile.write_text("not a directory")
    pytester.makepyfile("def test_never_runs(): raise AssertionError('ran')")
    if via_env:
        monkeypatch.setenv("PYTEST_SSD_PERSIST_AUTOTUNE", str(afile))
        result = pytester.runpytest()
    else:
        result = pytester.runpytest("--ssd-persist-autotune", str(afile))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    where = "environment variable PYTEST_SSD_PERSIST_AUTOTUNE" if via_env else "--ssd-persist-autotune"
    assert f"pytest-ssd: {where}" in result.stderr.str() and "is a file, not a directory" in result.stderr.str()


def test_a_persist_dir_that_cannot_be_created_is_a_usage_error(pytester, tmp_path):
    (tmp_path / "a-file").write_text("x")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("--ssd-persist-autotune", str(tmp_path / "a-file" / "cache"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--ssd-persist-autotune" in result.stderr.str() and "cannot be created or written" in result.stderr.str()
