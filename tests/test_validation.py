"""Argument checks: each failure is a ValueError that starts with the argument's name."""
from __future__ import annotations

import math

import pytest
import torch

from pytest_ssd.validation import (
    check_bool,
    check_contiguous,
    check_cu_seqlens,
    check_divides,
    check_dt_limit,
    check_dtype,
    check_dtype_value,
    check_positive_int,
    check_power_of_two,
    check_same_device,
    check_shape,
    optional_shape,
)


def test_check_shape_binds_symbolic_sizes() -> None:
    sizes: dict = {}
    check_shape("x", torch.empty(5, 4, 3), ("T", "H", "P"), sizes)
    check_shape("dt", torch.empty(5, 4), ("T", "H"), sizes)
    assert sizes == {"T": 5, "H": 4, "P": 3}
    with pytest.raises(ValueError, match=r"^B: dimension 0 \(T\) is 6, but T=5 from the arguments before it"):
        check_shape("B", torch.empty(6, 1, 2), ("T", "G", "N"), sizes)


@pytest.mark.parametrize(
    "tensor, dims, match",
    [
        (torch.empty(5, 4), ("T", "H", "P"), r"^x: expected 3 dimensions \(T, H, P\), got 2 with shape \(5, 4\)"),
        (torch.empty(5, 4), (5, 3), r"^x: expected shape \(5, 3\), got \(5, 4\)"),
        ([1, 2], ("T",), r"^x: expected a torch.Tensor of shape \(T\), got list"),
    ],
)
def test_check_shape_failures(tensor: object, dims: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_shape("x", tensor, dims, {})


def test_check_shape_wildcard_accepts_any_size() -> None:
    check_shape("x", torch.empty(7, 2), (None, 2), {})


def test_optional_shape_tries_each_option_and_binds_only_the_one_that_fits() -> None:
    sizes = {"H": 4, "P": 3}
    optional_shape("D", None, [("H",)], sizes)
    optional_shape("D", torch.empty(4, 3), [("H",), ("H", "P")], sizes)
    assert sizes == {"H": 4, "P": 3}
    with pytest.raises(ValueError, match=r"^D: expected shape \(4\) or \(4, 3\), got \(4, 2\)"):
        optional_shape("D", torch.empty(4, 2), [("H",), ("H", "P")], sizes)


def test_dtype_checks() -> None:
    check_dtype("x", torch.empty(1, dtype=torch.bfloat16), (torch.bfloat16, torch.float32))
    with pytest.raises(ValueError, match=r"^x: expected dtype in \(float32\), got int32"):
        check_dtype("x", torch.empty(1, dtype=torch.int32), (torch.float32,))
    with pytest.raises(ValueError, match=r"^dtype: expected dtype in \(float32\), got 'float32'"):
        check_dtype_value("dtype", "float32", (torch.float32,))


@pytest.mark.parametrize("value", [1, 2, 1024])
def test_check_positive_int_accepts(value: int) -> None:
    check_positive_int("n", value)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_check_positive_int_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^n: expected a positive int, got "):
        check_positive_int("n", value)


@pytest.mark.parametrize("value", [0, 1, "True", None, torch.tensor(True)])
def test_check_bool_rejects_non_bools(value: object) -> None:
    with pytest.raises(ValueError, match=r"^flag: expected True or False"):
        check_bool("flag", value)


def test_check_same_device_names_the_odd_one_out() -> None:
    cpu, meta = torch.empty(1), torch.empty(1, device="meta")
    assert check_same_device({"x": cpu, "D": None, "B": cpu}) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^B: expected device cpu \(the device of x\), got meta"):
        check_same_device({"x": cpu, "D": None, "B": meta})


def test_check_contiguous() -> None:
    check_contiguous("x", torch.empty(3, 4))
    match = r"^x: expected a contiguous tensor \(strides \(4, 1\)\), got strides \(1, 3\)"
    with pytest.raises(ValueError, match=match):
        check_contiguous("x", torch.empty(4, 3).t())


def test_check_cu_seqlens_returns_offsets_and_can_skip_the_end() -> None:
    assert check_cu_seqlens(torch.tensor([0, 2, 7]), 7) == [0, 2, 7]
    assert check_cu_seqlens(torch.tensor([0, 2, 7]), None) == [0, 2, 7]
    with pytest.raises(ValueError, match=r"^cu_seqlens: expected to end at T=8 \(the token count of x\), got 7"):
        check_cu_seqlens(torch.tensor([0, 2, 7]), 8)


@pytest.mark.parametrize("value", [0, 3, 12, -4, 2.0, True])
def test_check_power_of_two_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^chunk_size: expected a power of two >= 1"):
        check_power_of_two("chunk_size", value)


def test_check_divides_names_both_arguments() -> None:
    check_divides("n_groups", 2, "nheads", 8)
    for divisor in (3, 0):
        with pytest.raises(ValueError, match=rf"^nheads=8 must be divisible by n_groups={divisor}"):
            check_divides("n_groups", divisor, "nheads", 8)


def test_check_dt_limit() -> None:
    assert check_dt_limit((0, math.inf)) == (0.0, math.inf)
    for bad, match in (((1.0, 0.0), r"low <= high"), ((0.0, math.nan), r"low <= high"), ((1,), r"a pair"),
                       ("ab", r"a pair"), (None, r"a pair")):
        with pytest.raises(ValueError, match=rf"^dt_limit: expected {match}"):
            check_dt_limit(bad)
