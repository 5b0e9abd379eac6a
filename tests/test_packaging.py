"""The package as users install it: the built wheel holds every sub-package, builds without warnings."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import na64_online

ROOT = Path(__file__).resolve().parents[1]


def _setup_layers() -> tuple[str, ...]:
    """``LAYERS`` as setup.py maps them (top-level folders -> ``na64_online.<folder>``)."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["LAYERS"]:
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("setup.py defines no LAYERS")


LAYERS = _setup_layers()


def test_every_top_level_package_folder_is_a_mapped_layer():
    """A top-level folder with an ``__init__.py`` (``sim/``, say) that setup.py does not map would be left out."""
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"na64_online", "tests", "bench", "tools"}
    assert folders == set(LAYERS)
    assert "sim" in LAYERS


def source_packages() -> set[str]:
    """Every folder holding an ``__init__.py``, named as installed (``web/routers`` → ``na64_online.web.routers``)."""
    found = set()
    for top in ("na64_online", *LAYERS):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            found.add(".".join(parts if top == "na64_online" else ("na64_online", *parts)))
    return found


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the tree without build artefacts: setuptools would reuse a stale build/lib of the checkout
    source = tmp_path_factory.mktemp("source") / "na64-online"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", "out"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--verbose", "-w", str(out),
         str(source)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "NA64_BUILD_AOT": "require"},  # the kernels compiled ahead of time, or a failed build
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("na64_online-*.whl")
    return wheel, result.stdout + result.stderr


def test_wheel_holds_every_source_package(built_wheel):
    wheel, _ = built_wheel
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {name.rsplit("/", 1)[0].replace("/", ".") for name in names if name.endswith("/__init__.py")}
    assert "na64_online.web.routers" in source_packages()
    assert in_wheel == source_packages()
    assert "na64_online/decoders/default-channel-map.csv" in names


def test_wheel_modules_match_source_files(built_wheel):
    wheel, _ = built_wheel
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    in_tree = {f"na64_online/{p.relative_to(ROOT / 'na64_online')}" for p in (ROOT / "na64_online").rglob("*.py")}
    for layer in LAYERS:
        in_tree |= {f"na64_online/{p.relative_to(ROOT)}" for p in (ROOT / layer).rglob("*.py")}
    assert in_wheel == in_tree


def test_wheel_holds_the_kernels_compiled_for_this_platform(built_wheel):
    """The ahead-of-time compiled kernels (setup.py, decoders/_aot_build.py) and their build record are in the
    wheel, which is then tagged for this Python and platform, not ``py3-none-any``."""
    wheel, _ = built_wheel
    names = zipfile.ZipFile(wheel).namelist()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert f"na64_online/_aot_kernels{suffix}" in names and "na64_online/_aot_kernels.json" in names
    record = json.loads(zipfile.ZipFile(wheel).read("na64_online/_aot_kernels.json"))
    from na64_online.decoders import _aot

    assert record["kernels"] == sorted(_aot.KERNELS) and record["source_hash"] == _aot.source_hash()
    assert "-none-any" not in wheel.name and f"-cp{sys.version_info[0]}{sys.version_info[1]}-" in wheel.name


def test_build_prints_no_setuptools_warnings(built_wheel):
    _, log = built_wheel
    assert "Warning" not in log and "!!" not in log, log[-3000:]


def test_version_matches_metadata(built_wheel):
    wheel, _ = built_wheel
    assert f"na64_online-{na64_online.__version__}-" in wheel.name
    script = Path(sys.executable).with_name("na64-online")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"na64-online {na64_online.__version__}"
