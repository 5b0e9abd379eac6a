"""Package list derived from the source tree, so a new sub-package cannot be left out of the wheel.

The repository keeps the layers at the top level (``daq/ decoders/ monitor/ sim/ web/``, the design's
layout); installed, they are ``na64_online.daq`` … . Every folder holding an ``__init__.py`` below
a layer becomes a package; ``tests/test_packaging.py`` checks the built wheel against the tree.
Everything else (metadata, dependencies, package data) is in ``pyproject.toml``.
"""

from pathlib import Path

from setuptools import find_packages, setup

LAYERS = ("daq", "decoders", "monitor", "sim", "web")
ROOT = Path(__file__).resolve().parent

packages = ["na64_online", *(f"na64_online.{sub}" for sub in find_packages("na64_online"))]
package_dir = {"na64_online": "na64_online"}
for layer in LAYERS:
    package_dir[f"na64_online.{layer}"] = layer
    packages.append(f"na64_online.{layer}")
    packages.extend(f"na64_online.{layer}.{sub}" for sub in find_packages(str(ROOT / layer)))

setup(packages=packages, package_dir=package_dir)
