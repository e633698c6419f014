"""Argument checks shared by the reference, the layer builder and the kernel entry point.

Every failure is a ``ValueError`` that names the argument, says what was expected and what
came, so a user can fix the call without reading our code.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch

Dim = Union[int, str, None]  # an exact size, a symbolic name bound on first use, or "any"

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what a layer's activations may be
STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what its SSM state may be

# Stated limits. Metadata is int32 on the device, so every offset, hence T, fits int32.
MAX_TOKENS = 2**31 - 1
# Largest chunk_size the bundled kernel takes: a chunk's C.B^T workspace is G * chunk_size**2
# float32 per chunk (4 MiB per group at 1024), and Mamba2 models use 256.
MAX_CHUNK_SIZE = 1024


def _fmt_shape(dims: Sequence[Dim]) -> str:
    return "(" + ", ".join("*" if d is None else str(d) for d in dims) + ")"


def check_shape(name: str, tensor: torch.Tensor, dims: Sequence[Dim], sizes: dict) -> None:
    """Check ``tensor`` has ``len(dims)`` dimensions matching ``dims``.

    A string in ``dims`` is a symbolic size: the first tensor that uses it binds it in
    ``sizes``, later ones must agree (this is how "B and C share T with x" is checked).
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {_fmt_shape(dims)}, got {type(tensor).__name__}")
    if tensor.dim() != len(dims):
        raise ValueError(
            f"{name}: expected {len(dims)} dimensions {_fmt_shape(dims)}, got {tensor.dim()} with shape "
            f"{tuple(tensor.shape)}"
        )
    for axis, (want, got) in enumerate(zip(dims, tensor.shape)):
        if want is None:
            continue
        if isinstance(want, str):
            bound = sizes.setdefault(want, got)
            if bound != got:
                raise ValueError(
                    f"{name}: dimension {axis} ({want}) is {got}, but {want}={bound} from the arguments before it; "
                    f"expected shape {_fmt_shape([sizes.get(d, d) if isinstance(d, str) else d for d in dims])}, "
                    f"got {tuple(tensor.shape)}"
                )
        elif want != got:
            raise ValueError(f"{name}: expected shape {_fmt_shape(dims)}, got {tuple(tensor.shape)}")


def dtype_name(dtype: object) -> str:
    """``bfloat16`` for ``torch.bfloat16``; the repr of anything else (so the string "float32"
    does not read like the dtype)."""
    return str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else repr(dtype)


def check_dtype(name: str, tensor: torch.Tensor, allowed: Iterable[torch.dtype]) -> None:
    """Check ``tensor.dtype`` is one of ``allowed``."""
    check_dtype_value(name, tensor.dtype, allowed)


def check_dtype_value(name: str, dtype: object, allowed: Iterable[torch.dtype]) -> None:
    """Check a dtype argument (not a tensor's) is one of ``allowed``."""
    allowed = tuple(allowed)
    if not isinstance(dtype, torch.dtype) or dtype not in allowed:
        names = ", ".join(dtype_name(d) for d in allowed)
        raise ValueError(f"{name}: expected dtype in ({names}), got {dtype_name(dtype)}")


def check_positive_int(name: str, value: object) -> None:
    """Check ``value`` is an ``int`` >= 1 (``bool`` is refused: ``True`` is no size)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def check_bool(name: str, value: object) -> None:
    """Check a flag is a real ``bool``, so a stray tensor or string is not read as truthy."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")


def check_no_overlap(name: str, tensor: torch.Tensor, others: dict) -> None:
    """Check ``tensor``'s memory overlaps none of ``others`` (``{name: tensor or None}``).

    For contiguous tensors on one device (the kernel's inputs): a written output that shares
    memory with an input would be read back half-overwritten.
    """
    for other_name, other in others.items():
        if other is not None and _overlap(tensor, other):
            raise ValueError(
                f"{name}: shares memory with {other_name} (an output may not alias an input: the kernel reads "
                f"{other_name} while it writes {name}); pass a separate tensor, e.g. torch.empty_like({other_name})"
            )


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges of two contiguous tensors intersect (empty tensors, and tensors
    with no memory such as "meta" ones, never do)."""
    a0, b0 = a.data_ptr(), b.data_ptr()
    return bool(a0 and b0) and a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def check_same_device(tensors: dict) -> torch.device:
    """All non-None tensors in ``{name: tensor}`` must live on one device; returns it."""
    first_name, device = None, None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            first_name, device = name, t.device
        elif t.device != device:
            raise ValueError(
                f"{name}: expected device {device} (the device of {first_name}), got {t.device}; "
                f"move all inputs to one device"
            )
    return device


def check_contiguous(name: str, tensor: torch.Tensor) -> None:
    """Check ``tensor`` is row-major contiguous (kernels assume the strides they compute)."""
    if not tensor.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous tensor (strides {contiguous_strides(tensor.shape)}), got strides "
            f"{tuple(tensor.stride())}; call .contiguous() first"
        )


def contiguous_strides(shape: Sequence[int]) -> tuple:
    """Row-major strides of ``shape`` (in elements)."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def check_cu_seqlens(cu_seqlens: torch.Tensor, total_tokens: Optional[int], name: str = "cu_seqlens") -> list:
    """Validate packed-varlen offsets; returns them as a Python list.

    Expected: 1-D integer tensor ``[0, l0, l0+l1, ..., T]``, strictly increasing (every
    sequence has at least one token), ending at ``total_tokens`` (not checked when None).
    Reads the values, so ``cu_seqlens`` must live on a real device (not "meta").
    """
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1:
        got = tuple(cu_seqlens.shape) if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
        raise ValueError(f"{name}: expected a 1-D integer tensor (S+1,), got {got}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer dtype (int32 or int64), got {cu_seqlens.dtype}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"{name}: expected at least 2 entries [0, T] (one sequence), got {cu_seqlens.tolist()}")
    return check_offsets(name, [int(v) for v in cu_seqlens.tolist()], total_tokens)


def check_offsets(name: str, offsets: list, total_tokens: Optional[int]) -> list:
    """:func:`check_cu_seqlens` on values already read to the host (at least two of them)."""
    check_int32_values(name, offsets)
    if offsets[0] != 0:
        raise ValueError(f"{name}: expected to start at 0, got {offsets[0]} (full: {short_list(offsets)})")
    for i in range(1, len(offsets)):
        if offsets[i] <= offsets[i - 1]:
            raise ValueError(
                f"{name}: expected strictly increasing offsets (each sequence at least 1 token), got "
                f"{offsets[i - 1]} then {offsets[i]} at index {i} (full: {short_list(offsets)})"
            )
    if total_tokens is not None and offsets[-1] != total_tokens:
        raise ValueError(
            f"{name}: expected to end at T={total_tokens} (the token count of x), got {offsets[-1]}"
        )
    return offsets


def check_int32_values(name: str, values: list) -> None:
    """Check every value of an offset tensor read to the host fits int32 (>= 0, <= MAX_TOKENS):
    metadata is narrowed to int32 for the kernels, which must not wrap a value around."""
    for i, v in enumerate(values):
        if not 0 <= v <= MAX_TOKENS:
            raise ValueError(
                f"{name}: expected offsets in [0, 2**31 - 1] (T and every offset must fit int32), got {v} at index {i}"
            )


def check_power_of_two(name: str, value: int, minimum: int = 1, maximum: Optional[int] = None) -> None:
    """Check ``value`` is an ``int`` power of two, at least ``minimum`` (and at most ``maximum``)."""
    if (not isinstance(value, int) or isinstance(value, bool) or value < minimum or value & (value - 1)
            or (maximum is not None and value > maximum)):
        limit = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name}: expected a power of two >= {minimum}{limit}, got {value!r}")


def check_divides(divisor_name: str, divisor: int, dividend_name: str, dividend: int) -> None:
    """Check ``divisor`` divides ``dividend``; the message names both arguments."""
    if divisor <= 0 or dividend % divisor:
        raise ValueError(
            f"{dividend_name}={dividend} must be divisible by {divisor_name}={divisor}"
        )


def check_dt_limit(dt_limit: Sequence[float]) -> tuple:
    """Check ``dt_limit`` is a pair ``(low, high)`` with ``low <= high``; returns it as floats."""
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"dt_limit: expected a pair (low, high) of floats, got {dt_limit!r}") from None
    if not lo <= hi:
        raise ValueError(f"dt_limit: expected low <= high, got ({lo}, {hi})")
    return lo, hi


def optional_shape(name: str, tensor: Optional[torch.Tensor], options: Sequence[Sequence[Dim]], sizes: dict) -> None:
    """Like :func:`check_shape` for an optional argument that may take one of several shapes."""
    if tensor is None:
        return
    errors = []
    for dims in options:
        trial = dict(sizes)
        try:
            check_shape(name, tensor, dims, trial)
        except ValueError as e:
            errors.append(e)
            continue
        sizes.update(trial)
        return
    if len(options) == 1:
        raise errors[0]
    want = " or ".join(_fmt_shape([sizes.get(d, d) if isinstance(d, str) else d for d in o]) for o in options)
    raise ValueError(f"{name}: expected shape {want}, got {tuple(tensor.shape)}")


def short_list(values: list, limit: int = 12) -> str:
    """``values`` for an error message: the first ``limit`` of them, then "..."."""
    return str(values) if len(values) <= limit else str(values[:limit])[:-1] + ", ...]"
