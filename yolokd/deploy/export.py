"""``yolokd export``: Ultralytics' exporter, then the checks a deployment needs.

The export itself is Ultralytics' (no hand-written exporter). Around it:

* every ONNX export is followed by a parity check on real images (``parity.py``) that fails the export loudly when
  broken;
* ``val=True`` validates the exported model with Ultralytics' validator and reports its mAP next to the checkpoint's,
  both at the exported input (square ``imgsz``, no rect), so the difference is the export's alone;
* ``format=jetson`` writes the device bundle (``jetson.py``);
* ``format=engine`` is checked up front: without TensorRT and a CUDA GPU it says what is missing and points at the
  bundle, instead of failing deep inside the exporter.

A JSON report (``<model>.export.json``) keeps every number printed.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from yolokd.deploy.parity import check_parity, parity_images


class DeployError(ValueError):
    """An export request that cannot be carried out here, with what to do instead."""


def checkpoint_path(model: str | Path | None) -> Path:
    """A checkpoint from ``model=``: a .pt file, or a run directory (its weights/best.pt, else weights/last.pt)."""
    if not model:
        raise DeployError("model= is required (a .pt checkpoint or a yolokd/Ultralytics run directory)")
    p = Path(model)
    if p.is_dir():
        for cand in (p / "weights" / "best.pt", p / "weights" / "last.pt", p / "best.pt"):
            if cand.exists():
                return cand
        raise FileNotFoundError(f"no weights/best.pt or weights/last.pt in run directory {p}")
    if not p.is_file():
        raise FileNotFoundError(f"model={model} not found")
    return p


def engine_requirements() -> list[str]:
    """What this machine lacks for ``format=engine`` (empty when it can build TensorRT engines)."""
    import torch

    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the TensorRT Python package (tensorrt)")
    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU visible to PyTorch (torch.cuda.is_available() is False)")
    return missing


def _val(weights: str | Path, data: str, imgsz: int) -> dict[str, float]:
    from ultralytics import YOLO

    m = YOLO(str(weights)).val(data=data, imgsz=imgsz, rect=False, batch=1, plots=False, verbose=False)
    return {"mAP50-95": float(m.box.map), "mAP50": float(m.box.map50)}


def export(model: str | Path, format: str = "onnx", imgsz: int | None = None, dynamic: bool = False,
           half: bool = False, int8: bool = False, data: str | None = None, batch: int = 1, parity: bool = True,
           images: str | Path | None = None, val: bool = False, calib: int = 200, **kwargs: Any) -> dict[str, Any]:
    """Export a checkpoint and check the result.

    Args:
        model: Checkpoint or run directory.
        format: Any Ultralytics format (``onnx``, ``engine``, ``openvino``, ...) or ``jetson`` (ONNX + device bundle).
        imgsz: Square input size (default: the checkpoint's training imgsz).
        dynamic: Dynamic batch and size (ONNX / TensorRT).
        half, int8: FP16 / INT8 export (Ultralytics' ``quantize=16`` / ``quantize=8``; INT8 calibrates on ``data``).
        data: Dataset YAML: parity images (val split), calibration images (train split), and ``val=True``.
        batch: Batch size of a static model, or the largest batch of a dynamic one.
        parity: Run the parity check after an ONNX export (default True).
        images: Folder or image for the parity check instead of ``data``'s val split.
        val: Validate the exported model and the checkpoint on ``data`` and report both mAPs.
        calib: Number of calibration images in a Jetson bundle.
        **kwargs: Further Ultralytics export arguments (``opset``, ``simplify``, ``device``, ...).

    Returns:
        A report: ``exported`` path, ``parity`` (ONNX), ``val`` (when asked), ``bundle`` (jetson).
    """
    from ultralytics import YOLO

    pt = checkpoint_path(model)
    fmt = str(format).lower()
    if fmt == "engine":
        missing = engine_requirements()
        if missing:
            raise DeployError(
                f"format=engine builds a TensorRT engine on this machine, which lacks {' and '.join(missing)}. "
                f"Engines must be built on the GPU that runs them: for a Jetson, make the device bundle here "
                f"(yolokd export model={model} format=jetson data=<data.yaml>) and build the engine on the Jetson.")
    if fmt == "jetson" and data is None:
        raise DeployError("format=jetson needs data=<data.yaml>: the INT8 calibration images come from its train split")
    if (val or int8) and data is None:
        raise DeployError(f"{'val=True' if val else 'int8=True'} needs data=<data.yaml>")
    from yolokd.engine.models import load_model_file

    load_model_file(pt, "model")  # a corrupt or non-detection file fails here, with what is wrong and what to pass
    yolo = YOLO(str(pt))
    size = int(imgsz or (yolo.ckpt or {}).get("train_args", {}).get("imgsz", 640))
    args: dict[str, Any] = dict(format="onnx" if fmt == "jetson" else fmt, imgsz=size, dynamic=dynamic, batch=batch,
                                **kwargs)
    if int8 or half:
        args["quantize"] = 8 if int8 else 16
    if data is not None:
        args["data"] = data
    exported = Path(yolo.export(**args))
    report: dict[str, Any] = {"model": str(pt), "format": fmt, "exported": str(exported), "imgsz": size}
    if args["format"] == "onnx" and parity:
        imgs = parity_images(images, data)
        rep = check_parity(pt, exported, imgs, size, precision="int8" if int8 else None)
        report["parity"] = asdict(rep)
        print(f"yolokd export: parity on {rep.images} images: max |diff| boxes {rep.max_abs_diff_box_px:.3g} px, scores "
              f"{rep.max_abs_diff_score:.3g}; {rep.matched}/{rep.detections_pt} detections matched (IoU >= 0.99) "
              f"-> {'OK' if rep.passed else 'FAILED'}")
    if val:
        m_pt, m_ex = _val(pt, data, size), _val(exported, data, size)
        report["val"] = {"checkpoint": m_pt, "exported": m_ex,
                         "delta_mAP50-95": m_ex["mAP50-95"] - m_pt["mAP50-95"], "settings": f"imgsz {size}, no rect"}
        print(f"yolokd export: mAP50-95 {m_pt['mAP50-95']:.4f} (.pt) vs {m_ex['mAP50-95']:.4f} ({exported.suffix}), "
              f"mAP50 {m_pt['mAP50']:.4f} vs {m_ex['mAP50']:.4f} on {data}")
    if fmt == "jetson":
        from yolokd.deploy.jetson import calibration_images, write_bundle

        names = yolo.names
        bundle = write_bundle(pt, exported, exported.with_name(f"{pt.stem}_jetson"), names, size, dynamic,
                              calibration_images(data, calib), report.get("parity"), batch=batch)
        report["bundle"] = str(bundle)
        print(f"yolokd export: Jetson bundle {bundle} (see its README.md)")
    Path(str(exported) + ".export.json").write_text(json.dumps(report, indent=1, default=str))
    return report
