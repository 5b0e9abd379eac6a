"""Package list derived from the source tree, so a new sub-package cannot be left out of the wheel.

The repository keeps the layers at the top level (``daq/ decoders/ monitor/ sim/ web/``, the design's
layout); installed, they are ``na64_online.daq`` … . Every folder holding an ``__init__.py`` below
a layer becomes a package; ``tests/test_packaging.py`` checks the built wheel against the tree.
Everything else (metadata, dependencies, package data) is in ``pyproject.toml``.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

LAYERS = ("daq", "decoders", "monitor", "sim", "web")
ROOT = Path(__file__).resolve().parent

packages = ["na64_online", *(f"na64_online.{sub}" for sub in find_packages("na64_online"))]
package_dir = {"na64_online": "na64_online"}
for layer in LAYERS:
    package_dir[f"na64_online.{layer}"] = layer
    packages.append(f"na64_online.{layer}")
    packages.extend(f"na64_online.{layer}.{sub}" for sub in find_packages(str(ROOT / layer)))



class BuildPyWithGuides(build_py):
    """Also copy the guides (docs/*.md and docs/img/) into the wheel as na64_online/docs, served at /docs.
    (An editable install reads docs/ of the checkout itself.)"""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "na64_online" / "docs"
        for source in [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "img").glob("*.png"))]:
            out = target / source.relative_to(ROOT / "docs")
            self.mkpath(str(out.parent))
            self.copy_file(str(source), str(out))


setup(packages=packages, package_dir=package_dir, cmdclass={"build_py": BuildPyWithGuides})
