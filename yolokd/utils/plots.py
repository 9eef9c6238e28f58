"""Pictures of what a method looks at, saved next to Ultralytics' ``train_batch*.jpg``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

#: Images of a batch drawn per picture (one row each): enough to see the maps, small enough to open quickly.
MAX_ROWS = 4


def _heat(map01: Tensor, size: tuple[int, int]) -> np.ndarray:
    """A [0, 1] map as a JET-coloured BGR uint8 image of ``size`` (h, w); nearest upsampling keeps the cells visible."""
    import cv2

    m = (map01.detach().float().clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    m = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.applyColorMap(m, cv2.COLORMAP_JET)


def save_map_panels(images: Tensor, maps: dict[str, Tensor], path: Path) -> Path:
    """Save one row per image: the input, then each map blended over it, side by side, each panel titled.

    Args:
        images: (N, 3, H, W) RGB in [0, 1] (Ultralytics' preprocessed ``batch["img"]``); the first ``MAX_ROWS`` drawn.
        maps: ``{title: (N, h, w) in [0, 1]}``, e.g. ``{"teacher": ..., "student": ...}``.
        path: The file to write (jpg or png).

    Returns:
        ``path``.
    """
    import cv2

    rows = []
    for i in range(min(len(images), MAX_ROWS)):
        rgb = (images[i].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        base = np.ascontiguousarray(rgb[..., ::-1])  # BGR for OpenCV
        panels = [("input", base)]
        for title, m in maps.items():
            panels.append((title, cv2.addWeighted(base, 0.4, _heat(m[i], base.shape[:2]), 0.6, 0)))
        for title, p in panels:
            cv2.putText(p, title, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(np.concatenate([p for _, p in panels], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, axis=0))
    return path
