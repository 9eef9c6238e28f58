"""Offline safety: switch off every network touch of Ultralytics before it is imported.

Measured on Ultralytics 8.4.190 (``../shared/docs/ultralytics-offline.md``): ``YOLO_OFFLINE`` is read once at import, the font check
downloads ``Arial.ttf`` unless a file of that name sits in the user config dir (it ignores ``YOLO_OFFLINE``), and
analytics events are sent unless ``sync`` is off. A user who wants Ultralytics' automatic weight downloads sets
``YOLO_OFFLINE=0`` explicitly; yolokd then delegates missing ``*.pt`` names to Ultralytics.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def set_offline_env() -> None:
    """Set the environment switches that Ultralytics reads at import time (idempotent, never overrides the user)."""
    if "ultralytics" in sys.modules and "YOLO_OFFLINE" not in os.environ:
        warnings.warn(
            "ultralytics was imported before yolokd: its online check already ran. Import yolokd first, or set "
            "YOLO_OFFLINE=1 in the environment, to keep every step off the network.",
            stacklevel=3,
        )
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")  # never pip-install in the middle of a run


def offline() -> bool:
    """Whether yolokd runs offline (the default): missing weights are an error instead of a download."""
    return os.environ.get("YOLO_OFFLINE", "1").lower() not in {"0", "false", "no", ""}


def prepare_ultralytics() -> None:
    """Make an imported Ultralytics offline-safe: a local font for its font check and analytics off (in memory only).

    Called by every yolokd entry point that trains, validates or exports; cheap after the first call.
    """
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    for name in _FONTS:
        dst = Path(USER_CONFIG_DIR) / name
        if not dst.exists():
            src = _bundled_font()
            if src is not None:
                try:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dst.with_suffix(".tmp")
                    shutil.copyfile(src, tmp)
                    os.replace(tmp, dst)  # atomic: a parallel process never sees half a font
                except OSError:  # read-only config dir: plots fall back to PIL's default font
                    pass
    # dict.__setitem__ skips JSONDict's save: the user's settings.json is left as it is.
    dict.__setitem__(SETTINGS, "sync", False)


def _bundled_font() -> Path | None:
    """A TTF that ships with matplotlib (an Ultralytics dependency), used in place of Arial."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return path if path.exists() else None
    except Exception:  # pragma: no cover - matplotlib is a hard dependency of ultralytics
        return None
