"""Tests for the synthetic KITTI-like driving-scene dataset (yolokd.data.synthetic)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before anything imports ultralytics

import cv2
import numpy as np
import pytest
import yaml

from yolokd.data.synthetic import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    default_cache_dir,
    generate_dataset,
    render_scene,
    synthetic_dataset,
)

W, H = 512, 160


def _px_boxes(labels: np.ndarray, width: int = W, height: int = H) -> list[tuple[int, int, int, int, int]]:
    """(cls, x0, y0, x1, y1) in pixels; labels are pixel-aligned so rounding recovers them exactly."""
    out = []
    for c, x, y, w, h in labels.tolist():
        out.append((int(c), round((x - w / 2) * width), round((y - h / 2) * height), round((x + w / 2) * width),
                    round((y + h / 2) * height)))
    return out


@pytest.fixture(scope="module")
def many_labels() -> list[np.ndarray]:
    return [render_scene(np.random.default_rng(1000 + i))[1] for i in range(200)]


# ----------------------------------------------------------------------------------------------------- scenes


def test_same_seed_same_scene_other_seed_differs():
    a_img, a_lab = render_scene(np.random.default_rng(7))
    b_img, b_lab = render_scene(np.random.default_rng(7))
    assert a_img.shape == (H, W, 3) and a_img.dtype == np.uint8
    assert a_lab.dtype == np.float32 and a_lab.ndim == 2 and a_lab.shape[1] == 5
    assert np.array_equal(a_img, b_img) and a_img.tobytes() == b_img.tobytes()
    assert np.array_equal(a_lab, b_lab)
    c_img, c_lab = render_scene(np.random.default_rng(8))
    assert not np.array_equal(a_img, c_img)
    assert a_lab.shape != c_lab.shape or not np.array_equal(a_lab, c_lab)


@pytest.mark.parametrize("size", [(512, 160), (320, 320), (96, 48)])
def test_labels_valid(size):
    width, height = size
    for s in range(25):
        img, lab = render_scene(np.random.default_rng(s), width, height)
        assert img.shape == (height, width, 3)
        assert set(np.unique(lab[:, 0]).tolist()) <= {0.0, 1.0, 2.0}
        assert np.all(lab[:, 1:] >= 0) and np.all(lab[:, 1:] <= 1)
        assert np.all(lab[:, 3:] > 0)
        for _, x0, y0, x1, y1 in _px_boxes(lab, width, height):  # inside the image, at least 3 px
            assert 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height
            assert x1 - x0 >= 3 and y1 - y0 >= 3


def _tight(changed: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> bool:
    """Object pixels reach every side of the box (within 2 px): a box too big or shifted leaves a side empty."""
    m = changed[y0:y1, x0:x1]
    return m.size > 0 and m[:2].any() and m[-2:].any() and m[:, :2].any() and m[:, -2:].any()


def test_boxes_cover_the_drawn_objects():
    """Compare each scene with the identical scene rendered without its labelled objects."""
    n_boxes = n_shifted = n_shifted_pass = 0
    inside = changed_total = 0
    for s in range(12):
        img, lab = render_scene(np.random.default_rng(s))
        bare, lab_bare = render_scene(np.random.default_rng(s), _draw_objects=False)
        assert np.array_equal(lab, lab_bare)  # labels do not depend on the private flag
        changed = (img != bare).any(axis=2)
        union = np.zeros_like(changed)
        for _, x0, y0, x1, y1 in _px_boxes(lab):
            n_boxes += 1
            diff = np.abs(img[y0:y1, x0:x1].astype(np.float32) - bare[y0:y1, x0:x1]).mean()
            assert diff > 3.0, f"seed {s}: box {(x0, y0, x1, y1)} covers no object (mean diff {diff:.2f})"
            assert _tight(changed, x0, y0, x1, y1), f"seed {s}: box {(x0, y0, x1, y1)} is not tight"
            union[y0:y1, x0:x1] = True
            # negative control: the same check on boxes shifted by half their size mostly fails
            w, h = x1 - x0, y1 - y0
            for dx, dy in ((w // 2 + 2, 0), (-(w // 2 + 2), 0), (0, h // 2 + 2), (0, -(h // 2 + 2))):
                if 0 <= x0 + dx and x1 + dx <= W and 0 <= y0 + dy and y1 + dy <= H:
                    n_shifted += 1
                    n_shifted_pass += _tight(changed, x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        inside += int((changed & union).sum())
        changed_total += int(changed.sum())
    assert n_boxes >= 20
    assert n_shifted_pass < 0.6 * n_shifted
    # what the objects changed lies mostly inside the labels (the rest: contact shadows, dropped occluded objects)
    assert inside > 0.75 * changed_total


def test_perspective_and_small_objects(many_labels):
    lab = np.concatenate(many_labels)
    h_px = lab[:, 4] * H
    bottom = (lab[:, 2] + lab[:, 4] / 2) * H
    r = np.corrcoef(h_px, bottom)[0, 1]
    assert r > 0.5, r
    assert (h_px < 16).mean() >= 0.20
    assert h_px.max() > 50  # and some near, large ones


def test_class_mix_and_counts(many_labels):
    lab = np.concatenate(many_labels)
    counts = np.bincount(lab[:, 0].astype(int), minlength=3)
    assert (counts > 0).all()
    assert counts[0] > counts[1] > counts[2]
    share = counts / counts.sum()
    assert 0.45 < share[0] < 0.75 and 0.15 < share[1] < 0.4 and 0.05 < share[2] < 0.3
    per_image = np.array([len(x) for x in many_labels])
    assert per_image.max() <= 12 and 2.5 < per_image.mean() < 8
    assert (per_image == 0).mean() < 0.15


def test_aspect_ratios_by_class(many_labels):
    lab = np.concatenate(many_labels)
    ar = lab[:, 3] * W / (lab[:, 4] * H)  # w / h in pixels
    car, ped, cyc = (np.median(ar[lab[:, 0] == c]) for c in range(3))
    assert 1.3 < car < 2.6  # wider than tall
    assert 1 / 3.8 < ped < 1 / 2.3  # tall and thin
    assert 1 / 2.2 < cyc < 1 / 1.1
    assert ped < cyc < car


# ---------------------------------------------------------------------------------------------------- dataset


def _tree_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_dataset(tmp_path):
    root = tmp_path / "ds"
    yaml_path = generate_dataset(root, n_train=12, n_val=4, seed=3)
    assert yaml_path == root.absolute() / "data.yaml"
    for split, n in (("train", 12), ("val", 4)):
        imgs = sorted((root / "images" / split).glob("*.jpg"))
        lbls = sorted((root / "labels" / split).glob("*.txt"))
        assert len(imgs) == n and len(lbls) == n
        assert [p.stem for p in imgs] == [p.stem for p in lbls]
        im = cv2.imread(str(imgs[0]))
        assert im is not None and im.shape == (H, W, 3)
    cfg = yaml.safe_load(yaml_path.read_text())
    assert cfg["path"] == str(root.absolute())
    assert cfg["train"] == "images/train" and cfg["val"] == "images/val"
    assert cfg["names"] == CLASS_NAMES
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == GENERATOR_VERSION
    assert manifest["params"]["n_train"] == 12 and manifest["params"]["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temp folders left behind

    # each image comes from SeedSequence([seed, split, i]); labels on disk match a fresh render
    for split_idx, split in enumerate(("train", "val")):
        i = 2
        _, lab = render_scene(np.random.default_rng(np.random.SeedSequence([3, split_idx, i])))
        text = (root / "labels" / split / f"{i:06d}.txt").read_text()
        rows = [list(map(float, ln.split())) for ln in text.splitlines()]
        assert np.allclose(np.array(rows, np.float32).reshape(-1, 5), lab, atol=2e-6)
    train2 = (root / "labels" / "train" / "000002.txt").read_text()
    val2 = (root / "labels" / "val" / "000002.txt").read_text()
    assert train2 != val2

    # second call: nothing regenerated
    img0 = root / "images" / "train" / "000000.jpg"
    st = img0.stat()
    assert generate_dataset(root, n_train=12, n_val=4, seed=3) == yaml_path
    st2 = img0.stat()
    assert (st2.st_mtime_ns, st2.st_ino) == (st.st_mtime_ns, st.st_ino)

    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(yaml_path))
    assert data["nc"] == 3 and data["names"] == CLASS_NAMES


def test_generate_dataset_workers_identical_and_params_change(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    generate_dataset(a, n_train=6, n_val=3, seed=1, width=256, height=96)
    generate_dataset(b, n_train=6, n_val=3, seed=1, width=256, height=96, workers=2)
    ta, tb = _tree_bytes(a), _tree_bytes(b)
    ta.pop("data.yaml"), tb.pop("data.yaml")  # differ only by their absolute path
    assert ta == tb

    # other parameters: the old dataset of ours is replaced
    generate_dataset(a, n_train=4, n_val=2, seed=1, width=256, height=96)
    assert len(list((a / "images" / "train").glob("*.jpg"))) == 4
    assert json.loads((a / "manifest.json").read_text())["params"]["n_train"] == 4


def test_generate_dataset_moved_folder_and_foreign_folder(tmp_path):
    src = tmp_path / "src"
    generate_dataset(src, n_train=3, n_val=2)
    moved = tmp_path / "moved"
    shutil.copytree(src, moved)
    stamp = (moved / "images" / "train" / "000000.jpg").stat().st_mtime_ns
    y = generate_dataset(moved, n_train=3, n_val=2)
    assert yaml.safe_load(y.read_text())["path"] == str(moved.absolute())  # yaml re-pointed, images kept
    assert (moved / "images" / "train" / "000000.jpg").stat().st_mtime_ns == stamp

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_dataset(foreign, n_train=3, n_val=2)
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_cache_dir_and_synthetic_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("YOLOKD_CACHE", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "yolokd"
    monkeypatch.setenv("YOLOKD_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    y = synthetic_dataset(n_train=3, n_val=2, seed=5, width=128, height=64)
    assert y.parent.parent == tmp_path / "cache" / "datasets"
    assert y.parent.name.startswith("synthetic-") and y.is_file()
    assert synthetic_dataset(n_train=3, n_val=2, seed=5, width=128, height=64) == y
    assert synthetic_dataset(n_train=3, n_val=2, seed=6, width=128, height=64) != y


# ------------------------------------------------------------------------------------------------- pinned bytes

# SHA-256 of generate_dataset(n_train=3, n_val=2, seed=7, width=512, height=160) files and of two render_scene
# outputs. A refactor must leave them unchanged; a deliberate change to the pixels or labels must bump
# GENERATOR_VERSION and update these. (JPEG bytes also depend on OpenCV's libjpeg: re-pin after an OpenCV upgrade.)
_PINNED_FILES = {
    "images/train/000000.jpg": "3e8da5b6bafdbaa473733f584ceffd3b3f15d4d5432e6e2912684b7083046d70",
    "images/train/000002.jpg": "c90d11f996c71238fff5ed707fed85e8ca5f4ad61c7d0d8c4051096c377464db",
    "images/val/000001.jpg": "63a681cecacca7c121c7f2e1304ce20d2915308268d1e05919f9f7b4eb2d978d",
    "labels/train/000000.txt": "e1f6d54e31d2ccdc9faf63e346f6344e927cf1ce9f962b27b43c48ddb7867849",
    "labels/train/000002.txt": "9859578a5f693df2f134f60c56c04890bcf3bd4d0359ae5b09a075fcd482710d",
    "labels/val/000001.txt": "ee3432c6c5739aa0042da770f1fbe8932436ded70e577742dca0ce3010342481",
    "manifest.json": "b2d2d1a23d8dffa7889d52171f9bffdfb06bfd4c833e8e30b8fb9cdc0834ad4e",
}
_PINNED_SCENES = {  # (seed, width, height): (image sha256, labels sha256, number of labels)
    (11, 512, 160): ("028aa45edd2c7174dd3eb293c029bff666e333449062ebd7568c0bd6c164ea23",
                     "c62964f4424466f0807d06a9f5d03e358a8b5a303e31ddffe457018351db8544", 3),
    (3, 320, 320): ("aca079e238820e8370052e14b34a0b66afd125b17dd8b49574e2bfcdb586b812",
                    "f92ed858279a0e7a0fe0f86048a7fd343e6b9f31cabab19348d4f367fd9200f3", 6),
}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_pinned_output_bytes(tmp_path):
    for (seed, width, height), (img_sha, lab_sha, n) in _PINNED_SCENES.items():
        img, lab = render_scene(np.random.default_rng(seed), width, height)
        assert (_sha(img.tobytes()), _sha(lab.tobytes()), len(lab)) == (img_sha, lab_sha, n), (seed, width, height)

    a, b = tmp_path / "a", tmp_path / "b"
    generate_dataset(a, n_train=3, n_val=2, seed=7, width=512, height=160, workers=0)
    assert {rel: _sha((a / rel).read_bytes()) for rel in _PINNED_FILES} == _PINNED_FILES
    # spawned workers (which re-import the module to find the chunk writer) write the very same bytes
    generate_dataset(b, n_train=3, n_val=2, seed=7, width=512, height=160, workers=2)
    ta, tb = _tree_bytes(a), _tree_bytes(b)
    ta.pop("data.yaml"), tb.pop("data.yaml")  # differ only by their absolute path
    assert ta == tb
