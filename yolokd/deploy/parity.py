"""Numerical parity of an exported ONNX model with its PyTorch checkpoint, on real images.

Two checks, because each misses what the other catches:

* raw outputs: the largest absolute difference of the box channels (pixels) and of the class scores over every anchor
  of every image; catches a wrong op, layout or precision anywhere in the graph;
* final detections: NMS on both outputs, then a one-to-one match by class and IoU >= 0.99; catches what a user would
  see. A detection that sits within ``conf_margin`` of the confidence threshold on the other side still counts as
  matched (a 1e-6 difference must not flip a verdict).

The reference is the checkpoint as ``YOLO(pt).predict`` runs it: fused, fp32, eval mode.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Documented tolerances per exported precision (raw box channels in pixels at the export size, class scores in [0, 1]).
#: fp32: Ultralytics' own export measures ~1.2e-4 px on boxes at 640; 5e-3 px leaves room for other CPUs / ORT builds.
TOLERANCES = {"fp32": {"box_px": 5e-3, "score": 5e-4}, "fp16": {"box_px": 1.0, "score": 1e-2}}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ParityError(RuntimeError):
    """The exported model disagrees with the checkpoint beyond the documented tolerance."""


@dataclass
class ParityReport:
    """What ``check_parity`` measured; saved as JSON next to the exported model."""

    model: str
    exported: str
    precision: str
    imgsz: int
    images: int
    max_abs_diff_box_px: float
    max_abs_diff_score: float
    tolerance: dict[str, float]
    detections_pt: int
    detections_exported: int
    matched: int
    min_matched_iou: float
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False

    def save(self, path: Path) -> None:
        """Write the report as JSON."""
        path.write_text(json.dumps(asdict(self), indent=1))


def parity_images(source: str | Path | None = None, data: str | None = None, n: int = 16) -> list[Path]:
    """Real images for the check: ``source`` (a folder or a file list), else ``data``'s val split, else Ultralytics' samples."""
    if source is not None:
        p = Path(source)
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
    elif data is not None:
        from ultralytics.data.utils import check_det_dataset

        val = check_det_dataset(data)["val"]
        vals = val if isinstance(val, list) else [val]
        files = []
        for v in vals:
            v = Path(v)
            if v.is_dir():
                files += sorted(f for f in v.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            elif v.suffix == ".txt":  # a list file, paths relative to its folder
                files += [(v.parent / line.strip()).resolve() for line in v.read_text().splitlines() if line.strip()]
    else:
        from ultralytics.utils import ASSETS

        files = sorted(f for f in Path(ASSETS).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    files = [f for f in files if f.is_file()][:n]
    if not files:
        raise FileNotFoundError(f"no images for the parity check (source={source}, data={data})")
    return files


def letterbox(path: Path, imgsz: int) -> np.ndarray:
    """(1, 3, imgsz, imgsz) float32 RGB in [0, 1], letterboxed with Ultralytics' own transform (grey 114 padding)."""
    import cv2
    from ultralytics.data.augment import LetterBox

    im = cv2.imread(str(path))
    if im is None:
        raise ValueError(f"cannot read image {path}")
    im = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)(image=im)
    return np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def _detections(y, conf: float, iou: float, end2end: bool) -> list[np.ndarray]:
    """(k, 6) arrays [x1, y1, x2, y2, score, cls] per image, at confidence ``conf``."""
    import torch
    from ultralytics.utils.nms import non_max_suppression

    y = torch.as_tensor(y)
    if end2end:  # (N, max_det, 6) already post-processed by the model
        return [d[d[:, 4] >= conf].numpy() for d in y]
    return [d.numpy() for d in non_max_suppression(y, conf_thres=conf, iou_thres=iou)]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (m, 4) and (k, 4) xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def match(ref: np.ndarray, other: np.ndarray, min_iou: float = 0.99) -> tuple[list[tuple[int, int, float]], list[int]]:
    """Greedy one-to-one match of ``ref`` detections (by score) to ``other`` with the same class and IoU >= min_iou.

    Returns:
        (matches as (i_ref, j_other, iou), indices of unmatched ref detections).
    """
    if len(ref) == 0:
        return [], []
    ious = _iou(ref, other) if len(other) else np.zeros((len(ref), 0))
    used: set[int] = set()
    matches, unmatched = [], []
    for i in np.argsort(-ref[:, 4]):
        cands = [j for j in np.argsort(-ious[i]) if j not in used and other[j, 5] == ref[i, 5] and ious[i, j] >= min_iou]
        if cands:
            used.add(cands[0])
            matches.append((int(i), int(cands[0]), float(ious[i, cands[0]])))
        else:
            unmatched.append(int(i))
    return matches, unmatched


def check_parity(pt: str | Path, exported: str | Path, images: list[Path], imgsz: int, precision: str | None = None,
                 conf: float = 0.25, iou: float = 0.7, conf_margin: float = 0.02, raise_on_fail: bool = True,
                 ) -> ParityReport:
    """Compare a checkpoint with its ONNX export on ``images``; save ``<exported>.parity.json``; raise if broken.

    Args:
        pt: The PyTorch checkpoint.
        exported: The ONNX file exported from it.
        images: Real images (see ``parity_images``).
        imgsz: Square export size.
        precision: ``fp32`` or ``fp16`` (selects the tolerance; default: read from the ONNX input type), or ``int8``
            (reported, not enforced: quantisation error is data dependent; judge an INT8 model by its mAP).
        conf, iou: NMS settings of the detection check (Ultralytics' predict defaults are 0.25 / 0.7).
        conf_margin: A detection unmatched within this margin of ``conf`` on the other side is a threshold tie, not
            a disagreement.
        raise_on_fail: Raise ``ParityError`` when a check fails (the report is saved first).
    """
    import onnxruntime as ort
    import torch
    from ultralytics import YOLO

    model = YOLO(str(pt)).model.float().eval()
    model = model.fuse() if hasattr(model, "fuse") else model
    head = model.model[-1]
    end2end = bool(getattr(head, "end2end", False))
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    if precision is None:
        precision = "fp16" if sess.get_inputs()[0].type == "tensor(float16)" else "fp32"
    box_d = score_d = 0.0
    det_pt, det_ex = [], []
    lo = max(conf - conf_margin, 0.001)
    for f in images:
        x = letterbox(f, imgsz)
        with torch.inference_mode():
            yp = model(torch.from_numpy(x))
        yp = (yp[0] if isinstance(yp, (tuple, list)) else yp).numpy()
        ye = sess.run(None, {name: x.astype(np.float16) if precision == "fp16" else x})[0].astype(np.float32)
        if yp.shape != ye.shape:
            raise ParityError(f"output shapes differ: PyTorch {yp.shape}, {Path(exported).name} {ye.shape}")
        if not end2end:
            box_d = max(box_d, float(np.abs(yp[:, :4] - ye[:, :4]).max()))
            score_d = max(score_d, float(np.abs(yp[:, 4:] - ye[:, 4:]).max()))
        det_pt.append((_detections(yp, conf, iou, end2end)[0], _detections(yp, lo, iou, end2end)[0]))
        det_ex.append((_detections(ye, conf, iou, end2end)[0], _detections(ye, lo, iou, end2end)[0]))
    n_pt = n_ex = n_match = 0
    min_iou, unmatched = 1.0, []
    for f, (p_hi, p_lo), (e_hi, e_lo) in zip(images, det_pt, det_ex):
        m, um = match(p_hi, e_lo)
        m2, um2 = match(e_hi, p_lo)
        n_pt, n_ex, n_match = n_pt + len(p_hi), n_ex + len(e_hi), n_match + len(m)
        min_iou = min([min_iou] + [t[2] for t in m])
        unmatched += [{"image": f.name, "side": "pt", "det": p_hi[i].round(2).tolist()} for i in um]
        unmatched += [{"image": f.name, "side": "exported", "det": e_hi[i].round(2).tolist()} for i in um2]
    tol = TOLERANCES.get(precision, {"box_px": float("inf"), "score": float("inf")})
    rep = ParityReport(model=str(pt), exported=str(exported), precision=precision, imgsz=imgsz, images=len(images),
                       max_abs_diff_box_px=box_d, max_abs_diff_score=score_d, tolerance=tol, detections_pt=n_pt,
                       detections_exported=n_ex, matched=n_match, min_matched_iou=min_iou, unmatched=unmatched)
    rep.passed = box_d <= tol["box_px"] and score_d <= tol["score"] and (not unmatched or precision == "int8")
    rep.save(Path(str(exported) + ".parity.json"))
    if raise_on_fail and not rep.passed:
        raise ParityError(
            f"{Path(exported).name} disagrees with {Path(pt).name} on {len(images)} images: max |diff| boxes "
            f"{box_d:.3g} px (tol {tol['box_px']}), scores {score_d:.3g} (tol {tol['score']}), {len(unmatched)} "
            f"unmatched detection(s) of {n_pt} / {n_ex}. Report: {exported}.parity.json")
    return rep
