"""Dataset converters: KITTI (three class policies, seeded split) on real frames, COCO-Traffic on a hand-written JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_file

# Written out here, independently of yolokd.data.kitti.POLICIES: KITTI type -> class id per policy.
EXPECTED_MAP = {
    "papers": {"Car": 0, "Pedestrian": 1, "Cyclist": 2},
    "merge": {"Car": 0, "Van": 0, "Truck": 0, "Tram": 0, "Pedestrian": 1, "Person_sitting": 1, "Cyclist": 2},
    "all8": {"Car": 0, "Van": 1, "Truck": 2, "Pedestrian": 3, "Person_sitting": 4, "Cyclist": 5, "Tram": 6, "Misc": 7},
}


@pytest.fixture(scope="module")
def kitti_tiny() -> Path:
    return shared_file("kitti-tiny/training/label_2").parent


def _type_counts(label_dir: Path) -> Counter:
    c: Counter = Counter()
    for f in label_dir.glob("*.txt"):
        for line in f.read_text().splitlines():
            if line.strip():
                c[line.split()[0]] += 1
    return c


def _yolo(dst: Path) -> dict[str, list[list[float]]]:
    return {f.stem: [[float(v) for v in line.split()] for line in f.read_text().splitlines()]
            for f in (dst / "labels").glob("*.txt")}


@pytest.mark.parametrize("policy", ["papers", "merge", "all8"])
def test_kitti_counts_per_policy(kitti_tiny, tmp_path, policy):
    from yolokd.data.kitti import convert_kitti

    convert_kitti(kitti_tiny, tmp_path, policy=policy)
    types = _type_counts(kitti_tiny / "label_2")
    expected: Counter = Counter()
    for typ, n in types.items():
        if typ in EXPECTED_MAP[policy]:
            expected[EXPECTED_MAP[policy][typ]] += n
    got = Counter(int(r[0]) for rows in _yolo(tmp_path).values() for r in rows)
    assert got == expected
    assert types["DontCare"] > 0 and sum(got.values()) < sum(types.values())  # DontCare was present and never written
    if policy == "merge":  # SOURCES.md: Car 209, Van 25, Truck 10, Tram 9 -> car 253 ...
        assert got == Counter({0: 209 + 25 + 10 + 9, 1: 36 + 5, 2: 14})


def test_kitti_coordinates_round_trip(kitti_tiny, tmp_path):
    from PIL import Image

    from yolokd.data.kitti import convert_kitti

    convert_kitti(kitti_tiny, tmp_path, policy="all8")
    labels = _yolo(tmp_path)
    n = 0
    for f in sorted((kitti_tiny / "label_2").glob("*.txt")):
        w, h = Image.open(next((kitti_tiny / "image_2").glob(f.stem + ".*"))).size
        orig = [list(map(float, line.split()[4:8])) for line in f.read_text().splitlines()
                if line.split()[0] != "DontCare"]
        back = [[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                for _, cx, cy, bw, bh in labels[f.stem]]
        assert len(orig) == len(back), f.name
        for o, b in zip(orig, back):
            o = [min(max(o[0], 0), w), min(max(o[1], 0), h), min(max(o[2], 0), w), min(max(o[3], 0), h)]
            assert max(abs(x - y) for x, y in zip(o, b)) < 2e-3, (f.name, o, b)  # 6 decimals x 1242 px
            n += 1
    assert n > 250


def test_kitti_merge_reproduces_kitti_1k(kitti_tiny, tmp_path):
    from yolokd.data.kitti import convert_kitti

    k1 = shared_file("kitti-1k/labels")
    convert_kitti(kitti_tiny, tmp_path, policy="merge")
    ours = _yolo(tmp_path)
    common = 0
    for split in ("train", "val"):
        for f in (k1 / split).glob("*.txt"):
            if f.stem not in ours:
                continue
            ref = sorted([float(v) for v in line.split()] for line in f.read_text().splitlines())
            mine = sorted(ours[f.stem])
            assert len(ref) == len(mine), f.stem
            for r, m in zip(ref, mine):
                assert r[0] == m[0] and max(abs(a - b) for a, b in zip(r[1:], m[1:])) <= 1e-5, (f.stem, r, m)
            common += 1
    assert common == 12  # the kitti-tiny frames that have a cyclist


def test_kitti_split_is_seeded_disjoint_and_8_2(kitti_tiny, tmp_path):
    from yolokd.data.kitti import convert_kitti

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    convert_kitti(kitti_tiny, a, seed=0)
    convert_kitti(kitti_tiny, b, seed=0)
    convert_kitti(kitti_tiny, c, seed=1)
    train, val = (a / "train.txt").read_text().split(), (a / "val.txt").read_text().split()
    assert (len(train), len(val)) == (60, 15)
    assert not set(train) & set(val) and len(set(train) | set(val)) == 75
    assert (b / "val.txt").read_text() == (a / "val.txt").read_text()
    assert (c / "val.txt").read_text() != (a / "val.txt").read_text()
    assert all((a / p).is_file() for p in train + val)


def test_kitti_output_loads_in_ultralytics(kitti_tiny, tmp_path):
    from ultralytics.data.utils import check_det_dataset

    from yolokd.data.kitti import convert_kitti

    yaml_path = convert_kitti(kitti_tiny, tmp_path, policy="papers")
    d = check_det_dataset(str(yaml_path))
    assert d["nc"] == 3 and d["names"] == {0: "car", 1: "pedestrian", 2: "cyclist"}
    from ultralytics.data.dataset import YOLODataset

    ds = YOLODataset(img_path=d["val"], data=d, augment=False, imgsz=320)
    assert len(ds) == 15
    n_val = sum(len(_yolo(tmp_path)[Path(p).stem]) for p in (tmp_path / "val.txt").read_text().split())
    assert sum(len(lb["cls"]) for lb in ds.labels) == n_val


def test_kitti_bad_input(tmp_path):
    from yolokd.data.kitti import convert_kitti

    with pytest.raises(FileNotFoundError, match="image_2"):
        convert_kitti(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="policy"):
        convert_kitti(tmp_path, tmp_path / "out", policy="nine")


def _coco_json() -> dict:
    cats = [(1, "person"), (2, "bicycle"), (3, "car"), (5, "airplane"), (13, "stop sign"), (17, "cat"), (18, "dog")]
    anns = [  # (image, category, bbox [x, y, w, h], iscrowd)
        (1, 3, [10, 20, 30, 40], 0),    # car: kept
        (1, 17, [0, 0, 50, 50], 0),     # cat: a class of the 13 -> kept in a kept image
        (1, 1, [5, 5, 10, 10], 1),      # crowd person: dropped
        (1, 5, [60, 60, 10, 10], 0),    # airplane: not one of the 13 -> dropped
        (2, 17, [1, 1, 2, 2], 0),       # image 2 has only cat and dog: no trigger -> image dropped
        (2, 18, [3, 3, 4, 4], 0),
        (3, 3, [0, 0, 20, 20], 1),      # image 3: only a crowd car -> kept, no boxes (background)
        (4, 13, [90, 150, 20, 20], 0),  # stop sign crossing the right/bottom edges -> clamped to 100 x 160
    ]
    return {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 100, "height": 160} for i in range(1, 6)],
        "categories": [{"id": i, "name": n} for i, n in cats],
        "annotations": [{"id": k, "image_id": im, "category_id": c, "bbox": b, "iscrowd": cr}
                        for k, (im, c, b, cr) in enumerate(anns)],
    }


def test_coco_traffic_filter_hand_computed(tmp_path):
    from PIL import Image

    from yolokd.data.coco_traffic import convert_coco_traffic

    js, imgs = tmp_path / "instances.json", tmp_path / "imgs"
    js.write_text(json.dumps(_coco_json()))
    imgs.mkdir()
    for i in range(1, 6):
        Image.new("RGB", (100, 160)).save(imgs / f"{i:012d}.jpg")
    out = convert_coco_traffic(js, imgs, tmp_path / "ct", split="val2017")
    labels = {f.stem: f.read_text().split("\n")[:-1] for f in (tmp_path / "ct/labels/val2017").glob("*.txt")}
    assert sorted(labels) == ["000000000001", "000000000003", "000000000004"]  # 2 (no trigger) and 5 (no boxes) gone
    # 13-class ids: person 0, bicycle 1, car 2, ..., stop sign 9, parking meter 10, cat 11, dog 12.
    assert labels["000000000001"] == ["2 0.250000 0.250000 0.300000 0.250000", "11 0.250000 0.156250 0.500000 0.312500"]
    assert labels["000000000003"] == []
    assert labels["000000000004"] == ["9 0.950000 0.968750 0.100000 0.062500"]
    assert sorted(p.name for p in (tmp_path / "ct/images/val2017").iterdir()) == [f"{k}.jpg" for k in sorted(labels)]
    import yaml

    cfg = yaml.safe_load(out.read_text())
    assert len(cfg["names"]) == 13 and cfg["names"][11] == "cat" and cfg["val"] == "images/val2017"


def test_coco_traffic_11_class_variant_and_errors(tmp_path):
    from yolokd.data.coco_traffic import filter_traffic, traffic_classes

    rows = filter_traffic(_coco_json(), traffic_classes(11))
    assert rows[1] == [(2, 0.25, 0.25, 0.3, 0.25)]  # cat is not a class of the 11-class variant
    with pytest.raises(ValueError, match="13-class"):
        traffic_classes(12)
