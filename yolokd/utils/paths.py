"""Where yolokd finds its configuration and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CFG_DIR = ROOT / "cfg"


def cache_dir() -> Path:
    """Cache for generated datasets and fine-tuned teachers: ``$YOLOKD_CACHE``, else ``~/.cache/yolokd``."""
    return Path(os.environ.get("YOLOKD_CACHE", Path.home() / ".cache" / "yolokd")).expanduser()
