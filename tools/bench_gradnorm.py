#!/usr/bin/env python
"""Gradient norms of a method's own parameters (connectors, GcBlocks, generators) in the first training steps.

Why it matters: Ultralytics clips the student's gradients to norm 10 and never saw the method's parameters; yolokd
clips them too (``KDTrainer.METHOD_MAX_NORM``). This prints how large the method's gradient norms are before
clipping, on the synthetic-ft setting (800 synthetic training images, imgsz 320 rect, batch 16, COCO yolov8n student),
so one can see which methods the clip touches.

    python tools/bench_gradnorm.py --teacher ~/.cache/yolokd/teachers/yolov8s-data-c96935bfd60f/weights/best.pt \\
        --methods ultralytics,mimic,fgd --steps 6
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")


def norms(method: str, teacher: str, data: str, steps: int, tmp: str) -> tuple[list[float], float]:
    """The method's gradient norm on each of the first ``steps`` batches (no optimizer step), and the student's last."""
    import torch

    from yolokd.bench.protocol import resolve_weights
    from yolokd.engine.trainer import KDTrainer

    tr = KDTrainer(overrides=dict(teacher=teacher, student=resolve_weights("yolov8n.pt"), method=method, data=data,
                                  imgsz=320, rect=True, batch=16, workers=0, device="cpu", plots=False, val=False,
                                  project=tmp, name=method, exist_ok=True, warmup_epochs=1))
    tr._setup_train()
    tr.model.train()
    out, student = [], 0.0
    for i, b in enumerate(tr.train_loader):
        loss, _ = tr.model(tr.preprocess_batch(b))
        loss.sum().backward()
        ps = [p for p in tr.method.parameters() if p.grad is not None]
        out.append(float(torch.nn.utils.clip_grad_norm_(ps, float("inf"))) if ps else 0.0)
        student = float(torch.nn.utils.clip_grad_norm_(tr.model.parameters(), float("inf")))
        tr.optimizer.zero_grad()
        if i + 1 == steps:
            break
    return out, student


def main() -> None:
    """CLI."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="a teacher trained on the synthetic classes (e.g. the cached one)")
    ap.add_argument("--methods", default="ultralytics,mimic,fgd")
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()

    from yolokd.data.synthetic import synthetic_dataset

    data = str(synthetic_dataset(n_train=800, n_val=400, seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.methods.split(","):
            n, s = norms(m, a.teacher, data, a.steps, tmp)
            print(f"{m}: method gradient norms {[round(x, 2) for x in n]}; student's at the last step {s:.2f}", flush=True)


if __name__ == "__main__":
    main()
