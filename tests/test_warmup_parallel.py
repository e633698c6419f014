"""The bundled kernel's warmup compiles its binaries side by side, and that changes nothing else.

Where Triton really compiles: compile-only mode on CPU (a fresh process and Triton cache dir
each, so the warmup is what compiles), and a GPU test. Each fresh-process warmup records the
whole warmup, the side-by-side phase inside it, and requests after it.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch

from pytest_ssd import triton_compat
from pytest_ssd import warmup as warmup_module
from pytest_ssd.compile_only import CompileOnlyThreadWarning, compile_only, join_compile_only
from pytest_ssd.events import record_triton
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
from pytest_ssd.kernels.combined import collect_launches
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
from pytest_ssd.triton_compat import binary_key, jit_dispatch
from pytest_ssd.warmup import warmup_ssd_kernels

LAYER_SEED = 11
REQUEST_SEED = 500
# Request shapes of every specialization class (total tokens 1, 17, 256, 6565, mixes).
REQUESTS = ([1], [17], [256], [1000, 2048, 517, 3000], [5, 1, 300, 16])

# One fresh process: warm a layer no other test compiles (6 heads x 32, dstate 32, chunk 32),
# compile-only for sm_90, "threads" (the bundled kernel) or "sequential" (the same kernel behind
# a plain function: the warmup then runs its calls one after another, as before threads).
_FRESH_WARMUP = """
import json, logging, sys, threading, warnings
import torch
from pytest_ssd import warmup as warmup_module
from pytest_ssd import triton_compat
from pytest_ssd.compile_only import CompileOnlyThreadWarning, compile_only
from pytest_ssd.events import record_triton
from pytest_ssd.kernels import mamba_chunk_scan_combined_varlen
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
from pytest_ssd.triton_compat import jit_dispatch
from pytest_ssd.warmup import warmup_ssd_kernels

mode, layer_seed, request_seed, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
warnings.simplefilter("error", CompileOnlyThreadWarning)  # a compile on a thread outside the block fails
logged = []
handler = logging.Handler()
handler.emit = lambda record: logged.append((record.levelname, record.getMessage()))
logging.getLogger("pytest_ssd").addHandler(handler)
logging.getLogger("pytest_ssd").setLevel(logging.INFO)

phases, threads = [], []
side_by_side = warmup_module._compile_side_by_side
def recorded_side_by_side(*args, **kwargs):
    with record_triton() as phase:
        side_by_side(*args, **kwargs)
    phases.append(phase.to_dict())
warmup_module._compile_side_by_side = recorded_side_by_side
precompile = triton_compat.precompile
def precompile_noting_thread(*args):
    threads.append(threading.current_thread().name)
    return precompile(*args)
triton_compat.precompile = precompile_noting_thread

def sequential(**kwargs):
    return mamba_chunk_scan_combined_varlen(**kwargs)

layer = make_mixer2_layer(nheads=6, head_dim=32, n_groups=2, ssm_state_size=32, chunk_size=32,
                          dtype=torch.bfloat16, state_dtype=torch.float32, seed=layer_seed, device="cpu")
with compile_only("cuda:90"):
    with record_triton() as warm:
        result = warmup_ssd_kernels(layer, kernel=None if mode == "threads" else sequential, max_num_tokens=300)
    with record_triton() as after, jit_dispatch():
        for i, seqlens in enumerate(requests):
            for with_init in (False, True):
                inputs = make_ssd_inputs(layer, seqlens, seed=request_seed + i, with_initial_states=with_init)
                mamba_chunk_scan_combined_varlen(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
print(json.dumps({"calls": result.calls, "warmup": warm.to_dict(), "unrecorded": len(warm.unrecorded),
                  "phases": phases, "threads": threads, "after": after.to_dict(), "logged": logged}))
"""


def _fresh_warmup(mode: str, cache_dir) -> subprocess.Popen:
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen([sys.executable, "-c", _FRESH_WARMUP, mode, str(LAYER_SEED), str(REQUEST_SEED),
                             json.dumps(REQUESTS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


@pytest.fixture(scope="module")
def fresh_warmups(tmp_path_factory) -> dict:
    """Both modes' results, each from a fresh process with a Triton cache dir of its own."""
    print(f"layer seed={LAYER_SEED} request seeds={REQUEST_SEED}+i")
    started = {mode: _fresh_warmup(mode, tmp_path_factory.mktemp(f"triton-cache-{mode}"))
               for mode in ("threads", "sequential")}
    results = {}
    for mode, process in started.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{mode} warmup failed:\n{stderr}"
        results[mode] = json.loads(stdout.splitlines()[-1])
    return results


def _identities(recording: dict) -> list:
    from pytest_ssd.events import Recording

    return sorted(e.identity for e in Recording.from_dict(recording).compiles)


def test_threaded_warmup_compiles_exactly_what_a_sequential_one_compiles(fresh_warmups) -> None:
    threads, sequential = fresh_warmups["threads"], fresh_warmups["sequential"]
    assert threads["calls"] == sequential["calls"] == 3
    identities = _identities(threads["warmup"])
    assert len(identities) == 5, "chunk state (bmm's tiles in it: a 16-bit model), state passing x2, chunk scan x2"
    assert identities == _identities(sequential["warmup"]), "the same binaries, each compiled once"
    for result in (threads, sequential):
        assert {e["source"] for e in result["warmup"]["events"]} == {"compiled"}, "a fresh cache: real compiles"
        assert result["unrecorded"] == 0, "the recorder's hooks saw every binary the JIT caches gained"
    assert sequential["phases"] == [] and sequential["threads"] == [], "another kernel is warmed call by call"


def test_the_warmups_own_calls_compile_nothing_after_the_threads(fresh_warmups) -> None:
    threads = fresh_warmups["threads"]
    (phase,) = threads["phases"]
    assert _identities(phase) == _identities(threads["warmup"]), \
        "every compile of the warmup came from the side-by-side phase: its calls then hit the JIT cache"
    assert len(threads["threads"]) == 5 and all(name.startswith("pytest-ssd-warmup") for name in threads["threads"])
    assert [level for level, _ in threads["logged"]] == ["INFO"], threads["logged"]  # no fallback warning


def test_requests_after_either_warmup_compile_nothing(fresh_warmups) -> None:
    for mode, result in fresh_warmups.items():
        assert result["after"]["events"] == [], f"{mode}: compiles/autotunes after warmup: {result['after']}"


@pytest.fixture
def fresh_warm_set(monkeypatch):
    monkeypatch.setattr(warmup_module, "_WARMED", set())


def _unique_layer(ssm_state_size: int, dtype: torch.dtype = torch.float16):
    """A small layer whose state size no other test uses (every stage's binary depends on it):
    its warmup is what compiles its binaries."""
    return make_mixer2_layer(nheads=4, head_dim=16, ssm_state_size=ssm_state_size, chunk_size=16,
                             dtype=dtype, state_dtype=torch.float32, seed=LAYER_SEED, device="cpu")


def _assert_requests_compile_nothing(layer, seed: int, device: str = "cpu") -> None:
    with record_triton() as rec, jit_dispatch():
        for i, seqlens in enumerate(REQUESTS):
            for with_init in (False, True):
                inputs = make_ssd_inputs(layer, seqlens, seed=seed + i, with_initial_states=with_init, device=device)
                mamba_chunk_scan_combined_varlen(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
        if device == "cuda":
            torch.cuda.synchronize()
    assert rec.events == [], "compiles/autotunes after warmup:\n  " + "\n  ".join(e.describe() for e in rec.events)


def _fail_collecting(monkeypatch) -> None:
    def broken():
        raise RuntimeError("collecting broke (planted)")

    monkeypatch.setattr("pytest_ssd.kernels.combined.collect_launches", broken)


def _fail_one_compile(monkeypatch) -> None:
    precompile = triton_compat.precompile

    def failing_for_chunk_scan_with_states(jit, grid, args, constexprs):
        if jit.fn.__name__ == "_chunk_scan_kernel" and constexprs["HAS_INITSTATES"]:
            raise RuntimeError("one compile broke (planted)")
        precompile(jit, grid, args, constexprs)

    monkeypatch.setattr(triton_compat, "precompile", failing_for_chunk_scan_with_states)


@pytest.mark.parametrize("ssm_state_size,plant", [(48, _fail_collecting), (80, _fail_one_compile)],
                         ids=["collecting_fails", "one_compile_fails"])
def test_a_failure_side_by_side_falls_back_and_still_warms(ssm_state_size, plant, fresh_warm_set, monkeypatch, caplog,
                                                           ssd_seed) -> None:
    print(f"seed={ssd_seed}")
    plant(monkeypatch)
    layer = _unique_layer(ssm_state_size)
    with compile_only("cuda:90"), caplog.at_level(logging.INFO, logger="pytest_ssd"):
        with record_triton() as warm:
            assert warmup_ssd_kernels(layer).calls == 2
        _assert_requests_compile_nothing(layer, ssd_seed)
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1 and "(planted)" in warnings_logged[0], warnings_logged
    assert "one call at a time" in warnings_logged[0]
    assert len(warm.compiles) == len(warm.binaries()) == 5, "each binary compiled once, threads or calls"


def test_a_real_error_still_surfaces_from_the_calls(fresh_warm_set, monkeypatch) -> None:
    """The fallback is no place to hide an error: a compile that fails side by side and again
    in the calls fails the warmup."""
    def broken_compiler(*_args, **_kwargs):
        raise RuntimeError("the compiler broke (planted)")

    for pair in _stage_kernels():  # JITFunction.run: where a launch and a warmup compile alike
        monkeypatch.setattr(pair.compiled, "run", broken_compiler)
    with compile_only("cuda:90"), pytest.raises(RuntimeError, match=r"the compiler broke \(planted\)"):
        warmup_ssd_kernels(_unique_layer(112))
    assert not warmup_module._WARMED, "a warmup that failed is not warm"


def _stage_kernels():
    from pytest_ssd.kernels.bmm import BMM_CHUNK
    from pytest_ssd.kernels.chunk_scan import CHUNK_SCAN
    from pytest_ssd.kernels.chunk_state import CHUNK_STATE
    from pytest_ssd.kernels.state_passing import STATE_PASSING

    return CHUNK_STATE, BMM_CHUNK, STATE_PASSING, CHUNK_SCAN


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_collected_launches_compile_nothing_and_name_the_real_launches(dtype) -> None:
    """Four stages, three launches for a 16-bit model: bmm's tiles run in chunk_state's grid
    (``FUSE_BMM``); a float32 model launches bmm on its own (fused, its chunk_state was slower)."""
    layer = _unique_layer(144, dtype)
    inputs = make_ssd_inputs(layer, [layer.chunk_size + 3, 1], seed=REQUEST_SEED, with_initial_states=True)
    with compile_only("cuda:90"), record_triton() as rec:
        with collect_launches() as launches:
            mamba_chunk_scan_combined_varlen(out=torch.empty_like(inputs.x), **inputs.kernel_kwargs(layer))
            with pytest.raises(RuntimeError, match="already active in this thread"):
                with collect_launches():
                    pass
    assert rec.events == [], "collected launches are not launched, so nothing compiles"
    stages = [pair.compiled for pair in _stage_kernels()]
    fused = dtype != torch.float32
    assert [launch.kernel for launch in launches] == (stages[:1] + stages[2:] if fused else stages)
    assert launches[0].constexprs["FUSE_BMM"] is fused
    heads, rows = layer.local_heads, launches[0].grid[2]
    assert rows > heads if fused else rows == heads, "bmm's tiles get grid rows past the heads' only when fused"
    assert launches[-1].constexprs["HAS_INITSTATES"] is True and launches[-1].args[0] is inputs.x
    with collect_launches() as again:  # the block closed: a new one may begin
        pass
    assert again == []


def test_binary_key_tells_binaries_apart_as_triton_does(ssd_seed) -> None:
    print(f"seed={ssd_seed}")
    torch.manual_seed(ssd_seed)
    jit = _stage_kernels()[1].compiled
    x, y = torch.randn(64), torch.randn(64)
    key = binary_key(jit, (x, None, 1.5, 32), {"BLOCK": 16, "num_warps": 4})
    assert key == binary_key(jit, (y, None, -2.0, 48), {"num_warps": 4, "BLOCK": 16}), "same classes: one binary"
    for args in ((x.half(), None, 1.5, 32), (x[1:], None, 1.5, 32), (x, x, 1.5, 32), (x, None, 1.5, 33),
                 (x, None, 1.5, 1), (x, None, 1.5, 2**40)):
        assert binary_key(jit, args, {"BLOCK": 16, "num_warps": 4}) != key, args
    assert binary_key(jit, (x, None, 1.5, 32), {"BLOCK": 32, "num_warps": 4}) != key
    assert binary_key(_stage_kernels()[0].compiled, (x, None, 1.5, 32), {"BLOCK": 16, "num_warps": 4}) != key


@pytest.mark.skipif(not triton_compat.version_at_least(3, 3), reason="3.2 keeps no per-device binder to race on")
def test_precompile_from_threads_at_once_keeps_every_binary(ssd_seed) -> None:
    """Threads that meet a fresh kernel together each compile their binary into one cache. Its
    per-device entry comes from a defaultdict's factory: a second entry, built late by another
    thread, would replace the first after a binary was stored in it (here each later build
    takes longer than a compile), and that binary would compile again at launch."""
    import time

    import kernels_for_tests as kt
    from triton.runtime.jit import JITFunction

    builds = []

    class SlowerBinderEachTime(JITFunction):
        def create_binder(self):
            builds.append(threading.current_thread().name)
            time.sleep(0.5 * (len(builds) - 1))
            return super().create_binder()

    print(f"seed={ssd_seed}")
    torch.manual_seed(ssd_seed)
    jit = SlowerBinderEachTime(kt.scale)
    x, out = torch.randn(64), torch.randn(64)
    launches = [((1,), (x, out, 64, 1), {"BLOCK": block, "DOUBLE": double})
                for block in (32, 64) for double in (False, True)]
    barrier = threading.Barrier(len(launches))

    def compile_one(launch) -> None:
        with join_compile_only():
            barrier.wait()
            triton_compat.precompile(jit, *launch)

    with compile_only("cuda:90"):
        with record_triton() as ahead:
            threads = [threading.Thread(target=compile_one, args=(launch,)) for launch in launches]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        with record_triton() as launched:
            for grid, args, constexprs in launches:
                jit[grid](*args, **constexprs)
    assert len(builds) == 1, f"the per-device entry was built {len(builds)} times"
    assert len(ahead.compiles) == 4 and launched.events == [], [e.describe() for e in launched.events]


def test_join_compile_only_enters_the_open_block_from_a_worker_thread() -> None:
    with pytest.raises(RuntimeError, match="no compile_only block is active"):
        with join_compile_only():
            pass
    seen = []

    def worker():
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileOnlyThreadWarning)
            with join_compile_only():
                from triton.runtime.driver import driver

                seen.append(driver.active.get_current_device())

    with compile_only("cuda:80"):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == ["compile-only:cuda:80"]


@pytest.mark.gpu
def test_real_device_warmup_leaves_the_first_request_warm(fresh_warm_set, monkeypatch, caplog, ssd_seed) -> None:
    """On the GPU: the threads compile every binary, the warmup's own calls compile nothing, and
    neither does the first request after it."""
    print(f"seed={ssd_seed}")
    phases = []
    side_by_side = warmup_module._compile_side_by_side

    def recorded(*args, **kwargs):
        with record_triton() as phase:
            side_by_side(*args, **kwargs)
        phases.append(phase)

    monkeypatch.setattr(warmup_module, "_compile_side_by_side", recorded)
    # 56 heads: no other test compiles this layer's head-dependent binaries (chunk state, state
    # passing and chunk scan x2); bmm depends on groups, dstate and chunk size only, so another
    # test on this worker may have compiled it first.
    layer = make_mixer2_layer(nheads=56, head_dim=64, n_groups=1, ssm_state_size=128, chunk_size=256,
                              dtype=torch.bfloat16, state_dtype=torch.float32, seed=ssd_seed, device="cuda")
    with caplog.at_level(logging.INFO, logger="pytest_ssd"), record_triton() as warm:
        assert warmup_ssd_kernels(layer).calls == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "the side-by-side path fell back"
    (phase,) = phases
    assert sorted(warm.binaries()) == sorted(phase.binaries())
    compiled = sorted(event.kernel for event in phase.binaries().values())
    head_dependent = ["_chunk_scan_kernel"] * 2 + ["_chunk_state_kernel"] + ["_state_passing_kernel"] * 2
    assert [k for k in compiled if k != "_bmm_chunk_kernel"] == head_dependent, compiled
    assert len(warm.compiles) == len(phase.compiles), "the warmup's calls compiled something after the threads"
    _assert_requests_compile_nothing(layer, ssd_seed, device="cuda")


@pytest.mark.parametrize("workers, expected", [(None, 16), ("1", 16), ("4", 4), ("32", 1), ("many", 16)])
def test_the_pool_shares_the_cpus_among_xdist_workers(monkeypatch, workers, expected) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    if workers is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", workers)
    assert warmup_module._usable_cpus() == expected


# Last in this file: up to Triton 3.5 the interpreter patches triton.language for good, and later
# compiles in the process fail.
def test_interpreted_calls_run_as_always_while_collecting(ssd_seed) -> None:
    print(f"seed={ssd_seed}")
    layer = make_mixer2_layer(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=ssd_seed, device="cpu")
    inputs = make_ssd_inputs(layer, [17, 1], seed=ssd_seed)
    out, expected = torch.full_like(inputs.x, float("nan")), torch.full_like(inputs.x, float("nan"))
    mamba_chunk_scan_combined_varlen(out=expected, **inputs.kernel_kwargs(layer))
    with collect_launches() as launches:
        mamba_chunk_scan_combined_varlen(out=out, **inputs.kernel_kwargs(layer))
    assert launches == [], "CPU tensors outside compile-only run interpreted, never collected"
    assert not out.isnan().any() and torch.equal(out, expected)
