"""The registry of quality checks: small functions, each registered for one subsystem.

A check function takes the spill's :class:`~..quality.Inputs` and returns (or
yields) :class:`~..quality.Check` objects — none when it does not apply.
:func:`~..quality.assess` runs them in registration order (the order of the
modules imported by ``checks/__init__.py``, then of the functions in each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..quality import Check, Inputs

CheckFunction = Callable[[Inputs], "Iterable[Check] | Check | None"]


@dataclass(frozen=True)
class Entry:
    subsystem: str  # "*": checks of every subsystem (reference spectra, channels)
    name: str
    function: CheckFunction

    def run(self, inputs: Inputs) -> list[Check]:
        out = self.function(inputs)
        if out is None:
            return []
        if isinstance(out, Check):
            return [out]
        return list(out)


REGISTRY: list[Entry] = []


def register(subsystem: str) -> Callable[[CheckFunction], CheckFunction]:
    """Decorator: add a check function of ``subsystem`` to the registry."""

    def add(function: CheckFunction) -> CheckFunction:
        REGISTRY.append(Entry(subsystem, function.__name__, function))
        return function

    return add


def by_subsystem() -> dict[str, list[str]]:
    """Registered check functions by subsystem (for documentation and the dashboard)."""
    out: dict[str, list[str]] = {}
    for e in REGISTRY:
        out.setdefault(e.subsystem, []).append(e.name)
    return out
