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

Modules, in dependency order: ``camera`` (the pinhole projection), ``canvas`` (colours, the supersampled sprite
canvas, compositing), ``objects`` (cars, pedestrians, cyclists and roadside clutter), ``background`` (sky, road,
facades), ``layout`` (scene type, road geometry, where everything stands), ``scene`` (``render_scene``: all of it
in a fixed order of random draws, plus photometrics and labels) and ``dataset`` (files on disk, workers, cache).
"""

from __future__ import annotations

from yolokd.data.synthetic.dataset import GENERATOR_VERSION, default_cache_dir, generate_dataset, synthetic_dataset
from yolokd.data.synthetic.layout import CLASS_NAMES
from yolokd.data.synthetic.scene import render_scene

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "default_cache_dir",
    "generate_dataset",
    "render_scene",
    "synthetic_dataset",
]
