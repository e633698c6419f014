"""The names a layer config is filed under: its full identity, and a few words for the terminal."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from .reasons import short_dtype


def layer_description(layer: Any) -> str:
    """One line naming a layer configuration (a :class:`~pytest_ssd.layer.Mixer2Layer`'s scalar
    fields; tensors and the seed left out)."""
    parts = []
    for f in fields(layer):
        value = getattr(layer, f.name)
        if f.name == "seed" or hasattr(value, "shape"):
            continue
        parts.append(f"{f.name}={str(value).replace('torch.', '')}")
    return "Mixer2Layer(" + ", ".join(parts) + ")"


def layer_short_name(layer: Any) -> str:
    """A layer config in a few words for the terminal, e.g. ``bf16/fp32 h80x64 n128 g1 c256 z``.

    Model/state dtype, heads x head_dim, dstate, groups, chunk size, then what differs from a
    plain Mixer2 layer (``tp2``, ``z``, ``D/hdim``, ``no-softplus``, ``dt_limit=lo..hi``).
    ``layer``: anything with a Mixer2Layer's fields. The full identity is :func:`layer_description`.
    """
    words = [f"{short_dtype(str(layer.dtype))}/{short_dtype(str(layer.state_dtype))}",
             f"h{layer.nheads}x{layer.head_dim}", f"n{layer.ssm_state_size}", f"g{layer.n_groups}",
             f"c{layer.chunk_size}"]
    low, high = layer.dt_limit
    flags = ((layer.tp_size > 1, f"tp{layer.tp_size}"), (layer.gated, "z"), (layer.d_has_hdim, "D/hdim"),
             (not layer.dt_softplus, "no-softplus"),
             ((low, high) != (0.0, float("inf")), f"dt_limit={low:g}..{high:g}"))
    words += [word for on, word in flags if on]
    return " ".join(words)
