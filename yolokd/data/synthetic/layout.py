"""Scene layout in world coordinates: scene type, lighting, road geometry and where objects and clutter stand.

Kept apart from the drawing because these distributions shape the dataset (class mix, objects per image, depth
skewed towards small far objects, class-specific positions, non-overlapping ground footprints) and are tuned
together, without touching a pixel-pushing line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from yolokd.data.synthetic.camera import _FOCAL_FRAC, _Camera
from yolokd.data.synthetic.canvas import _pick

CLASS_NAMES: dict[int, str] = {0: "car", 1: "pedestrian", 2: "cyclist"}

# KITTI-like class frequencies (cars dominate, cyclists are rare).
_CLASS_PROBS = np.array([0.60, 0.25, 0.15])
_EMPTY_PROB = 0.03  # share of images with no object at all (teaches "nothing here" too)
_MAX_OBJECTS = 12

# Per-class largest depth an object is placed at, chosen where its box gets too thin to keep at the default size;
# the depths scale with the image width (i.e. the focal length), so the pixel-size distribution is the same at any
# resolution (the height priors are in objects.py).
_Z_MAX_REF = {0: 75.0, 1: 45.0, 2: 60.0}  # at the default width of 512 px
_REF_WIDTH = 512
# Ground footprints (half-width across, half-length along the road, metres) used to keep sprites from standing
# inside each other; distractors use one number for both.
_FOOTPRINT: dict[Any, Any] = {0: (1.0, 2.3), 1: (0.35, 0.35), 2: (0.4, 0.9), "tree": 0.4, "light": 0.2,
                              "sign": 0.2, "bush": 1.2, "cone": 0.25, "bin": 0.6, "bollard": 0.15}
# depth = exp(log-uniform ** skew): < 1 pushes objects further away, so about a third of the kept boxes are under
# 16 px tall at the default size – the small-object regime where distillation matters most
_DEPTH_SKEW = 0.75

_LIGHTING = ("day", "overcast", "dusk")
_LIGHTING_CUM = np.cumsum([0.55, 0.25, 0.20])
_SCENE_TYPES = ("urban", "suburban", "rural")
_SCENE_CUM = np.cumsum([0.45, 0.35, 0.20])
_LANES_CUM = np.cumsum([0.1, 0.4, 0.3, 0.2])  # 1..4 lanes


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
