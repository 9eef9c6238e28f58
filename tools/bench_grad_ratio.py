#!/usr/bin/env python
"""How hard does each KD term pull on the student? Its gradient norm over the detection loss's, before training.

A method's weights set how much of the student's update the distillation drives. The loss ratio (``kd_det_ratio``)
is a poor proxy for it: an L2-norm term (FKD) has a gradient of about its weight whatever its value, and a large term
can be flat in the student's parameters. This sets up a real ``KDTrainer`` per row (the same data pipeline and
augmentation as training), runs the first ``--batches`` training batches without an optimizer step, and prints per term
||d term / d theta|| / ||d det / d theta|| over the student's parameters theta (mean over the batches), the total, and
the loss ratio. Training logs the total once an epoch (``train/kd_det_grad_ratio``).

    python tools/bench_grad_ratio.py --teacher teacher.pt --student yolov8n.pt --data kitti.yaml --imgsz 640 \\
        --methods ld,fgd,gkd,gkd:beta=1,fkd --batches 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import parse_row  # noqa: E402


def ratios(row: str, teacher: str, student: str, data: str, imgsz: int, batch: int, rect: bool, n_batches: int,
           tmp: str) -> dict[str, float]:
    """{term: mean gradient ratio, "total": ..., "loss_ratio": ...} of one method row over the first batches."""
    import torch

    from yolokd.engine.criterion import grad_norm
    from yolokd.engine.trainer import KDTrainer

    method, hparams = parse_row(row)
    torch.manual_seed(0)
    tr = KDTrainer(overrides=dict(teacher=teacher, student=student, method=method, data=data, imgsz=imgsz,
                                  rect=rect, batch=batch, workers=0, device="cpu", plots=False, val=False, project=tmp,
                                  name=row.replace(":", "_"), exist_ok=True, amp=False, **hparams))
    tr._setup_train()
    tr.model.train()
    params = [p for p in tr.model.parameters() if p.requires_grad]
    names = tr.method.term_names if tr.method is not None else ()
    sums: dict[str, float] = {}
    for i, b in enumerate(tr.train_loader):
        if i == n_batches:
            break
        loss, _ = tr.model(tr.preprocess_batch(b))
        det = loss[:3].sum()
        d = grad_norm(det, params)  # once per batch: every term's ratio shares it
        for j, t in enumerate(names):
            sums[t] = sums.get(t, 0.0) + grad_norm(loss[3 + j], params) / d
        sums["total"] = sums.get("total", 0.0) + grad_norm(loss[3:].sum(), params) / d
        sums["loss_ratio"] = sums.get("loss_ratio", 0.0) + float(loss[3:].sum() / det)
    n = min(n_batches, len(tr.train_loader))
    return {k: v / n for k, v in sums.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True, help="weights (.pt) or a model YAML (from scratch)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--methods", default="fgd,ld", help="rows: method[:key=value...], comma-separated")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rect", action="store_true", help="rectangular batches (as the synthetic protocols)")
    ap.add_argument("--batches", type=int, default=4, help="training batches averaged per row")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in a.methods.split(","):
            r = ratios(row, a.teacher, a.student, a.data, a.imgsz, a.batch, a.rect, a.batches, tmp)
            out[row] = r
            terms = " ".join(f"{k} {v:.3g}" for k, v in r.items() if k not in {"total", "loss_ratio"})
            print(f"{row:28s} gradient ratio {r.get('total', math.nan):.3g} ({terms}); loss ratio "
                  f"{r.get('loss_ratio', math.nan):.3g}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
