"""Build hook: ship the top-level ``cfg/`` (method defaults, protocols, dataset class lists) inside the package.

``cfg/`` stays at the top of the repository, where people edit it; a built wheel carries a copy as ``yolokd/cfg``, which
``yolokd.utils.paths.CFG_DIR`` prefers when present. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCfg(build_py):
    """``build_py`` plus a copy of ``cfg/`` into the built ``yolokd`` package."""

    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent / "cfg"
        if not src.is_dir():
            raise FileNotFoundError(f"{src} is missing: the package cannot ship its method defaults and protocols")
        shutil.copytree(src, Path(self.build_lib) / "yolokd" / "cfg", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithCfg})
