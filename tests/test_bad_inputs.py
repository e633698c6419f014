"""Negative tests of the public API: every bad input gets a clear error, nothing passes silently,
nothing crashes the process.

One table of bad calls, each with the exception type and the message fragment it must raise;
hypothesis fuzzing of shapes and metadata against the kernel's checks (the kernels themselves are
not launched there: the checks are what stands between bad input and memory); and the cases that
used to crash the process (SIGSEGV, glibc "double free") in subprocesses, so a crash fails a test
and does not end the run.
"""
from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _metadata_scripts import prelude, run_script

from pytest_ssd import latency, verdict
from pytest_ssd.adapters import poisoned_like
from pytest_ssd.assertions import Tolerance, assert_ssd_close
from pytest_ssd.chunking import chunk_metadata
from pytest_ssd.compile_only import compile_only
from pytest_ssd.events import Recording
from pytest_ssd.kernels import arguments, combined, mamba_chunk_scan_combined_varlen
from pytest_ssd.layer import make_mixer2_layer, make_ssd_inputs
from pytest_ssd.warmup import warmup_ssd_kernels

SEED = 1913
SMALL = dict(nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=SEED)
NO_CUDA = not torch.cuda.is_available()


def _kernel_kwargs(seqlens=(5, 20, 1), **layer_overrides) -> dict:
    layer = make_mixer2_layer(**{**SMALL, **layer_overrides})
    inputs = make_ssd_inputs(layer, list(seqlens), seed=SEED, with_z=True, with_initial_states=True)
    return dict(inputs.kernel_kwargs(layer), out=poisoned_like(inputs.x))


def _kernel(**change):
    """The bundled kernel on valid small inputs, with ``change`` applied (a callable gets the kwargs)."""
    kwargs = _kernel_kwargs()
    for name, value in change.items():
        kwargs[name] = value(kwargs) if callable(value) and not isinstance(value, torch.Tensor) else value
    return mamba_chunk_scan_combined_varlen(**kwargs)


def _int64_metadata_beyond_int32(kwargs: dict) -> dict:
    """cu_seqlens ending at 2**32 + 25 for T = 25: narrowed to int32 it would read 25."""
    T = kwargs["x"].shape[0]
    cu = torch.tensor([0, 2**32 + T], dtype=torch.int64)
    meta = chunk_metadata(torch.tensor([0, T], dtype=torch.int32), 16)
    return dict(kwargs, cu_seqlens=cu, cu_chunk_seqlens=meta.cu_chunk_seqlens.long(), seq_idx=meta.seq_idx.long(),
                last_chunk_indices=meta.last_chunk_indices.long(), initial_states=None)


def _on_meta_device(T: int) -> dict:
    """Tensors of a batch too long for int32 offsets, without allocating them (the "meta" device)."""
    meta = torch.device("meta")
    H, P, N = 2, 16, 16
    return dict(x=torch.empty(T, H, P, device=meta), dt=torch.empty(T, H, device=meta),
                A=torch.empty(H, device=meta), B=torch.empty(T, 1, N, device=meta), C=torch.empty(T, 1, N, device=meta),
                chunk_size=16, cu_seqlens=torch.empty(2, dtype=torch.int32, device=meta),
                cu_chunk_seqlens=torch.empty(2, dtype=torch.int32, device=meta),
                last_chunk_indices=torch.empty(1, dtype=torch.int32, device=meta),
                seq_idx=torch.empty(1, dtype=torch.int32, device=meta), out=torch.empty(T, H, P, device=meta))


def _pair():
    g = torch.Generator().manual_seed(SEED)
    return torch.randn(10, 2, 4, generator=g, dtype=torch.float64), torch.randn(2, 2, 4, 3, generator=g,
                                                                                 dtype=torch.float64)


def _close(**change):
    out, states = _pair()
    kwargs = dict(out=out.float(), final_states=states.float(), ref_out=out, ref_final_states=states,
                  dtype=torch.float32)
    kwargs.update(change)
    assert_ssd_close(**kwargs)


def _noop(*_):
    return None


# (id, call, exception type, message fragment). Each row is one hole the issue found, or a
# neighbour of one: the fragment is what a user reads.
BAD_CALLS = [
    # -- the kernel -----------------------------------------------------------------------
    ("out is x", lambda: _kernel(out=lambda kw: kw["x"]), ValueError, "out: shares memory with x"),
    ("out overlaps z", lambda: _kernel(out=lambda kw: kw["z"].view(-1)[:kw["x"].numel()].view(kw["x"].shape)),
     ValueError, "out: shares memory with z"),
    ("dt inside out", lambda: _kernel(dt=lambda kw: kw["out"].view(-1)[64:64 + kw["dt"].numel()].view(kw["dt"].shape)),
     ValueError, "out: shares memory with dt"),
    ("int64 cu_seqlens beyond int32", lambda: mamba_chunk_scan_combined_varlen(
        **_int64_metadata_beyond_int32(_kernel_kwargs())), ValueError,
     "cu_seqlens: expected offsets in [0, 2**31 - 1]"),
    ("int64 cu_chunk_seqlens beyond int32", lambda: _kernel(
        cu_chunk_seqlens=lambda kw: kw["cu_chunk_seqlens"].long() + torch.tensor([0, 0, 0, 0, 2**32])), ValueError,
     "cu_chunk_seqlens: expected offsets in [0, 2**31 - 1]"),
    ("dt_softplus='no'", lambda: _kernel(dt_softplus="no"), ValueError, "dt_softplus: expected True or False, got 'no'"),
    ("dt_softplus=None", lambda: _kernel(dt_softplus=None), ValueError, "dt_softplus: expected True or False"),
    ("return_intermediate_states='yes'", lambda: _kernel(return_intermediate_states="yes"), ValueError,
     "return_intermediate_states: expected True or False"),
    ("x requires grad", lambda: _kernel(x=lambda kw: kw["x"].requires_grad_()), ValueError,
     "x: requires grad, but this kernel is forward-only"),
    ("D requires grad", lambda: _kernel(D=lambda kw: kw["D"].clone().requires_grad_()), ValueError,
     "D: requires grad"),
    ("chunk_size=2**22", lambda: _kernel(chunk_size=2**22), ValueError,
     "chunk_size: expected a power of two >= 16 and <= 1024, got 4194304"),
    ("T beyond int32", lambda: mamba_chunk_scan_combined_varlen(**_on_meta_device(2**31)), ValueError,
     "x: at most 2**31 - 1 tokens per call"),
    ("seq_idx past S", lambda: _kernel(seq_idx=lambda kw: kw["seq_idx"] + 5), ValueError,
     "seq_idx: disagrees with cu_seqlens"),
    ("negative last_chunk_indices", lambda: _kernel(last_chunk_indices=lambda kw: kw["last_chunk_indices"] - 9),
     ValueError, "last_chunk_indices: expected offsets in [0, 2**31 - 1]"),
    ("cu_chunk_seqlens past T", lambda: _kernel(cu_chunk_seqlens=lambda kw: kw["cu_chunk_seqlens"] + 10**6),
     ValueError, "cu_chunk_seqlens: disagrees with cu_seqlens"),
    # -- chunk metadata -------------------------------------------------------------------
    ("chunk_metadata beyond int32", lambda: chunk_metadata(torch.tensor([0, 2**31 + 5]), 16), ValueError,
     "cu_seqlens: expected offsets in [0, 2**31 - 1] (T and every offset must fit int32), got 2147483653"),
    ("chunk_metadata negative", lambda: chunk_metadata(torch.tensor([-4, 5]), 16), ValueError,
     "cu_seqlens: expected offsets in [0, 2**31 - 1]"),
    ("chunk_metadata chunk_size 0", lambda: chunk_metadata(torch.tensor([0, 5]), 0), ValueError,
     "chunk_size: expected a power of two"),
    # -- the layer and its inputs -----------------------------------------------------------
    pytest.param("layer on cuda without CUDA", lambda: make_mixer2_layer(device="cuda"), ValueError,
                 "device: 'cuda' asked for, but torch.cuda.is_available() is False",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    pytest.param("inputs on cuda without CUDA", lambda: make_ssd_inputs(make_mixer2_layer(), [3], seed=1,
                                                                        device="cuda:0"), ValueError,
                 "device: 'cuda:0' asked for", marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    ("layer cuda:99", lambda: make_mixer2_layer(device="cuda:99") if not NO_CUDA else make_mixer2_layer(device="cuda"),
     ValueError, "device: 'cuda"),
    ("layer chunk_size=2**22", lambda: make_mixer2_layer(chunk_size=2**22), ValueError,
     "chunk_size: expected a power of two >= 1 and <= 1024"),
    ("layer dt_softplus='no'", lambda: make_mixer2_layer(dt_softplus="no"), ValueError,
     "dt_softplus: expected True or False"),
    ("warmup of no layer", lambda: warmup_ssd_kernels("layer"), ValueError,
     "layer: expected a pytest_ssd.layer.Mixer2Layer"),
    ("warmup with_z='no'", lambda: warmup_ssd_kernels(make_mixer2_layer(**SMALL), with_z="no"), ValueError,
     "with_z: expected True or False"),
    ("warmup kernel not callable", lambda: warmup_ssd_kernels(make_mixer2_layer(**SMALL), kernel="ssd"), ValueError,
     "kernel: expected the SSD entry point"),
    # -- compile-only ---------------------------------------------------------------------
    ("compile_only persist_autotune='no'", lambda: compile_only("cuda:90", persist_autotune="no").__enter__(),
     ValueError, "persist_autotune: expected True or False, got 'no'"),
    ("compile_only target", lambda: compile_only("sm90").__enter__(), ValueError, "target must be one of"),
    # -- assert_ssd_close ---------------------------------------------------------------------
    ("fp16 out for an fp32 model", lambda: _close(out=_pair()[0].half()), AssertionError,
     "out: dtype float16, expected the model dtype float32"),
    ("states dtype", lambda: _close(final_states=_pair()[1].half(), state_dtype=torch.float32), AssertionError,
     "final_states: dtype float16, expected float32"),
    ("NaN tolerance", lambda: _close(tol=Tolerance(float("nan"), 0.0)), ValueError,
     "Tolerance atol: expected a finite number >= 0, got nan"),
    ("negative tolerance", lambda: _close(state_tol=Tolerance(1e-3, -1.0)), ValueError,
     "Tolerance rtol: expected a finite number >= 0, got -1.0"),
    ("infinite tolerance", lambda: Tolerance(math.inf, 0.0), ValueError, "expected a finite number >= 0, got inf"),
    ("tolerance not a Tolerance", lambda: _close(tol=(1e-3, 1e-3)), ValueError,
     "tol: expected a pytest_ssd.assertions.Tolerance"),
    ("kernel states, reference none", lambda: _close(ref_final_states=None), AssertionError,
     "final_states: the kernel returned states, the reference has none"),
    ("reference states, kernel none", lambda: _close(final_states=None), AssertionError,
     "final_states: the kernel returned None, the reference has states"),
    # -- latency ----------------------------------------------------------------------------
    ("input_sets of tensors", lambda: latency.measure_latency(_noop, [torch.randn(3, 2), torch.randn(3, 2)]),
     ValueError, "input_sets[0]: expected a tuple of arguments for fn, e.g. (x, out), got a Tensor"),
    ("input_sets a tensor", lambda: latency.measure_latency(_noop, torch.randn(3, 2)), ValueError,
     "input_sets: expected a non-empty list of argument tuples"),
    ("input_sets empty", lambda: latency.measure_latency(_noop, []), ValueError,
     "input_sets: expected a non-empty list"),
    ("max_ratio nan", lambda: latency.assert_no_latency_spike(_noop, [()], max_ratio=float("nan")), ValueError,
     "max_ratio: expected a finite number > 1"),
    ("max_ratio inf", lambda: latency.assert_no_latency_spike(_noop, [()], max_ratio=math.inf), ValueError,
     "max_ratio: expected a finite number > 1"),
    ("max_ratio 1", lambda: latency.assert_no_latency_spike(_noop, [()], max_ratio=1), ValueError,
     "max_ratio: expected a finite number > 1 (first call / steady state), got 1"),
    ("repeats float", lambda: latency.measure_latency(_noop, [()], repeats=5.5), ValueError,
     "repeats: expected an int >= 3"),
    # -- coverage -----------------------------------------------------------------------------
    ("compare(None, rec)", lambda: verdict.compare(None, Recording()), TypeError,
     "compare: warmup must be a pytest_ssd.events.Recording, got NoneType"),
    ("compare(rec, events)", lambda: verdict.compare(Recording(), []), TypeError,
     "compare: workload must be a pytest_ssd.events.Recording, got list"),
]


def _row_id(row) -> str:
    return row.values[0] if hasattr(row, "values") else row[0]


@pytest.mark.parametrize("name, call, error, fragment", BAD_CALLS, ids=[_row_id(r) for r in BAD_CALLS])
def test_bad_call_raises_a_clear_error(name, call, error, fragment, monkeypatch):
    def no_launch(*args):
        raise AssertionError("a kernel was launched before the bad argument was rejected")

    monkeypatch.setattr(combined, "_launch", no_launch)
    with pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value), f"{name}: {raised.value}"


def test_chunk_size_2_22_is_refused_before_anything_is_allocated(monkeypatch):
    kwargs = _kernel_kwargs()
    allocations = []
    monkeypatch.setattr(combined._Workspace, "carve", lambda *a: allocations.append(a))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="chunk_size"):
        mamba_chunk_scan_combined_varlen(**dict(kwargs, chunk_size=2**22))
    assert allocations == [] and time.perf_counter() - start < 1.0


def test_requires_grad_is_fine_where_no_gradient_is_wanted():
    """Under no_grad (or inference_mode) a parameter that requires grad loses nothing: accepted."""
    kwargs = _kernel_kwargs()
    kwargs["A"] = kwargs["A"].clone().requires_grad_()
    with torch.no_grad():
        mamba_chunk_scan_combined_varlen(**kwargs)
    assert torch.isfinite(kwargs["out"]).all()


# ---- fuzzing the kernel's checks -------------------------------------------------------------

@st.composite
def batches(draw):
    seqlens = draw(st.lists(st.integers(1, 70), min_size=1, max_size=6))
    chunk_size = draw(st.sampled_from([16, 32, 64]))
    return seqlens, chunk_size


MUTATIONS = ("none", "add", "set", "drop_last", "swap", "int64_huge", "negate")


@st.composite
def metadata_mutations(draw):
    which = draw(st.sampled_from(["cu_seqlens", "cu_chunk_seqlens", "seq_idx", "last_chunk_indices"]))
    how = draw(st.sampled_from(MUTATIONS))
    index = draw(st.integers(0, 10**6))
    value = draw(st.integers(-2**33, 2**33))
    return which, how, index, value


def _mutate(t: torch.Tensor, how: str, index: int, value: int) -> torch.Tensor:
    t = t.clone().long()
    i = index % t.numel()
    if how == "add":
        t[i] += value
    elif how == "set":
        t[i] = value
    elif how == "drop_last":
        t = t[:-1] if t.numel() > 1 else t
    elif how == "swap" and t.numel() > 1:
        j = (i + 1) % t.numel()
        t[i], t[j] = t[j].clone(), t[i].clone()
    elif how == "int64_huge":
        t[i] += 2**32  # the same value once narrowed to int32
    elif how == "negate":
        t[i] = -t[i] - 1
    return t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches(), mutation=metadata_mutations())
def test_fuzzed_metadata_is_refused_or_right(batch, mutation, monkeypatch):
    """Any metadata the checks let through equals what chunk_metadata builds for its cu_seqlens:
    the kernels index memory only with metadata that is right. Nothing else may escape."""
    seqlens, chunk_size = batch
    which, how, index, value = mutation
    layer = make_mixer2_layer(**{**SMALL, "chunk_size": chunk_size})
    inputs = make_ssd_inputs(layer, seqlens, seed=SEED)
    kwargs = dict(inputs.kernel_kwargs(layer), out=poisoned_like(inputs.x))
    kwargs[which] = _mutate(kwargs[which], how, index, value)
    launched = []
    monkeypatch.setattr(combined, "_launch", lambda stage, grid, args, *rest: launched.append((grid, args)))
    try:
        mamba_chunk_scan_combined_varlen(**kwargs)
    except ValueError as e:
        assert str(e).split(":")[0] in {"x", "cu_seqlens", "cu_chunk_seqlens", "seq_idx", "last_chunk_indices"} \
            or "expected shape" in str(e), str(e)
        assert launched == []
        return
    offsets = kwargs["cu_seqlens"].tolist()
    right = chunk_metadata(torch.tensor(offsets), chunk_size)
    for name in ("cu_chunk_seqlens", "seq_idx", "last_chunk_indices"):
        assert kwargs[name].tolist() == getattr(right, name).tolist(), (which, how)
    assert offsets[-1] == inputs.x.shape[0] and len(launched) == 4


@st.composite
def shapes(draw):
    T = draw(st.integers(1, 40))
    H = draw(st.sampled_from([1, 2, 3, 4]))
    G = draw(st.sampled_from([1, 2, 3]))
    P = draw(st.sampled_from([1, 8, 16]))
    N = draw(st.sampled_from([1, 8, 16]))
    off = draw(st.lists(st.sampled_from(["x", "dt", "A", "B", "C", "out", "D", "dt_bias", "z"]), max_size=2))
    return T, H, G, P, N, off


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=shapes())
def test_fuzzed_shapes_are_refused_by_both_checks_alike(case, monkeypatch):
    """Random layer dims, with up to two tensors one size off: the full checks raise ValueError or
    pass, and the cheap pass a request takes never accepts what they reject."""
    T, H, G, P, N, off = case
    g = torch.Generator().manual_seed(SEED)

    def rnd(name, *shape):
        if name in off:
            shape = (shape[0] + 1,) + shape[1:]
        return torch.randn(shape, generator=g)

    cu = torch.tensor([0, T], dtype=torch.int32)
    meta = chunk_metadata(cu, 16)
    tensors = (rnd("x", T, H, P), rnd("dt", T, H), rnd("A", H), rnd("B", T, G, N), rnd("C", T, G, N),
               rnd("out", T, H, P), rnd("D", H), rnd("z", T, H, P), rnd("dt_bias", H), None)
    metadata = (cu, meta.cu_chunk_seqlens, meta.seq_idx, meta.last_chunk_indices)
    rest = (metadata, 16, (0.0, math.inf), None, True, False)
    try:
        full = arguments.validate(*tensors, *rest)
    except ValueError:
        full = None
    assert arguments.fast_sizes(*tensors, *rest) == full
    assert (full is None) == (bool(off) or H % G != 0)


# ---- crash cases, each in a process of its own -------------------------------------------------

def _crash_prelude(foreign: bool) -> str:
    return prelude(layer="nheads=2, head_dim=16, ssm_state_size=16, chunk_size=16, seed=3", seqlens=[5, 17],
                   foreign=foreign, cuda=False)


CRASH_CASES = {
    # The SIGSEGV / "double free or corruption": the end offset moved past T after the check.
    "cu_chunk_seqlens.numpy()[-1] += 10**6": "kw['cu_chunk_seqlens'].numpy()[-1] += 10**6",
    # The silent wrong result.
    "seq_idx.data[1] = 0": "kw['seq_idx'].data[1] = 0",
    "last_chunk_indices via DLPack": "torch.from_dlpack(kw['last_chunk_indices'])[0] = 10**6",
    "every offset huge": "kw['cu_chunk_seqlens'].numpy()[:] = 2**31 - 1",
}


@pytest.mark.parametrize("foreign", [False, True], ids=["chunk_metadata", "foreign"])
@pytest.mark.parametrize("write", list(CRASH_CASES), ids=list(CRASH_CASES))
def test_writes_behind_the_kernels_back_never_crash_the_process(write, foreign):
    """Metadata checked once, then written where the version counter does not see it: the kernels
    read their private copy, so the second call neither crashes nor changes its result."""
    script = _crash_prelude(foreign) + f"""
first = run()
{CRASH_CASES[write]}
second = run()
assert torch.equal(first, second) and not second.isnan().any(), "the result moved"
print("OK")
"""
    done = run_script(script, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), \
        f"exit {done.returncode} (negative: killed by signal {-done.returncode})\n{done.stderr[-3000:]}"


def test_bad_metadata_written_before_the_first_call_is_an_error_not_a_crash():
    script = _crash_prelude(True) + """
kw['cu_chunk_seqlens'].numpy()[-1] += 10**6  # never checked yet: the check reads it
try:
    run()
except ValueError as e:
    print("ValueError:", e)
"""
    done = run_script(script, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ValueError: cu_chunk_seqlens: disagrees with cu_seqlens" in done.stdout
