"""The pinhole camera of the synthetic scenes: the one place that maps world metres to image pixels.

Everything in a scene – road, lane marks, facades, objects and clutter – stands on one flat ground plane seen by a
forward-facing camera at KITTI's height and focal length, so the perspective cues a detector learns from (size
~ 1/depth, the bottom of an object on its ground row) agree between labelled objects and background. Polygons come
out in cv2's fixed-point format (``_SHIFT`` fractional bits) for sub-pixel accurate drawing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CAM_HEIGHT = 1.65  # metres, the KITTI camera height above the road
_FOCAL_FRAC = 0.58  # focal length in units of the image width (KITTI: 721 / 1242)

_SHIFT = 3  # fixed-point bits for sub-pixel accurate cv2 drawing
_ONE = 1 << _SHIFT


class _Camera:
    """Pinhole projection of the ground-plane world used for everything in a scene."""

    __slots__ = ("width", "height", "f", "horizon", "vx")

    def __init__(self, width: int, height: int, horizon: float, vx: float) -> None:
        self.width, self.height = width, height
        self.f = _FOCAL_FRAC * width
        self.horizon, self.vx = horizon, vx

    def x(self, X: Any, Z: Any) -> Any:
        """Image column of lateral offset ``X`` at depth ``Z`` (floats or arrays)."""
        return self.vx + self.f * X / Z

    def y(self, Y: Any, Z: Any) -> Any:
        """Image row of a point ``Y`` metres above the ground at depth ``Z`` (floats or arrays)."""
        return self.horizon + self.f * (_CAM_HEIGHT - Y) / Z

    def ground_z(self, y: float) -> float:
        """Depth of the ground point seen at image row ``y`` (below the horizon)."""
        return self.f * _CAM_HEIGHT / max(y - self.horizon, 1e-3)

    def quads(self, X0: Any, X1: Any, Z0: Any, Z1: Any, Y0: Any = 0.0, Y1: Any | None = None) -> np.ndarray:
        """Fixed-point polygons (n, 4, 2) of world rectangles (arguments broadcast against each other).

        Without ``Y1`` the rectangle lies flat on the ground (X0..X1 x Z0..Z1) – lane marks, sidewalks, roads.
        With ``Y1`` it is a vertical wall at X0 (X1 ignored) from height Y0 to Y1 running from Z0 to Z1 – facades.
        """
        i0 = self.f / np.asarray(Z0, np.float64)
        i1 = self.f / np.asarray(Z1, np.float64)
        vx, hz = self.vx, self.horizon
        shape = np.broadcast_shapes(np.shape(X0), np.shape(X1), i0.shape, i1.shape, np.shape(Y0), np.shape(Y1))
        pts = np.empty(shape + (4, 2), np.float64)
        if Y1 is None:
            pts[..., 0, 0] = vx + X0 * i0
            pts[..., 1, 0] = vx + X1 * i0
            pts[..., 2, 0] = vx + X1 * i1
            pts[..., 3, 0] = vx + X0 * i1
            pts[..., 0, 1] = pts[..., 1, 1] = hz + _CAM_HEIGHT * i0
            pts[..., 2, 1] = pts[..., 3, 1] = hz + _CAM_HEIGHT * i1
        else:
            pts[..., 0, 0] = pts[..., 3, 0] = vx + X0 * i0
            pts[..., 1, 0] = pts[..., 2, 0] = vx + X0 * i1
            pts[..., 0, 1] = hz + (_CAM_HEIGHT - np.asarray(Y0)) * i0
            pts[..., 1, 1] = hz + (_CAM_HEIGHT - np.asarray(Y0)) * i1
            pts[..., 2, 1] = hz + (_CAM_HEIGHT - np.asarray(Y1)) * i1
            pts[..., 3, 1] = hz + (_CAM_HEIGHT - np.asarray(Y1)) * i0
        pts *= _ONE
        np.clip(pts, -(2**24), 2**24, out=pts)
        return pts.reshape(-1, 4, 2).astype(np.int32)
