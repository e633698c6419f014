"""pytest_ssd.events on real Triton: each field of each event, pinned by a small kernel.

Everything compiles for sm_90 in compile-only mode (no GPU here); each test has its own
Triton cache dir and fresh kernel objects, so its first compile of anything is real.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

import kernels_for_tests as kt
from pytest_ssd import events, triton_compat
from pytest_ssd.compile_only import compile_only
from pytest_ssd.events import AutotuneEvent, CompileEvent, Recording, event_from_dict, record_triton

pytestmark = pytest.mark.usefixtures("triton_cache_dir")
N = 8192


@pytest.fixture(autouse=True)
def sm90(request):
    """Every test compiles for sm_90 without a GPU; persisting tests use ``sm90_persisting``."""
    persisting = "sm90_persisting" in request.fixturenames
    with compile_only("cuda:90", persist_autotune=persisting):
        yield


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    return torch.randn(N), torch.randn(N).to(torch.bfloat16)


def launch_scale(kernel, x, out, n, stride=1, **meta):
    meta = {"BLOCK": 64, "DOUBLE": False, **meta}
    return kernel[(1,)](x, out, n, stride, **meta)


def launch_tuned(tuner, x, states, nheads=80, seqlen=64):
    out = torch.randn(N)
    tuner[(1,)](x, states, out, nheads, seqlen)


def only_compile(rec: Recording) -> CompileEvent:
    assert [e.kind for e in rec.events] == ["compile"], [e.describe() for e in rec.events]
    return rec.events[0]


def test_constexprs_signature_and_target_by_name(tensors):
    x, out = tensors
    with record_triton() as rec:
        launch_scale(kt.make_scale(), x, out, 1000, BLOCK=128, DOUBLE=True)
    event = only_compile(rec)
    assert (event.kernel, event.module) == ("scale", "kernels_for_tests")
    assert event.constexprs == {"BLOCK": 128, "DOUBLE": True}
    assert event.signature == {"x_ptr": "*fp32", "out_ptr": "*bf16", "n": "i32", "stride": "i32"}
    assert event.target == "cuda:90"
    assert event.source == "compiled" and event.seconds > 0 and event.compile_only


@pytest.mark.parametrize("n, spec", [(1, "==1"), (4096, "%16"), (6565, "none")])
def test_integer_specialization_and_value(tensors, n, spec):
    x, out = tensors
    with record_triton() as rec:
        launch_scale(kt.make_scale(), x, out, n, stride=3)
    event = only_compile(rec)
    assert event.specializations["n"] == spec
    assert event.specializations["stride"] == "none"  # 3: neither 1 nor a multiple of 16
    assert event.int_values == {"n": n, "stride": 3}


def test_pointer_alignment_of_an_offset_view(tensors):
    x, out = tensors
    kernel = kt.make_scale()
    with record_triton() as rec:
        launch_scale(kernel, x[1:], out, 1000)  # 4 bytes past a 16-byte aligned start
        launch_scale(kernel, x, out, 1000)
    offset, aligned = rec.compiles
    assert offset.specializations["x_ptr"] == "unaligned"
    assert aligned.specializations["x_ptr"] == "aligned"
    assert offset.specializations["out_ptr"] == aligned.specializations["out_ptr"] == "aligned"
    assert offset.identity != aligned.identity


def test_do_not_specialize_compiles_one_binary_for_every_length(tensors):
    x, out = tensors
    kernel = JITFunction(kt.scale, do_not_specialize=["n"])
    with record_triton() as rec:
        for n in (1000, 1024, 1):
            launch_scale(kernel, x, out, n)
    event = only_compile(rec)
    assert event.specializations["n"] == "nospec" and event.int_values["n"] == 1000
    assert event.arg_words("n") == "n:i32=1000 unspecialized"


def test_num_warps_and_num_stages(tensors):
    x, out = tensors
    with record_triton() as rec:
        launch_scale(kt.make_scale(), x, out, 1000, num_warps=8, num_stages=2)
    event = only_compile(rec)
    assert (event.num_warps, event.num_stages) == (8, 2)


def test_a_warm_launch_records_nothing(tensors):
    x, out = tensors
    kernel = kt.make_scale()
    launch_scale(kernel, x, out, 1000)
    with record_triton() as rec:
        launch_scale(kernel, x, out, 1001)  # another value, same specialization: same binary
    assert rec.events == []


def test_disk_hit_in_a_fresh_kernel_object(tensors):
    x, out = tensors
    with record_triton() as first:
        launch_scale(kt.make_scale(), x, out, 1000)
    with record_triton() as second:
        launch_scale(kt.make_scale(), x, out, 999)  # fresh in-memory cache, same Triton cache dir
    cold, disk = only_compile(first), only_compile(second)
    assert (cold.source, disk.source) == ("compiled", "disk")
    assert disk.identity == cold.identity  # neither source nor the integer's value is identity
    assert disk.int_values["n"] == 999


def test_autotune_miss_benchmarks_every_config(tensors):
    x, _ = tensors
    states = torch.randn(N)
    with record_triton() as rec:
        launch_tuned(kt.make_tuned_heads(), x, states, nheads=80)
    assert [e.kind for e in rec.events] == ["compile", "compile", "autotune"]
    assert [c.constexprs["BLOCK"] for c in rec.compiles] == [64, 128]
    assert [(c.num_warps, c.num_stages) for c in rec.compiles] == [(4, 2), (8, 3)]
    tune = rec.autotunes[0]
    assert (tune.kernel, tune.module) == ("tuned_heads", "kernels_for_tests")
    assert tune.key_values == {"nheads": 80}
    assert tune.key_dtypes == {"x_ptr": "torch.float32", "states_ptr": "torch.float32", "out_ptr": "torch.float32"}
    assert tune.configs_benchmarked == len(kt.TUNED_CONFIGS)
    assert tune.source == "benchmarked" and tune.seconds > 0
    assert tune.winner is None and tune.compile_only  # fake timings: the winner is not knowable


def test_autotune_hit_records_nothing(tensors):
    x, _ = tensors
    states = torch.randn(N)
    tuner = kt.make_tuned_heads()
    launch_tuned(tuner, x, states, nheads=80)
    with record_triton() as rec:
        launch_tuned(tuner, x, states, nheads=80, seqlen=48)  # 64 and 48: both %16
    assert rec.events == []


@pytest.fixture
def sm90_persisting():
    """Compile-only that writes persisted autotune results (this test's cache dir is its own)."""


@pytest.mark.skipif(not triton_compat.version_at_least(3, 4), reason="persisted autotuning is Triton 3.4+")
def test_persisted_autotune_results(sm90_persisting):
    torch.manual_seed(0)
    x, states = torch.randn(N), torch.randn(N)
    tuner = kt.make_tuned_heads(cache_results=True)
    with record_triton() as rec:
        launch_tuned(tuner, x, states)
        tuner.cache.clear()  # as in a second process: only the persisted results remain
        launch_tuned(tuner, x, states)
    first, second = rec.autotunes
    assert (first.source, first.configs_benchmarked) == ("benchmarked", 2)
    assert (second.source, second.configs_benchmarked) == ("persisted", 0)
    assert second.identity == first.identity


def test_same_binary_same_identity_across_blocks(tensors):
    x, out = tensors
    identities = []
    for n in (1000, 1001):
        with record_triton() as rec:
            launch_scale(kt.make_scale(), x, out, n, DOUBLE=True)
        identities.append(only_compile(rec).identity)
    assert identities[0] == identities[1]
    assert len(identities[0]) == 16


def test_same_binary_same_identity_in_another_process(tensors):
    x, out = tensors
    with record_triton() as rec:
        launch_scale(kt.make_scale(), x, out, 1000, DOUBLE=True)
    script = f"""
import sys, torch
sys.path.insert(0, {os.path.dirname(kt.__file__)!r})
import kernels_for_tests as kt
from pytest_ssd.compile_only import compile_only
from pytest_ssd.events import record_triton
torch.manual_seed(1)
with compile_only("cuda:90"), record_triton() as rec:
    kt.make_scale()[(1,)](torch.randn(4096), torch.randn(4096).to(torch.bfloat16), 777, 1, BLOCK=64, DOUBLE=True)
print(rec.compiles[0].identity)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == only_compile(rec).identity


def test_threads_compiling_different_kernels(tensors):
    x, out = tensors
    barrier = threading.Barrier(2)
    errors = []

    def run(launch):
        try:
            with compile_only("cuda:90"):  # a thread meant to compile says so (else: CompileOnlyThreadWarning)
                barrier.wait(timeout=30)
                launch()
        except BaseException as error:  # surfaced below: a thread's exception is otherwise lost
            errors.append(error)

    launches = [lambda: launch_scale(kt.make_scale(), x, out, 1000),
                lambda: kt.make_chunk_scan()[(1,)](x, x, torch.randn(N), 1000, HAS_INITSTATES=True, BLOCK=64)]
    with record_triton() as rec:
        threads = [threading.Thread(target=run, args=(launch,)) for launch in launches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert sorted(e.kernel for e in rec.compiles) == ["chunk_scan", "scale"]
    assert all(e.source == "compiled" and e.int_values["n" if e.kernel == "scale" else "seqlen"] == 1000
               for e in rec.compiles)


def test_nested_recordings_each_see_every_event(tensors):
    x, out = tensors
    with record_triton() as outer:
        launch_scale(kt.make_scale(), x, out, 1000)
        with record_triton() as inner:
            launch_scale(kt.make_scale(), x, out, 4096)
        launch_scale(kt.make_scale(), x, out, 1)
    assert [e.specializations["n"] for e in outer.compiles] == ["none", "%16", "==1"]
    assert [e.specializations["n"] for e in inner.compiles] == ["%16"]


def _hook_slots():
    """Where a user (torch, vLLM) installs its own compile hooks on this Triton."""
    if triton_compat.version_at_least(3, 4):
        from triton import knobs

        return [(knobs.runtime, "jit_cache_hook"), (knobs.runtime, "jit_post_compile_hook"),
                (knobs.compilation, "listener")]
    return [(JITFunction, "cache_hook"), (JITFunction, "compiled_hook")]


@pytest.mark.parametrize("body_raises", [False, True])
def test_existing_hooks_still_fire_and_come_back(tensors, monkeypatch, body_raises):
    x, out = tensors
    calls = []
    users = {}
    for owner, name in _hook_slots():
        def user_hook(*args, _name=name, **kwargs):
            calls.append(_name)
            return None

        users[name] = user_hook
        monkeypatch.setattr(owner, name, user_hook)
    with pytest.raises(RuntimeError, match="body failed") if body_raises else _nothing():
        with record_triton() as rec:
            launch_scale(kt.make_scale(), x, out, 1000)
            if body_raises:
                raise RuntimeError("body failed")
    assert sorted(calls) == sorted(users)  # each user hook fired once, for the one compile
    assert len(rec.compiles) == 1
    for owner, name in _hook_slots():
        assert getattr(owner, name) is users[name]


def _nothing():
    from contextlib import nullcontext

    return nullcontext()


@pytest.mark.parametrize("chains_ours", [False, True])
def test_a_hook_set_over_ours_is_chained_by_the_next_recording(tensors, chains_ours):
    """torch/vLLM may install their hook while we record; a nested recording chains it anew."""
    x, out = tensors
    owner, name = _hook_slots()[1]  # the after-compile hook, where events are made
    pristine = vars(owner).get(name, _UNSET)
    calls = []
    try:
        with pytest.warns(events.RecorderHookWarning, match=f"{name} was replaced while recording"):
            with record_triton() as outer:
                ours = getattr(owner, name)

                def theirs(*args, **kwargs):
                    calls.append(name)
                    return ours(*args, **kwargs) if chains_ours else None

                setattr(owner, name, theirs)
                with record_triton() as inner:
                    launch_scale(kt.make_scale(), x, out, 1000)
        assert len(calls) == 1
        assert len(outer.compiles) == len(inner.compiles) == 1  # once each: our old hook passes through
        assert len(outer.hook_changes) == 1 and inner.hook_changes == []  # the change happened in outer's time
        assert getattr(owner, name) is theirs  # theirs stays when we leave
    finally:
        if pristine is _UNSET:
            delattr(owner, name)
        else:
            setattr(owner, name, pristine)


_UNSET = object()


def test_a_chained_hook_may_cancel_the_compile(tensors, monkeypatch):
    x, out = tensors
    owner, name = _hook_slots()[0]  # the before-compile hook: a truthy answer skips the compile
    monkeypatch.setattr(owner, name, lambda *args, **kwargs: True)
    with record_triton() as rec:
        assert launch_scale(kt.make_scale(), x, out, 1000) is None
    assert rec.events == []


def test_nothing_wraps_the_launch_path(tensors):
    x, out = tensors
    before = (vars(JITFunction)["run"], vars(Autotuner)["run"])
    with record_triton() as rec:
        launch_scale(kt.make_scale(), x, out, 1000)
        assert (vars(JITFunction)["run"], vars(Autotuner)["run"]) == before
    assert len(rec.compiles) == 1


def test_recording_round_trips_through_json(tensors):
    x, out = tensors
    with record_triton() as rec:
        launch_scale(kt.make_scale(), x, out, 1000)
        launch_tuned(kt.make_tuned_heads(), x, torch.randn(N).to(torch.bfloat16), nheads=40)
    loaded = Recording.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert loaded.events == rec.events
    assert list(loaded.binaries()) == list(rec.binaries()) and len(rec.binaries()) == 3
    assert list(loaded.autotune_keys()) == [rec.autotunes[0].identity]
    summary = rec.summary()
    assert summary.startswith("3 compiles (3 compiled; ") and "1 autotunes (2 configs benchmarked" in summary


def test_describe_is_one_readable_line(tensors):
    x, out = tensors
    with record_triton() as rec:
        launch_scale(kt.make_scale(), x[1:], out, 6565, BLOCK=64, DOUBLE=True)
        launch_tuned(kt.make_tuned_heads(), x, torch.randn(N).to(torch.bfloat16), nheads=40)
    line = rec.compiles[0].describe()
    assert line.startswith("scale[BLOCK=64, DOUBLE=True] (x_ptr:*fp32 unaligned, out_ptr:*bf16 aligned, "
                           "n:i32=6565 %16=False, stride:i32=1 ==1) warps=4 stages=3 cuda:90 compiled ")
    assert "\n" not in line
    tune = rec.autotunes[0].describe()
    assert tune.startswith("tuned_heads autotune key (nheads=40; x_ptr:torch.float32, states_ptr:torch.bfloat16, "
                           "out_ptr:torch.float32) 2 configs benchmarked -> winner unknown (compile-only) ")


def test_loading_refuses_unknown_events_and_formats():
    with pytest.raises(ValueError, match="event kind must be one of"):
        event_from_dict({"kind": "launch"})
    with pytest.raises(ValueError, match="recording format must be 1; got 99"):
        Recording.from_dict({"format": 99, "events": []})
    assert isinstance(event_from_dict({**AutotuneEvent("k", "m", {}, {}, 1, None, "benchmarked", 0.5).to_dict()}),
                      AutotuneEvent)


# ---- the recorder cannot be blinded ------------------------------------------------------

def _blind(owner, name):
    """Assign a hook over ours that does not chain it (as torch 2.13 may, for nvshmem kernels)."""
    calls = []

    def theirs(*args, **kwargs):
        calls.append(name)
        return None

    setattr(owner, name, theirs)
    return calls


@pytest.fixture
def restore_hook_slots():
    """Put every compile hook slot back as it was, whatever a test assigned."""
    saved = [(owner, name, vars(owner).get(name, _UNSET)) for owner, name in _hook_slots()]
    yield
    for owner, name, value in saved:
        if value is _UNSET:
            if name in vars(owner):
                delattr(owner, name)
        else:
            setattr(owner, name, value)


def test_a_hook_replaced_mid_recording_is_chained_again_and_reported(tensors, restore_hook_slots):
    x, out = tensors
    owner, name = _hook_slots()[1]  # the after-compile hook, where events are made
    with pytest.warns(events.RecorderHookWarning, match=f"{name} was replaced while recording"):
        with record_triton() as rec:
            calls = _blind(owner, name)
            launch_scale(kt.make_scale(), x, out, 1000)
    assert calls == [name]  # theirs still runs: we chain in front of it
    assert len(rec.compiles) == 1 and rec.compiles[0].source == "compiled"
    assert len(rec.hook_changes) == 1 and "test_events" in rec.hook_changes[0]  # names the newcomer
    assert rec.unrecorded == []


def test_every_hook_blinded_shows_as_jit_cache_growth(tensors, restore_hook_slots):
    x, out = tensors
    kernel = kt.make_scale()
    with pytest.warns(events.RecorderHookWarning):
        with record_triton() as rec:
            launch_scale(kernel, x, out, 1000)  # seen: the kernel is known from now on
            for owner, name in _hook_slots():
                _blind(owner, name)
            launch_scale(kernel, x, out, 4096)  # another binary (%16), no hook of ours runs
    assert len(rec.compiles) == 1
    assert len(rec.hook_changes) == len(_hook_slots())
    (missed,) = rec.unrecorded
    assert (missed.kernel, missed.binaries, missed.reported) == ("scale", 2, 1)
    assert missed.describe() == "kernels_for_tests.scale: its JIT cache grew by 2 binaries, the hooks reported 1 compile(s)"


def test_a_watched_kernel_is_counted_without_any_hook(tensors, restore_hook_slots):
    x, out = tensors
    kernel = kt.make_scale()
    triton_compat.watch_jit_cache(kt.make_tuned_heads(), kernel)  # an autotuner unwraps to its JITFunction
    with pytest.warns(events.RecorderHookWarning), record_triton() as rec:
        for owner, name in _hook_slots():
            _blind(owner, name)
        launch_scale(kernel, x, out, 1000)  # never compiled before, and no hook of ours sees it
    assert rec.events == [] and [(m.kernel, m.binaries, m.reported) for m in rec.unrecorded] == [("scale", 1, 0)]


def test_agreeing_hooks_and_caches_report_nothing(tensors):
    x, out = tensors
    with record_triton() as rec:
        launch_scale(kt.make_scale(), x, out, 1000)
        launch_tuned(kt.make_tuned_heads(), x, torch.randn(N))
    assert len(rec.compiles) == 3 and rec.hook_changes == [] and rec.unrecorded == []
