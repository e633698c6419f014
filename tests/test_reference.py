"""The float64 reference: its two forms agree, it matches closed forms, it rejects bad input.

Inputs are randn and parameters random non-zero (a zero would hide a missing term), every
test is seeded and names its seed when it fails.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ssd.reference import ssd_reference, ssd_reference_chunked, ssd_reference_sequential

F64 = torch.float64
FORMS = {"sequential": ssd_reference_sequential, "chunked": ssd_reference_chunked}


def assert_close64(actual: torch.Tensor, expected: torch.Tensor, *, seed: int, what: str) -> None:
    """Float64 agreement to 1e-10; NaN never passes (equal_nan stays False)."""
    torch.testing.assert_close(
        actual, expected, atol=1e-10, rtol=1e-10, msg=lambda m: f"{what} (seed={seed}): {m}"
    )


def random_problem(
    seed: int,
    seqlens: list,
    *,
    heads: int = 4,
    head_dim: int = 3,
    groups: int = 2,
    dstate: int = 5,
    D: str = "h",  # "h": (H,), "hp": (H, P), "": none
    z: bool = True,
    dt_bias: bool = True,
    softplus: bool = True,
    dt_limit: tuple = (0.0, math.inf),
    initial_states: bool = True,
    dtype: torch.dtype = F64,
) -> dict:
    """Keyword arguments for the reference: randn tensors, a stable random A, float64 results."""
    gen = torch.Generator().manual_seed(seed)
    T, S = sum(seqlens), len(seqlens)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=F64).to(dtype)

    def positive(*shape: int) -> torch.Tensor:
        return (0.1 + torch.rand(shape, generator=gen, dtype=F64)).to(dtype)

    # Without softplus, dt + dt_bias must stay positive, or exp(dt' A) grows without bound.
    dt_and_bias = randn if softplus else positive
    return dict(
        x=randn(T, heads, head_dim),
        dt=dt_and_bias(T, heads),
        A=-(0.5 + torch.rand(heads, generator=gen, dtype=F64)),
        B=randn(T, groups, dstate),
        C=randn(T, groups, dstate),
        cu_seqlens=torch.tensor([0, *itertools.accumulate(seqlens)], dtype=torch.int32),
        D=randn(*{"h": (heads,), "hp": (heads, head_dim)}[D]) if D else None,
        z=randn(T, heads, head_dim) if z else None,
        dt_bias=dt_and_bias(heads) if dt_bias else None,
        dt_softplus=softplus,
        dt_limit=dt_limit,
        initial_states=randn(S, heads, head_dim, dstate) if initial_states else None,
        output_dtype=F64,
    )


def by_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(T, G, N) -> (T, H, N): head h reads group h // (H // G)."""
    return t.repeat_interleave(heads // t.shape[1], dim=1)


# ---------------------------------------------------------------------------------------
# The two forms agree
# ---------------------------------------------------------------------------------------

AGREEMENT_CASES = {
    "bare": dict(D="", z=False, dt_bias=False, softplus=False, initial_states=False),
    "everything": dict(),
    "D_per_channel": dict(D="hp"),
    "no_initial_states": dict(initial_states=False),
    "dt_limit": dict(dt_limit=(0.2, 0.7)),
    "one_group": dict(heads=4, groups=1),
    "group_per_head": dict(heads=4, groups=4),
    "three_heads_per_group": dict(heads=6, groups=2, D="hp", dt_limit=(0.05, 2.0)),
}


@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=list(AGREEMENT_CASES))
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_forms_agree(case: str, chunk_size: int) -> None:
    seed = 1000 + chunk_size
    kwargs = random_problem(seed, [1, 7, 8, 20, 3], **AGREEMENT_CASES[case])
    out_s, states_s = ssd_reference_sequential(**kwargs)
    out_c, states_c = ssd_reference_chunked(**kwargs, chunk_size=chunk_size)
    assert_close64(out_c, out_s, seed=seed, what=f"out, {case}, chunk_size={chunk_size}")
    assert_close64(states_c, states_s, seed=seed, what=f"final states, {case}, chunk_size={chunk_size}")


@st.composite
def ssd_cases(draw: st.DrawFn) -> dict:
    chunk_size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    # Length 1, exact multiples of the chunk size, and anything in between.
    length = st.one_of(st.just(1), st.integers(1, 3).map(lambda k: k * chunk_size), st.integers(1, 40))
    groups = draw(st.sampled_from([1, 2]))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        seqlens=draw(st.lists(length, min_size=1, max_size=4)),
        chunk_size=chunk_size,
        problem=dict(
            groups=groups,
            heads=groups * draw(st.integers(1, 3)),
            head_dim=draw(st.integers(1, 4)),
            dstate=draw(st.integers(1, 4)),
            D=draw(st.sampled_from(["", "h", "hp"])),
            z=draw(st.booleans()),
            dt_bias=draw(st.booleans()),
            softplus=draw(st.booleans()),
            initial_states=draw(st.booleans()),
            dt_limit=draw(st.sampled_from([(0.0, math.inf), (0.1, 0.8)])),
        ),
    )


@settings(max_examples=25, deadline=None)
@given(case=ssd_cases())
def test_forms_agree_on_random_shapes(case: dict) -> None:
    seed = case["seed"]
    kwargs = random_problem(seed, case["seqlens"], **case["problem"])
    out_s, states_s = ssd_reference_sequential(**kwargs)
    out_c, states_c = ssd_reference_chunked(**kwargs, chunk_size=case["chunk_size"])
    assert_close64(out_c, out_s, seed=seed, what=f"out, {case}")
    assert_close64(states_c, states_s, seed=seed, what=f"final states, {case}")


def test_method_selects_the_form() -> None:
    seed = 11
    kwargs = random_problem(seed, [9, 4])
    for method, form in FORMS.items():
        got = ssd_reference(**kwargs, method=method, chunk_size=4)
        want = form(**kwargs, **({"chunk_size": 4} if method == "chunked" else {}))
        assert all(torch.equal(g, w) for g, w in zip(got, want)), f"method={method} (seed={seed})"


# ---------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", FORMS)
def test_zero_decay_is_a_running_sum(method: str) -> None:
    """A = 0: nothing decays, so h_t = h_init + sum_{k<=t} dt_k x_k B_k^T."""
    seed, seqlens = 21, [6, 1, 13]
    kw = random_problem(seed, seqlens, D="", z=False, dt_bias=False, softplus=False)
    kw["A"] = torch.zeros_like(kw["A"])
    x, dt, H = kw["x"], kw["dt"], kw["x"].shape[1]
    inject = torch.einsum("th,thp,thn->thpn", dt, x, by_head(kw["B"], H))
    starts = kw["cu_seqlens"].tolist()
    h = torch.cat([
        kw["initial_states"][s] + inject[a:b].cumsum(dim=0) for s, (a, b) in enumerate(zip(starts[:-1], starts[1:]))
    ])
    want_out = torch.einsum("thpn,thn->thp", h, by_head(kw["C"], H))
    want_states = h[[b - 1 for b in starts[1:]]]
    out, states = ssd_reference(**kw, method=method, chunk_size=4)
    assert_close64(out, want_out, seed=seed, what=f"out, {method}")
    assert_close64(states, want_states, seed=seed, what=f"final states, {method}")


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("with_initial_states", [False, True])
def test_one_token_by_hand(method: str, with_initial_states: bool) -> None:
    """One token: h = exp(dt' A) h0 + dt' x B^T, y = C h + D x, dt' = softplus(dt + dt_bias)."""
    seed = 31 + with_initial_states
    kw = random_problem(seed, [1], heads=6, groups=3, D="hp", z=False, initial_states=with_initial_states)
    x, A, H = kw["x"][0], kw["A"], kw["x"].shape[1]
    B, C = by_head(kw["B"], H)[0], by_head(kw["C"], H)[0]
    dtp = torch.log1p(torch.exp(kw["dt"][0] + kw["dt_bias"]))  # (H,) softplus by hand
    h = torch.einsum("h,hp,hn->hpn", dtp, x, B)
    if with_initial_states:
        h = h + torch.exp(dtp * A)[:, None, None] * kw["initial_states"][0]
    want = torch.einsum("hpn,hn->hp", h, C) + kw["D"] * x
    out, states = ssd_reference(**kw, method=method)
    assert_close64(out[0], want, seed=seed, what=f"out, {method}")
    assert_close64(states[0], h, seed=seed, what=f"final state, {method}")


@pytest.mark.parametrize("method", FORMS)
def test_default_dt_limit_clamps_a_negative_dt_to_zero(method: str) -> None:
    """(0, inf) clamps, as the kernels do: a token with dt' < 0 (no softplus) neither decays nor adds
    to the state, h_1 = h_0; the next one runs as usual. An explicit (-inf, inf) keeps dt' < 0."""
    seed = 41
    kw = random_problem(seed, [2], D="", z=False, dt_bias=False, softplus=False)
    kw["dt"][0] = -kw["dt"][0]  # token 0: dt' < 0 -> 0; token 1: dt' > 0
    H = kw["x"].shape[1]
    A, x, B, C, h0 = kw["A"], kw["x"], by_head(kw["B"], H), by_head(kw["C"], H), kw["initial_states"][0]
    dt1 = kw["dt"][1]
    h1 = torch.exp(dt1 * A)[:, None, None] * h0 + torch.einsum("h,hp,hn->hpn", dt1, x[1], B[1])
    out, states = ssd_reference(**kw, method=method, chunk_size=2)
    assert_close64(out[0], torch.einsum("hpn,hn->hp", h0, C[0]), seed=seed, what=f"out[0], {method}")
    assert_close64(out[1], torch.einsum("hpn,hn->hp", h1, C[1]), seed=seed, what=f"out[1], {method}")
    assert_close64(states[0], h1, seed=seed, what=f"final state, {method}")
    unclamped, _ = ssd_reference(**{**kw, "dt_limit": (-math.inf, math.inf)}, method=method, chunk_size=2)
    h_neg = torch.exp(kw["dt"][0] * A)[:, None, None] * h0 + torch.einsum("h,hp,hn->hpn", kw["dt"][0], x[0], B[0])
    assert_close64(unclamped[0], torch.einsum("hpn,hn->hp", h_neg, C[0]), seed=seed, what=f"unclamped, {method}")


@pytest.mark.parametrize("method", FORMS)
def test_dt_bias_softplus_and_limit(method: str) -> None:
    """Raw dt with bias, softplus and limit equals dt' = clamp(softplus(dt + bias)) passed plainly."""
    seed, low, high = 51, 0.4, 0.9
    kw = random_problem(seed, [5, 12], dt_limit=(low, high))
    dtp = torch.log1p(torch.exp(kw["dt"] + kw["dt_bias"])).clamp(low, high)
    assert ((dtp == low).any() and (dtp == high).any()), f"the limit must bite at both ends (seed={seed})"
    want = ssd_reference(**{**kw, "dt": dtp, "dt_bias": None, "dt_softplus": False, "dt_limit": (0.0, math.inf)},
                         method=method)
    got = ssd_reference(**kw, method=method)
    for name, g, w in zip(("out", "final states"), got, want):
        assert_close64(g, w, seed=seed, what=f"{name}, {method}")


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("split", [1, 8, 13, 28])
def test_two_pieces_with_handed_over_states_equal_the_whole(method: str, split: int) -> None:
    """Chunked prefill: the first piece's final states, as initial states, continue the sequence."""
    seed = 61 + split
    kw = random_problem(seed, [29], D="hp")
    out, states = ssd_reference(**kw, method=method, chunk_size=8)

    def piece(a: int, b: int, init: torch.Tensor) -> tuple:
        sliced = {k: kw[k][a:b] for k in ("x", "dt", "B", "C", "z")}
        cu = torch.tensor([0, b - a], dtype=torch.int32)
        return ssd_reference(**{**kw, **sliced, "cu_seqlens": cu, "initial_states": init}, method=method, chunk_size=8)

    out1, states1 = piece(0, split, kw["initial_states"])
    out2, states2 = piece(split, 29, states1)
    assert_close64(torch.cat([out1, out2]), out, seed=seed, what=f"out, split at {split}, {method}")
    assert_close64(states2, states, seed=seed, what=f"final states, split at {split}, {method}")


@pytest.mark.parametrize("method", FORMS)
def test_packed_batch_equals_each_sequence_alone(method: str) -> None:
    seed, seqlens = 71, [5, 16, 1, 11]
    kw = random_problem(seed, seqlens)
    out, states = ssd_reference(**kw, method=method, chunk_size=8)
    offsets = kw["cu_seqlens"].tolist()
    for s, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        alone = {k: kw[k][a:b] for k in ("x", "dt", "B", "C", "z")}
        out_s, states_s = ssd_reference(
            **{**kw, **alone, "cu_seqlens": None, "initial_states": kw["initial_states"][s:s + 1]},
            method=method, chunk_size=8,
        )
        assert_close64(out[a:b], out_s, seed=seed, what=f"out of sequence {s}, {method}")
        assert_close64(states[s], states_s[0], seed=seed, what=f"final state of sequence {s}, {method}")


@pytest.mark.parametrize("method", FORMS)
def test_z_gates_the_output(method: str) -> None:
    seed = 81
    kw = random_problem(seed, [4, 9])
    gated, _ = ssd_reference(**kw, method=method)
    plain, _ = ssd_reference(**{**kw, "z": None}, method=method)
    z = kw["z"]
    assert_close64(gated, plain * z * torch.sigmoid(z), seed=seed, what=f"gated out, {method}")


@pytest.mark.parametrize("method", FORMS)
def test_D_adds_a_skip_and_its_two_shapes_agree(method: str) -> None:
    seed = 91
    kw = random_problem(seed, [4, 9], z=False)
    per_head, _ = ssd_reference(**kw, method=method)
    rows = kw["D"][:, None].expand(-1, kw["x"].shape[2]).contiguous()
    per_channel, _ = ssd_reference(**{**kw, "D": rows}, method=method)
    without, _ = ssd_reference(**{**kw, "D": None}, method=method)
    assert_close64(per_channel, per_head, seed=seed, what=f"D (H, P) with equal rows vs D (H,), {method}")
    assert_close64(per_head - without, kw["D"][:, None] * kw["x"], seed=seed, what=f"skip term D x, {method}")


# ---------------------------------------------------------------------------------------
# Dtypes and NaN
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", FORMS)
def test_float64_inputs_give_float64_results(method: str) -> None:
    """Unless told otherwise: float64 in, float64 out and float64 final states (no float32 rounding)."""
    seed = 97
    kw = {**random_problem(seed, [3, 10]), "output_dtype": None}
    out, states = ssd_reference(**kw, method=method)
    assert (out.dtype, states.dtype) == (F64, F64), f"seed={seed}"
    want_out, want_states = ssd_reference(**{**kw, "output_dtype": F64}, method=method)
    assert torch.equal(out, want_out) and torch.equal(states, want_states), f"seed={seed}"
    _, states32 = ssd_reference(**{**kw, "output_dtype": torch.float32}, method=method)
    assert states32.dtype == torch.float32, "output_dtype still chooses"


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_computed_in_float64(method: str, dtype: torch.dtype) -> None:
    seed = 101
    kw = {**random_problem(seed, [3, 10], dtype=dtype), "output_dtype": None}
    out, states = ssd_reference(**kw, method=method)
    assert (out.dtype, states.dtype) == (dtype, torch.float32), f"seed={seed}"
    upcast = {k: v.to(F64) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    out64, states64 = ssd_reference(**{**upcast, "output_dtype": F64}, method=method)
    assert torch.equal(out, out64.to(dtype)), f"out must be the float64 result rounded once (seed={seed})"
    assert torch.equal(states, states64.to(torch.float32)), f"states likewise (seed={seed})"


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("tensor", ["x", "dt", "B"])
@pytest.mark.parametrize("position", [0, 4])  # 0: right after sequence 0, where padding could read it
def test_nan_input_gives_nan_in_its_sequence_only(method: str, tensor: str, position: int) -> None:
    seed, seqlens = 111, [6, 9, 5]
    kw = random_problem(seed, seqlens)
    kw[tensor][6 + position] = float("nan")  # a token of sequence 1, tokens [6, 15)
    out, states = ssd_reference(**kw, method=method, chunk_size=4)
    where = f"{tensor}, token {position} of sequence 1, seed={seed}"
    assert out[6 + position:15].isnan().any(dim=(1, 2)).all(), f"NaN must reach every later token ({where})"
    assert states[1].isnan().any(), f"NaN must reach the final state ({where})"
    others = torch.cat([out[:6], out[15:]])
    assert torch.isfinite(others).all() and torch.isfinite(states[[0, 2]]).all(), (
        f"NaN leaked into another sequence ({where})"
    )
    if method == "sequential":  # the chunked form mixes a chunk's tokens (0 * NaN), as kernels do
        assert torch.isfinite(out[6:6 + position]).all(), f"NaN reached earlier tokens ({where})"


def test_comparison_rejects_nan() -> None:
    seed = 121
    kw = random_problem(seed, [5])
    out, _ = ssd_reference(**kw)
    broken = out.clone()
    broken[2, 1, 0] = float("nan")
    with pytest.raises(AssertionError, match="seed=121"):
        assert_close64(broken, broken, seed=seed, what="NaN against itself")
    with pytest.raises(AssertionError):
        assert_close64(broken, out, seed=seed, what="NaN against a number")


# ---------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument
# ---------------------------------------------------------------------------------------

def _case(change: Callable[[dict], dict], match: str, name: str) -> object:
    """``change`` maps the valid keyword arguments to the ones it replaces."""
    return pytest.param(change, match, id=name)


def _on_meta(name: str) -> Callable[[dict], dict]:
    return lambda k: {name: k[name].to("meta")}  # "meta" stands in for a second device


BAD_INPUTS = [
    _case(lambda k: {"x": k["x"][0]}, r"^x: expected 3 dimensions", "x_rank"),
    _case(lambda k: {**{n: k[n][:0] for n in ("x", "dt", "B", "C")}, "z": None, "cu_seqlens": None},
          r"^x: expected at least one token", "no_tokens"),
    _case(lambda k: {"x": k["x"].to(torch.int64)}, r"^x: expected dtype", "x_int"),
    _case(lambda k: {"dt": k["dt"][..., None]}, r"^dt: expected 2 dimensions", "dt_rank"),
    _case(lambda k: {"dt": k["dt"][1:]}, r"^dt: dimension 0 \(T\)", "dt_tokens"),
    _case(lambda k: {"A": k["A"][1:]}, r"^A: dimension 0 \(H\)", "A_heads"),
    _case(lambda k: {"B": k["B"][1:]}, r"^B: dimension 0 \(T\)", "B_tokens"),
    _case(lambda k: {"C": k["C"][..., 1:]}, r"^C: dimension 2 \(N\)", "C_dstate"),
    _case(lambda k: {"C": k["C"][:, :1]}, r"^C: dimension 1 \(G\)", "C_groups"),
    _case(lambda k: {n: torch.cat([k[n], k[n][:, :1]], dim=1) for n in ("B", "C")},  # 4 heads, 3 groups
          r"x.shape\[1\] \(heads H\)=4 must be divisible by B.shape\[1\] \(groups G\)=3", "heads_vs_groups"),
    _case(lambda k: {"D": k["D"][:, None].repeat(1, 7)}, r"^D: expected shape \(4\) or \(4, 3\)", "D_shape"),
    _case(lambda k: {"z": k["z"][:, :, 1:]}, r"^z: dimension 2 \(P\)", "z_shape"),
    _case(lambda k: {"dt_bias": k["dt_bias"][1:]}, r"^dt_bias: dimension 0 \(H\)", "dt_bias_shape"),
    _case(lambda k: {"initial_states": k["initial_states"][1:]}, r"^initial_states: expected shape \(2,",
          "initial_states_batch"),
    _case(lambda k: {"initial_states": k["initial_states"][..., 1:]}, r"^initial_states: dimension 3",
          "initial_states_dstate"),
    _case(lambda k: {"cu_seqlens": torch.tensor([1, 3, 8])}, r"^cu_seqlens: expected to start at 0", "cu_start"),
    _case(lambda k: {"cu_seqlens": torch.tensor([0, 3, 3, 8])}, r"^cu_seqlens: expected strictly increasing",
          "cu_not_increasing"),
    _case(lambda k: {"cu_seqlens": torch.tensor([0, 3, 7])}, r"^cu_seqlens: expected to end at T=8", "cu_end"),
    _case(lambda k: {"cu_seqlens": torch.tensor([0.0, 3.0, 8.0])}, r"^cu_seqlens: expected an integer dtype",
          "cu_float"),
    _case(lambda k: {"cu_seqlens": [0, 3, 8]}, r"^cu_seqlens: expected a 1-D integer tensor", "cu_list"),
    _case(_on_meta("x"), r"^dt: expected device meta \(the device of x\), got cpu", "x_device"),
    _case(_on_meta("B"), r"^B: expected device cpu \(the device of x\), got meta", "B_device"),
    _case(_on_meta("initial_states"), r"^initial_states: expected device cpu", "initial_states_device"),
    _case(_on_meta("cu_seqlens"), r"^cu_seqlens: expected device cpu", "cu_device"),
    _case(lambda k: {"dt_softplus": "yes"}, r"^dt_softplus: expected True or False", "dt_softplus"),
    _case(lambda k: {"dt_limit": (1.0, 0.5)}, r"^dt_limit: expected low <= high", "dt_limit_reversed"),
    _case(lambda k: {"dt_limit": (0.1,)}, r"^dt_limit: expected a pair", "dt_limit_not_pair"),
    _case(lambda k: {"output_dtype": torch.int32}, r"^output_dtype: expected dtype", "output_dtype"),
]


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("change, match", BAD_INPUTS)
def test_bad_input_names_the_argument(method: str, change: Callable[[dict], dict], match: str) -> None:
    kw = random_problem(131, [3, 5])
    kw.update(change(kw))
    with pytest.raises(ValueError, match=match):
        ssd_reference(**kw, method=method)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="fast"), r"^method: expected one of"),
        (dict(chunk_size=48), r"^chunk_size: expected a power of two"),
    ],
)
def test_bad_options_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ssd_reference(**random_problem(141, [3, 5]), **kwargs)
