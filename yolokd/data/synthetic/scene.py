"""``render_scene``: one image and its labels as a pure function of a seeded generator.

It ties the other modules together in a fixed order of RNG draws – layout, background, placements, photometric
parameters, then sprites composited far to near – and reads occlusion-aware labels off the id mask. The order of
draws is the output: anything that changes it changes every image and must bump ``GENERATOR_VERSION``.
"""

from __future__ import annotations

import threading
from typing import Any

import cv2
import numpy as np

from yolokd.data.synthetic.background import _draw_background
from yolokd.data.synthetic.camera import _CAM_HEIGHT, _ONE, _SHIFT
from yolokd.data.synthetic.canvas import _Canvas, _composite, _supersample, _vshade
from yolokd.data.synthetic.layout import _FOOTPRINT, _place_distractors, _place_objects, _sample_layout
from yolokd.data.synthetic.objects import _dist_size, _draw_distractor, _draw_object, _object_geometry

_MIN_VISIBLE_FRAC = 0.40  # keep a label only if at least this share of the object's pixels is visible
_MIN_BOX_PX = 3  # drop labels whose visible box is thinner than this (nothing learnable left)


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
