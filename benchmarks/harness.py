"""What every benchmark here shares: fresh child processes, the environment header, the JSON file.

A benchmark script is its own child: the parent calls ``run_fresh(__file__, [hidden child
arguments])`` once per measurement, and the child (the same script, in a new interpreter with
its own Triton cache dir) measures and hands its one JSON object back with ``send_to_parent``.
Nothing one measurement compiled or autotuned can then make another look warm or fast.

The scripts are run as ``python benchmarks/X.py``, so this module is imported by its plain name
(the script's folder is on ``sys.path``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Mapping, Optional, Sequence

RESULT_ENV = "BENCH_CHILD_RESULT"  # where a child writes its JSON object (set by run_fresh)
OUTPUT_KEPT = 4000  # characters of a child's output kept for a failure or an echo


class ChildFailed(RuntimeError):
    """A child process timed out, exited non-zero, or sent no result.

    ``reason``: one line (``timed out after 240 s``, ``exit 1: <its last line of output>``);
    ``output``: the tail of its stdout and stderr, interleaved as written.
    """

    def __init__(self, reason: str, output: str = ""):
        super().__init__(reason)
        self.reason, self.output = reason, output

    def last_lines(self, n: int) -> str:
        return "\n".join(self.output.strip().splitlines()[-n:])


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the script's whole docstring, as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_fresh(script: str, args: Sequence[str], *, cache_dir: Optional[str] = None,
              env: Optional[Mapping[str, Optional[str]]] = None, timeout: Optional[float] = None,
              echo: bool = False) -> dict:
    """Run ``python script *args`` in a new process; return the JSON object it sent to its parent.

    The child's environment is this one's without any ``TRITON_CACHE_*`` variable, with
    ``TRITON_CACHE_DIR=cache_dir`` (a new empty dir, removed afterwards, when ``None``; a dir
    given is the caller's to share and remove), ``PYTHONUNBUFFERED=1``, and ``env`` on top (a
    ``None`` value removes the variable). ``timeout``: seconds before the child is killed.
    ``echo``: print the tail of the child's output once it exits (a sweep's progress lines).
    Raises ``ChildFailed`` on a timeout, a non-zero exit or a missing result.
    """
    own_dir = cache_dir is None
    cache_dir = tempfile.mkdtemp(prefix="bench-triton-cache-") if own_dir else cache_dir
    fd, result_path = tempfile.mkstemp(prefix="bench-child-", suffix=".json")
    os.close(fd)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_CACHE")}
    child_env.update(TRITON_CACHE_DIR=cache_dir, PYTHONUNBUFFERED="1", **{RESULT_ENV: result_path})
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    try:
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(script), *args], env=child_env, timeout=timeout,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except subprocess.TimeoutExpired as expired:
            raise ChildFailed(f"timed out after {timeout} s", _text(expired.output)[-OUTPUT_KEPT:]) from None
        output = proc.stdout[-OUTPUT_KEPT:]
        if echo:
            sys.stdout.write(output)
        if proc.returncode != 0:
            last = output.strip().splitlines()[-1:] or ["no output"]
            raise ChildFailed(f"exit {proc.returncode}: {last[0]}", output)
        with open(result_path) as fh:
            text = fh.read()
        if not text:
            raise ChildFailed("exited 0 but sent no result (harness.send_to_parent was never called)", output)
        return json.loads(text)
    finally:
        os.unlink(result_path)
        if own_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)


def _text(output) -> str:
    """What a timed-out child wrote so far (bytes, text or nothing, by Python version)."""
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output


def send_to_parent(result: dict) -> None:
    """The child's side of ``run_fresh``: hand ``result`` back (printed as JSON when run by hand)."""
    path = os.environ.get(RESULT_ENV)
    if path:
        with open(path, "w") as fh:
            json.dump(result, fh)
    else:
        print(json.dumps(result, indent=1))


def cuda_available() -> bool:
    """Whether a CUDA device is visible (asks the driver; creates no context in this process)."""
    import torch

    return torch.cuda.is_available()


def environment() -> dict:
    """Where and how a run was made: date (UTC), command, python, host, torch, triton, device.

    Call it after the children ran: naming the GPU initializes CUDA in this process, which then
    holds device memory.
    """
    import torch
    import triton

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *sys.argv]),
            "python": platform.python_version(), "host": platform.node(), "torch": torch.__version__,
            "triton": triton.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA device)"}


def write_result(path: Optional[str], body: dict) -> dict:
    """The report ``{"environment": environment(), **body}``, written as JSON to ``path`` if given."""
    report = {"environment": environment(), **body}
    if path:
        with open(path, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {path}")
    return report


def load_result(path: str) -> dict:
    """A saved result file (a JSON object), or SystemExit saying what is wrong with it."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read the result file {path}: {error}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a JSON object (a saved result), got {type(data).__name__}")
    return data


def skip_without_cuda(path: Optional[str], what: str) -> bool:
    """Without CUDA: say so, write ``{"environment", "skipped"}`` to ``path`` and return True.

    ``what``: what the benchmark needs the GPU for. With CUDA: False, nothing written.
    """
    if cuda_available():
        return False
    reason = f"no CUDA device: {what}"
    print(f"skipped: {reason}")
    write_result(path, {"skipped": reason})
    return True
