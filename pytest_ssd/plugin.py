"""The pytest surface of pytest-ssd: options, markers, warm-enforcement, reports, xdist.

Thin by design: the work is done by the library modules (events, coverage, warmup, report),
which a model loader can use at runtime without pytest.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import pytest

from .options import add_options, checked_paths, resolve
from .placement import gpu_for_worker, visible_gpus
from .report import SessionReport, WorkerReport, environment
from .session import SSDSession

SESSION_KEY = pytest.StashKey[SSDSession]()
CONTROLLER_KEY = pytest.StashKey[list]()  # WorkerReports received from xdist workers
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


def _count_gpus_without_cuda_init() -> int:
    # CUDA_VISIBLE_DEVICES only works if set before CUDA initialises, so count GPUs from the
    # driver's /proc entries rather than through torch.
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def _place_worker(worker: str) -> Optional[str]:
    gpu = gpu_for_worker(worker, visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), _count_gpus_without_cuda_init()))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def _isolate_triton_cache(worker: Optional[str], persist_dir: Optional[str]) -> None:
    """Never let processes race on one Triton cache dir (triton#11512).

    With --ssd-persist-autotune DIR every process shares DIR on purpose (warmups take a file lock
    in turn); otherwise each xdist worker gets its own subdirectory.
    """
    if persist_dir:
        os.environ["TRITON_CACHE_DIR"] = os.path.abspath(persist_dir)
        os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
    elif worker is not None:
        base = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(base, f"pytest-ssd-{worker}")


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    settings = resolve(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput and "ssd_seed" in workerinput:
        settings = dataclasses.replace(settings, seed=workerinput["ssd_seed"],
                                       seed_was_given=workerinput["ssd_seed_given"])
    worker = _worker_id(config)
    settings = checked_paths(settings, probe_report=worker is None)  # usage errors now, not after the run
    gpu = _place_worker(worker) if worker else None
    _isolate_triton_cache(worker, settings.persist_autotune)
    if settings.device == "cuda" and not settings.compile_only:
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("pytest-ssd: --ssd-device cuda, but torch.cuda.is_available() is False; "
                                    "use --ssd-device cpu or auto")
    session = SSDSession(settings, worker=worker or "main", gpu=gpu)
    config.stash[SESSION_KEY] = session
    config.stash[CONTROLLER_KEY] = []
    if settings.compile_only:
        from .compile_only import compile_only

        session.cleanup.enter_context(compile_only(target=settings.compile_only))
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(), "pytest-ssd-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION_KEY in config.stash:
        config.stash[SESSION_KEY].cleanup.close()


def pytest_report_header(config: pytest.Config) -> list:
    return ssd_session(config).settings.describe()


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


SSD_FIXTURES = ("mixer2_layer", "triton_events")


def _uses_ssd(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return _watched(item) or any(n.startswith("ssd_") or n in SSD_FIXTURES for n in names)


def _enforced(item: pytest.Item) -> bool:
    settings = ssd_session(item.config).settings
    return bool(settings.require_warm or item.get_closest_marker("ssd_requires_warm"))


def _record_phase(item: pytest.Item, phase: str, rec, test_failed: bool) -> Optional[str]:
    """File what a phase compiled; returns the failure message when it must fail the test."""
    session = ssd_session(item.config)
    events = session.unfiled(rec.events)  # warmups and coverage checks file their own
    if not events:
        return None
    allow = item.get_closest_marker("ssd_allow_cold")
    if phase != "call" or not _enforced(item):
        outcome = "reported"
    elif allow is not None:
        outcome = "allowed"
    else:
        outcome = "failed"
    allow_reason = (allow.kwargs.get("reason") or (allow.args[0] if allow.args else "no reason given")) if allow else None
    lines = session.file_cold(item.nodeid, phase, outcome, events, allow_reason)
    if outcome != "failed" or test_failed:
        return None
    cost = sum(e.seconds or 0.0 for e in events)
    return (f"pytest-ssd: {len(events)} Triton compile/autotune event(s) in the call phase after warmup "
            f"(--ssd-require-warm), {cost:.2f}s spent:\n  " + "\n  ".join(lines)
            + "\nWarm these in the warmup, or mark the test @pytest.mark.ssd_allow_cold(reason=...).")


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
    _skip_gpu_test_without_cuda(item)
    if not _watched(item):
        return (yield)
    return (yield from _watch_phase(item, "setup"))


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and _uses_ssd(item):
        seed = ssd_session(item.config).settings.seed
        report.sections.append(("pytest-ssd", f"seed {seed}: reproduce with --ssd-seed={seed} {item.nodeid}"))
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
    checks = config.stash.get(CHECKS_KEY, None)
    recorded = any(w.recorded_anything for w in [session.report, *config.stash[CONTROLLER_KEY]])
    if not recorded and checks is None:
        return
    terminalreporter.section("pytest-ssd")
    if recorded:
        for line in _session_report(config).summary_lines():
            terminalreporter.write_line(line)
    if session.settings.report:
        terminalreporter.write_line(f"JSON report: {session.settings.report}")
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
