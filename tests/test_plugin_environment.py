"""Nothing changes unless asked: the plugin autoloads everywhere, yet a repo that does not ask keeps
its TRITON_CACHE_DIR and CUDA_VISIBLE_DEVICES under xdist; --ssd-isolate-cache and
--ssd-place-gpus (CLI, env, ini) turn each behaviour on; auto turns both on for the suite.

Inner sessions run in subprocesses with ``-n 2``: each test of the inner session reports the
environment its worker really has.
"""
import json
import os

import pytest

from pytest_ssd.placement import names_the_suite, switched_on, worker_cache_dir

# Four tests, so both workers run some; each prints what its worker sees.
SHOW_ENV = """
    import json, os
    import pytest

    @pytest.mark.parametrize("i", range(4))
    def test_env(i):
        seen = {k: os.environ.get(k) for k in ("TRITON_CACHE_DIR", "CUDA_VISIBLE_DEVICES", "TRITON_CACHE_AUTOTUNING",
                                                "TRITON_INTERPRET")}
        seen["worker"] = os.environ.get("PYTEST_XDIST_WORKER")
        seen["environ"] = dict(os.environ)
        with open(f"env-{os.environ['PYTEST_XDIST_WORKER']}-{i}.json", "w") as fh:
            json.dump(seen, fh)
"""


def _seen(pytester) -> dict:
    """worker -> what its tests saw (all of a worker's tests must agree)."""
    by_worker = {}
    for path in sorted(pytester.path.glob("env-*.json")):
        seen = json.loads(path.read_text())
        environ = {k: v for k, v in seen["environ"].items() if k != "PYTEST_CURRENT_TEST"}
        seen["environ"] = environ
        assert by_worker.setdefault(seen["worker"], seen) == seen, "a worker's environment changed between tests"
    assert set(by_worker) == {"gw0", "gw1"}, "both workers ran tests"
    return by_worker


def _run(pytester, *args):
    pytester.makepyfile(test_env=SHOW_ENV)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=4)
    return result


@pytest.fixture
def user_env(monkeypatch, tmp_path):
    """A user's pre-warmed shared cache and a GPU list, as set before pytest starts."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "shared-cache"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    for name in ("PYTEST_SSD_ISOLATE_CACHE", "PYTEST_SSD_PLACE_GPUS", "PYTEST_SSD_PERSIST_AUTOTUNE",
                 "TRITON_CACHE_AUTOTUNING"):
        monkeypatch.delenv(name, raising=False)
    return {"TRITON_CACHE_DIR": str(tmp_path / "shared-cache"), "CUDA_VISIBLE_DEVICES": "4,5"}


@pytest.fixture
def no_user_cache(monkeypatch, tmp_path):
    """No TRITON_CACHE_DIR set; Triton's default dir under a TRITON_HOME of this test's own."""
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    for name in ("PYTEST_SSD_ISOLATE_CACHE", "PYTEST_SSD_PLACE_GPUS", "PYTEST_SSD_PERSIST_AUTOTUNE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home" / ".triton" / "cache"


def test_an_unrelated_repo_keeps_its_environment_under_xdist(pytester, user_env):
    result = _run(pytester)
    for worker, seen in _seen(pytester).items():
        assert seen["TRITON_CACHE_DIR"] == user_env["TRITON_CACHE_DIR"], worker
        assert seen["CUDA_VISIBLE_DEVICES"] == "4,5", worker
        assert seen["TRITON_CACHE_AUTOTUNING"] is None and seen["TRITON_INTERPRET"] is None
    ours = [line for line in result.outlines if line.startswith("pytest-ssd")]
    assert len(ours) == 1 and "idle" in ours[0], ours


def test_an_unrelated_repo_without_a_cache_dir_gets_none_set(pytester, no_user_cache):
    _run(pytester)
    for seen in _seen(pytester).values():
        assert seen["TRITON_CACHE_DIR"] is None and seen["CUDA_VISIBLE_DEVICES"] == "4,5"


def test_an_idle_session_sets_no_variable_at_all(pytester, user_env):
    # The same session with the plugin unloaded is the baseline (xdist sets a few variables itself).
    _run(pytester, "-p", "no:pytest_ssd")
    baseline = _seen(pytester)
    for path in pytester.path.glob("env-*.json"):
        path.unlink()
    _run(pytester)
    for worker, seen in _seen(pytester).items():
        ignore = {"PYTEST_XDIST_TESTRUNUID"}  # random per run
        without = {k: v for k, v in baseline[worker]["environ"].items() if k not in ignore}
        assert {k: v for k, v in seen["environ"].items() if k not in ignore} == without


def test_isolate_cache_on_gives_each_worker_its_own_dir(pytester, no_user_cache):
    result = _run(pytester, "--ssd-isolate-cache", "on")
    for worker, seen in _seen(pytester).items():
        assert seen["TRITON_CACHE_DIR"] == str(no_user_cache / f"pytest-ssd-{worker}")
        assert seen["CUDA_VISIBLE_DEVICES"] == "4,5", "placement stays off"
    result.stdout.fnmatch_lines(["pytest-ssd: xdist workers: one Triton cache dir each (isolate_cache=on)*"])


def test_isolate_cache_never_replaces_a_dir_the_user_set(pytester, user_env):
    result = _run(pytester, "--ssd-isolate-cache", "on")
    for seen in _seen(pytester).values():
        assert seen["TRITON_CACHE_DIR"] == user_env["TRITON_CACHE_DIR"]
    result.stdout.fnmatch_lines(["pytest-ssd: xdist workers: your TRITON_CACHE_DIR, never replaced*"])


def test_place_gpus_on_pins_each_worker_within_the_users_list(pytester, user_env):
    result = _run(pytester, "--ssd-place-gpus", "on")
    seen = _seen(pytester)
    assert {w: s["CUDA_VISIBLE_DEVICES"] for w, s in seen.items()} == {"gw0": "4", "gw1": "5"}
    assert all(s["TRITON_CACHE_DIR"] == user_env["TRITON_CACHE_DIR"] for s in seen.values())
    result.stdout.fnmatch_lines(["pytest-ssd: xdist workers: one GPU each through CUDA_VISIBLE_DEVICES "
                                 "(place_gpus=on)"])


def test_both_from_env_and_ini(pytester, no_user_cache, monkeypatch):
    monkeypatch.setenv("PYTEST_SSD_ISOLATE_CACHE", "on")
    pytester.makeini("[pytest]\nssd_place_gpus = on\n")
    _run(pytester)
    seen = _seen(pytester)
    assert {w: s["CUDA_VISIBLE_DEVICES"] for w, s in seen.items()} == {"gw0": "4", "gw1": "5"}
    assert {w: s["TRITON_CACHE_DIR"] for w, s in seen.items()} == {
        w: str(no_user_cache / f"pytest-ssd-{w}") for w in ("gw0", "gw1")}


def test_off_wins_over_the_suite(pytester, no_user_cache):
    result = pytester.runpytest_subprocess("-p", "pytest_ssd", "--pyargs", "pytest_ssd.suite", "-n", "2",
                                           "--co", "--ssd-isolate-cache", "off")
    result.stdout.fnmatch_lines(["pytest-ssd: xdist workers: the Triton cache dir as set (isolate_cache=off)",
                                 "pytest-ssd: xdist workers: one GPU each * (place_gpus=auto, the suite runs)"])


def test_persist_autotune_shares_its_dir_and_an_in_process_session_gives_the_environment_back(pytester, user_env,
                                                                                            tmp_path):
    pytester.makepyfile("""
        import os
        def test_sees_the_persist_dir():
            assert os.environ["TRITON_CACHE_DIR"].endswith("persist") and os.environ["TRITON_CACHE_AUTOTUNING"] == "1"
    """)
    pytester.runpytest(f"--ssd-persist-autotune={tmp_path / 'persist'}").assert_outcomes(passed=1)
    assert os.environ["TRITON_CACHE_DIR"] == user_env["TRITON_CACHE_DIR"]
    assert "TRITON_CACHE_AUTOTUNING" not in os.environ


@pytest.mark.parametrize("args, pyargs, expected", [
    (["pytest_ssd.suite"], True, True),
    (["pytest_ssd.suite.test_correctness::test_matches_reference"], True, True),
    (["pytest_ssd"], True, True),
    (["tests"], False, False),
    (["pytest_ssd.suite"], False, False),  # without --pyargs it is a path that does not exist here
    ([], False, False),
])
def test_names_the_suite(args, pyargs, expected, tmp_path):
    assert names_the_suite(args, pyargs, str(tmp_path)) is expected


def test_names_the_suite_by_path():
    import pytest_ssd.placement as placement

    assert names_the_suite([placement.SUITE_DIR + "/test_correctness.py::test_x"], False, "/")
    assert names_the_suite([os.path.relpath(placement.SUITE_DIR)], False, os.getcwd())
    assert not names_the_suite([os.path.join(os.path.dirname(placement.PACKAGE_DIR), "tests")], False, "/")


@pytest.mark.parametrize("value, runs_suite, expected", [
    ("auto", True, True), ("auto", False, False), ("on", False, True), ("off", True, False)])
def test_switched_on(value, runs_suite, expected):
    assert switched_on(value, runs_suite) is expected


def test_worker_cache_dir():
    assert worker_cache_dir("gw3", {"TRITON_HOME": "/h"}) == "/h/.triton/cache/pytest-ssd-gw3"
    assert worker_cache_dir("gw3", {"TRITON_CACHE_DIR": "/mine"}) is None
    with pytest.raises(ValueError, match="expected an xdist worker id"):
        worker_cache_dir("main", {})
