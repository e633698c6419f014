"""What Triton hands our hooks, read into the plain fields of pytest-ssd's events.

| what                         | 3.2                                       | 3.3-3.9                                  |
|------------------------------|-------------------------------------------|------------------------------------------|
| constexprs in compile info   | ``constants``, by parameter name          | ``constants``, by argument path ``(i,)`` |
| divisibility / alignment     | argument indices in an ``AttrsDescriptor`` | ``configs[0]`` attributes, by path      |
| an ==1 or None argument      | in ``constants``, by name                 | signature ``"constexpr"``, value by path |
| launch options (``maxnreg``, ...) | ``specialization_data`` JSON, ``"options"`` | the same                          |

The same on every version: a launch's integer values (``JITFunction.run``'s ``bound_args``) and
the autotune key (``Autotuner.run``: key args' values, then each tensor arg's ``str(dtype)``).

Read by attribute and key, never by parsing a ``repr``.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from ._versions import version_at_least

_INT_TYPES = frozenset({"i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"})


def bound_int_args(jit_fn: Any) -> dict[str, int] | None:
    """Integer arguments of the launch being compiled, read from ``JITFunction.run``'s frame.

    Only runs on a miss, called from the before-compile hook. None where the frame is not there
    (e.g. ``preload``).
    """
    from triton.runtime.jit import JITFunction

    run_code = JITFunction.run.__code__
    frame = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            break
        if frame.f_code is run_code and frame.f_locals.get("self") is jit_fn:
            bound = frame.f_locals.get("bound_args")
            if not isinstance(bound, dict):
                return None
            values = {p.name: bound.get(p.name) for p in jit_fn.params if not p.is_constexpr}
            return {name: v for name, v in values.items() if isinstance(v, int) and not isinstance(v, bool)}
        frame = frame.f_back
    return None


# Launch options a launch or a ``triton.Config`` sets that change the binary, beyond num_warps and
# num_stages (fields of their own), with the value that leaves the binary as without them
# (CUDAOptions / HIPOptions defaults). Only those set away from it are recorded, so a binary
# that sets none keeps the identity it had before this was read.
BINARY_OPTIONS: dict[str, Any] = {"maxnreg": None, "num_ctas": 1, "enable_fp_fusion": True,
                                  "launch_cooperative_grid": False, "launch_pdl": False,
                                  "waves_per_eu": 0, "matrix_instr_nonkdim": 0, "kpack": 1}


def read_launch_options(info: dict) -> dict[str, Any]:
    """The :data:`BINARY_OPTIONS` a compile sets away from their defaults, by name (``{}`` for
    most binaries), from the compile info a JIT hook gets; ``{}`` where Triton sent none."""
    try:
        options = json.loads(info["specialization_data"])["options"]
    except (KeyError, TypeError, ValueError):
        return {}
    if not isinstance(options, dict):
        return {}
    return {name: jsonable(options[name]) for name, default in BINARY_OPTIONS.items()
            if name in options and options[name] != default}


def read_specialization(jit_fn: Any, info: dict) -> tuple[dict, dict, dict]:
    """``(constexprs, signature, specializations)`` by parameter name, from the compile info a
    JIT hook gets (``info = kwargs["compile"]``)."""
    read = _read_specialization if version_at_least(3, 3) else _read_specialization_32
    return read(jit_fn, info)


def _read_specialization(jit_fn: Any, info: dict) -> tuple[dict, dict, dict]:
    """3.3+: constants and attributes arrive keyed by argument path ``(i,)``."""
    signature_in, constants = info["signature"], info["constants"]
    attrs = info["configs"][0] if info["configs"] else {}
    constexprs: dict[str, Any] = {}
    signature: dict[str, str] = {}
    specs: dict[str, str] = {}
    for p in jit_fn.params:
        path = (p.num,)
        if p.is_constexpr:
            constexprs[p.name] = jsonable(constants.get(path))
        elif signature_in.get(p.name) == "constexpr":  # Triton made a constant of it: ==1 or None
            signature[p.name], specs[p.name] = _constant_arg(constants.get(path))
        else:
            ty = signature_in.get(p.name)
            signature[p.name] = ty if isinstance(ty, str) else str(ty)
            divisible = any(a[0] == "tt.divisibility" for a in attrs.get(path, ()))
            spec = _arg_spec(p, signature[p.name], divisible)
            if spec:
                specs[p.name] = spec
    return constexprs, signature, specs


def _read_specialization_32(jit_fn: Any, info: dict) -> tuple[dict, dict, dict]:
    """3.2: constants by name; divisibility as argument indices in an AttrsDescriptor."""
    signature_in, constants = info["signature"], info["constants"]
    properties = info["configs"][0].arg_properties if info["configs"] else {}
    divisible_at = set(properties.get("tt.divisibility", ()))
    constexprs: dict[str, Any] = {}
    signature: dict[str, str] = {}
    specs: dict[str, str] = {}
    for p in jit_fn.params:
        if p.is_constexpr:
            constexprs[p.name] = jsonable(constants.get(p.name))
        elif p.name in constants:
            signature[p.name], specs[p.name] = _constant_arg(constants[p.name])
        else:
            signature[p.name] = str(signature_in.get(p.name))
            spec = _arg_spec(p, signature[p.name], p.num in divisible_at)
            if spec:
                specs[p.name] = spec
    return constexprs, signature, specs


def _constant_arg(value: Any) -> tuple[str, str]:
    """Signature type and specialization of an argument Triton compiled in as a constant."""
    if value is None:
        return "none", "None"
    return ("i32", "==1") if value == 1 else (type(value).__name__, f"={value}")


def _arg_spec(param: Any, ty: str, divisible: bool) -> str | None:
    """``==1``/``%16``/``none`` for integers, ``aligned``/``unaligned`` for pointers."""
    if ty.startswith("*"):
        if param.do_not_specialize or param.do_not_specialize_on_alignment:
            return "nospec"
        return "aligned" if divisible else "unaligned"
    if ty in _INT_TYPES:
        if param.do_not_specialize:
            return "nospec"
        return "%16" if divisible else "none"
    return None


def jsonable(value: Any) -> Any:
    """A JSON-safe, process-independent rendering of a kernel argument or constexpr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "value") and type(value).__name__ == "constexpr":
        return jsonable(value.value)
    if hasattr(value, "fn") and hasattr(value, "module"):  # a JITFunction passed as constexpr
        return f"{value.module}:{value.fn.__qualname__}"
    return str(value)


def named_tuning_key(tuner: Any, kwargs: dict) -> tuple[tuple, dict[str, Any], dict[str, str]]:
    """The autotune key exactly as ``Autotuner.run`` builds it, plus the same facts by name.

    Triton's key is ``[values of key args] + [str(dtype) for each tensor arg]``.
    """
    all_args = {**(tuner.nargs or {}), **kwargs}
    args = {k: v for k, v in all_args.items() if k in tuner.arg_names}
    values = [args[k] for k in tuner.keys if k in args]
    dtypes = {k: str(v.dtype) for k, v in args.items() if hasattr(v, "dtype")}
    named_values = {k: jsonable(args[k]) for k in tuner.keys if k in args}
    return tuple(values + list(dtypes.values())), named_values, dtypes


def config_fields(config: Any) -> dict:
    """A ``triton.Config`` as JSON: its kwargs, num_warps and num_stages."""
    return {"kwargs": jsonable(dict(config.kwargs)), "num_warps": config.num_warps,
            "num_stages": config.num_stages}
