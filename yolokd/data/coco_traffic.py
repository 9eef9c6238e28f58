"""COCO 2017 (instances JSON) to COCO-Traffic in YOLO format: the 13-class traffic subset of the GKD / AID papers.

The papers' ``filter_traffic.py`` (``../shared/docs/methods.md`` §4) keeps an image when at least one of its annotations
has a *trigger* category (bicycle, car, motorcycle, bus, train, truck, traffic light, fire hydrant, stop sign), then keeps
only the annotations of the chosen classes in those images, re-numbered in COCO-id order. Two choices made here:

* Crowd annotations count for the image filter (the script does not look at ``iscrowd``) but are never written as boxes
  (mmdet ignores them when training). An image kept only for a crowd box is therefore written as a background image
  with an empty label file, which is what the papers' training saw.
* Images without any trigger annotation are not written at all (not even as background), as in the script.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from yolokd.utils.paths import CFG_DIR

#: COCO category ids whose presence keeps an image (filter_traffic.py).
TRIGGER_IDS = frozenset({2, 3, 4, 6, 7, 8, 10, 11, 13})
#: The 11-class variant of one AID config: the 13 classes without cat and dog.
VARIANT_11 = ("person", "bicycle", "car", "motorcycle", "bus", "train", "truck", "traffic light", "fire hydrant",
              "stop sign", "parking meter")


def traffic_classes(n: int = 13) -> list[str]:
    """The COCO-Traffic class names in id order: 13 (the papers' default, from ``cfg/datasets``) or 11."""
    if n == 11:
        return list(VARIANT_11)
    if n != 13:
        raise ValueError(f"COCO-Traffic has a 13-class and an 11-class variant, not {n}")
    names = yaml.safe_load((CFG_DIR / "datasets" / "coco-traffic.yaml").read_text())["names"]
    return [names[i] for i in sorted(names)]


def filter_traffic(coco: dict, classes: list[str]) -> dict[int, list[tuple[int, float, float, float, float]]]:
    """Image id -> YOLO rows (class, cx, cy, w, h normalised) for every kept image (possibly empty rows).

    Args:
        coco: A COCO instances dict (``images``, ``annotations``, ``categories``).
        classes: Class names to keep (COCO category names in COCO-id order); a name's position is its class id.
    """
    cat_name = {c["id"]: c["name"] for c in coco["categories"]}
    # Ids follow the position in ``classes`` (itself in COCO-id order), so a JSON that lacks a category (a subset or a
    # hand-made file) still gets the standard ids.
    new_id = {cid: classes.index(n) for cid, n in cat_name.items() if n in classes}
    images = {im["id"]: im for im in coco["images"]}
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = {}
    for img_id, anns in by_image.items():
        if not any(a["category_id"] in TRIGGER_IDS for a in anns):
            continue
        im = images[img_id]
        w, h = float(im["width"]), float(im["height"])
        rows = []
        for a in anns:
            if a.get("iscrowd", 0) or a["category_id"] not in new_id:
                continue
            x, y, bw, bh = a["bbox"]
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(w, x + bw), min(h, y + bh)
            if x2 <= x1 or y2 <= y1:
                continue
            rows.append((new_id[a["category_id"]], (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h))
        out[img_id] = rows
    return out


def convert_coco_traffic(instances: str | Path, images: str | Path, dst: str | Path, split: str = "train2017",
                         n_classes: int = 13) -> Path:
    """Write ``dst/images/<split>`` (links or copies), ``dst/labels/<split>`` and ``dst/coco-traffic.yaml``.

    Args:
        instances: COCO ``instances_<split>.json``.
        images: Folder with the split's images.
        dst: Output dataset root; convert train2017 and val2017 into the same ``dst``.
        split: Split name, used for the sub-folders.
        n_classes: 13 (default, the papers') or 11 (without cat and dog).

    Returns:
        The dataset YAML (``train: images/train2017``, ``val: images/val2017``).
    """
    from yolokd.data.kitti import _place

    classes = traffic_classes(n_classes)
    coco = json.loads(Path(instances).read_text())
    rows = filter_traffic(coco, classes)
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    src, dst = Path(images), Path(dst)
    (dst / "images" / split).mkdir(parents=True, exist_ok=True)
    (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
    missing = [files[i] for i in rows if not (src / files[i]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} kept image(s) not found in {src}, e.g. {missing[:3]}")
    counts: Counter[str] = Counter()
    for img_id, r in sorted(rows.items()):
        name = files[img_id]
        _place(src / name, dst / "images" / split / name)
        (dst / "labels" / split / f"{Path(name).stem}.txt").write_text(
            "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in r))
        counts.update(classes[c[0]] for c in r)
    out = dst / "coco-traffic.yaml"
    cfg = {"path": str(dst.resolve()), "train": "images/train2017", "val": "images/val2017",
           "names": dict(enumerate(classes))}
    out.write_text(f"# COCO-Traffic ({n_classes} classes) written by `yolokd convert coco-traffic`.\n"
                   + yaml.safe_dump(cfg, sort_keys=False))
    stats_file = dst / "stats.yaml"
    stats = yaml.safe_load(stats_file.read_text()) if stats_file.exists() else {}
    stats[split] = {"images": len(rows), "background_images": sum(not r for r in rows.values()),
                    "boxes": {n: counts[n] for n in classes}}
    stats_file.write_text(yaml.safe_dump(stats, sort_keys=False))
    return out
