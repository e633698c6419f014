"""Every pytest-ssd option in one table: CLI flag, ini key, environment variable, parser, help.

Precedence is CLI > environment variable > ini > default (as pytest-timeout does). A bad value
is a ``pytest.UsageError`` that says what is accepted. This module imports neither torch nor
triton: the plugin is loaded into every pytest run of an environment that has it installed.
"""
from __future__ import annotations

import importlib
import inspect
import os
import random
import tempfile
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import pytest

DTYPE_NAMES = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
KERNEL_APIS = ("auto", "vllm", "mamba_ssm")
SWITCHES = ("auto", "on", "off")  # auto: on only when the command line runs the conformance suite
DEFAULT_KERNEL = "pytest_ssd.kernels:mamba_chunk_scan_combined_varlen"
DEFAULT_WARMUP = "pytest_ssd.warmup:warmup_ssd_kernels"
# The targets pytest_ssd.compile_only supports (a test keeps the two lists equal).
COMPILE_TARGETS = ("cuda:80", "cuda:90", "cuda:100", "hip:gfx942")


def _bool(value: str) -> bool:
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("accepted: 1/0, true/false, yes/no, on/off")


def _dtypes(value: str) -> tuple:
    names = tuple(dict.fromkeys(v.strip().lower() for v in str(value).replace(" ", ",").split(",") if v.strip()))
    if not names or any(n not in DTYPE_NAMES for n in names):
        raise ValueError(f"accepted: one or more of {', '.join(DTYPE_NAMES)}, comma-separated (e.g. fp32,bf16)")
    return names


def _seed(value: str) -> int:
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise ValueError("accepted: a non-negative integer") from None
    if seed < 0:
        raise ValueError("accepted: a non-negative integer")
    return seed


def _choice(choices: tuple) -> Callable[[str], str]:
    def parse(value: str) -> str:
        low = str(value).strip().lower()
        if low not in choices:
            raise ValueError(f"accepted: {', '.join(choices)}")
        return low

    return parse


def _entry_point(value: str) -> str:
    text = str(value).strip()
    module, _, attr = text.partition(":")
    if not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
        raise ValueError("accepted: 'package.module:callable' (a module path, a colon, an attribute)")
    return text


def _requests(value: str) -> tuple:
    """``"1000,2048,517,3000;17;1,1"`` -> ((1000, 2048, 517, 3000), (17,), (1, 1))."""
    accepted = "accepted: requests separated by ';', each a comma-separated list of positive sequence lengths"
    requests = []
    for part in str(value).split(";"):
        if not part.strip():
            continue
        try:
            lens = tuple(int(v) for v in part.replace(" ", ",").split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{accepted} (e.g. 1000,2048,517,3000;17;1,1)") from None
        if not lens or any(n <= 0 for n in lens):
            raise ValueError(f"{accepted} (e.g. 1000,2048,517,3000;17;1,1)")
        requests.append(lens)
    if not requests:
        raise ValueError(f"{accepted} (e.g. 1000,2048,517,3000;17;1,1)")
    return tuple(requests)


def _target(value: str) -> str:
    text = str(value).strip().lower()
    if text not in COMPILE_TARGETS:
        raise ValueError(f"accepted: {', '.join(COMPILE_TARGETS)}")
    return text


def _path(value: str) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("accepted: a file or directory path")
    return text


def _float_above(low: float, accepted: str) -> Callable[[str], float]:
    """A parser of a finite number greater than ``low``."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"accepted: {accepted}") from None
        if not low < number < float("inf"):
            raise ValueError(f"accepted: {accepted}")
        return number

    return parse


_ratio = _float_above(1.0, "a number > 1 (first call / steady state)")
_positive_seconds = _float_above(0.0, "a positive number of seconds")


def _positive_int(value: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError("accepted: a positive integer") from None
    if n <= 0:
        raise ValueError("accepted: a positive integer")
    return n


@dataclass(frozen=True)
class Option:
    name: str  # attribute of Settings, and the ini key with "ssd_" prefix
    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    is_flag: bool = False

    @property
    def ini(self) -> str:
        return "ssd_" + self.name

    @property
    def env(self) -> str:
        return "PYTEST_SSD_" + self.name.upper()

    @property
    def dest(self) -> str:
        return "ssd_" + self.name


OPTIONS = (
    Option("require_warm", "--ssd-require-warm", _bool, False,
           "fail any test whose call phase compiles a Triton kernel or runs an autotune benchmark", is_flag=True),
    Option("dtype", "--ssd-dtype", _dtypes, ("fp32", "fp16", "bf16"),
           "model dtypes for the conformance suite: fp32, fp16, bf16 or a comma-separated list"),
    Option("seed", "--ssd-seed", _seed, None, "base seed for all random inputs (default: random, printed)"),
    Option("report", "--ssd-report", _path, None, "write a JSON report (warmups, cold events, environment) here"),
    Option("kernel", "--ssd-kernel", _entry_point, DEFAULT_KERNEL,
           "SSD entry point under test, module:callable (needs --ssd-warmup)"),
    Option("kernel_api", "--ssd-kernel-api", _choice(KERNEL_APIS), "auto",
           "call style of --ssd-kernel: vllm (packed varlen), mamba_ssm (batched), or auto (from its signature)"),
    Option("warmup", "--ssd-warmup", _entry_point, DEFAULT_WARMUP,
           "warmup for --ssd-kernel, module:callable, called as warmup(layer); checked at startup when given"),
    Option("workload", "--ssd-workload", _entry_point, None,
           "the engine's own call path for the warmth verdict, module:callable, called as workload(layer, inputs) "
           "per request (default: the kernel's call variants)"),
    Option("requests", "--ssd-requests", _requests, None,
           "request shapes for the warmth verdict: ';'-separated requests of comma-separated sequence lengths "
           "(default: the suite's)"),
    Option("device", "--ssd-device", _choice(DEVICES), "auto", "where kernels run: auto (cuda if available), cpu, cuda"),
    Option("compile_only", "--ssd-compile-only", _target, None,
           "run the whole session in Triton compile-only mode for this target (e.g. cuda:90): kernels compile, nothing executes"),
    Option("persist_autotune", "--ssd-persist-autotune", _path, None,
           "Triton cache dir with persisted autotune results (Triton 3.4+), shared safely by xdist workers"),
    # Generous on purpose: a first request after a good warmup still pays one-time costs (new
    # workspace sizes from the allocator, the first metadata check), measured 1.7-2.4x on an H100;
    # a compile or autotune on the first request is 1000x and more.
    Option("max_spike", "--ssd-max-spike", _ratio, 4.0,
           "largest first-call / steady-state latency ratio the GPU latency checks accept"),
    Option("isolate_cache", "--ssd-isolate-cache", _choice(SWITCHES), "auto",
           "give each xdist worker its own Triton cache dir: auto (only when running the conformance suite), "
           "on, off; never replaces a TRITON_CACHE_DIR you set"),
    Option("place_gpus", "--ssd-place-gpus", _choice(SWITCHES), "auto",
           "pin each xdist worker to one GPU through CUDA_VISIBLE_DEVICES: auto (only when running the "
           "conformance suite), on, off; picks from a CUDA_VISIBLE_DEVICES list you set"),
    Option("manifest", "--ssd-manifest", _path, None,
           "write the warmup manifest here: per layer config judged, the binaries and autotune keys its warmup "
           "compiled (docs/manifest.md)"),
    Option("manifest_check", "--ssd-manifest-check", _path, None,
           "fail the session when the warmup manifest differs from this committed one, printing the diff"),
    Option("manifest_update", "--ssd-manifest-update", _bool, False,
           "with --ssd-manifest-check PATH: accept the session's warmup manifest, rewriting PATH", is_flag=True),
    Option("max_warmup_binaries", "--ssd-max-warmup-binaries", _positive_int, None,
           "fail the session when a layer config's warmup compiles more binaries than this"),
    Option("max_warmup_seconds", "--ssd-max-warmup-seconds", _positive_seconds, None,
           "fail the session when a layer config's warmup takes longer than this on a real GPU "
           "(compile-only seconds do not count)"),
)


@dataclass(frozen=True)
class Settings:
    require_warm: bool = False
    dtype: tuple = ("fp32", "fp16", "bf16")
    seed: int = 0
    seed_was_given: bool = False
    report: Optional[str] = None
    kernel: str = DEFAULT_KERNEL
    kernel_api: str = "auto"
    warmup: str = DEFAULT_WARMUP
    workload: Optional[str] = None
    requests: Optional[tuple] = None
    device: str = "auto"
    compile_only: Optional[str] = None
    persist_autotune: Optional[str] = None
    max_spike: float = 4.0
    isolate_cache: str = "auto"
    place_gpus: str = "auto"
    manifest: Optional[str] = None
    manifest_check: Optional[str] = None
    manifest_update: bool = False
    max_warmup_binaries: Optional[int] = None
    max_warmup_seconds: Optional[float] = None
    sources: dict = field(default_factory=dict)  # option name -> "cli" | "env" | "ini" | "default"

    @property
    def given(self) -> tuple:
        """The options set on the command line, in the environment or in an ini file."""
        return tuple(name for name, source in self.sources.items() if source != "default")

    def show(self, name: str) -> str:
        """``name=value``, with where it came from unless it is the default."""
        value = getattr(self, name)
        if isinstance(value, tuple):
            value = ",".join(value)
        source = self.sources.get(name, "default")
        return f"{name}={value}" + ("" if source == "default" else f" ({source})")

    def describe(self) -> list:
        """Report-header lines for the effective settings (the device and mode come from the session)."""
        seed = (f"seed={self.seed} ({'given' if self.seed_was_given else 'random'}; "
                f"reproduce with --ssd-seed={self.seed})")
        lines = [
            f"pytest-ssd: kernel={self.kernel} (api {self.kernel_api}), warmup={self.warmup}"
            + (f", workload={self.workload}" if self.workload else ""),
            "pytest-ssd: " + ", ".join([self.show("require_warm"), self.show("dtype"), seed]),
            "pytest-ssd: " + ", ".join(self.show(n) for n in ("report", "persist_autotune", "max_spike")),
        ]
        bill = ("manifest", "manifest_check", "manifest_update", "max_warmup_binaries", "max_warmup_seconds")
        if any(self.sources.get(n, "default") != "default" for n in bill):
            lines.append("pytest-ssd: " + ", ".join(self.show(n) for n in bill))
        return lines


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("ssd", "pytest-ssd: Mamba2 SSD kernel correctness and warmth")
    for opt in OPTIONS:
        if opt.is_flag:
            group.addoption(opt.flag, action="store_true", default=None, dest=opt.dest, help=opt.help)
        else:
            group.addoption(opt.flag, action="store", default=None, dest=opt.dest, metavar=opt.name.upper(),
                            help=f"{opt.help} [env {opt.env}, ini {opt.ini}]")
        parser.addini(opt.ini, help=opt.help, default=None)


def resolve(config: pytest.Config, environ: Optional[dict] = None) -> Settings:
    """Effective settings: CLI > environment > ini > default. Bad values raise UsageError."""
    environ = os.environ if environ is None else environ
    values, sources = {}, {}
    for opt in OPTIONS:
        raw, source = config.getoption(opt.dest), "cli"
        if raw is None and environ.get(opt.env) not in (None, ""):
            raw, source = environ[opt.env], "env"
        if raw is None and config.getini(opt.ini) not in (None, ""):
            raw, source = config.getini(opt.ini), "ini"
        if raw is None:
            values[opt.name], sources[opt.name] = opt.default, "default"
            continue
        try:
            values[opt.name] = True if (opt.is_flag and raw is True) else opt.parse(raw)
        except ValueError as e:
            raise pytest.UsageError(f"pytest-ssd: bad value {raw!r} for {_where(opt, source)}: {e}") from None
        sources[opt.name] = source
    seed_given = values["seed"] is not None
    if not seed_given:
        values["seed"] = random.SystemRandom().randrange(2**31)
    return Settings(**values, seed_was_given=seed_given, sources=sources)


def _where(opt: Option, source: str) -> str:
    return {"cli": opt.flag, "env": f"environment variable {opt.env}", "ini": f"ini option {opt.ini}"}.get(source, opt.flag)


def checked_paths(settings: Settings, *, probe_report: bool = True) -> Settings:
    """``settings`` with ``report``, ``persist_autotune`` and the manifest paths checked and made
    absolute, at startup.

    A report path must be a file in an existing directory that can be written (tried by opening
    it; a file that was not there is removed again), so a bad one is a usage error now and not
    an exception after every test has run. The persist dir is created if needed and must take a
    file; absolute, it stays put when a test changes directory (xdist workers lock a file in it).
    ``probe_report=False`` (xdist workers: only the controller writes the report) skips the
    write test. The manifest is written like the report; a checked manifest must exist unless
    ``--ssd-manifest-update`` creates it. Raises ``pytest.UsageError`` naming the option.
    """
    options = {opt.name: opt for opt in OPTIONS}

    def where(name: str) -> str:
        return _where(options[name], settings.sources.get(name))

    report, persist = settings.report, settings.persist_autotune
    if report:
        report = _checked_report(os.path.abspath(report), where("report"), probe_report)
    if persist:
        persist = _checked_persist_dir(os.path.abspath(persist), where("persist_autotune"))
    manifest, check = settings.manifest, settings.manifest_check
    if manifest:
        manifest = _checked_report(os.path.abspath(manifest), where("manifest"), probe_report)
    if settings.manifest_update and not check:
        raise pytest.UsageError(f"pytest-ssd: {where('manifest_update')} needs --ssd-manifest-check PATH: "
                                f"the committed manifest to rewrite")
    if check:
        check = os.path.abspath(check)
        if settings.manifest_update:
            _checked_report(check, where("manifest_check"), probe=False)
        elif not os.path.isfile(check):
            raise pytest.UsageError(f"pytest-ssd: {where('manifest_check')} {check!r}: no such file; write it first "
                                    f"with --ssd-manifest-check {settings.manifest_check} --ssd-manifest-update")
    return replace(settings, report=report, persist_autotune=persist, manifest=manifest, manifest_check=check)


def _checked_report(path: str, where: str, probe: bool) -> str:
    def fail(why: str) -> None:
        raise pytest.UsageError(f"pytest-ssd: {where} {path!r}: {why}; give a writable file path such as ssd-report.json")

    if os.path.isdir(path):
        fail("is a directory")
    if not os.path.isdir(os.path.dirname(path)):
        fail(f"its directory {os.path.dirname(path)!r} does not exist")
    if probe:
        existed = os.path.exists(path)
        try:
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as e:
            fail(f"cannot be written ({e.strerror or e})")
        if not existed:
            os.remove(path)
    return path


def _checked_persist_dir(path: str, where: str) -> str:
    def fail(why: str) -> None:
        raise pytest.UsageError(f"pytest-ssd: {where} {path!r}: {why}; give a directory pytest-ssd may create and write")

    if os.path.exists(path) and not os.path.isdir(path):
        fail("is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        fail(f"cannot be created or written ({e.strerror or e})")
    return path


def load_callable(spec: str, what: str) -> Callable:
    """Import ``module:attr``; a clear UsageError when it does not import or is not callable."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # any import-time error of user code is a configuration problem
        frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames[1:] else ""  # [0] is this line
        raise pytest.UsageError(f"pytest-ssd: {what} {spec!r}: module {module_name!r} does not import: "
                                f"{type(e).__name__}: {e}{where}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise pytest.UsageError(f"pytest-ssd: {what} {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise pytest.UsageError(f"pytest-ssd: {what} {spec!r} is not callable (got {type(obj).__name__})")
    return obj


def check_kernel_has_warmup(settings: Settings) -> None:
    """The kernel under test is the kernel warmed: a kernel of one's own needs a warmup of one's own.

    The default warmup warms the bundled kernel only, so with ``--ssd-kernel X`` and no
    ``--ssd-warmup`` every check would meet X cold. A UsageError, before anything imports.
    """
    if settings.kernel != DEFAULT_KERNEL and settings.sources.get("warmup", "default") == "default":
        raise pytest.UsageError(
            f"pytest-ssd: --ssd-kernel {settings.kernel} needs --ssd-warmup: the default warmup "
            f"({DEFAULT_WARMUP}) warms the bundled kernel, not this one, so every check would meet it cold.\n"
            f"Pass --ssd-warmup module:fn, the warmup your engine runs for this kernel, called as fn(layer) "
            f"with a pytest_ssd.layer.Mixer2Layer (docs: README, 'Use it in your repository')."
        )


def check_warmup_signature(fn: Callable, spec: str) -> None:
    """A UsageError unless ``fn`` can be called as ``fn(layer)``: one positional argument, nothing else required."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or extension callable: nothing to read, so nothing to check
        return
    try:
        signature.bind(object())
    except TypeError as e:
        raise pytest.UsageError(
            f"pytest-ssd: --ssd-warmup {spec!r} is called as fn(layer), with one positional argument; "
            f"its signature {signature} does not accept that ({e})"
        ) from None
