"""Export of a distilled student: ONNX parity on real images, exported-model mAP, the Jetson bundle, clear errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import shared_file


@pytest.fixture(scope="module")
def coco16(tmp_path_factory) -> str:
    """16 train + 16 val real COCO images (from ../shared/data/coco128) in a writable folder."""
    src = shared_file("coco128/coco128.yaml").parent
    dst = tmp_path_factory.mktemp("coco16")
    for split in ("train2017", "val2017"):
        (dst / "images" / split).mkdir(parents=True)
        (dst / "labels" / split).mkdir(parents=True)
        imgs = sorted((src / "images" / split).glob("*.jpg"))
        for img in [i for i in imgs if (src / "labels" / split / f"{i.stem}.txt").exists()][:16]:
            shutil.copy2(img, dst / "images" / split / img.name)
            shutil.copy2(src / "labels" / split / f"{img.stem}.txt", dst / "labels" / split / f"{img.stem}.txt")
    cfg = yaml.safe_load((src / "coco128.yaml").read_text())
    (dst / "coco16.yaml").write_text(yaml.safe_dump({"train": "images/train2017", "val": "images/val2017",
                                                     "names": cfg["names"]}))
    return str(dst / "coco16.yaml")


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, coco16) -> Path:
    """A run directory of a student distilled from the official yolov8n.pt (so it detects things), one short epoch."""
    from yolokd.engine.trainer import KDTrainer

    n, s = shared_file("weights/yolov8n.pt"), shared_file("weights/yolov8s.pt")
    out = tmp_path_factory.mktemp("distilled")
    tr = KDTrainer(overrides=dict(teacher=str(s), student=str(n), method="mimic", data=coco16, epochs=1, imgsz=320,
                                  batch=8, workers=0, device="cpu", optimizer="SGD", lr0=1e-5, warmup_epochs=0,
                                  val=False, plots=False, project=str(out), name="run", exist_ok=True))
    tr.train()
    return Path(tr.save_dir)


def test_distilled_checkpoint_has_exactly_the_plain_students_state(distilled):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from yolokd.deploy.export import checkpoint_path

    ckpt = torch.load(checkpoint_path(distilled), map_location="cpu", weights_only=False)
    got = {k: tuple(v.shape) for k, v in ckpt["model"].state_dict().items()}
    plain = {k: tuple(v.shape) for k, v in DetectionModel("yolov8n.yaml", nc=80, verbose=False).state_dict().items()}
    assert got == plain


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_export_parity_on_real_images(distilled, coco16, dynamic):
    from yolokd.deploy.export import export

    val_dir = Path(coco16).parent / "images" / "val2017"
    rep = export(distilled, format="onnx", imgsz=640, dynamic=dynamic, images=val_dir)
    p = rep["parity"]
    assert p["passed"] and p["images"] == 16 and p["precision"] == "fp32"
    assert p["max_abs_diff_box_px"] <= 5e-3 and p["max_abs_diff_score"] <= 5e-4
    assert p["matched"] >= 10 and p["unmatched"] == [] and p["min_matched_iou"] >= 0.99
    assert p["detections_pt"] == p["matched"]  # one-to-one: every checkpoint detection has its ONNX twin
    saved = json.loads(Path(rep["exported"] + ".parity.json").read_text())
    assert saved["matched"] == p["matched"] and Path(rep["exported"] + ".export.json").exists()
    import onnx

    dims = onnx.load(rep["exported"]).graph.input[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param != "") == dynamic  # a dynamic export really has a symbolic batch dimension


def test_parity_check_catches_a_model_that_differs(distilled, coco16, tmp_path):
    import torch

    from yolokd.deploy.export import checkpoint_path, export
    from yolokd.deploy.parity import ParityError, check_parity, parity_images

    rep = export(distilled, format="onnx", imgsz=320, parity=False)
    ckpt = torch.load(checkpoint_path(distilled), map_location="cpu", weights_only=False)
    with torch.no_grad():
        ckpt["model"].model[-1].cv3[0][2].bias.add_(0.5)  # P3 class logits shifted: scores change, boxes do not
    bad = tmp_path / "perturbed.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ParityError, match="disagrees"):
        check_parity(bad, rep["exported"], parity_images(data=coco16), 320)
    saved = json.loads(Path(rep["exported"] + ".parity.json").read_text())
    assert saved["passed"] is False and saved["max_abs_diff_score"] > 5e-4


def test_exported_onnx_validates_like_the_checkpoint(distilled, coco16):
    from yolokd.deploy.export import export

    rep = export(distilled, format="onnx", imgsz=320, val=True, data=coco16)
    v = rep["val"]
    assert v["checkpoint"]["mAP50-95"] > 0.1  # the student detects things: a non-trivial comparison
    assert abs(v["delta_mAP50-95"]) < 0.005 and abs(v["exported"]["mAP50"] - v["checkpoint"]["mAP50"]) < 0.005


def test_jetson_bundle_is_complete_and_its_calibration_script_runs_until_tensorrt(distilled, coco16):
    from yolokd.deploy.export import export

    rep = export(distilled, format="jetson", imgsz=320, data=coco16, calib=8)
    b = Path(rep["bundle"])
    manifest = json.loads((b / "bundle.json").read_text())
    for f in manifest["files"]:
        assert (b / f).exists(), f
    for f in ("model.onnx", "model.onnx.parity.json", "labels.txt", "build_engine.py", "build_fp16.sh",
              "calib_data.yaml", "best.pt", "README.md", "calib/list.txt"):
        assert (b / f).is_file(), f
    assert len((b / "labels.txt").read_text().splitlines()) == 80
    calib = [p for p in (b / "calib").iterdir() if p.suffix == ".jpg"]
    assert len(calib) == 8 and sorted(p.name for p in calib) == (b / "calib" / "list.txt").read_text().split()
    # Every file the README and the shell script name exists, except the engines and cache they are there to create.
    text = (b / "README.md").read_text() + (b / "build_fp16.sh").read_text()
    named = set(re.findall(r"[\w./-]+\.(?:onnx|py|sh|txt|yaml|pt|json|engine|cache)\b", text))
    outputs = {"model_fp16.engine", "model_int8.engine", "calib.cache"}
    assert {"model.onnx", "build_engine.py", "build_fp16.sh", "calib_data.yaml", "best.pt"} <= named
    for name in named - outputs:
        if "/" in name and not name.startswith("calib"):
            continue  # absolute device paths such as /usr/src/tensorrt/bin/trtexec
        assert (b / name).exists(), f"README names {name}, which the bundle lacks"
    assert subprocess.run(["sh", "-n", str(b / "build_fp16.sh")]).returncode == 0
    assert "--onnx=model.onnx" in (b / "build_fp16.sh").read_text()
    r = subprocess.run([sys.executable, "build_engine.py", "--int8"], cwd=b, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr  # EXIT_NO_TENSORRT: everything before the TensorRT import ran
    assert "calibration: 8 images preprocessed to batches of shape (8, 3, 320, 320)" in r.stdout
    assert "TensorRT Python package is not installed" in r.stderr
    cal = yaml.safe_load((b / "calib_data.yaml").read_text())
    assert cal["val"] == "calib" and "path" not in cal and len(cal["names"]) == 80


def test_engine_without_tensorrt_says_what_is_missing(distilled):
    from yolokd.deploy.export import DeployError, engine_requirements, export

    if not engine_requirements():
        pytest.skip("this machine has TensorRT and a GPU: format=engine builds for real")
    with pytest.raises(DeployError, match=r"TensorRT.*format=jetson"):
        export(distilled, format="engine")
    with pytest.raises(DeployError, match="data="):
        export(distilled, format="jetson")
