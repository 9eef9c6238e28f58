"""The sprites: labelled objects (car, pedestrian, cyclist) and unlabelled roadside clutter, and their colours.

Each sprite is drawn in normalised coordinates on a ``_Canvas``; labelled objects take all their randomness from
their own RNG stream, so skipping them leaves the rest of the scene unchanged (``render_scene(_draw_objects=False)``).
Sizes are real-world metres; the camera turns them into pixels.
"""

from __future__ import annotations

import numpy as np

from yolokd.data.synthetic.camera import _Camera
from yolokd.data.synthetic.canvas import _Canvas, _col, _pick

# Per-class real height ranges in metres (box aspects are in _object_geometry).
_CAR_H = (1.40, 1.75)
_PED_H = (1.50, 1.90)
_CYC_H = (1.60, 1.85)

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

# Distractor sizes: (height range, width range) in metres, drawn in that order; for the kinds in
# _DIST_WIDTH_PER_HEIGHT the second range is a width / height ratio instead.
_DIST_SIZE = {"tree": ((4.0, 10.0), (0.45, 0.8)), "light": ((6.0, 9.0), (1.2, 2.2)), "sign": ((2.2, 3.2), (0.6, 0.9)),
              "bush": ((0.6, 1.6), (1.2, 2.8)), "cone": ((0.5, 0.8), (0.35, 0.45)), "bin": ((0.9, 1.3), (0.5, 1.4)),
              "bollard": ((0.8, 1.1), (0.15, 0.25))}
_DIST_WIDTH_PER_HEIGHT = ("tree", "bush")


# --------------------------------------------------------------------------------------------------------------
# labelled objects (drawn with their own RNG stream so skipping them leaves the rest of the scene unchanged)
# --------------------------------------------------------------------------------------------------------------


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


def _draw_object(cls: int, params: dict, flip: bool, dusk: bool, canvas: _Canvas, rng: np.random.Generator) -> None:
    if cls == 0:
        _draw_car(canvas, rng, params["side"], flip, dusk)
    elif cls == 1:
        _draw_person(canvas, rng, flip)
    else:
        _draw_cyclist(canvas, rng, flip, params["cosv"])


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
    if kind not in _DIST_SIZE:
        raise ValueError(kind)
    (h0, h1), (w0, w1) = _DIST_SIZE[kind]
    h, w = rng.uniform(h0, h1), rng.uniform(w0, w1)
    return (h, h * w) if kind in _DIST_WIDTH_PER_HEIGHT else (h, w)


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
