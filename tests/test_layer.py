"""The Mixer2 layer builder and its inputs: Mamba2's parameter ranges, seeds, shapes, metadata."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from pytest_ssd.layer import Mixer2Layer, SSDInputs, make_mixer2_layer, make_ssd_inputs
from pytest_ssd.reference import ssd_reference

# The kernel entry point's parameters, as vLLM's mamba_chunk_scan_combined_varlen takes them.
KERNEL_PARAMS = (
    "x", "dt", "A", "B", "C", "chunk_size", "cu_seqlens", "cu_chunk_seqlens", "last_chunk_indices",
    "seq_idx", "out", "D", "z", "dt_bias", "initial_states", "dt_softplus", "dt_limit", "state_dtype",
)


# ---------------------------------------------------------------------------------------
# Mixer2Layer
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("d_has_hdim", [False, True])
@pytest.mark.parametrize("tp_size", [1, 2, 4])
def test_layer_shapes_for_the_local_rank(tp_size: int, d_has_hdim: bool) -> None:
    layer = make_mixer2_layer(nheads=8, head_dim=16, n_groups=4, tp_size=tp_size, d_has_hdim=d_has_hdim, seed=3)
    H = 8 // tp_size
    assert (layer.local_heads, layer.local_groups) == (H, 4 // tp_size)
    assert layer.A.shape == layer.dt_bias.shape == (H,)
    assert layer.D.shape == ((H, 16) if d_has_hdim else (H,))
    assert {t.dtype for t in (layer.A, layer.dt_bias, layer.D)} == {torch.float32}
    assert all(t.is_contiguous() for t in (layer.A, layer.dt_bias, layer.D))
    assert layer.device == torch.device("cpu")


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_parameters_are_non_zero_and_in_mamba2_ranges(seed: int) -> None:
    layer = make_mixer2_layer(nheads=64, head_dim=4, d_has_hdim=True, seed=seed)
    for name in ("A", "dt_bias", "D"):
        assert (getattr(layer, name) != 0).all(), f"{name} has a zero (seed={seed})"
    A = layer.A.double()
    assert ((A >= -16 * (1 + 1e-6)) & (A <= -1 * (1 - 1e-6))).all(), f"A outside [-16, -1]: {A} (seed={seed})"
    dt = F.softplus(layer.dt_bias.double())
    in_range = (dt >= 1e-4 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))  # float32 rounding of dt_bias
    assert in_range.all(), f"softplus(dt_bias) out of [1e-4, 0.1]: {dt} (seed={seed})"
    assert ((layer.D > 0.4) & (layer.D < 1.6)).all(), f"D not around 1: {layer.D} (seed={seed})"
    assert A.std() > 0 and dt.std() > 0 and layer.D.std() > 0, f"parameters are not random (seed={seed})"


def test_dt_covers_its_log_range() -> None:
    """dt is log-uniform in [1e-3, 1e-1]: with 512 heads both decades are reached."""
    seed = 5
    dt = F.softplus(make_mixer2_layer(nheads=512, seed=seed).dt_bias.double())
    assert dt.min() < 3e-3 and dt.max() > 3e-2, f"dt spans [{dt.min()}, {dt.max()}] (seed={seed})"


def test_parameters_are_reproducible_from_the_seed() -> None:
    same = [make_mixer2_layer(d_has_hdim=True, seed=7) for _ in range(2)]
    other = make_mixer2_layer(d_has_hdim=True, seed=8)
    for name in ("A", "dt_bias", "D"):
        assert torch.equal(getattr(same[0], name), getattr(same[1], name)), f"{name} differs for seed 7"
        assert not torch.equal(getattr(same[0], name), getattr(other, name)), f"{name} equal for seeds 7 and 8"


def test_tensor_parallel_rank_holds_the_first_heads() -> None:
    seed = 9
    full = make_mixer2_layer(nheads=8, n_groups=2, d_has_hdim=True, seed=seed)
    half = make_mixer2_layer(nheads=8, n_groups=2, tp_size=2, d_has_hdim=True, seed=seed)
    for name in ("A", "dt_bias", "D"):
        assert torch.equal(getattr(half, name), getattr(full, name)[:4]), f"{name} (seed={seed})"


def test_layer_keeps_its_configuration() -> None:
    layer = make_mixer2_layer(
        nheads=4, head_dim=8, n_groups=2, ssm_state_size=32, chunk_size=64, tp_size=2, dtype=torch.bfloat16,
        state_dtype=torch.float16, d_has_hdim=True, dt_softplus=False, dt_limit=(0.01, 1), seed=4,
    )
    assert (layer.nheads, layer.head_dim, layer.n_groups, layer.ssm_state_size) == (4, 8, 2, 32)
    assert (layer.chunk_size, layer.tp_size, layer.seed) == (64, 2, 4)
    assert (layer.dtype, layer.state_dtype) == (torch.bfloat16, torch.float16)
    assert (layer.d_has_hdim, layer.dt_softplus, layer.dt_limit) == (True, False, (0.01, 1.0))
    assert "A=" not in repr(layer), "tensors stay out of the repr that pytest prints"
    with pytest.raises(AttributeError):
        layer.nheads = 8  # frozen


def test_layer_is_built_on_the_requested_device() -> None:
    cpu = make_mixer2_layer(seed=2)
    meta = make_mixer2_layer(seed=2, device="meta")
    assert meta.device == torch.device("meta")
    assert {t.device.type for t in (meta.A, meta.dt_bias, meta.D)} == {"meta"}
    assert meta.A.shape == cpu.A.shape and meta.A.dtype == cpu.A.dtype


BAD_LAYERS = {
    "nheads_zero": (dict(nheads=0), r"^nheads: expected a positive int, got 0"),
    "head_dim_negative": (dict(head_dim=-4), r"^head_dim: expected a positive int"),
    "n_groups_float": (dict(n_groups=1.0), r"^n_groups: expected a positive int"),
    "ssm_state_size_bool": (dict(ssm_state_size=True), r"^ssm_state_size: expected a positive int"),
    "tp_size_zero": (dict(tp_size=0), r"^tp_size: expected a positive int"),
    "groups_do_not_divide_heads": (dict(nheads=6, n_groups=4), r"nheads=6 must be divisible by n_groups=4"),
    "tp_does_not_divide_heads": (dict(nheads=6, n_groups=1, tp_size=4), r"nheads=6 must be divisible by tp_size=4"),
    "tp_does_not_divide_groups": (dict(nheads=8, n_groups=2, tp_size=4), r"n_groups=2 must be divisible by tp_size=4"),
    "chunk_size_not_power_of_two": (dict(chunk_size=48), r"^chunk_size: expected a power of two"),
    "chunk_size_zero": (dict(chunk_size=0), r"^chunk_size: expected a power of two"),
    "dtype_float64": (dict(dtype=torch.float64),
                      r"^dtype: expected dtype in \(float32, float16, bfloat16\), got float64"),
    "dtype_int": (dict(dtype=torch.int8), r"^dtype: expected dtype"),
    "dtype_string": (dict(dtype="bf16"), r"^dtype: expected dtype"),
    "state_dtype_float64": (dict(state_dtype=torch.float64), r"^state_dtype: expected dtype"),
    "dt_limit_reversed": (dict(dt_limit=(1.0, 0.1)), r"^dt_limit: expected low <= high"),
    "d_has_hdim_not_bool": (dict(d_has_hdim=1), r"^d_has_hdim: expected True or False"),
    "dt_softplus_not_bool": (dict(dt_softplus=None), r"^dt_softplus: expected True or False"),
    "seed_negative": (dict(seed=-1), r"^seed: expected an int"),
    "device_unknown": (dict(device="gpu0"), r"^device: expected a torch device"),
}


@pytest.mark.parametrize("case", BAD_LAYERS, ids=list(BAD_LAYERS))
def test_bad_layer_arguments_name_the_argument(case: str) -> None:
    kwargs, match = BAD_LAYERS[case]
    with pytest.raises(ValueError, match=match):
        make_mixer2_layer(**kwargs)


# ---------------------------------------------------------------------------------------
# SSDInputs
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, state_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                (torch.float16, torch.bfloat16)])
def test_inputs_shapes_and_dtypes(dtype: torch.dtype, state_dtype: torch.dtype) -> None:
    layer = make_mixer2_layer(nheads=8, head_dim=4, n_groups=2, ssm_state_size=8, tp_size=2, dtype=dtype,
                              state_dtype=state_dtype)
    inputs = make_ssd_inputs(layer, [3, 17], seed=1, with_initial_states=True, with_z=True)
    assert inputs.x.shape == inputs.z.shape == (20, 4, 4)
    assert inputs.dt.shape == (20, 4)
    assert inputs.B.shape == inputs.C.shape == (20, 1, 8)
    assert inputs.initial_states.shape == (2, 4, 4, 8)
    assert {t.dtype for t in (inputs.x, inputs.dt, inputs.B, inputs.C, inputs.z)} == {dtype}
    assert inputs.initial_states.dtype == state_dtype
    assert (inputs.seqlens, inputs.num_tokens, inputs.seed, inputs.chunk_size) == ((3, 17), 20, 1, 16)


def test_inputs_are_randn_and_never_zero() -> None:
    seed = 2
    inputs = make_ssd_inputs(make_mixer2_layer(), [40, 24], seed=seed, with_initial_states=True, with_z=True)
    for name in ("x", "dt", "B", "C", "z", "initial_states"):
        t = getattr(inputs, name)
        assert (t != 0).all(), f"{name} has zeros (seed={seed})"
        assert (t < 0).any() and (t > 0).any() and 0.5 < t.std() < 1.5, f"{name} is not randn (seed={seed})"


def test_optional_inputs_are_absent_by_default() -> None:
    inputs = make_ssd_inputs(make_mixer2_layer(), [5], seed=0)
    assert inputs.z is None and inputs.initial_states is None


def test_inputs_are_reproducible_and_flags_keep_the_rest() -> None:
    layer = make_mixer2_layer()
    a = make_ssd_inputs(layer, [5, 9], seed=11)
    b = make_ssd_inputs(layer, [5, 9], seed=11, with_initial_states=True, with_z=True)
    c = make_ssd_inputs(layer, [5, 9], seed=12)
    for name in ("x", "dt", "B", "C"):
        assert torch.equal(getattr(a, name), getattr(b, name)), f"{name} changed with the flags (seed=11)"
        assert not torch.equal(getattr(a, name), getattr(c, name)), f"{name} equal for seeds 11 and 12"


# Written out by hand (chunks cut at each sequence's own multiples of the chunk size), not by the
# chunking code under test.
LAYOUTS = [
    ([1], 16, [0, 1], [0], [0]),
    ([16], 16, [0, 16], [0], [0]),
    ([17], 16, [0, 16, 17], [0, 0], [1]),
    ([3, 16, 33, 1], 16, [0, 3, 19, 35, 51, 52, 53], [0, 1, 2, 2, 2, 3], [0, 1, 4, 5]),
    ([3, 16, 33, 1], 32, [0, 3, 19, 51, 52, 53], [0, 1, 2, 2, 3], [0, 1, 3, 4]),
]


@pytest.mark.parametrize("seqlens, chunk_size, cu_chunks, seq_idx, last", LAYOUTS)
def test_inputs_metadata_matches_chunking(seqlens: list, chunk_size: int, cu_chunks, seq_idx, last) -> None:
    layer = make_mixer2_layer(chunk_size=chunk_size)
    inputs = make_ssd_inputs(layer, seqlens, seed=0)
    want_cu = [0]
    for n in seqlens:
        want_cu.append(want_cu[-1] + n)
    assert inputs.cu_seqlens.tolist() == want_cu and inputs.cu_seqlens.dtype == torch.int32
    for name, want in (("cu_chunk_seqlens", cu_chunks), ("seq_idx", seq_idx), ("last_chunk_indices", last)):
        got = getattr(inputs, name)
        assert got.dtype == torch.int32 and got.tolist() == want, name


def test_inputs_follow_the_requested_device() -> None:
    layer = make_mixer2_layer()
    inputs = make_ssd_inputs(layer, [4, 20], seed=0, with_initial_states=True, device="meta")
    tensors = ("x", "dt", "B", "C", "initial_states", "cu_seqlens", "cu_chunk_seqlens", "seq_idx", "last_chunk_indices")
    assert {getattr(inputs, n).device.type for n in tensors} == {"meta"}
    assert inputs.seq_idx.shape == (3,), "metadata is computed on the CPU, then moved"


def test_kernel_kwargs_fit_the_kernel_signature() -> None:
    layer = make_mixer2_layer(d_has_hdim=True)
    inputs = make_ssd_inputs(layer, [4, 20], seed=0, with_initial_states=True, with_z=True)
    kwargs = inputs.kernel_kwargs(layer)
    assert set(kwargs) == set(KERNEL_PARAMS) - {"out"}
    assert kwargs["A"] is layer.A and kwargs["D"] is layer.D and kwargs["dt_bias"] is layer.dt_bias
    assert kwargs["x"] is inputs.x and kwargs["initial_states"] is inputs.initial_states
    assert (kwargs["chunk_size"], kwargs["state_dtype"], kwargs["dt_softplus"]) == (16, torch.float32, True)


def test_reference_kwargs_run_the_reference() -> None:
    layer = make_mixer2_layer(nheads=4, n_groups=2, d_has_hdim=True, dtype=torch.bfloat16)
    inputs = make_ssd_inputs(layer, [4, 20], seed=0, with_initial_states=True, with_z=True)
    kwargs = inputs.reference_kwargs(layer)
    assert set(kwargs) <= set(inspect.signature(ssd_reference).parameters)
    out, states = ssd_reference(**kwargs)
    assert out.shape == (24, 4, 16) and out.dtype == torch.bfloat16
    assert states.shape == (2, 4, 16, 16) and states.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(states).all(), "seed=0"


@pytest.mark.parametrize(
    "other, match",
    [
        (dict(nheads=16), r"^layer: its x shape is \(20, 16, 16\), but these inputs have \(20, 8, 16\)"),
        (dict(ssm_state_size=8), r"^layer: its B shape"),
        (dict(dtype=torch.bfloat16), r"^layer: its x dtype"),
        (dict(state_dtype=torch.float16), r"^layer: its initial_states dtype"),
        (dict(chunk_size=8), r"^layer: its chunk_size is 8, but these inputs have 16"),
    ],
)
def test_inputs_refuse_another_layer(other: dict, match: str) -> None:
    inputs = make_ssd_inputs(make_mixer2_layer(), [4, 16], seed=0, with_initial_states=True)
    for method in (inputs.kernel_kwargs, inputs.reference_kwargs):
        with pytest.raises(ValueError, match=match):
            method(make_mixer2_layer(**other))


BAD_INPUTS = {
    "seqlens_empty": (dict(seqlens=[]), r"^seqlens: expected a non-empty list of positive ints"),
    "seqlens_zero": (dict(seqlens=[3, 0]), r"^seqlens: expected a non-empty list of positive ints, got \[3, 0\]"),
    "seqlens_negative": (dict(seqlens=[-2]), r"^seqlens:"),
    "seqlens_float": (dict(seqlens=[2.0]), r"^seqlens:"),
    "seqlens_int": (dict(seqlens=5), r"^seqlens:"),
    "seqlens_tensor": (dict(seqlens=torch.tensor([5])), r"^seqlens:"),
    "seed_string": (dict(seed="1"), r"^seed: expected an int"),
    "with_z_not_bool": (dict(with_z="no"), r"^with_z: expected True or False"),
    "with_initial_states_not_bool": (dict(with_initial_states=0), r"^with_initial_states: expected True or False"),
    "device_unknown": (dict(device="tpu?"), r"^device: expected a torch device"),
    "layer_wrong_type": (dict(layer="layer"), r"^layer: expected a Mixer2Layer, got str"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_arguments_name_the_argument(case: str) -> None:
    changes, match = BAD_INPUTS[case]
    kwargs = {"layer": make_mixer2_layer(), "seqlens": [4], "seed": 0, **changes}
    with pytest.raises(ValueError, match=match):
        make_ssd_inputs(**kwargs)


def test_dataclasses_are_frozen_and_compare_by_identity() -> None:
    layer = make_mixer2_layer()
    inputs = make_ssd_inputs(layer, [4], seed=0)
    assert isinstance(layer, Mixer2Layer) and isinstance(inputs, SSDInputs)
    assert layer != make_mixer2_layer() and layer == layer, "== must not compare tensors elementwise"
    with pytest.raises(AttributeError):
        inputs.seed = 1


@pytest.mark.parametrize("dt_softplus", [True, False])
def test_dt_bias_starts_dt_in_mamba2_range_with_or_without_softplus(dt_softplus):
    """The kernel's dt' = (softplus)(dt + dt_bias) starts in [dt_min, dt_max] either way; an inverse
    softplus stored for a layer without softplus would clamp every dt' to 0 and test nothing."""
    from pytest_ssd.layer import DT_MAX, DT_MIN

    layer = make_mixer2_layer(nheads=64, head_dim=16, ssm_state_size=16, chunk_size=16, dt_softplus=dt_softplus,
                              seed=7)
    start = torch.nn.functional.softplus(layer.dt_bias) if dt_softplus else layer.dt_bias
    assert bool(((start >= DT_MIN * 0.999) & (start <= DT_MAX * 1.001)).all()), start
