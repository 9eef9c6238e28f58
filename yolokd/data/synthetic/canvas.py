"""Drawing primitives shared by sprites and background: colours, the supersampled sprite canvas, compositing.

A sprite (labelled object or unlabelled clutter) is drawn at a few times its final size on its own canvas,
area-downsampled into an anti-aliased premultiplied patch, and alpha-blended into the scene far to near while an
id mask records which object is visible where – the labels are read off that mask. ``_pick`` lives here with
``_col`` because sprites and layout both draw categories (colours, scene types) from cumulative probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from yolokd.data.synthetic.camera import _ONE, _SHIFT


def _col(c: Any, jitter: float = 0.0, rng: np.random.Generator | None = None, scale: float = 1.0) -> tuple:
    """A cv2 colour tuple, optionally jittered; channels are kept >= 8 so sprite masks can be read off colours.

    Called ~100 times per scene, hence plain Python arithmetic instead of small-array NumPy.
    """
    a0, a1, a2 = c
    if jitter and rng is not None:
        r0, r1, r2 = rng.random(3).tolist()
        j = 2.0 * jitter
        a0, a1, a2 = a0 * scale + j * (r0 - 0.5), a1 * scale + j * (r1 - 0.5), a2 * scale + j * (r2 - 0.5)
    else:
        a0, a1, a2 = a0 * scale, a1 * scale, a2 * scale
    return (int(min(255.0, max(8.0, a0))), int(min(255.0, max(8.0, a1))), int(min(255.0, max(8.0, a2))))


def _pick(rng: np.random.Generator, cum: np.ndarray) -> int:
    """Index drawn with the probabilities whose cumulative sums are ``cum`` (much cheaper than rng.choice(p=))."""
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


class _Canvas:
    """Supersampled local canvas for one sprite (object or distractor), in normalised (u, v) coordinates.

    Sprites are drawn on black at ``k`` times their final size and area-downsampled, which gives anti-aliased
    edges and a premultiplied-alpha patch in one go; colours are kept >= 8 so the coverage mask is simply
    "any channel non-zero" and no second set of draw calls is needed.
    """

    __slots__ = ("img", "W", "H", "sx", "sy")

    def __init__(self, pw: int, ph: int, k: int) -> None:
        self.W, self.H = pw * k, ph * k
        self.img = np.zeros((self.H, self.W, 3), np.uint8)
        self.sx, self.sy = self.W * _ONE, self.H * _ONE

    def _p(self, u: float, v: float) -> tuple[int, int]:
        return int(round(u * self.sx)), int(round(v * self.sy))

    def poly(self, pts: Any, color: tuple) -> None:
        sx, sy = self.sx, self.sy
        arr = np.array([(int(u * sx + 0.5), int(v * sy + 0.5)) for u, v in pts], np.int32)
        cv2.fillPoly(self.img, [arr], color, cv2.LINE_8, _SHIFT)

    def rect(self, u0: float, v0: float, u1: float, v1: float, color: tuple) -> None:
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], color)

    def ellipse(
        self, u: float, v: float, ru: float, rv: float, color: tuple, thick: float = -1, angle: float = 0
    ) -> None:
        """Ellipse with semi-axes ``ru`` (fraction of width) and ``rv`` (fraction of height); ``thick`` in px-of-H."""
        axes = (max(1, int(round(ru * self.sx))), max(1, int(round(rv * self.sy))))
        t = -1 if thick < 0 else max(1, int(round(thick * self.H)))
        cv2.ellipse(self.img, self._p(u, v), axes, angle, 0, 360, color, t, cv2.LINE_8, _SHIFT)

    def circle(self, u: float, v: float, r: float, color: tuple, thick: float = -1) -> None:
        """Circle of radius ``r`` in units of the canvas height (so it stays round on any aspect)."""
        self.ellipse(u, v, r * self.H / self.W, r, color, thick)

    def line(self, p: tuple, q: tuple, color: tuple, thick: float) -> None:
        """Line of thickness ``thick`` in units of the canvas height."""
        t = max(1, int(round(thick * self.H)))
        cv2.line(self.img, self._p(*p), self._p(*q), color, t, cv2.LINE_8, _SHIFT)

    def finish(self, pw: int, ph: int, shade: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Downsample to (ph, pw): returns the premultiplied float32 patch and its float32 alpha in [0, 1]."""
        mask = cv2.threshold(cv2.cvtColor(self.img, cv2.COLOR_BGR2GRAY), 0, 255, cv2.THRESH_BINARY)[1]
        if self.W != pw or self.H != ph:
            img = cv2.resize(self.img, (pw, ph), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (pw, ph), interpolation=cv2.INTER_AREA)
        else:
            img = self.img
        patch = img.astype(np.float32)
        if shade is not None:
            patch *= shade[:, None, None]
        return patch, mask.astype(np.float32) * (1.0 / 255.0)


def _composite(
    scene: np.ndarray,
    idmask: np.ndarray,
    patch: np.ndarray,
    alpha: np.ndarray,
    x0: int,
    y0: int,
    sid: int,
    paint: bool = True,
) -> tuple[int, int, int, int] | None:
    """Alpha-blend a premultiplied patch into the scene at (x0, y0), clipped to the image.

    Pixels the sprite covers by at least half take its id in ``idmask`` (0 for unlabelled sprites), so after the
    far-to-near pass ``idmask`` says which object is visible where – the basis for occlusion-aware labels.
    """
    ph, pw = alpha.shape
    H, W = idmask.shape
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + pw, W), min(y0 + ph, H)
    if xa >= xb or ya >= yb:
        return None
    a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0]
    idmask[ya:yb, xa:xb][a >= 0.5] = sid
    if not paint:
        return xa, ya, xb, yb
    p = patch[ya - y0 : yb - y0, xa - x0 : xb - x0]
    region = scene[ya:yb, xa:xb]
    out = region.astype(np.float32) * (1.0 - a[..., None]) + p
    np.clip(out + 0.5, 0, 255, out=out)
    scene[ya:yb, xa:xb] = out.astype(np.uint8)
    return xa, ya, xb, yb


def _supersample(ph: int) -> int:
    """Supersampling factor: small sprites get more so their few pixels still come out anti-aliased."""
    if ph >= 96:  # large sprites: edges are a negligible share of their pixels, skip the cost
        return 1
    return int(min(8, max(2, math.ceil(40 / max(ph, 1)))))


def _vshade(ph: int, top: float, bottom: float) -> np.ndarray:
    """Per-row brightness factors: lit from above, darker towards the ground."""
    return np.arange(ph, dtype=np.float32) * np.float32((bottom - top) / max(ph - 1, 1)) + np.float32(top)
