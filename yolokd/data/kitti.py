"""KITTI 2D object (``training/label_2`` + ``training/image_2``) to Ultralytics YOLO format.

Three class policies, because the literature uses two incompatible ones and the full label set is a third:

* ``papers``: Car, Pedestrian, Cyclist; Van, Truck, Tram, Person_sitting and Misc are left unlabelled (background) and
  DontCare is never an object. This is what the GKD / AID mmdet configs train on (``../shared/docs/methods.md`` §4).
* ``merge``: Van/Truck/Tram -> car, Person_sitting -> pedestrian, Misc and DontCare dropped: the common 3-class merge
  and the policy of ``../shared/data/kitti-1k``.
* ``all8``: the eight object types in Ultralytics' ``kitti.yaml`` order; DontCare dropped.

KITTI publishes no train/val split; the papers only say 8:2. The split here is a seeded shuffle of the frame ids written
to ``train.txt`` / ``val.txt``, so the same ``seed`` and ``val_fraction`` give the same lists on any machine.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from pathlib import Path

import yaml

from yolokd.utils.paths import CFG_DIR

#: KITTI object type -> class name, per policy (a type absent from the map is not written).
POLICIES: dict[str, dict[str, str]] = {
    "papers": {"Car": "car", "Pedestrian": "pedestrian", "Cyclist": "cyclist"},
    "merge": {"Car": "car", "Van": "car", "Truck": "car", "Tram": "car", "Pedestrian": "pedestrian",
              "Person_sitting": "pedestrian", "Cyclist": "cyclist"},
    "all8": {"Car": "car", "Van": "van", "Truck": "truck", "Pedestrian": "pedestrian",
             "Person_sitting": "person_sitting", "Cyclist": "cyclist", "Tram": "tram", "Misc": "misc"},
}
#: The dataset YAML template (class names and order) of each policy, in ``cfg/datasets``.
TEMPLATES = {"papers": "kitti-3class.yaml", "merge": "kitti-3class.yaml", "all8": "kitti-8class.yaml"}
KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def class_names(policy: str) -> list[str]:
    """Class names of ``policy`` in id order, read from its ``cfg/datasets`` template."""
    if policy not in POLICIES:
        raise ValueError(f"unknown KITTI class policy '{policy}'; choose one of {sorted(POLICIES)}")
    names = yaml.safe_load((CFG_DIR / "datasets" / TEMPLATES[policy]).read_text())["names"]
    return [names[i] for i in sorted(names)]


def read_label_2(path: Path) -> list[tuple[str, float, float, float, float]]:
    """Rows of a KITTI ``label_2`` file as (type, x1, y1, x2, y2) in pixels."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) < 8 or f[0] not in KITTI_TYPES:
            raise ValueError(f"{path}:{n}: not a KITTI label_2 row (type x1 y1 x2 y2 at fields 1, 5-8): '{line}'")
        rows.append((f[0], *map(float, f[4:8])))
    return rows


def yolo_rows(rows, width: int, height: int, policy: str) -> list[tuple[int, float, float, float, float]]:
    """KITTI rows -> YOLO (class, cx, cy, w, h) normalised by this image's own size, corners clamped to the image."""
    mapping, ids = POLICIES[policy], {n: i for i, n in enumerate(class_names(policy))}
    out = []
    for typ, x1, y1, x2, y2 in rows:
        if typ not in mapping:
            continue
        x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
        y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
        if x2 <= x1 or y2 <= y1:
            continue
        out.append((ids[mapping[typ]], (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width,
                    (y2 - y1) / height))
    return out


def split_ids(ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded shuffle of the sorted ids, then the first ``round(n * val_fraction)`` go to val; both lists sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    return sorted(order[n_val:]), sorted(order[:n_val])


def _place(src: Path, dst: Path) -> None:
    """Hard-link the image when the filesystem allows it (no extra disk), else copy it."""
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def convert_kitti(src: str | Path, dst: str | Path, policy: str = "merge", val_fraction: float = 0.2,
                  seed: int = 0) -> Path:
    """Convert a KITTI ``training`` folder to YOLO format and return the written dataset YAML.

    Args:
        src: Folder with ``image_2/`` and ``label_2/`` (KITTI's ``training``), or its parent.
        dst: Output folder: ``images/``, ``labels/``, ``train.txt``, ``val.txt``, ``<name>.yaml``, ``stats.yaml``.
        policy: ``papers``, ``merge`` or ``all8`` (see the module docstring).
        val_fraction: Share of frames in the val list (the papers' 8:2 split is 0.2).
        seed: Seed of the split.

    Returns:
        Path of the dataset YAML, usable as ``data=``.
    """
    from PIL import Image

    names = class_names(policy)
    src, dst = Path(src), Path(dst)
    if not (src / "label_2").is_dir() and (src / "training" / "label_2").is_dir():
        src = src / "training"
    labels_dir, images_dir = src / "label_2", src / "image_2"
    for d in (labels_dir, images_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: src= must be KITTI's 'training' folder (image_2/ and label_2/)")
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    labels = {p.stem: p for p in labels_dir.glob("*.txt")}
    missing = sorted(set(labels) - set(images))
    if missing:
        raise FileNotFoundError(f"{len(missing)} label file(s) without an image in {images_dir}, e.g. {missing[:3]}")
    if not labels:
        raise FileNotFoundError(f"no label files in {labels_dir}")
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    for stem in sorted(labels):
        img = images[stem]
        with Image.open(img) as im:
            w, h = im.size
        rows = yolo_rows(read_label_2(labels[stem]), w, h, policy)
        counts.update(names[r[0]] for r in rows)
        _place(img, dst / "images" / img.name)
        text = "".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in rows)
        (dst / "labels" / f"{stem}.txt").write_text(text)
    train, val = split_ids(list(labels), val_fraction, seed)
    for split, ids in (("train", train), ("val", val)):
        (dst / f"{split}.txt").write_text("".join(f"./images/{images[i].name}\n" for i in ids))
    cfg = {"path": str(dst.resolve()), "train": "train.txt", "val": "val.txt", "names": dict(enumerate(names))}
    out = dst / f"kitti-{policy}.yaml"
    header = (f"# KITTI converted by `yolokd convert kitti` from {src.resolve()}: policy={policy}, "
              f"val_fraction={val_fraction}, seed={seed}.\n")
    out.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    stats = {"policy": policy, "seed": seed, "val_fraction": val_fraction, "images": {"train": len(train),
             "val": len(val)}, "boxes": {n: counts[n] for n in names}}
    (dst / "stats.yaml").write_text(yaml.safe_dump(stats, sort_keys=False))
    return out
