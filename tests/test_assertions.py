"""The comparison helper: NaN never passes, tolerances per dtype, readable worst element."""
import pytest
import torch

from pytest_ssd.assertions import TOLERANCES, assert_ssd_close, tolerance_for

SEED = 1234


def _pair(seed=SEED):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(10, 2, 4, generator=g, dtype=torch.float64)
    states = torch.randn(2, 2, 4, 3, generator=g, dtype=torch.float64)
    return out, states


def test_identical_passes():
    out, states = _pair()
    assert_ssd_close(out.float(), states.float(), out, states, dtype=torch.float32)


def test_nan_never_passes_even_with_huge_tolerance():
    out, states = _pair()
    bad = out.clone()
    bad[3, 1, 0] = float("nan")
    with pytest.raises(AssertionError, match=r"NaN never passes"):
        assert_ssd_close(bad, states, out, states, dtype=torch.float32, tol=TOLERANCES[torch.float32].__class__(1e9, 1e9))


def test_unwritten_poisoned_output_fails():
    out, states = _pair()
    poisoned = torch.full_like(out, float("nan"))
    poisoned[:5] = out[:5]
    with pytest.raises(AssertionError, match=r"40 of 80 kernel elements are NaN/inf"):
        assert_ssd_close(poisoned, states, out, states, dtype=torch.float32)


@pytest.mark.parametrize("where", ["reference out", "reference states", "kernel states"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_on_either_side_never_passes(where, value):
    out, states = _pair()
    args = {"out": out.float(), "states": states.float(), "ref_out": out, "ref_states": states}
    key = {"reference out": "ref_out", "reference states": "ref_states", "kernel states": "states"}[where]
    args[key] = args[key].clone()
    args[key].view(-1)[7] = value
    side = "reference" if where.startswith("reference") else "kernel"
    with pytest.raises(AssertionError, match=rf"1 of \d+ {side} elements are NaN/inf"):
        assert_ssd_close(args["out"], args["states"], args["ref_out"], args["ref_states"], dtype=torch.float32)


def test_states_are_checked_too():
    out, states = _pair()
    bad = states.clone()
    bad[1, 0, 2, 1] += 0.5
    with pytest.raises(AssertionError, match=r"final_states: 1 of 48 elements.*worst at index \(1, 0, 2, 1\)"):
        assert_ssd_close(out, bad, out, states, dtype=torch.float32, seed=SEED)


def test_missing_states_fail():
    out, states = _pair()
    with pytest.raises(AssertionError, match="kernel returned None"):
        assert_ssd_close(out, None, out, states, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tolerance_boundary(dtype):
    out, states = _pair()
    tol = tolerance_for(dtype)
    just_inside = out + 0.9 * (tol.atol + tol.rtol * out.abs())
    assert_ssd_close(just_inside.to(dtype), states, out, states, dtype=dtype)  # out in the model dtype, as a kernel's
    just_outside = out.clone()
    just_outside[0, 0, 0] += 1.1 * (tol.atol + tol.rtol * out[0, 0, 0].abs())
    with pytest.raises(AssertionError, match=r"1 of 80 elements outside"):
        assert_ssd_close(just_outside.to(dtype), states, out, states, dtype=dtype)


def test_at_least_as_tight_as_vllm():
    assert TOLERANCES[torch.float32].atol <= 8e-3 and TOLERANCES[torch.float32].rtol <= 5e-3
    assert TOLERANCES[torch.bfloat16].atol <= 5e-2 and TOLERANCES[torch.bfloat16].rtol <= 5e-2


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="dtype: expected one of"):
        tolerance_for(torch.int32)
