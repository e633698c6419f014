"""DirectLauncher: the first launch per key goes through the JIT, later ones straight to the binary."""
import pytest

from pytest_ssd import triton_compat
from pytest_ssd.triton_compat import DirectLauncher, launch


class FakeCompiled:
    """Stands in for Triton's CompiledKernel: records what its runner (``[grid]``) and its
    launcher (``run``, the path with a stream and no launch hooks) got."""

    function = "cufunction"
    packed_metadata = "packed"

    def __init__(self):
        self.launches = []
        self.runs = []

    def __getitem__(self, grid):
        return lambda *args: self.launches.append((grid, args))

    def run(self, *args):
        self.runs.append(args)


class FakeJIT:
    """Stands in for a JITFunction with parameters (a, b, K, M): counts dispatches."""

    arg_names = ["a", "b", "K", "M"]

    def __init__(self):
        self.compiled = FakeCompiled()
        self.dispatches = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.dispatches.append((grid, args, kwargs))
            return self.compiled
        return run


@pytest.fixture
def direct(monkeypatch):
    monkeypatch.setattr(launch, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(launch, "_plain_jit", lambda fn: isinstance(fn, FakeJIT))
    return DirectLauncher()


def test_second_launch_skips_the_jit_and_passes_every_parameter_in_order(direct):
    jit = FakeJIT()
    direct.launch(jit, (4, 2, 1), ("pa", 1.5), dict(M=7, K=3, num_warps=4), key="k")
    direct.launch(jit, (8, 1, 1), ("pa2", 2.5), dict(M=7, K=3, num_warps=4), key="k")
    assert len(jit.dispatches) == 1
    assert jit.compiled.launches == [((8, 1, 1), ("pa2", 2.5, 3, 7))]  # K, M in signature order; no num_warps


def test_without_a_key_every_launch_goes_through_the_jit(direct):
    jit = FakeJIT()
    for _ in range(3):
        direct.launch(jit, (1,), ("p", 0.0), dict(K=1, M=2))
    assert len(jit.dispatches) == 3 and jit.compiled.launches == []


def test_keys_are_kept_apart_and_clear_forgets(direct):
    jit = FakeJIT()
    direct.launch(jit, (1,), ("p", 0.0), dict(K=1, M=2), key="one")
    direct.launch(jit, (1,), ("p", 0.0), dict(K=5, M=2), key="two")
    assert len(jit.dispatches) == 2
    direct.clear()
    direct.launch(jit, (1,), ("p", 0.0), dict(K=1, M=2), key="one")
    assert len(jit.dispatches) == 3


def test_a_parameter_missing_from_constexprs_is_never_kept(direct):
    jit = FakeJIT()
    for _ in range(2):
        direct.launch(jit, (1,), ("p", 0.0), dict(K=1), key="k")  # M has a default in the kernel, say
    assert len(jit.dispatches) == 2


def test_older_triton_always_dispatches(monkeypatch):
    monkeypatch.setattr(launch, "DIRECT_LAUNCH", False)
    jit, launcher = FakeJIT(), DirectLauncher()
    for _ in range(2):
        launcher.launch(jit, (1,), ("p", 0.0), dict(K=1, M=2), key="k")
    assert len(jit.dispatches) == 2


def test_inside_jit_dispatch_kept_binaries_are_not_used(direct):
    jit = FakeJIT()
    direct.launch(jit, (1,), ("p", 0.0), dict(K=1, M=2), key="k")
    with triton_compat.jit_dispatch():
        direct.launch(jit, (1,), ("p", 0.0), dict(K=1, M=2), key="k")
    assert len(jit.dispatches) == 2 and jit.compiled.launches == []
    direct.launch(jit, (1,), ("p", 0.0), dict(K=1, M=2), key="k")  # after the block: direct again
    assert len(jit.dispatches) == 2 and len(jit.compiled.launches) == 1


def test_autotuned_kernels_always_dispatch(direct, monkeypatch):
    """An autotuner picks its binary per call: its first pick is never kept."""
    class FakeAutotuner(FakeJIT):
        pass

    monkeypatch.setattr(launch, "_plain_jit", lambda fn: type(fn) is FakeJIT)
    jit = FakeAutotuner()
    for _ in range(2):
        direct.launch(jit, (1,), ("p", 0.0), dict(K=1, M=2), key="k")
    assert len(jit.dispatches) == 2


def test_only_bare_jit_functions_are_kept():
    import triton
    from triton.runtime.autotuner import Autotuner

    from pytest_ssd.kernels.chunk_scan import CHUNK_SCAN

    assert launch._plain_jit(CHUNK_SCAN.compiled)
    tuned = triton_compat.autotune(CHUNK_SCAN.compiled, [triton.Config({})], [])
    assert isinstance(tuned, Autotuner) and not launch._plain_jit(tuned)


def test_with_a_stream_kept_binaries_go_to_the_launcher_with_no_hooks(direct):
    """Triton's runner convention (3.4-3.9): grid, stream, function, packed metadata, launch
    metadata, enter hook, exit hook, then every parameter."""
    jit = FakeJIT()
    direct.launch(jit, (4, 2, 1), ("pa", 1.5), dict(M=7, K=3, num_warps=4), key="k", stream=99)
    direct.launch(jit, (8, 3, 2), ("pa2", 2.5), dict(M=7, K=3, num_warps=4), key="k", stream=99)
    assert len(jit.dispatches) == 1 and jit.compiled.launches == []
    assert jit.compiled.runs == [(8, 3, 2, 99, "cufunction", "packed", None, None, None, "pa2", 2.5, 3, 7)]


@pytest.mark.skipif(not triton_compat.DIRECT_LAUNCH, reason="launch hooks live in triton.knobs from Triton 3.4")
@pytest.mark.parametrize("which", ["launch_enter_hook", "launch_exit_hook"])
def test_a_launch_hook_sends_kept_launches_through_tritons_runner(direct, which, monkeypatch):
    """A profiler's launch hook must see every launch, with the metadata Triton builds for it:
    while one is set the launcher hands out no stream, so kept launches take Triton's runner."""
    from triton import knobs

    monkeypatch.setattr(launch, "current_stream", lambda device_index: 5)  # no CUDA driver here
    jit = FakeJIT()
    direct.launch(jit, (1, 1, 1), ("p", 0.0), dict(K=1, M=2), key="k", stream=direct.stream(0))
    hook = getattr(knobs.runtime, which)
    if hasattr(hook, "add"):  # 3.6+: a HookChain
        hook.add(print)
        undo = lambda: hook.remove(print)
    else:
        setattr(knobs.runtime, which, print)  # 3.4-3.5: a plain attribute, None when unset
        undo = lambda: setattr(knobs.runtime, which, hook)
    try:
        assert direct.stream(0) is None
        direct.launch(jit, (1, 1, 1), ("p", 0.0), dict(K=1, M=2), key="k", stream=direct.stream(0))
    finally:
        undo()
    assert jit.compiled.runs == [] and jit.compiled.launches == [((1, 1, 1), ("p", 0.0, 1, 2))]
    assert direct.stream(0) == 5
    direct.launch(jit, (1, 1, 1), ("p", 0.0), dict(K=1, M=2), key="k", stream=direct.stream(0))
    assert len(jit.compiled.runs) == 1 and jit.compiled.runs[0][3] == 5


def test_older_triton_hands_out_no_stream(monkeypatch):
    monkeypatch.setattr(launch, "DIRECT_LAUNCH", False)
    assert DirectLauncher().stream(0) is None
