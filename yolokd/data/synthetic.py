"""Synthetic KITTI-like driving scenes: the built-in default dataset (``data=synthetic``).

Why this exists: the demo and the test-suite must train a teacher and students on a laptop CPU in minutes,
offline, with no dataset download. Random coloured blobs would be too easy (a detector learns "any blob") and
would not exercise what distillation is about: small, far, partly occluded objects among unlabelled clutter.
So every image is a forward-facing car-camera view with a perspective road, lane markings, buildings, trees,
poles and signs (all unlabelled), and the three KITTI classes (0=car, 1=pedestrian, 2=cyclist) standing on the
ground plane at a random depth: their size scales with 1/depth and their bottom sits on the ground row the
camera model gives, so far objects are tiny and near the horizon, near ones are large and low.

Everything is drawn with OpenCV primitives and vectorised NumPy from a seeded ``np.random.Generator``: a scene
is a pure function of its seed, the generator needs no assets, and it writes hundreds of images per second.

Geometry (pinhole camera, no roll): a ground point at lateral offset ``X`` and depth ``Z`` (metres) projects to
``x = vx + f*X/Z`` and ``y = horizon + f*(CAM_HEIGHT - Y)/Z`` for a point at height ``Y`` above the ground, with
``f = 0.58 * width`` px (KITTI's 721 px focal length on its 1242 px wide images).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "default_cache_dir",
    "generate_dataset",
    "render_scene",
    "synthetic_dataset",
]

CLASS_NAMES: dict[int, str] = {0: "car", 1: "pedestrian", 2: "cyclist"}

# Bump whenever a change alters any rendered pixel or label: cached datasets carry it in their manifest and are
# regenerated when it differs, so nobody silently trains on images from an older generator.
GENERATOR_VERSION = 1

_GENERATOR_ID = "yolokd.data.synthetic"
_JPEG_QUALITY = 90
_SPLITS = ("train", "val")

# KITTI-like class frequencies (cars dominate, cyclists are rare).
_CLASS_PROBS = np.array([0.60, 0.25, 0.15])
_CAM_HEIGHT = 1.65  # metres, the KITTI camera height above the road
_FOCAL_FRAC = 0.58  # focal length in units of the image width (KITTI: 721 / 1242)
_MIN_VISIBLE_FRAC = 0.40  # keep a label only if at least this share of the object's pixels is visible
_MIN_BOX_PX = 3  # drop labels whose visible box is thinner than this (nothing learnable left)
_EMPTY_PROB = 0.03  # share of images with no object at all (teaches "nothing here" too)
_MAX_OBJECTS = 12
_Z_FAR = 2000.0  # "infinity" for ground polygons that run to the vanishing point

# Per-class size priors: real height ranges in metres (box aspects are in _object_geometry) and the largest depth
# an object is placed at, chosen where its box gets too thin to keep at the default size; the depths scale with
# the image width (i.e. the focal length), so the pixel-size distribution is the same at any resolution.
_CAR_H = (1.40, 1.75)
_PED_H = (1.50, 1.90)
_CYC_H = (1.60, 1.85)
_Z_MAX_REF = {0: 75.0, 1: 45.0, 2: 60.0}  # at the default width of 512 px
_REF_WIDTH = 512
# Ground footprints (half-width across, half-length along the road, metres) used to keep sprites from standing
# inside each other; distractors use one number for both.
_FOOTPRINT: dict[Any, Any] = {0: (1.0, 2.3), 1: (0.35, 0.35), 2: (0.4, 0.9), "tree": 0.4, "light": 0.2,
                              "sign": 0.2, "bush": 1.2, "cone": 0.25, "bin": 0.6, "bollard": 0.15}
# depth = exp(log-uniform ** skew): < 1 pushes objects further away, so about a third of the kept boxes are under
# 16 px tall at the default size – the small-object regime where distillation matters most
_DEPTH_SKEW = 0.75

_SHIFT = 3  # fixed-point bits for sub-pixel accurate cv2 drawing
_ONE = 1 << _SHIFT

_LIGHTING = ("day", "overcast", "dusk")
_LIGHTING_CUM = np.cumsum([0.55, 0.25, 0.20])
_SCENE_TYPES = ("urban", "suburban", "rural")
_SCENE_CUM = np.cumsum([0.45, 0.35, 0.20])
_LANES_CUM = np.cumsum([0.1, 0.4, 0.3, 0.2])  # 1..4 lanes

_CAR_COLOURS = np.array(  # BGR body colours with real-world-ish frequencies
    [
        (232, 232, 232),  # white
        (188, 188, 192),  # silver
        (40, 40, 42),  # black
        (110, 110, 115),  # grey
        (40, 40, 180),  # red
        (140, 70, 30),  # blue
        (90, 45, 25),  # dark blue
        (60, 105, 45),  # green
        (40, 185, 215),  # yellow
        (150, 180, 200),  # beige
        (40, 70, 115),  # brown
    ],
    np.float64,
)
_CAR_COLOUR_CUM = np.cumsum([0.2, 0.16, 0.16, 0.12, 0.09, 0.07, 0.05, 0.04, 0.03, 0.04, 0.04])
_CLOTH_COLOURS = np.array(
    [
        (40, 40, 40), (200, 200, 200), (140, 60, 20), (50, 50, 150), (40, 110, 40), (110, 110, 110),
        (60, 160, 210), (120, 60, 110), (20, 20, 90), (150, 130, 90), (80, 80, 30), (170, 170, 230),
    ],
    np.float64,
)
_SKIN_COLOURS = np.array([(180, 200, 235), (140, 170, 215), (95, 130, 180), (60, 90, 130)], np.float64)
_BUILDING_COLOURS = np.array(
    [(60, 80, 150), (150, 170, 190), (170, 170, 170), (210, 210, 215), (120, 130, 140), (90, 110, 130)],
    np.float64,
)


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# labelled objects (drawn with their own RNG stream so skipping them leaves the rest of the scene unchanged)
# --------------------------------------------------------------------------------------------------------------


def _draw_car(c: _Canvas, rng: np.random.Generator, side: bool, flip: bool, dusk: bool) -> None:
    body = _CAR_COLOURS[_pick(rng, _CAR_COLOUR_CUM)]
    body_c = _col(body, 14, rng)
    dark_c = _col(body, 0, None, 0.6)
    glass = _col((70, 55, 45), 15, rng)
    tyre = _col((22, 22, 24), 4, rng)
    light = _col((40, 40, 230) if not dusk else (90, 90, 255), 10, rng)

    def P(u: float, v: float) -> tuple[float, float]:
        return (1.0 - u if flip else u, v)

    if side:
        rw = 0.21  # wheel radius in units of H
        ru = rw * c.H / c.W
        roof0, roof1 = rng.uniform(0.24, 0.36), rng.uniform(0.58, 0.8)
        pil0, pil1 = roof0 - rng.uniform(0.08, 0.16), roof1 + rng.uniform(0.06, 0.18)
        belt = rng.uniform(0.36, 0.46)
        c.poly([P(0.0, belt + 0.18), P(0.04, belt + 0.02), P(pil0, belt - 0.02), P(min(pil1, 0.95), belt - 0.03),
                P(0.97, belt + 0.04), P(1.0, belt + 0.2), P(1.0, 0.84), P(0.0, 0.84)], body_c)
        c.poly([P(pil0, belt + 0.01), P(roof0, 0.0), P(roof1, 0.0), P(pil1, belt + 0.01)], body_c)
        inset = 0.05
        c.poly([P(pil0 + inset, belt - 0.02), P(roof0 + inset * 0.6, 0.09), P(roof1 - inset * 0.6, 0.09),
                P(pil1 - inset, belt - 0.02)], glass)
        mid = 0.5 * (roof0 + roof1)
        c.line(P(mid, 0.06), P(mid, belt), body_c, 0.05)
        c.line(P(0.02, 0.62), P(0.98, 0.62), dark_c, 0.025)  # crease / door line
        c.rect(*P(0.0, 0.7), *P(0.03, 0.78), light)  # tail light at the rear end
        for uc in (0.06 + ru, 0.94 - ru):
            c.ellipse(*P(uc, 1.0 - rw), ru * 1.2, rw * 1.15, dark_c)  # arch
            c.ellipse(*P(uc, 1.0 - rw), ru, rw, tyre)
            c.ellipse(*P(uc, 1.0 - rw), ru * 0.5, rw * 0.5, _col((150, 150, 150), 20, rng))
    else:  # seen from behind (or front), slightly oblique
        top_in = rng.uniform(0.1, 0.2)
        belt = rng.uniform(0.38, 0.48)
        c.poly([(top_in, 0.0), (1 - top_in, 0.0), (0.95, belt), (0.05, belt)], body_c)
        c.poly([(top_in + 0.06, 0.08), (1 - top_in - 0.06, 0.08), (0.88, belt - 0.03), (0.12, belt - 0.03)], glass)
        c.rect(0.0, belt - 0.02, 1.0, 0.86, body_c)
        c.rect(0.02, 0.74, 0.98, 0.86, dark_c)  # bumper
        c.rect(0.03, belt + 0.06, 0.2, belt + 0.18, light)
        c.rect(0.8, belt + 0.06, 0.97, belt + 0.18, light)
        c.rect(0.4, 0.6, 0.6, 0.7, _col((215, 215, 215), 15, rng))  # plate
        c.rect(0.05, 0.84, 0.22, 1.0, tyre)
        c.rect(0.78, 0.84, 0.95, 1.0, tyre)


def _draw_person(c: _Canvas, rng: np.random.Generator, flip: bool) -> None:
    """Tall thin walker: head, torso, swinging arms and striding legs (the stride sets the box width)."""
    shirt = _col(_CLOTH_COLOURS[rng.integers(len(_CLOTH_COLOURS))], 20, rng)
    pants = _col(_CLOTH_COLOURS[rng.integers(len(_CLOTH_COLOURS))], 20, rng)
    skin = _col(_SKIN_COLOURS[rng.integers(len(_SKIN_COLOURS))], 10, rng)
    shoe = _col((30, 30, 30), 8, rng)
    ar = c.H / c.W  # converts lengths in units of H into units of W
    stride = rng.uniform(0.0, 1.0)
    lean = rng.uniform(-0.03, 0.03) * ar
    cx = 0.5 + lean

    def P(u: float, v: float) -> tuple[float, float]:
        return (1.0 - u if flip else u, v)

    leg_t = 0.065
    hip_v, foot_v = 0.5, 0.975
    half = 0.5 - leg_t * 0.5 * ar
    fa, fb = 0.5 - stride * half, 0.5 + stride * half
    c.line(P(0.5, hip_v), P(fa, foot_v), pants, leg_t)
    c.line(P(0.5, hip_v), P(fb, foot_v), pants, leg_t)
    c.ellipse(*P(fa, 0.985), 0.035 * ar, 0.015, shoe)
    c.ellipse(*P(fb, 0.985), 0.035 * ar, 0.015, shoe)
    if rng.random() < 0.2:  # skirt / long coat
        c.poly([P(0.5 - 0.1 * ar, 0.3), P(0.5 + 0.1 * ar, 0.3), P(0.5 + 0.15 * ar, 0.7), P(0.5 - 0.15 * ar, 0.7)],
               pants)
    sw = 0.1 * ar
    c.poly([P(cx - sw, 0.16), P(cx + sw, 0.16), P(0.5 + 0.085 * ar, 0.53), P(0.5 - 0.085 * ar, 0.53)], shirt)
    swing = rng.uniform(-0.12, 0.12) * ar * (0.3 + stride)
    for s in (-1, 1):
        hand = (cx + s * (sw + 0.02 * ar) + s * swing, 0.49)
        c.line(P(cx + s * sw * 0.8, 0.18), P(*hand), shirt, 0.045)
        c.circle(*P(*hand), 0.022, skin)
    if rng.random() < 0.25:  # backpack
        c.rect(*P(cx - sw * 1.25, 0.19), *P(cx - sw * 0.5, 0.4), _col(_CLOTH_COLOURS[rng.integers(12)], 20, rng))
    c.line(P(cx, 0.12), P(cx, 0.17), skin, 0.04)
    c.circle(*P(cx, 0.075), 0.072, skin)
    if rng.random() < 0.6:  # hair / hat
        hair = (25, 35, 50) if rng.random() < 0.7 else (60, 110, 170)
        c.ellipse(*P(cx, 0.045), 0.072 * ar, 0.045, _col(hair, 12, rng))


def _draw_cyclist(c: _Canvas, rng: np.random.Generator, flip: bool, cosv: float) -> None:
    """Rider on a bicycle seen obliquely: ``cosv`` foreshortens the bike's length (1 = pure side view)."""
    shirt = _col(_CLOTH_COLOURS[rng.integers(len(_CLOTH_COLOURS))], 20, rng)
    pants = _col(_CLOTH_COLOURS[rng.integers(len(_CLOTH_COLOURS))], 20, rng)
    skin = _col(_SKIN_COLOURS[rng.integers(len(_SKIN_COLOURS))], 10, rng)
    frame = _col(_CLOTH_COLOURS[rng.integers(len(_CLOTH_COLOURS))], 25, rng)
    tyre = _col((25, 25, 25), 5, rng)
    ar = c.H / c.W
    r = 0.19  # wheel radius (units of H)
    L = 0.58  # wheelbase (units of H)
    half_len = (L / 2 + r) * cosv * ar  # half of the bike's on-screen length in units of W
    scale = 0.5 / max(half_len, 1e-6)  # stretch so the bike exactly spans the canvas width
    k = cosv * ar * min(scale, 1.0)  # maps "along the bike" lengths (units of H) to units of W

    def P(s: float, h: float) -> tuple[float, float]:
        """Point ``s`` along the bike from its middle and ``h`` above the ground (both in units of H)."""
        u = 0.5 + s * k
        return (1.0 - u if flip else u, 1.0 - h)

    rear, front = -L / 2, L / 2
    ring = 0.035
    for s in (rear, front):
        c.ellipse(*P(s, r), max(r * k, 0.02), r - ring / 2, tyre, thick=ring)
    bb = P(rear + 0.42 * L, r - 0.02)
    seat = P(rear + 0.3 * L, r + 0.33)
    head_t = P(rear + 0.9 * L, r + 0.33)
    for a, b in ((P(rear, r), bb), (bb, seat), (seat, P(rear, r)), (seat, head_t), (bb, head_t), (head_t, P(front, r))):
        c.line(a, b, frame, 0.025)
    bar = P(rear + 0.86 * L, r + 0.4)
    c.line(head_t, bar, frame, 0.025)
    # rider
    hip = P(rear + 0.3 * L, r + 0.36)
    shoulder = P(rear + rng.uniform(0.55, 0.7) * L, 0.8)
    pedal_a = P(rear + 0.42 * L + 0.08, r - 0.05)
    pedal_b = P(rear + 0.42 * L - 0.06, r + 0.08)
    for ped in (pedal_b, pedal_a):
        knee = P(rear + 0.58 * L, r + 0.3)
        c.line(hip, knee, pants, 0.06)
        c.line(knee, ped, pants, 0.05)
    c.line(hip, shoulder, shirt, 0.1)
    c.line(shoulder, bar, shirt, 0.04)
    head = P(rear + 0.72 * L, 0.925)
    c.circle(*head, 0.075, skin)
    if rng.random() < 0.6:  # helmet
        c.ellipse(head[0], 0.05, 0.08 * ar, 0.05, _col(_CLOTH_COLOURS[rng.integers(12)], 25, rng))


# --------------------------------------------------------------------------------------------------------------
# unlabelled distractors (poles, trees, signs, bushes, cones, bins) – same ground-plane placement as objects
# --------------------------------------------------------------------------------------------------------------


def _dist_size(kind: str, rng: np.random.Generator) -> tuple[float, float]:
    """(height m, width m) of a distractor sprite."""
    if kind == "tree":
        h = rng.uniform(4.0, 10.0)
        return h, h * rng.uniform(0.45, 0.8)
    if kind == "light":
        return rng.uniform(6.0, 9.0), rng.uniform(1.2, 2.2)
    if kind == "sign":
        return rng.uniform(2.2, 3.2), rng.uniform(0.6, 0.9)
    if kind == "bush":
        h = rng.uniform(0.6, 1.6)
        return h, h * rng.uniform(1.2, 2.8)
    if kind == "cone":
        return rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.45)
    if kind == "bin":
        return rng.uniform(0.9, 1.3), rng.uniform(0.5, 1.4)
    if kind == "bollard":
        return rng.uniform(0.8, 1.1), rng.uniform(0.15, 0.25)
    raise ValueError(kind)


def _draw_distractor(c: _Canvas, kind: str, rng: np.random.Generator, flip: bool) -> None:
    ar = c.H / c.W
    if kind == "tree":
        trunk = _col((40, 60, 85), 12, rng)
        c.rect(0.5 - 0.05, 0.45, 0.5 + 0.05, 1.0, trunk)
        base = np.array([40, 110, 55]) + rng.uniform(-25, 25, 3)
        for _ in range(int(rng.integers(2, 5))):
            u, v = rng.uniform(0.35, 0.65), rng.uniform(0.25, 0.42)
            ru, rv = rng.uniform(0.25, 0.5), rng.uniform(0.2, 0.3)
            ru = min(ru, u, 1 - u)
            rv = min(rv, v)
            c.ellipse(u, v, ru, rv, _col(base, 18, rng))
        c.ellipse(0.5, 0.3, 0.45, 0.3, _col(base * 0.8, 10, rng))
        c.ellipse(rng.uniform(0.4, 0.6), 0.25, 0.3, 0.2, _col(base, 18, rng))
    elif kind == "light":
        pole = _col((95, 95, 100), 15, rng)
        pu = 0.92 if flip else 0.08  # pole at one end, arm reaching over to the other
        ue = 1.0 - pu
        c.rect(pu - 0.025 * ar, 0.02, pu + 0.025 * ar, 1.0, pole)
        c.line((pu, 0.04), (ue, 0.025), pole, 0.012)
        lo, hi = (ue - 0.02, ue + 0.15) if flip else (ue - 0.15, ue + 0.02)
        c.rect(max(0.0, lo), 0.0, min(1.0, hi), 0.035, _col((200, 220, 230), 20, rng))
    elif kind == "sign":
        c.rect(0.5 - 0.03 * ar, 0.2, 0.5 + 0.03 * ar, 1.0, _col((130, 130, 135), 10, rng))
        style = rng.integers(3)
        if style == 0:
            c.ellipse(0.5, 0.14, 0.5, 0.14, _col((40, 40, 200), 20, rng))
            c.ellipse(0.5, 0.14, 0.35, 0.1, _col((235, 235, 235), 10, rng))
        elif style == 1:
            c.poly([(0.0, 0.27), (1.0, 0.27), (0.5, 0.0)], _col((40, 40, 200), 20, rng))
            c.poly([(0.2, 0.23), (0.8, 0.23), (0.5, 0.07)], _col((235, 235, 235), 10, rng))
        else:
            c.rect(0.0, 0.0, 1.0, 0.25, _col((160, 90, 20), 20, rng))
            c.rect(0.2, 0.05, 0.8, 0.2, _col((230, 230, 230), 10, rng))
    elif kind == "bush":
        base = np.array([45, 100, 50]) + rng.uniform(-25, 25, 3)
        c.ellipse(0.5, 0.55, 0.5, 0.45, _col(base, 10, rng))
        for _ in range(int(rng.integers(1, 4))):
            c.ellipse(rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.3), rng.uniform(0.2, 0.35),
                      _col(base * 1.2, 15, rng))
    elif kind == "cone":
        orange = _col((20, 100, 240), 15, rng)
        c.poly([(0.5, 0.0), (0.85, 0.9), (0.15, 0.9)], orange)
        c.poly([(0.33, 0.45), (0.67, 0.45), (0.6, 0.3), (0.4, 0.3)], _col((240, 240, 240), 10, rng))
        c.rect(0.0, 0.88, 1.0, 1.0, orange)
    elif kind == "bin":
        colour = np.array([(50, 90, 40), (90, 90, 95), (120, 60, 30), (30, 30, 30)][rng.integers(4)], np.float64)
        c.rect(0.04, 0.1, 0.96, 1.0, _col(colour, 15, rng))
        c.rect(0.0, 0.0, 1.0, 0.12, _col(colour, 15, rng, 0.75))
    elif kind == "bollard":
        c.rect(0.0, 0.0, 1.0, 1.0, _col((60, 60, 65), 15, rng))
        c.rect(0.0, 0.1, 1.0, 0.22, _col((235, 235, 235), 10, rng))


# --------------------------------------------------------------------------------------------------------------
# background: sky, ground, road, lane marks, sidewalks, buildings, skyline
# --------------------------------------------------------------------------------------------------------------


def _sky_colours(light: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    j = rng.uniform(-15, 15, (2, 3))
    if light == "day":
        return np.array([200, 135, 70]) + j[0], np.array([240, 220, 200]) + j[1]
    if light == "overcast":
        g = rng.uniform(160, 200)
        return np.array([g, g, g - 5]) + j[0] * 0.5, np.array([g + 30, g + 30, g + 25]) + j[1] * 0.5
    return np.array([110, 60, 60]) + j[0], np.array([110, 170, 240]) + j[1]  # dusk: blue-violet to orange


def _fill(img: np.ndarray, polys: np.ndarray, colour: tuple) -> None:
    if len(polys):
        cv2.fillPoly(img, polys, colour, cv2.LINE_AA, _SHIFT)


def _draw_background(img: np.ndarray, cam: _Camera, lay: dict, rng: np.random.Generator) -> None:
    """Sky, textured ground, road with markings, sidewalks, facades and a skyline – all unlabelled."""
    H, W = img.shape[:2]
    hy = min(H - 2, max(2, int(round(cam.horizon))))
    # sky: vertical gradient; a tiny column resized straight into the image (no full-size temporaries)
    top, bottom = _sky_colours(lay["light"], rng)
    t = np.linspace(0.0, 1.0, 8)[:, None]
    sky = np.clip(top * (1 - t) + bottom * t, 0, 255).astype(np.uint8)[:, None, :]
    cv2.resize(sky, (W, hy), dst=img[:hy], interpolation=cv2.INTER_LINEAR)
    if lay["light"] != "overcast":  # a few soft clouds
        n_clouds = int(rng.integers(0, 5))
        if n_clouds:
            sky_v = img[:hy]
            over = sky_v.copy()
            for _ in range(n_clouds):
                cv2.ellipse(over, (int(rng.uniform(0, W)), int(rng.uniform(0, hy * 0.7))),
                            (int(rng.uniform(10, 60) * W / 512), max(1, int(rng.uniform(2, 8) * H / 160))), 0, 0, 360,
                            _col(bottom * 1.05 + 10), -1, cv2.LINE_AA)
            cv2.addWeighted(over, 0.55, sky_v, 0.45, 0, dst=sky_v)

    # ground: grass / dirt / pavement, lighter towards the horizon, with a blotchy low-frequency texture; built at
    # low resolution and resized up in one call
    scene = lay["scene"]
    if scene == "urban":
        g = np.array([120, 125, 130]) + rng.uniform(-20, 20, 3)
    elif scene == "suburban":
        g = np.array([60, 120, 85]) + rng.uniform(-20, 20, 3)
    else:
        g = np.array([60, 120, 110]) + rng.uniform(-30, 30, 3) if rng.random() < 0.6 else np.array([70, 110, 140])
    gh, gw = max(2, (H - hy) // 8), max(2, W // 16)
    t = np.linspace(0.0, 1.0, gh)[:, None, None]
    field = (g * 1.15 + 10) * (1 - t) + (g * 0.85) * t  # (gh, 1, 3)
    field = np.clip(field * rng.uniform(0.88, 1.12, (gh, gw, 1)), 0, 255).astype(np.uint8)
    cv2.resize(field, (W, H - hy), dst=img[hy:], interpolation=cv2.INTER_LINEAR)

    # skyline beyond the end of the road: buildings, a tree line or hills
    if scene == "urban":
        n = int(rng.integers(6, 16))
        xs = rng.uniform(-0.1 * W, 1.1 * W, n)
        ws = rng.uniform(0.03, 0.12, n) * W
        hs = rng.uniform(0.05, 0.35, n) * hy
        shades = rng.uniform(-40, 40, (n, 3))
        for x, w, h, s in zip(xs, ws, hs, shades):
            cv2.rectangle(img, (int(x), int(hy - h)), (int(x + w), hy + 1), _col(np.array([150, 150, 155]) + s), -1)
    else:
        base = np.array([50, 95, 60]) + rng.uniform(-20, 20, 3)
        if scene == "rural" and rng.random() < 0.6:  # hills
            xs = np.linspace(-10, W + 10, 9)
            ys = hy - rng.uniform(0.05, 0.3, 9) * hy
            pts = np.concatenate([np.stack([xs, ys], 1), [[W + 10, hy + 1], [-10, hy + 1]]])
            cv2.fillPoly(img, [(pts * _ONE).astype(np.int32)], _col(base * 1.3 + 20), cv2.LINE_AA, _SHIFT)
        n = int(rng.integers(8, 26))
        xs = rng.uniform(0, W, n)
        hs = rng.uniform(3, 13, n) * H / 160
        ws = hs * rng.uniform(0.6, 1.5, n)
        shades = rng.uniform(-15, 15, (n, 3))
        for x, h, w, s in zip(xs, hs, ws, shades):
            cv2.ellipse(img, (int(x), int(hy - h * 0.6)), (max(1, int(w)), max(1, int(h))), 0, 0, 360,
                        _col(base + s), -1, cv2.LINE_AA)

    # road, sidewalks, curbs
    xl, xr = lay["road"]
    Zn = 0.8
    road_c = np.array([85, 85, 88]) + rng.uniform(-25, 25) + rng.uniform(-5, 5, 3)
    for side, sw in (("l", lay["sw_l"]), ("r", lay["sw_r"])):
        if sw <= 0:
            continue
        x0, x1 = (xl - sw, xl) if side == "l" else (xr, xr + sw)
        pavement = np.array([150, 155, 160]) + rng.uniform(-30, 30) + rng.uniform(-8, 8, 3)
        _fill(img, cam.quads(x0, x1, Zn, _Z_FAR), _col(pavement))
    _fill(img, cam.quads(xl, xr, Zn, _Z_FAR), _col(road_c))
    # slightly darker tyre tracks in the lanes make the asphalt less uniform
    lane_w, n_lanes = lay["lane_w"], lay["n_lanes"]
    centres = xl + lane_w * (np.arange(n_lanes) + 0.5)
    tracks = np.concatenate([centres - 0.85, centres + 0.85])
    _fill(img, cam.quads(tracks - 0.25, tracks + 0.25, Zn, _Z_FAR), _col(road_c * 0.93))
    curbs = [xe for xe, sw in ((xl, lay["sw_l"]), (xr, lay["sw_r"])) if sw > 0]
    if curbs:
        xc = np.array(curbs)
        _fill(img, cam.quads(xc - 0.12, xc + 0.12, Zn, _Z_FAR), _col((175, 175, 180), 15, rng))

    # lane markings: dashed lane boundaries, optional solid edge lines, sometimes a zebra crossing
    white = _col((220, 225, 225), 20, rng)
    mw = rng.uniform(0.1, 0.16)
    period, dash = rng.uniform(9.0, 13.0), rng.uniform(2.5, 4.0)
    zs = np.arange(rng.uniform(1.0, 1.0 + period), 150.0, period)
    quads = []
    if n_lanes > 1:
        xb = xl + lane_w * np.arange(1, n_lanes)[:, None]  # (n_lanes-1, 1) x (n_dashes,)
        quads.append(cam.quads(xb - mw / 2, xb + mw / 2, zs, zs + dash))
    if rng.random() < 0.7:
        xe = np.array([xl + 0.3, xr - 0.3])
        quads.append(cam.quads(xe - mw / 2, xe + mw / 2, Zn, _Z_FAR))
    if rng.random() < 0.15:
        zc = rng.uniform(8.0, 40.0)
        xs = np.arange(xl + 0.3, xr - 0.3, 1.0)
        quads.append(cam.quads(xs, xs + 0.5, zc, zc + rng.uniform(2.5, 4.0)))
    if quads:
        _fill(img, np.concatenate(quads), white)

    # facades along the street with windows; object-sized structure the detector must ignore. Within one side
    # the only overlap is a building's camera-facing end wall behind nearer facades (across a gap), so: end walls
    # far to near, then the facades (mutually disjoint), then all windows in one call
    for side in ("l", "r"):
        if rng.random() >= lay["bld_p"]:
            continue
        sw = lay["sw_l"] if side == "l" else lay["sw_r"]
        sgn = -1.0 if side == "l" else 1.0
        edge = (xl - sw - rng.uniform(0.3, 4.0)) if side == "l" else (xr + sw + rng.uniform(0.3, 4.0))
        lens = rng.uniform(10.0, 35.0, 16)
        gaps = np.where(rng.random(16) < 0.4, rng.uniform(0.0, 8.0, 16), 0.0)
        z1 = rng.uniform(3.0, 25.0) + np.concatenate([[0.0], np.cumsum(lens + gaps)[:-1]])
        k = int(np.searchsorted(z1, 120.0))
        z1, z2 = z1[:k], z1[:k] + lens[:k]
        hb = rng.uniform(4.0, 22.0 if scene == "urban" else 9.0, k)
        colours = _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS), size=k)] + rng.uniform(-20, 20, (k, 3))
        ends = _end_faces(cam, edge, edge + sgn * 12.0, z1, hb)
        facades = cam.quads(edge, 0.0, z1, z2, 0.0, hb)
        for i in range(k - 1, -1, -1):
            _fill(img, ends[i : i + 1], _col(colours[i], scale=0.8))
        for i in range(k):
            _fill(img, facades[i : i + 1], _col(colours[i]))
        # window grid: every `spacing` m along each facade closer than 70 m, one row per 3 m storey
        spacing = rng.uniform(2.5, 4.5)
        ncol = (np.floor((z2 - z1 - 2.3) / spacing) + 1).clip(0).astype(int) * (z1 < 70.0)
        nrow = (np.floor((hb - 2.7) / 3.0) + 1).clip(0).astype(int)
        per = ncol * nrow
        if per.sum():
            seg = np.repeat(np.arange(k), per)
            j = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)  # index within the segment's grid
            col, row = j // nrow[seg], j % nrow[seg]
            zc = z1[seg] + 1.0 + spacing * col
            yc = 1.2 + 3.0 * row
            win_c = _col((70, 60, 50) if lay["light"] != "dusk" else (90, 190, 230), 20, rng)
            _fill(img, cam.quads(edge, 0.0, zc, zc + 1.3, yc, yc + 1.5), win_c)


def _end_faces(cam: _Camera, x0: float, x1: float, z: np.ndarray, hb: np.ndarray) -> np.ndarray:
    """Fixed-point polygons (k, 4, 2) of camera-facing building end walls (x0..x1 at depth z, height hb)."""
    i = cam.f / z
    pts = np.empty((len(z), 4, 2), np.float64)
    pts[:, 0, 0] = pts[:, 3, 0] = cam.vx + x0 * i
    pts[:, 1, 0] = pts[:, 2, 0] = cam.vx + x1 * i
    pts[:, 0, 1] = pts[:, 1, 1] = cam.horizon + _CAM_HEIGHT * i
    pts[:, 2, 1] = pts[:, 3, 1] = cam.horizon + (_CAM_HEIGHT - hb) * i
    pts *= _ONE
    np.clip(pts, -(2**24), 2**24, out=pts)
    return pts.astype(np.int32)


# --------------------------------------------------------------------------------------------------------------
# scene layout and rendering
# --------------------------------------------------------------------------------------------------------------


def _sample_layout(rng: np.random.Generator, width: int, height: int) -> tuple[_Camera, dict]:
    cam = _Camera(width, height, horizon=rng.uniform(0.35, 0.5) * height, vx=width * (0.5 + rng.uniform(-0.15, 0.15)))
    scene = _SCENE_TYPES[_pick(rng, _SCENE_CUM)]
    light = _LIGHTING[_pick(rng, _LIGHTING_CUM)]
    lane_w = rng.uniform(3.0, 3.8)
    n_lanes = 1 + _pick(rng, _LANES_CUM)
    ego = rng.integers(n_lanes)
    xl = -(ego + 0.5) * lane_w + rng.uniform(-0.5, 0.5)
    xr = xl + n_lanes * lane_w
    sw_l = rng.uniform(1.5, 4.0) if rng.random() < (0.9 if scene == "urban" else 0.5) else 0.0
    sw_r = rng.uniform(1.5, 4.0) if rng.random() < (0.9 if scene == "urban" else 0.5) else 0.0
    bld_p = {"urban": 0.85, "suburban": 0.35, "rural": 0.0}[scene]
    lay = dict(scene=scene, light=light, lane_w=lane_w, n_lanes=n_lanes, road=(xl, xr), sw_l=sw_l, sw_r=sw_r,
               bld_p=bld_p)
    return cam, lay


def _collides(X: float, Z: float, hx: float, hz: float, taken: list[tuple[float, float, float, float]]) -> bool:
    return any(abs(X - x) < hx + ax and abs(Z - z) < hz + az for x, z, ax, az in taken)


def _place_objects(
    rng: np.random.Generator, cam: _Camera, lay: dict, taken: list[tuple[float, float, float, float]]
) -> list[tuple[float, float, int]]:
    """(Z, X, cls) for each object: depth skewed log-uniform (many small far ones), position by class habits.

    Ground footprints in ``taken`` (X, Z, half-width, half-length) may not overlap: two cars in the same spot
    are not an occlusion case a detector can learn from, they are just a broken scene.
    """
    if rng.random() < _EMPTY_PROB:
        return []
    n = 1 + int(rng.binomial(_MAX_OBJECTS - 1, rng.uniform(0.2, 0.75)))  # quiet roads to busy streets
    xl, xr = lay["road"]
    lane_w, n_lanes = lay["lane_w"], lay["n_lanes"]
    z_bottom = cam.ground_z(cam.height)  # depth seen at the bottom image row
    zscale = cam.f / (_FOCAL_FRAC * _REF_WIDTH)
    lo = np.log(0.8 * z_bottom)
    out = []
    for cls in rng.choice(3, size=n, p=_CLASS_PROBS):
        cls = int(cls)
        z_max = _Z_MAX_REF[cls] * zscale
        for _ in range(10):
            Z = float(np.exp(lo + (np.log(z_max) - lo) * rng.random() ** _DEPTH_SKEW))
            r = rng.random()
            if cls == 0:
                if r < 0.7:  # driving in a lane
                    X = xl + lane_w * (rng.integers(n_lanes) + 0.5) + rng.uniform(-0.4, 0.4)
                elif r < 0.9:  # parked at a road edge
                    X = (xl + 1.0 if rng.random() < 0.5 else xr - 1.0) + rng.uniform(-0.3, 0.3)
                else:  # anywhere in view (car parks, side streets)
                    X = (rng.uniform(-0.05, 1.05) * cam.width - cam.vx) * Z / cam.f
            elif cls == 1:
                if r < 0.65:  # on a sidewalk / verge
                    X = (xl - rng.uniform(0.3, max(lay["sw_l"], 1.5))) if rng.random() < 0.5 else (
                        xr + rng.uniform(0.3, max(lay["sw_r"], 1.5)))
                elif r < 0.85:  # crossing the road
                    X = rng.uniform(xl, xr)
                else:
                    X = (rng.uniform(-0.05, 1.05) * cam.width - cam.vx) * Z / cam.f
            else:
                if r < 0.6:  # riding near the road edge
                    X = (xl + rng.uniform(0.4, 1.2)) if rng.random() < 0.5 else (xr - rng.uniform(0.4, 1.2))
                elif r < 0.85:
                    X = rng.uniform(xl, xr)
                else:
                    X = (rng.uniform(-0.05, 1.05) * cam.width - cam.vx) * Z / cam.f
            hx, hz = _FOOTPRINT[cls]
            if -0.05 * cam.width <= cam.x(X, Z) <= 1.05 * cam.width and not _collides(X, Z, hx, hz, taken):
                out.append((Z, float(X), cls))
                taken.append((float(X), Z, hx, hz))
                break
    return out


def _place_distractors(rng: np.random.Generator, cam: _Camera, lay: dict) -> list[tuple[float, float, str]]:
    """(Z, X, kind) for unlabelled roadside clutter."""
    xl, xr = lay["road"]
    scene = lay["scene"]
    out: list[tuple[float, float, str]] = []
    # street lights at regular spacing along one or both sides
    if rng.random() < (0.7 if scene != "rural" else 0.3):
        spacing = rng.uniform(22.0, 40.0)
        for side in (-1, 1) if rng.random() < 0.3 else ((-1,) if rng.random() < 0.5 else (1,)):
            xe = (xl - 0.6) if side < 0 else (xr + 0.6)
            for Z in np.arange(rng.uniform(6.0, 6.0 + spacing), 90.0, spacing):
                out.append((float(Z), xe, "light"))
    weights = {"urban": (0.15, 0.15, 0.15, 0.15, 0.2, 0.2), "suburban": (0.35, 0.1, 0.3, 0.1, 0.1, 0.05),
               "rural": (0.5, 0.1, 0.35, 0.05, 0.0, 0.0)}[scene]
    kinds = ("tree", "sign", "bush", "cone", "bin", "bollard")
    z_bottom = cam.ground_z(cam.height)
    for kind in rng.choice(kinds, size=int(rng.integers(2, 11)), p=np.array(weights) / sum(weights)):
        kind = str(kind)
        Z = float(np.exp(rng.uniform(np.log(0.9 * z_bottom), np.log(90.0))))
        if kind == "cone":
            X = rng.uniform(xl + 0.3, xr - 0.3)
        else:
            side = -1 if rng.random() < 0.5 else 1
            off = rng.uniform(0.4, 2.5) if kind in ("sign", "bin", "bollard") else rng.uniform(1.0, 8.0)
            X = (xl - off) if side < 0 else (xr + off)
        out.append((Z, float(X), kind))
    return out


def _object_geometry(cls: int, Z: float, cam: _Camera, rng: np.random.Generator) -> tuple[float, float, dict]:
    """On-screen (w, h) in px and drawing parameters of an object at depth Z."""
    if cls == 0:
        side = rng.random() < 0.5
        hm = rng.uniform(*_CAR_H)
        aspect = rng.uniform(1.9, 2.6) if side else rng.uniform(1.45, 1.85)  # w / h
        h = cam.f * hm / Z
        return h * aspect, h, dict(side=side)
    if cls == 1:
        hm = rng.uniform(*_PED_H) if rng.random() > 0.1 else rng.uniform(1.1, 1.45)  # some children
        aspect = rng.uniform(2.5, 3.5)  # h / w
        h = cam.f * hm / Z
        return h / aspect, h, {}
    hm = rng.uniform(*_CYC_H)
    aspect = rng.uniform(1.2, 2.0)  # h / w
    h = cam.f * hm / Z
    return h / aspect, h, dict(cosv=min(1.0, 1.0 / (0.96 * aspect)))


def render_scene(
    rng: np.random.Generator, width: int = 512, height: int = 160, *, _draw_objects: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic driving scene and its YOLO labels.

    The scene is a pure function of the generator state, so a dataset image can be re-created from its seed
    alone. Objects (and roadside clutter) are composited far-to-near; a label is the visible extent of the object
    after occlusion by nearer sprites and clipping at the border, and objects with less than 40 % of their pixels
    visible or a visible box under 3 px are not labelled – a detector should not be taught to find what cannot
    be seen.

    Args:
        rng: Source of all randomness (consumed).
        width: Image width in px (KITTI-like wide aspect by default).
        height: Image height in px.
        _draw_objects: Private, for tests: ``False`` renders the identical scene without the labelled objects
            (same background, clutter, lighting and noise), so a test can check that every box covers pixels the
            objects changed. The returned labels are the same either way.

    Returns:
        ``(image, labels)``: a BGR uint8 array (height, width, 3) and a float32 array (n, 5) of
        ``cls, cx, cy, w, h`` with coordinates normalised to [0, 1].
    """
    if width < 16 or height < 16:
        raise ValueError(f"image size {width}x{height} is too small")
    rng_obj = np.random.default_rng(rng.integers(0, 2**63 - 1))  # objects' own stream (see _draw_objects)
    cam, lay = _sample_layout(rng, width, height)
    img = np.empty((height, width, 3), np.uint8)
    _draw_background(img, cam, lay, rng)
    # haze colour from the background at the horizon, before any sprite, so it does not depend on them
    haze = img[min(height - 1, max(0, int(cam.horizon) - 1))].mean(axis=0, dtype=np.float32)

    distractors = _place_distractors(rng, cam, lay)
    taken = [(x, z, _FOOTPRINT[k], _FOOTPRINT[k]) for z, x, k in distractors]
    objects = _place_objects(rng, cam, lay, taken)
    # photometric parameters are drawn before any sprite so they do not depend on what got drawn
    light = lay["light"]
    if light == "day":
        gain, contrast = rng.uniform(0.9, 1.15), rng.uniform(0.9, 1.15)
        cast = rng.uniform(0.93, 1.07, 3)
    elif light == "overcast":
        gain, contrast = rng.uniform(0.8, 1.0), rng.uniform(0.75, 0.95)
        cast = rng.uniform(0.95, 1.05, 3)
    else:
        gain, contrast = rng.uniform(0.5, 0.75), rng.uniform(0.8, 1.0)
        cast = np.array([0.85, 0.95, 1.1]) * rng.uniform(0.95, 1.05, 3)
    haze_strength = rng.uniform(0.1, 0.45)
    noise_sigma = rng.uniform(1.0, 6.0)
    blur_sigma = rng.uniform(0.5, 1.0) if rng.random() < 0.3 else 0.0
    noise_oy, noise_ox = int(rng.integers(0, _NOISE_PAD + 1)), int(rng.integers(0, _NOISE_PAD + 1))
    rng_dis = np.random.default_rng(rng.integers(0, 2**63 - 1))  # distractors' appearance

    # painter's algorithm over objects and clutter together, far to near
    sprites: list[tuple[float, int, float, Any]] = [(z, i + 1, x, c) for i, (z, x, c) in enumerate(objects)]
    sprites += [(z, 0, x, k) for z, x, k in distractors]
    sprites.sort(key=lambda s: (-s[0], s[1]))
    idmask = np.zeros((height, width), np.uint8)
    full_px: dict[int, int] = {}
    boxes: dict[int, tuple[int, int, int, int]] = {}
    dusk = light == "dusk"
    for Z, sid, X, what in sprites:
        cx, yb = cam.vx + cam.f * X / Z, cam.horizon + cam.f * _CAM_HEIGHT / Z
        if sid:
            w, h, params = _object_geometry(what, Z, cam, rng_obj)
            flip = bool(rng_obj.random() < 0.5)
            shade = rng_obj.uniform(0.75, 1.1)
        else:
            hm, wm = _dist_size(what, rng_dis)
            h, w = cam.f * hm / Z, cam.f * wm / Z
            flip = bool(rng_dis.random() < 0.5)
            if what == "light":  # street lights lean over the road
                flip = X > 0.5 * (lay["road"][0] + lay["road"][1])
            shade = rng_dis.uniform(0.8, 1.05)
        pw, ph = max(1, int(round(w))), max(1, int(round(h)))
        x0, y0 = int(round(cx - pw / 2)), int(round(yb)) - ph
        if x0 >= width or x0 + pw <= 0 or y0 >= height or y0 + ph <= 0 or (not sid and ph < 3):
            continue  # off-screen, or clutter too small to matter
        k = _supersample(ph)
        if pw * ph * k * k > 4_000_000:  # absurdly close sprite: never happens at sane sizes, keep memory bounded
            k = 1
        canvas = _Canvas(pw, ph, k)
        if sid:
            if what == 0 and _draw_objects:
                # soft contact shadow first so the car stands on the road rather than floating
                axes = (int(pw * 0.55 * _ONE), max(_ONE, int(ph * 0.06 * _ONE)))
                cv2.ellipse(img, (int(cx * _ONE), int(yb * _ONE)), axes, 0, 0, 360, (25, 25, 25), -1, cv2.LINE_AA,
                            _SHIFT)
            _draw_object(what, params, flip, dusk, canvas, rng_obj)
            patch, alpha = canvas.finish(pw, ph, _vshade(ph, 1.08 * shade, 0.8 * shade))
            # without _draw_objects the object still claims its pixels in idmask, so labels stay identical
            clip = _composite(img, idmask, patch, alpha, x0, y0, sid, paint=_draw_objects)
            if clip is not None:
                full_px[sid] = int((alpha >= 0.5).sum())
                boxes[sid] = clip
        else:
            _draw_distractor(canvas, what, rng_dis, flip)
            patch, alpha = canvas.finish(pw, ph, _vshade(ph, shade, 0.85 * shade))
            _composite(img, idmask, patch, alpha, x0, y0, 0)
    labels = _labels(idmask, full_px, boxes, objects, width, height)

    # photometric pass on the (H, W*3) view so every numpy op runs along long contiguous rows, in two reused
    # float buffers (fresh ~1 MB temporaries per op cost more in page faults than the arithmetic): haze towards
    # the horizon (per row), contrast / gain / colour cast (per channel), optional optics blur, sensor noise
    f, t = _buffers(height, width)
    rows = np.arange(height, dtype=np.float32)
    hw = (haze_strength * np.exp(-np.abs(rows - cam.horizon) / (0.18 * height)))[:, None]
    gc = (gain * cast * contrast).astype(np.float32)
    bc = (gain * cast * 128.0 * (1.0 - contrast)).astype(np.float32)
    f[...] = img.reshape(height, width * 3)
    np.multiply(1.0 - hw, np.tile(gc, width)[None, :], out=t)
    f *= t
    np.multiply(hw, np.tile(haze * gc, width)[None, :], out=t)
    f += t
    f += np.tile(bc, width)[None, :]
    if blur_sigma > 0:
        cv2.GaussianBlur(f.reshape(height, width, 3), (3, 3), blur_sigma, dst=t.reshape(height, width, 3))
        f, t = t, f
    np.multiply(_noise(height, width, noise_oy, noise_ox), np.float32(noise_sigma), out=t)
    f += t
    f += 0.5
    np.clip(f, 0, 255, out=f)
    out = np.empty((height, width, 3), np.uint8)
    out.reshape(height, width * 3)[...] = f  # truncation after +0.5 = rounding
    return out, labels


_LOCAL = threading.local()


def _buffers(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (height, width*3) float32 scratch buffers, reused per thread."""
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None or bufs[0].shape != (height, width * 3):
        bufs = (np.empty((height, width * 3), np.float32), np.empty((height, width * 3), np.float32))
        _LOCAL.bufs = bufs
    return bufs


_NOISE_PAD = 128
_NOISE_BANKS: dict[tuple[int, int], np.ndarray] = {}  # read-only once built, safe to share between threads


def _noise(height: int, width: int, oy: int, ox: int) -> np.ndarray:
    """A (height, width*3) window of a fixed standard-normal noise bank at offset (oy, ox).

    Drawing fresh Gaussian noise for every pixel costs more than rendering the rest of the scene, so each image
    takes a random crop of one bank per image size instead; the bank comes from a constant seed, so it is the
    same in every process and the output stays a pure function of the scene seed.
    """
    key = (height, width)
    bank = _NOISE_BANKS.get(key)
    if bank is None:
        if len(_NOISE_BANKS) >= 4:  # bound memory when many image sizes are used in one process
            _NOISE_BANKS.clear()
        bank = np.random.default_rng([0x5EED, height, width]).standard_normal(
            (height + _NOISE_PAD, 3 * (width + _NOISE_PAD)), dtype=np.float32)
        _NOISE_BANKS[key] = bank
    return bank[oy : oy + height, 3 * ox : 3 * (ox + width)]


def _draw_object(cls: int, params: dict, flip: bool, dusk: bool, canvas: _Canvas, rng: np.random.Generator) -> None:
    if cls == 0:
        _draw_car(canvas, rng, params["side"], flip, dusk)
    elif cls == 1:
        _draw_person(canvas, rng, flip)
    else:
        _draw_cyclist(canvas, rng, flip, params["cosv"])


def _labels(
    idmask: np.ndarray, full_px: dict, boxes: dict, objects: list, width: int, height: int
) -> np.ndarray:
    """Visible-extent YOLO labels from the id mask; drops heavily occluded / clipped / tiny objects."""
    counts = np.bincount(idmask.ravel(), minlength=len(objects) + 1)
    rows = []
    for sid, (Z, X, cls) in enumerate(objects, start=1):
        if sid not in full_px or full_px[sid] == 0:
            continue
        if counts[sid] < _MIN_VISIBLE_FRAC * full_px[sid]:
            continue
        xa, ya, xb, yb = boxes[sid]
        m = idmask[ya:yb, xa:xb] == sid
        ys = np.flatnonzero(m.any(axis=1))
        xs = np.flatnonzero(m.any(axis=0))
        x0, x1, y0, y1 = xa + xs[0], xa + xs[-1] + 1, ya + ys[0], ya + ys[-1] + 1
        if x1 - x0 < _MIN_BOX_PX or y1 - y0 < _MIN_BOX_PX:
            continue
        rows.append((cls, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height))
    return np.array(rows, np.float32).reshape(-1, 5)


# --------------------------------------------------------------------------------------------------------------
# dataset on disk
# --------------------------------------------------------------------------------------------------------------


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, image): any image can be re-rendered alone, splits never share seeds."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLITS.index(split), int(index)]))


def _format_labels(labels: np.ndarray) -> str:
    return "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels.tolist())


def _write_chunk(args: tuple[str, str, int, int, int, int, int]) -> list[int]:
    """Render and write images [start, stop) of one split; returns per-class box counts (picklable for workers)."""
    out_dir, split, seed, start, stop, width, height = args
    img_dir, lbl_dir = Path(out_dir, "images", split), Path(out_dir, "labels", split)
    counts = [0, 0, 0, 0]  # car, pedestrian, cyclist, images without boxes
    for i in range(start, stop):
        img, labels = render_scene(_image_rng(seed, split, i), width, height)
        name = f"{i:06d}"
        if not cv2.imwrite(str(img_dir / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise OSError(f"cv2.imwrite failed for {img_dir / name}.jpg")
        (lbl_dir / f"{name}.txt").write_text(_format_labels(labels))
        for c in labels[:, 0].astype(int):
            counts[c] += 1
        counts[3] += len(labels) == 0
    return counts


def _expected_manifest(n_train: int, n_val: int, seed: int, width: int, height: int) -> dict:
    return {
        "generator": _GENERATOR_ID,
        "version": GENERATOR_VERSION,
        "params": {"n_train": n_train, "n_val": n_val, "seed": seed, "width": width, "height": height,
                   "jpeg_quality": _JPEG_QUALITY},
    }


def _read_manifest(root: Path) -> dict | None:
    try:
        data = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(root: Path, expected: dict) -> bool:
    """True if ``root`` holds a finished dataset from these exact parameters (the manifest is written last)."""
    m = _read_manifest(root)
    if m is None or any(m.get(k) != v for k, v in expected.items()) or not (root / "data.yaml").is_file():
        return False
    p = expected["params"]
    try:
        for split, n in (("train", p["n_train"]), ("val", p["n_val"])):
            for sub, ext in (("images", ".jpg"), ("labels", ".txt")):
                if sum(1 for e in os.scandir(root / sub / split) if e.name.endswith(ext)) != n:
                    return False
    except OSError:
        return False
    return True


def _write_yaml(root: Path, final_root: Path) -> None:
    cfg = {"path": str(final_root), "train": "images/train", "val": "images/val", "names": dict(CLASS_NAMES)}
    tmp = root / f".data.yaml.{uuid.uuid4().hex}"
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.replace(tmp, root / "data.yaml")


def _yaml_points_to(root: Path) -> bool:
    try:
        return yaml.safe_load((root / "data.yaml").read_text()).get("path") == str(root)
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def generate_dataset(
    root: str | Path,
    n_train: int = 800,
    n_val: int = 200,
    seed: int = 0,
    width: int = 512,
    height: int = 160,
    workers: int = 0,
) -> Path:
    """Write a synthetic driving dataset in Ultralytics YOLO format and return its ``data.yaml`` path.

    Layout: ``root/images/{train,val}/NNNNNN.jpg``, ``root/labels/{train,val}/NNNNNN.txt`` (empty for images
    without objects), ``root/data.yaml`` and ``root/manifest.json``. Image ``i`` of a split is rendered from its
    own RNG seeded by ``SeedSequence([seed, split, i])`` so any image is reproducible on its own, the result does
    not depend on ``workers``, and val never shares a seed with train.

    The write is atomic and idempotent because several processes (DDP ranks, parallel tests, a re-run demo) may
    ask for the same dataset: everything is generated in a temporary sibling folder and renamed into place, and a
    ``root`` that already holds a complete dataset with the same manifest is returned untouched.

    Args:
        root: Destination folder. If it exists it must be empty or a dataset written by this generator (it is
            then replaced); anything else raises ``FileExistsError`` rather than deleting user data.
        n_train: Number of training images.
        n_val: Number of validation images.
        seed: Dataset seed.
        width: Image width in px.
        height: Image height in px.
        workers: Worker processes for rendering (0 = in this process). Output is identical for any value.

    Returns:
        Path of ``root/data.yaml``.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError("n_train and n_val must be >= 1")
    if width < 16 or height < 16:
        raise ValueError(f"image size {width}x{height} is too small")
    root = Path(root).expanduser().absolute()
    expected = _expected_manifest(int(n_train), int(n_val), int(seed), int(width), int(height))
    if _is_complete(root, expected):
        if not _yaml_points_to(root):  # folder was moved or copied: keep data.yaml's absolute path valid
            try:
                _write_yaml(root, root)
            except OSError:  # read-only copy: leave it, the caller may still pass its own yaml
                pass
        return root / "data.yaml"
    if root.exists():
        _check_replaceable(root)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    threads = cv2.getNumThreads()
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the dataset may live in a shared cache
        # the images are tiny: OpenCV's thread pool only adds wake-up latency (and stalls on a busy machine)
        cv2.setNumThreads(1)
        for sub in ("images", "labels"):
            for split in _SPLITS:
                (tmp / sub / split).mkdir(parents=True)
        jobs = []
        for split, n in (("train", int(n_train)), ("val", int(n_val))):
            step = max(1, min(64, -(-n // max(1, workers * 4)))) if workers > 0 else n
            jobs += [(str(tmp), split, int(seed), a, min(a + step, n), int(width), int(height))
                     for a in range(0, n, step)]
        if workers > 0:
            # spawn, not fork: the caller may already run torch / OpenCV threads, which fork can deadlock
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=cv2.setNumThreads, initargs=(1,)) as ex:
                results = list(ex.map(_write_chunk, jobs))
        else:
            results = [_write_chunk(j) for j in jobs]
        totals = np.sum(results, axis=0).tolist()
        _write_yaml(tmp, root)
        manifest = dict(expected)
        manifest["counts"] = {"train": int(n_train), "val": int(n_val)}
        manifest["boxes"] = {CLASS_NAMES[c]: int(totals[c]) for c in range(3)}
        manifest["images_without_boxes"] = int(totals[3])
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _install(tmp, root, expected)
    finally:
        cv2.setNumThreads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "data.yaml"


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything that is not an empty folder or a dataset of ours."""
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    m = _read_manifest(root)
    if (m is None or m.get("generator") != _GENERATOR_ID) and any(root.iterdir()):
        raise FileExistsError(f"{root} exists, is not empty and is not a yolokd synthetic dataset; not replacing it")


def _install(tmp: Path, root: Path, expected: dict) -> None:
    """Rename the finished ``tmp`` into ``root``; tolerate a concurrent writer that got there first."""
    trash = None
    if root.exists():
        if _is_complete(root, expected):
            return
        _check_replaceable(root)
        trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex}"
        try:
            os.replace(root, trash)
        except FileNotFoundError:  # another process moved it away already
            trash = None
    try:
        os.replace(tmp, root)
    except OSError:
        if not _is_complete(root, expected):  # a concurrent writer won: fine if it wrote the same dataset
            raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def default_cache_dir() -> Path:
    """Where yolokd caches generated data: ``$YOLOKD_CACHE`` if set, else ``~/.cache/yolokd``."""
    env = os.environ.get("YOLOKD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "yolokd"


def synthetic_dataset(n_train: int = 800, n_val: int = 200, seed: int = 0, width: int = 512, height: int = 160) -> Path:
    """The ``data=synthetic`` dataset: generated once into the cache and reused; returns its ``data.yaml`` path.

    The folder name spells out every parameter and the generator version, so different settings never collide
    and a generator change gets a fresh folder instead of silently reusing stale images.
    """
    key = f"synthetic-v{GENERATOR_VERSION}-s{int(seed)}-n{int(n_train)}-{int(n_val)}-{int(width)}x{int(height)}"
    workers = min(2, os.cpu_count() or 1)  # byte-identical output for any worker count; 227 vs 153 img/s on 2 cores
    return generate_dataset(default_cache_dir() / "datasets" / key, n_train, n_val, seed, width, height, workers=workers)
