"""The Jetson bundle: everything needed to build and run the model on the device, where engines must be built.

TensorRT engines are specific to the GPU and TensorRT version that built them, and Ultralytics' ``.engine`` starts with
a metadata header that trtexec and DeepStream cannot read; so the portable artifact is the ONNX model, and the bundle
carries the recipes to turn it into an engine on the device (``../shared/docs/landscape.md``, Jetson conventions):

    <name>_jetson/
      model.onnx          the exported model (its parity report: model.onnx.parity.json)
      labels.txt          one class name per line (DeepStream's labelfile-path format)
      calib/              calibration images drawn (seeded) from the training split; calib/list.txt names them
      build_engine.py     TensorRT Python API build: --fp16, or --int8 with an entropy calibrator over calib/
      build_fp16.sh       the trtexec command line of the FP16 build
      calib_data.yaml     dataset YAML over calib/ for Ultralytics' own INT8 export on the device (the other INT8 route)
      best.pt             the checkpoint, for that route
      bundle.json         manifest: files, input/output layout, preprocessing, class names, parity summary
      README.md           the commands, in order
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import yaml

TEMPLATES = Path(__file__).resolve().parent / "templates"


def calibration_images(data: str, n: int, seed: int = 0) -> list[Path]:
    """``n`` images drawn with ``seed`` from the dataset's train split (the distribution the model will see)."""
    from ultralytics.data.utils import check_det_dataset

    from yolokd.deploy.parity import IMAGE_SUFFIXES

    train = check_det_dataset(data)["train"]
    files: list[Path] = []
    for t in train if isinstance(train, list) else [train]:
        t = Path(t)
        if t.is_dir():
            files += sorted(f for f in t.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif t.suffix == ".txt":
            files += [(t.parent / s.strip()).resolve() for s in t.read_text().splitlines() if s.strip()]
    if not files:
        raise FileNotFoundError(f"no training images found through data={data} for INT8 calibration")
    rng = random.Random(seed)
    return sorted(rng.sample(files, min(n, len(files))))


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write_bundle(pt: Path, onnx: Path, out: Path, names: dict[int, str], imgsz: int, dynamic: bool,
                 calib: list[Path], parity: dict[str, Any] | None, batch: int = 1) -> Path:
    """Assemble the bundle folder ``out`` and return it. Every file the README names is written here."""
    if out.exists():
        shutil.rmtree(out)
    (out / "calib").mkdir(parents=True)
    shutil.copy2(onnx, out / "model.onnx")
    if Path(str(onnx) + ".parity.json").exists():
        shutil.copy2(str(onnx) + ".parity.json", out / "model.onnx.parity.json")
    shutil.copy2(pt, out / "best.pt")
    shutil.copy2(TEMPLATES / "build_engine.py", out / "build_engine.py")
    labels = [names[i] for i in sorted(names)]
    (out / "labels.txt").write_text("\n".join(labels) + "\n")
    for i, f in enumerate(calib):
        shutil.copy2(f, out / "calib" / f"{i:04d}_{f.name}")
    listed = sorted(p.name for p in (out / "calib").iterdir())
    (out / "calib" / "list.txt").write_text("".join(f"{n}\n" for n in listed))
    # No 'path' key: Ultralytics then resolves calib/ against this YAML's folder (a relative 'path' would be
    # resolved against its global datasets dir instead).
    (out / "calib_data.yaml").write_text(yaml.safe_dump(
        {"train": "calib", "val": "calib", "names": dict(enumerate(labels))}, sort_keys=False))
    shapes = (f" --minShapes=images:1x3x{imgsz}x{imgsz} --optShapes=images:{batch}x3x{imgsz}x{imgsz}"
              f" --maxShapes=images:{batch}x3x{imgsz}x{imgsz}") if dynamic else ""
    fp16 = f"/usr/src/tensorrt/bin/trtexec --onnx=model.onnx --saveEngine=model_fp16.engine --fp16{shapes}"
    (out / "build_fp16.sh").write_text(f"#!/bin/sh\n# FP16 engine, built on the Jetson itself.\ncd \"$(dirname \"$0\")\"\n"
                                       f"{fp16}\n")
    (out / "build_fp16.sh").chmod(0o755)
    n_out = 4 + len(labels)
    manifest = {
        "model": "model.onnx", "sha256": _sha256(out / "model.onnx"), "checkpoint": "best.pt",
        "input": {"name": "images", "shape": ["batch" if dynamic else 1, 3, imgsz, imgsz], "dtype": "float32",
                  "preprocess": "letterbox to imgsz keeping aspect ratio, pad value 114, BGR->RGB, HWC->CHW, /255"},
        "output": {"name": "output0", "shape": ["batch" if dynamic else 1, n_out, "anchors"],
                   "layout": "per anchor: cx, cy, w, h (pixels of the letterboxed input), then one sigmoid score per "
                             "class; no NMS in the graph"},
        "imgsz": imgsz, "dynamic": dynamic, "max_batch": batch, "names": labels, "calibration_images": len(calib),
        "parity": parity,
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.parent.name != "calib")
        + ["calib/"],
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=1))
    (out / "README.md").write_text(_readme(manifest, fp16, dynamic, batch))
    return out


def _readme(m: dict[str, Any], fp16: str, dynamic: bool, batch: int) -> str:
    """The bundle's README: the device-side commands in order, naming only files of the bundle."""
    p = m["parity"] or {}
    parity = (f"max |diff| boxes {p.get('max_abs_diff_box_px', float('nan')):.2g} px, scores "
              f"{p.get('max_abs_diff_score', float('nan')):.2g}; {p.get('matched', 0)} of {p.get('detections_pt', 0)} "
              f"detections matched (IoU >= 0.99)") if p else "not run"
    dyn = f" --batch {batch}" if dynamic else ""
    return f"""# Jetson bundle (written by yolokd)

`model.onnx`: {m['input']['shape']} float32 input `images`, output `output0` {m['output']['shape']}
({m['output']['layout']}). Classes: `labels.txt` ({len(m['names'])}). Parity with `best.pt` on the workstation:
{parity} (`model.onnx.parity.json`).

Engines are built **on the Jetson** (an engine only runs on the GPU and TensorRT version that built it).
Copy this folder to the device, then from inside it:

1. FP16 engine with trtexec (JetPack ships it in /usr/src/tensorrt/bin):

       sh build_fp16.sh

   which runs `{fp16}`.

2. INT8 engine, calibrated on the device on the {m['calibration_images']} images in `calib/` (drawn from the
   training split), with TensorRT's entropy calibrator; scales are cached in `calib.cache`:

       python3 build_engine.py --int8{dyn}

   (`python3 build_engine.py --fp16{dyn}` builds FP16 through the same script.) trtexec alone cannot calibrate
   from images.

3. Or Ultralytics' own route, if `ultralytics` is installed on the device (INT8 calibrates on `calib/` through
   `calib_data.yaml`; the result carries Ultralytics' metadata header, so it runs with Ultralytics, not trtexec or
   DeepStream):

       yolo export model=best.pt format=engine imgsz={m['imgsz']} int8=True data=calib_data.yaml

Preprocessing: {m['input']['preprocess']}. Post-processing: class-wise NMS on the output (Ultralytics: conf 0.25,
IoU 0.7). DeepStream: see yolokd's `docs/deploy.md` (nvinfer with `labels.txt` and a YOLOv8 output parser).
"""
