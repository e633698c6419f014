"""Replacing an attribute of Triton's with a wrapper of ours, and putting the original back.

The hook adapters, interpreter autotuning and the driver swap all patch this way: the wrapper is
made from the value it replaces (so it can chain it), and a wrapper that someone else replaced
after us is left in their chain, switched off, rather than torn out from under them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

_MISSING = object()


@dataclass
class Live:
    """Whether one installed wrapper still acts. A wrapper someone else chained and that we
    could not take out stays in their chain switched off: it then only passes through."""

    on: bool = True


@dataclass
class Patch:
    """One attribute we replaced, how we made its value, and how to put the original back."""

    owner: Any
    name: str
    make: Callable[[Any, Live], Any]
    saved: Any
    ours: Any
    live: Live

    @classmethod
    def apply(cls, owner: Any, name: str, make: Callable[[Any, Live], Any]) -> "Patch":
        """Set ``owner.name = make(current value, live)``."""
        live = Live()
        saved = vars(owner).get(name, _MISSING)
        ours = make(getattr(owner, name, None), live)
        setattr(owner, name, ours)
        return cls(owner, name, make, saved, ours, live)

    @property
    def in_place(self) -> bool:
        return vars(self.owner).get(self.name, _MISSING) is self.ours

    def rechain(self) -> "Patch":
        """Ours again, in front of whatever replaced it; this one only passes through from now on."""
        self.live.on = False
        return Patch.apply(self.owner, self.name, self.make)

    def undo(self) -> None:
        self.live.on = False
        if not self.in_place:  # replaced by someone after us: theirs stays
            return
        if self.saved is _MISSING:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.saved)


def rechain_replaced(patches: list[Patch]) -> None:
    """Chain ours again, in ``patches`` itself, in front of every one that someone replaced."""
    for i, patch in enumerate(patches):
        if not patch.in_place:  # someone set their own over ours: chain theirs, switch ours off
            patches[i] = patch.rechain()
