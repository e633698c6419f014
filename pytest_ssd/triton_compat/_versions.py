"""The installed Triton's version, parsed once: every version test in pytest-ssd asks here.

Supported: Triton 3.2 to 3.9. Each module of this package starts with a table of what differs
between those versions for its concern; the rest of the package asks :func:`version_at_least`.
"""
from __future__ import annotations

import triton

TRITON_VERSION: tuple = tuple(int(p) for p in triton.__version__.split("+")[0].split(".")[:2])


def version_at_least(major: int, minor: int) -> bool:
    """Whether the installed Triton is ``major.minor`` or newer."""
    return TRITON_VERSION >= (major, minor)


def triton_version() -> str:
    """The installed Triton's version as it names itself (``"3.9.0"``): for records and reports."""
    return triton.__version__


def triton_release() -> str:
    """The installed Triton's ``"major.minor"`` (``"3.9"``)."""
    return ".".join(str(part) for part in TRITON_VERSION)
