"""The pytest surface of pytest-ssd: options, markers, warm-enforcement, reports, xdist.

Thin by design: the work is done by the library modules (events, verdict, warmup, report),
which a model loader can use at runtime without pytest.

The plugin autoloads in every pytest run of an environment that has it installed, so it changes
nothing unless asked: a session *uses* it when it gives an ``--ssd-*`` option (CLI, environment
or ini), loads it with ``-p pytest_ssd``, or runs the conformance suite. Any other session gets
one header line and no change to its environment; its fixtures and markers still work.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Iterator, Optional

import pytest

from . import __version__
from .options import add_options, check_kernel_has_warmup, check_warmup_signature, checked_paths, resolve
from .placement import environment_changes, names_the_suite, worker_lines
from .report import SessionReport, WorkerReport, environment
from .session import SSDSession

SESSION_KEY = pytest.StashKey[SSDSession]()
CONTROLLER_KEY = pytest.StashKey[list]()  # WorkerReports received from xdist workers
IN_USE_KEY = pytest.StashKey[bool]()  # this session asked for the plugin (see the module docstring)
RUNS_SUITE_KEY = pytest.StashKey[bool]()  # the command line runs the conformance suite
SEED_KEY = pytest.StashKey[int]()  # on an item: the seed its ssd_seed fixture handed out
SETUP_SOURCES_KEY = pytest.StashKey[list]()  # during a watched setup: (event, fixture name) pairs

NO_DRIVER_SECTION = "pytest-ssd: no GPU driver"
NO_DRIVER_HINT = ("Triton found no GPU driver ('0 active drivers'), so kernels cannot launch on this machine. "
                  "To check warmth here, add --ssd-compile-only TARGET (e.g. cuda:90): kernels compile for that "
                  "GPU and nothing runs.")
CHECKS_KEY = pytest.StashKey[object]()  # manifest.SessionChecks of the controller, for the summary

MARKERS = (
    "ssd_allow_cold(reason): this test may compile Triton kernels or autotune in its call phase "
    "even under --ssd-require-warm; the reason is shown in the report",
    "ssd_requires_warm: fail this test if its call phase compiles a Triton kernel or runs an autotune "
    "benchmark, without --ssd-require-warm",
    "gpu: needs a CUDA GPU; skipped cleanly without one",
)


def ssd_session(config: pytest.Config) -> SSDSession:
    return config.stash[SESSION_KEY]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _worker_id(config: pytest.Config) -> Optional[str]:
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else None


def _in_use(config: pytest.Config, settings, runs_suite: bool) -> bool:
    plugins = config.getoption("plugins", None) or []
    return bool(settings.given) or runs_suite or "pytest_ssd" in plugins


@contextlib.contextmanager
def _importable_from(*dirs) -> Iterator[None]:
    """Modules of the repo under test import at startup, as they would once collection put the
    rootdir on ``sys.path``: the dirs go after installed packages, for the duration."""
    added = [d for d in dict.fromkeys(str(d) for d in dirs) if d not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for d in added:
            sys.path.remove(d)


def _check_entry_points(config: pytest.Config, session: SSDSession) -> None:
    """A usage error (exit 4) before any test runs for a given kernel or warmup that cannot be used.

    Checked when given (CLI, environment or ini): the bundled defaults are known good. The kernel
    is imported through the session, which sets ``TRITON_INTERPRET`` first where it must.
    """
    given = session.settings.given
    with _importable_from(config.rootpath, config.invocation_params.dir):
        if "kernel" in given or "kernel_api" in given:
            session.kernel  # imports it, checks it is callable, detects (or takes) its API style
        if "warmup" in given:
            check_warmup_signature(session.warmup_fn, session.settings.warmup)


# ---- Triton's interpreter: settled before conftest files load ---------------------------------

class _EarlyOptions:
    """What :func:`resolve` reads, before pytest has put the command line into ``config.option``."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    def getoption(self, dest: str):
        return getattr(self._config.known_args_namespace, dest, None)

    def getini(self, name: str):
        return self._config.getini(name)


EARLY_KEY = pytest.StashKey[SSDSession]()  # settled interpreter mode before conftest files loaded


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Settle interpreter mode before any conftest file is imported: one that imports triton (as
    this repository's tests/conftest.py does) would come before TRITON_INTERPRET.

    Not where that needs CUDA in an xdist worker (``--ssd-device auto``): GPU placement comes
    first there, the controller has set TRITON_INTERPRET for it already, and pytest_configure
    settles the rest. A bad option is left to pytest_configure to report.
    """
    try:
        settings = resolve(_EarlyOptions(early_config))
    except pytest.UsageError:
        return
    if settings.device == "auto" and os.environ.get("PYTEST_XDIST_WORKER") is not None:
        return
    early = early_config.stash[EARLY_KEY] = SSDSession(settings, worker="main", gpu=None)
    early_config.add_cleanup(early.cleanup.close)  # a no-op once pytest_configure's session took it over
    early.settle_interpreter()


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    settings = resolve(config)
    check_kernel_has_warmup(settings)
    workerinput = getattr(config, "workerinput", None)
    if workerinput and "ssd_seed" in workerinput:
        settings = dataclasses.replace(settings, seed=workerinput["ssd_seed"],
                                       seed_was_given=workerinput["ssd_seed_given"])
    worker = _worker_id(config)
    settings = checked_paths(settings, probe_report=worker is None)  # usage errors now, not after the run
    runs_suite = names_the_suite(config.args, bool(config.getoption("pyargs", False)),
                                 str(config.invocation_params.dir))
    changes = environment_changes(settings, worker, runs_suite, os.environ)
    session = SSDSession(settings, worker=worker or "main", gpu=changes.get("CUDA_VISIBLE_DEVICES"))
    config.stash[SESSION_KEY] = session
    config.stash[CONTROLLER_KEY] = []
    config.stash[RUNS_SUITE_KEY] = runs_suite
    config.stash[IN_USE_KEY] = _in_use(config, settings, runs_suite)
    session.set_environment(changes)  # before anything initialises CUDA or compiles
    if settings.device == "cuda" and not settings.compile_only:
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("pytest-ssd: --ssd-device cuda, but torch.cuda.is_available() is False; "
                                    "use --ssd-device cpu or auto")
    if EARLY_KEY in config.stash:
        session.adopt_interpreter(config.stash[EARLY_KEY])
    session.settle_interpreter()  # where nothing settled it before conftest files loaded
    if settings.compile_only:
        from .compile_only import compile_only

        session.cleanup.enter_context(compile_only(target=settings.compile_only))
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(), "pytest-ssd-xdist")
    _check_entry_points(config, session)


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION_KEY in config.stash:
        config.stash[SESSION_KEY].cleanup.close()


# ---- the report header -----------------------------------------------------------------------

def pytest_report_header(config: pytest.Config) -> list:
    if not config.stash[IN_USE_KEY]:
        return [f"pytest-ssd {__version__}: idle (no --ssd-* option given); -p no:pytest_ssd unloads it"]
    session = ssd_session(config)
    xdist = config.getoption("dist", "no") != "no"
    return [f"pytest-ssd {__version__}: {session.describe_mode()}", *session.settings.describe(),
            *(worker_lines(session.settings, config.stash[RUNS_SUITE_KEY], os.environ) if xdist else ())]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``ssd_dtype`` runs a test once per model dtype of ``--ssd-dtype``."""
    if "ssd_dtype" in metafunc.fixturenames:
        from .suite.cases import DTYPES  # imports torch: only once a test asks for ssd_dtype

        names = ssd_session(metafunc.config).settings.dtype
        metafunc.parametrize("ssd_dtype", [DTYPES[n] for n in names], ids=list(names))


# ---- warm enforcement ----------------------------------------------------------------------

def _watched(item: pytest.Item) -> bool:
    settings = ssd_session(item.config).settings
    return bool(settings.require_warm or settings.report or item.get_closest_marker("ssd_requires_warm")
                or item.get_closest_marker("ssd_allow_cold"))


def _enforced_by(item: pytest.Item) -> Optional[str]:
    """What makes a cold call phase fail this test, in the words a user would type; None if nothing."""
    settings = ssd_session(item.config).settings
    if settings.require_warm:
        source = settings.sources.get("require_warm", "cli")
        return "--ssd-require-warm" + {"cli": "", "env": " (env PYTEST_SSD_REQUIRE_WARM)",
                                       "ini": " (ini ssd_require_warm)"}.get(source, "")
    if item.get_closest_marker("ssd_requires_warm"):
        return "@pytest.mark.ssd_requires_warm"
    return None


def _record_phase(item: pytest.Item, phase: str, rec, test_failed: bool) -> Optional[str]:
    """File what a phase compiled; returns the failure message when it must fail the test."""
    warm_set = ssd_session(item.config).warm_set
    events = warm_set.unfiled(rec.events)  # warmups and coverage checks file their own
    if not events:
        return None
    if phase == "setup":  # the test's fixtures warming: a warmup, named by fixture, never a miss
        warm_set.file_fixture_warmup(item.nodeid, events, item.config.stash.get(SETUP_SOURCES_KEY, []))
        return None
    allow = item.get_closest_marker("ssd_allow_cold")
    allow_reason = (allow.kwargs.get("reason") or (allow.args[0] if allow.args else "no reason given")) if allow else None
    message = warm_set.file_call(item.nodeid, events, enforced_by=_enforced_by(item), allow_reason=allow_reason)
    return None if test_failed else message


def _watch_phase(item: pytest.Item, phase: str):
    from .events import record_triton

    failed = False
    with record_triton() as rec:
        try:
            result = yield
        except BaseException:
            failed = True
            raise
        finally:
            message = _record_phase(item, phase, rec, failed)
    message = "\n".join(m for m in (message, None if failed else _blinded_recorder(phase, rec)) if m)
    if message:
        pytest.fail(message, pytrace=False)
    return result


def _blinded_recorder(phase: str, rec) -> Optional[str]:
    """The failure when the recorder's hooks and the JIT caches disagree: compiles went unrecorded."""
    if not rec.unrecorded:
        return None
    return (f"pytest-ssd: the Triton event recorder and the JIT caches disagree in the {phase} phase, so its warmth "
            f"cannot be trusted:\n  " + "\n  ".join(m.describe() for m in rec.unrecorded)
            + "".join(f"\n  {note}" for note in rec.hook_changes)
            + "\nSomething replaced Triton's compile hooks without chaining them while the phase ran.")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    ssd_session(item.config).start_test()
    _skip_gpu_test_without_cuda(item)
    if not _watched(item):
        return (yield)
    item.config.stash[SETUP_SOURCES_KEY] = []
    try:
        return (yield from _watch_phase(item, "setup"))
    finally:
        del item.config.stash[SETUP_SOURCES_KEY]


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """In a watched setup, which fixture compiled what (a fixture that warms is named in the report)."""
    sources = request.config.stash.get(SETUP_SOURCES_KEY, None)
    if sources is None:
        return (yield)
    from .events import record_triton

    with record_triton() as rec:
        try:
            return (yield)
        finally:  # a fixture that requests another inside its body records after it: the inner one wins
            sources.extend((e, fixturedef.argname) for e in rec.events)


def _skip_gpu_test_without_cuda(item: pytest.Item) -> None:
    """What the ``gpu`` marker promises: without a CUDA device the test is skipped, with the reason."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("marked gpu: needs a CUDA GPU, and torch sees none")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if not _watched(item):
        return (yield)
    return (yield from _watch_phase(item, "call"))


def _no_gpu_driver(call: pytest.CallInfo) -> bool:
    return call.excinfo is not None and "0 active drivers" in str(call.excinfo.value)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if not report.failed:
        return report
    session = ssd_session(item.config)
    seed = item.stash.get(SEED_KEY, None)  # only a test that used ssd_seed (directly or through a fixture)
    if seed is not None:
        base = session.settings.seed
        report.sections.append(("pytest-ssd", f"seed {base}: reproduce with --ssd-seed={base} {item.nodeid} "
                                              f"(this test's own seed, {seed}, comes from it and the test id)"))
    if item.config.stash[IN_USE_KEY] and not session.settings.compile_only and _no_gpu_driver(call):
        report.sections.append((NO_DRIVER_SECTION, NO_DRIVER_HINT))
    return report


# ---- reports -------------------------------------------------------------------------------

def _session_report(config: pytest.Config) -> SessionReport:
    session = ssd_session(config)
    workers: list = list(config.stash[CONTROLLER_KEY])
    if not workers or session.report.recorded_anything:
        workers.insert(0, session.report)
    settings = {k: v for k, v in dataclasses.asdict(session.settings).items() if k != "sources"}
    return SessionReport(seed=session.settings.seed, settings=settings, environment=environment(), workers=workers)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if SESSION_KEY not in config.stash:
        return
    if _worker_id(config) is not None:
        config.workeroutput["ssd_report"] = ssd_session(config).report.to_dict()
        return
    from .manifest import asked_for, session_checks

    settings = ssd_session(config).settings
    if not (settings.report or asked_for(settings)):
        return  # the report reads torch's and Triton's versions: only when asked for
    report = _session_report(config)
    if settings.report:
        report.write_json(settings.report)
    checks = session_checks(report, settings)  # the warmup manifest and budget: they can fail the session
    if checks is not None:
        config.stash[CHECKS_KEY] = checks
        if checks.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if SESSION_KEY not in config.stash or _worker_id(config) is not None:
        return
    session = ssd_session(config)
    recorded = any(w.recorded_anything for w in [session.report, *config.stash[CONTROLLER_KEY]])
    failures = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    no_driver = sum(1 for r in failures if any(name == NO_DRIVER_SECTION for name, _ in getattr(r, "sections", ())))
    checks = config.stash.get(CHECKS_KEY, None)
    if not recorded and not no_driver and checks is None:
        return
    terminalreporter.section("pytest-ssd")
    if recorded:
        for line in _session_report(config).summary_lines():
            terminalreporter.write_line(line)
    if no_driver:
        terminalreporter.write_line(f"{no_driver} test(s) failed with Triton's '0 active drivers': no GPU driver here; "
                                    f"add --ssd-compile-only TARGET (e.g. cuda:90)")
    if session.settings.report:
        terminalreporter.write_line(f"JSON report (full layer and binary identities): {session.settings.report}")
    for line in (checks.lines if checks is not None else ()):
        terminalreporter.write_line(line, red=checks.failed)
    if checks is not None and checks.failed:
        terminalreporter.write_line("pytest-ssd: the session fails on the warmup manifest or budget above "
                                    f"(exit {int(pytest.ExitCode.TESTS_FAILED)})", red=True, bold=True)


class XdistHooks:
    """Controller side of xdist: hand the seed to workers, merge their reports."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        settings = ssd_session(node.config).settings
        node.workerinput["ssd_seed"] = settings.seed
        node.workerinput["ssd_seed_given"] = settings.seed_was_given

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        data = getattr(node, "workeroutput", {}).get("ssd_report")
        if data is not None:
            node.config.stash[CONTROLLER_KEY].append(WorkerReport.from_dict(data))
