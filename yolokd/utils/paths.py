"""Where yolokd finds its configuration and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PACKAGED_CFG = Path(__file__).resolve().parents[1] / "cfg"  # an installed wheel's copy (setup.py puts it there)
#: Method defaults, protocols and dataset class lists: the checkout's ``cfg/``, or the installed package's copy.
CFG_DIR = _PACKAGED_CFG if _PACKAGED_CFG.is_dir() else ROOT / "cfg"


def cache_dir() -> Path:
    """Cache for generated datasets and fine-tuned teachers: ``$YOLOKD_CACHE``, else ``~/.cache/yolokd``."""
    return Path(os.environ.get("YOLOKD_CACHE", Path.home() / ".cache" / "yolokd")).expanduser()


def shared_data_dir() -> Path | None:
    """The project's reference data (``$YOLOKD_DATA``, else ``../shared/data`` next to the checkout), if present."""
    for d in (os.environ.get("YOLOKD_DATA"), ROOT.parent / "shared" / "data"):
        if d and Path(d).is_dir():
            return Path(d).resolve()
    return None


def find_weights(name: str) -> Path | None:
    """A local copy of an official checkpoint (never downloaded).

    Looks in ``$YOLOKD_WEIGHTS``, the shared data's ``weights/``, the working directory and Ultralytics' weights dir.
    """
    shared = shared_data_dir()
    dirs = [os.environ.get("YOLOKD_WEIGHTS"), shared / "weights" if shared else None, Path.cwd()]
    try:
        from ultralytics.utils import SETTINGS

        dirs.append(SETTINGS.get("weights_dir"))
    except Exception:  # pragma: no cover
        pass
    for d in dirs:
        if d and (Path(d) / name).is_file():
            return (Path(d) / name).resolve()
    return None
