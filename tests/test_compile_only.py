"""pytest_ssd.compile_only: Triton's real JIT path for a GPU target, on a machine without one."""
from __future__ import annotations

import pytest
import torch
from triton.runtime.autotuner import Autotuner
from triton.runtime.driver import driver

import kernels_for_tests as kt
from pytest_ssd import triton_compat
from pytest_ssd.compile_only import TARGETS, compile_only, compile_only_active
from pytest_ssd.events import record_triton

pytestmark = pytest.mark.usefixtures("triton_cache_dir")
N = 4096


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    return torch.randn(N), torch.randn(N)


def _active_driver_slot():
    """The saved driver object itself, read without building Triton's default driver."""
    return vars(driver).get("_active", vars(driver).get("active"))


def launch_scale(kernel, x, out, n=1000):
    kernel[(1,)](x, out, n, 1, BLOCK=64, DOUBLE=True)


@pytest.mark.parametrize("body_raises", [False, True])
def test_active_only_inside_and_the_driver_comes_back(body_raises):
    before = _active_driver_slot()
    assert not compile_only_active()
    with pytest.raises(KeyError) if body_raises else _nothing():
        with compile_only("cuda:90"):
            assert compile_only_active()
            assert driver.active.get_current_target().arch == 90
            if body_raises:
                raise KeyError("body failed")
    assert not compile_only_active()
    assert _active_driver_slot() is before


def _nothing():
    from contextlib import nullcontext

    return nullcontext()


def test_a_bad_target_lists_the_accepted_forms():
    with pytest.raises(ValueError) as raised:
        with compile_only("sm_90"):
            pass
    assert str(raised.value) == ("compile_only target must be one of cuda:80, cuda:90, cuda:100, hip:gfx942; "
                                 "got 'sm_90'")
    assert TARGETS == ("cuda:80", "cuda:90", "cuda:100", "hip:gfx942")
    assert not compile_only_active()


def test_blocks_nest_for_one_target_only():
    with compile_only("cuda:90"):
        with compile_only("cuda:90"):
            assert compile_only_active()
        assert compile_only_active()
        with pytest.raises(RuntimeError, match="one setting at a time"):
            with compile_only("cuda:80"):
                pass
        assert driver.active.get_current_target().arch == 90
    assert not compile_only_active()


@pytest.mark.parametrize("target", [
    "cuda:80",
    pytest.param("hip:gfx942", marks=pytest.mark.skipif(not triton_compat.version_at_least(3, 5),
                                                        reason="Triton < 3.5 bundles no ld.lld for AMD")),
])
def test_compiles_a_real_binary_for_the_target(tensors, target):
    x, out = tensors
    with compile_only(target), record_triton() as rec:
        launch_scale(kt.make_scale(), x, out)
    (event,) = rec.compiles
    assert event.target == target and event.source == "compiled"
    assert event.specializations == {"x_ptr": "aligned", "out_ptr": "aligned", "n": "none", "stride": "==1"}


def test_nothing_executes(tensors):
    x, out = tensors
    expected = out.clone()
    with compile_only("cuda:90"):
        launch_scale(kt.make_scale(), x, out)
    assert torch.equal(out, expected)  # compile-only cannot know results: outputs stay as they were


def test_each_target_is_a_virtual_device_of_its_own(tensors):
    x, out = tensors
    kernel = kt.make_scale()
    seen = []
    for target in ("cuda:90", "cuda:80", "cuda:90"):
        with compile_only(target), record_triton() as rec:
            launch_scale(kernel, x, out)
        seen.append([e.target for e in rec.compiles])
    assert seen == [["cuda:90"], ["cuda:80"], []]  # sm_90's binary waits for the next sm_90 block


def test_autotune_results_stay_inside_compile_only(tensors):
    x, states = tensors
    tuner = kt.make_tuned_heads()

    def tune():
        tuner[(1,)](x, states, torch.randn(N), 80, 64)

    with compile_only("cuda:90"), record_triton() as first:
        tune()
    assert tuner.cache == {}  # a real GPU run must benchmark for itself
    with compile_only("cuda:90"), record_triton() as again:
        tune()
    assert [e.kind for e in first.events].count("autotune") == 1
    assert again.events == []  # the block for the same target got its results back
    assert tuner.cache == {}


@pytest.mark.skipif(not triton_compat.version_at_least(3, 4), reason="persisted autotuning is Triton 3.4+")
def test_fake_timings_are_never_persisted(tensors):
    x, states = tensors
    tuner = kt.make_tuned_heads(cache_results=True)
    with compile_only("cuda:90"), record_triton() as rec:
        for _ in range(2):
            tuner[(1,)](x, states, torch.randn(N), 80, 64)
            tuner.cache.clear()  # as in a second process
    assert [(e.source, e.configs_benchmarked) for e in rec.autotunes] == [("benchmarked", 2)] * 2


def test_triton_classes_and_hooks_come_back():
    slots = ("prune_configs", "_bench", "check_disk_cache", "do_bench")
    before = {name: vars(Autotuner).get(name) for name in slots}
    with compile_only("cuda:90"), record_triton():
        assert vars(Autotuner)["_bench"] is not before["_bench"]
        assert isinstance(vars(Autotuner)["do_bench"], property)
    assert {name: vars(Autotuner).get(name) for name in slots} == before


def test_a_launch_from_another_thread_warns_that_it_ran_nothing(tensors):
    """Inside compile_only another thread's kernel call silently did nothing: now it says so, once."""
    import threading
    import warnings

    from pytest_ssd.compile_only import CompileOnlyThreadWarning

    x, out = tensors
    kernel = kt.make_scale()
    caught = []

    def other_thread():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            launch_scale(kernel, x, out)
            launch_scale(kernel, x, out, n=999)
        caught.extend(w for w in seen if issubclass(w.category, CompileOnlyThreadWarning))

    with compile_only("cuda:90"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileOnlyThreadWarning)
            launch_scale(kernel, x, out)  # the block's own thread: no warning
        thread = threading.Thread(target=other_thread, name="loader")
        thread.start()
        thread.join(timeout=120)
    assert len(caught) == 1, [str(w.message) for w in caught]  # once per thread and block
    assert "thread 'loader' launched a Triton kernel while compile_only('cuda:90') was active" in str(caught[0].message)


def test_a_thread_that_enters_the_block_itself_compiles_quietly(tensors):
    import threading
    import warnings

    from pytest_ssd.compile_only import CompileOnlyThreadWarning

    x, out = tensors
    errors = []

    def compiling_thread():
        try:
            with compile_only("cuda:90"), warnings.catch_warnings():
                warnings.simplefilter("error", CompileOnlyThreadWarning)
                launch_scale(kt.make_scale(), x, out)
        except BaseException as error:
            errors.append(error)

    with compile_only("cuda:90"):
        thread = threading.Thread(target=compiling_thread)
        thread.start()
        thread.join(timeout=120)
    assert errors == []


def test_persist_autotune_must_be_a_bool():
    with pytest.raises(ValueError, match="persist_autotune: expected True or False, got 'no'"):
        with compile_only("cuda:90", persist_autotune="no"):
            pass
    assert not compile_only_active()


def test_a_cpu_tensors_device_guard_is_a_no_op_in_compile_only_mode():
    # GPU launchers select their tensors' device (mamba_ssm: torch.cuda.device(x.device.index));
    # compile-only hands them CPU tensors, whose index is None.
    import torch

    x = torch.randn(4)
    with compile_only("cuda:90"):
        with torch.cuda.device(x.device.index):
            assert torch.equal(x * 1, x)
