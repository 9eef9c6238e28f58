"""The unlabelled background of a scene: sky, ground, skyline, road with markings, sidewalks and facades.

It is projected through the same ``_Camera`` as the objects, so vanishing point, lane widths and facade heights
agree with the object sizes, and it carries object-sized structure (windows, skyline, tyre tracks) that a detector
must learn to ignore rather than a flat backdrop it could subtract.
"""

from __future__ import annotations

import cv2
import numpy as np

from yolokd.data.synthetic.camera import _CAM_HEIGHT, _ONE, _SHIFT, _Camera
from yolokd.data.synthetic.canvas import _col

_Z_FAR = 2000.0  # "infinity" for ground polygons that run to the vanishing point
_BUILDING_COLOURS = np.array(
    [(60, 80, 150), (150, 170, 190), (170, 170, 170), (210, 210, 215), (120, 130, 140), (90, 110, 130)],
    np.float64,
)


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
