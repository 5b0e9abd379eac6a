"""Imports point downward: web → monitor → daq → decoders (+ the shared errors); the simulator sits beside.

Reads every module's import statements (relative ones resolved against its
package, ``na64_online.…`` ones as written) and checks each layer against the
layers it must not reach — including imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: layer -> the sub-packages of na64_online it must not import
FORBIDDEN = {
    "decoders": {"daq", "monitor", "web", "sim", "cli", "service", "config", "worker_setup"},
    "daq": {"monitor", "web", "sim", "cli", "service", "config", "worker_setup"},
    "monitor": {"web", "sim", "cli", "service", "config", "worker_setup"},
    "web": {"sim", "cli"},
    "sim": {"monitor", "web", "cli", "service"},
}


def imported_layers(source: str, package: list[str]) -> set[str]:
    """The first component below ``na64_online`` of everything ``source`` (a module of ``package``) imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if len(target) == 1:  # "from .. import x": x are sub-packages of na64_online
                    found |= {alias.name for alias in node.names}
                    continue
            else:
                target = (node.module or "").split(".")
            if target[0] == "na64_online" and len(target) > 1:
                found.add(target[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "na64_online" and len(parts) > 1:
                    found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_downward(layer):
    offences = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        package = ["na64_online", layer, *path.parent.relative_to(ROOT / layer).parts]
        bad = imported_layers(path.read_text(), package) & FORBIDDEN[layer]
        if bad:
            offences[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offences, offences


def test_checker_sees_relative_and_absolute_imports():
    """The checker itself: a daq module importing upward, in a function, relatively and absolutely, is caught."""
    source = ("def f():\n    from ..sim.simulator import ReadoutSimulator\n"
              "import na64_online.monitor.quality\nfrom .. import web\nfrom ..decoders import layout\n")
    assert imported_layers(source, ["na64_online", "daq"]) == {"sim", "monitor", "web", "decoders"}
    assert imported_layers("from ...errors import X\n", ["na64_online", "monitor", "alarms"]) == {"errors"}
