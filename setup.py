"""Package list derived from the source tree, so a new sub-package cannot be left out of the wheel.

The repository keeps the layers at the top level (``daq/ decoders/ monitor/ sim/ web/``, the design's
layout); installed, they are ``na64_online.daq`` … . Every folder holding an ``__init__.py`` below
a layer becomes a package; ``tests/test_packaging.py`` checks the built wheel against the tree.
Everything else (metadata, dependencies, package data) is in ``pyproject.toml``.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

LAYERS = ("daq", "decoders", "monitor", "sim", "web")
ROOT = Path(__file__).resolve().parent

packages = ["na64_online", *(f"na64_online.{sub}" for sub in find_packages("na64_online"))]
package_dir = {"na64_online": "na64_online"}
for layer in LAYERS:
    package_dir[f"na64_online.{layer}"] = layer
    packages.append(f"na64_online.{layer}")
    packages.extend(f"na64_online.{layer}.{sub}" for sub in find_packages(str(ROOT / layer)))



#: NA64_BUILD_AOT: auto (default: compile the kernels ahead of time; if that fails, say so and build without
#: them — the package then compiles them with numba's JIT), require (fail the build instead), 0 (skip)
AOT_ENV = "NA64_BUILD_AOT"

# the source tree's package layout (package_dir above) for the AOT build's own process
_BOOTSTRAP = """
import importlib.util, sys
MAP = {MAP!r}
class SourceTree:
    def find_spec(self, name, path=None, target=None):
        where = MAP.get(name)
        if where is None:
            return None
        return importlib.util.spec_from_file_location(name, where + "/__init__.py", submodule_search_locations=[where])
sys.meta_path.insert(0, SourceTree())
from na64_online.decoders._aot_build import main
sys.exit(main([{OUT!r}]))
"""


def build_aot_kernels(output_dir: Path) -> None:
    """Compile the kernels ahead of time into ``output_dir``/_aot_kernels.* (decoders/_aot_build.py), in a process
    of its own that imports the package from this source tree."""
    mode = os.environ.get(AOT_ENV, "auto").strip().lower()
    if mode in ("0", "no", "skip"):
        print(f"setup.py: {AOT_ENV}={mode}: the kernels are not compiled ahead of time", file=sys.stderr)
        return
    mapping = {name: str(ROOT / where) for name, where in package_dir.items()}
    script = _BOOTSTRAP.format(MAP=mapping, OUT=str(output_dir.resolve()))
    with tempfile.TemporaryDirectory() as cwd:  # not the checkout: python -c puts the working directory on sys.path
        result = subprocess.run([sys.executable, "-c", script], cwd=cwd)
    if result.returncode != 0:
        message = (f"setup.py: compiling the kernels ahead of time failed (exit {result.returncode}; needs numba "
                   f"with numba.pycc and a C compiler)")
        if mode in ("1", "yes", "require"):
            raise SystemExit(message)
        print(f"{message}: building without them; numba's JIT compiles the kernels on first use instead "
              f"({AOT_ENV}=require makes this an error)", file=sys.stderr)


class BuildPyWithGuides(build_py):
    """Also compile the kernels ahead of time (na64_online/_aot_kernels.*: into the checkout for an editable
    install, else into the wheel), and copy the guides (docs/*.md and docs/img/) into the wheel as
    na64_online/docs, served at /docs. (An editable install reads docs/ of the checkout itself.)"""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            build_aot_kernels(ROOT / "na64_online")
            return
        build_aot_kernels(Path(self.build_lib).resolve() / "na64_online")
        target = Path(self.build_lib) / "na64_online" / "docs"
        for source in [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "img").glob("*.png"))]:
            out = target / source.relative_to(ROOT / "docs")
            self.mkpath(str(out.parent))
            self.copy_file(str(source), str(out))


class BinaryDistribution(Distribution):
    """The wheel holds a compiled extension (the AOT kernels): tagged for this Python and platform."""

    def has_ext_modules(self) -> bool:
        return True


setup(packages=packages, package_dir=package_dir, cmdclass={"build_py": BuildPyWithGuides},
      distclass=BinaryDistribution)
