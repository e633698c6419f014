"""The comparison helper: NaN never passes, tolerances per dtype, readable worst element."""
import pytest
import torch

from pytest_ssd.assertions import TOLERANCES, assert_ssd_close, tf32_hint, tolerance_for

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


def _to_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded (toward zero) to TF32's 10-bit mantissa, as a tensor core reads it."""
    return (t.float().view(torch.int32) & ~0x1FFF).view(torch.float32)


def _products(seed=SEED):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(64, 256, generator=g), torch.randn(256, 32, generator=g)
    return a, b, a.double() @ b.double()


def test_tf32_sized_errors_get_the_tf32_hint():
    a, b, exact = _products()
    hint = tf32_hint(_to_tf32(a) @ _to_tf32(b), exact)
    assert hint is not None and "what TF32 dots give" in hint and "input_precision='ieee'" in hint
    assert "not loosened" in hint


def test_other_errors_get_no_tf32_hint():
    a, b, exact = _products()
    assert tf32_hint(a @ b, exact) is None  # plain float32: far below TF32's errors
    assert tf32_hint(-(a @ b), exact) is None  # a sign error: far above
    wrong = (a @ b).clone()
    wrong[:, 0] = float("nan")
    assert tf32_hint(wrong, exact) is None


def test_tf32_hint_only_for_fp32_on_a_gpu():
    # On CPU no kernel computes in TF32: a TF32-sized error there is something else, and gets no hint.
    a, b, exact = _products()
    with pytest.raises(AssertionError) as failure:
        assert_ssd_close(_to_tf32(a) @ _to_tf32(b), None, exact, None, dtype=torch.float32)
    assert "outside atol" in str(failure.value) and "TF32" not in str(failure.value)


@pytest.mark.gpu
def test_a_tf32_product_on_the_gpu_fails_fp32_with_the_hint(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    a, b, exact = _products()
    out = a.cuda() @ b.cuda()
    with pytest.raises(AssertionError) as failure:
        assert_ssd_close(out, None, exact.cuda(), None, dtype=torch.float32)
    assert "outside atol=0.008 rtol=0.005" in str(failure.value)  # the tolerance is not loosened
    assert "what TF32 dots give" in str(failure.value)
