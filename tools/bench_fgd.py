#!/usr/bin/env python
"""Cost of the FGD loss (forward + backward) against one yolov8n training step, interleaved.

    python tools/bench_fgd.py                      # imgsz 640, batch 16, 50 boxes per image (issue acceptance)
    python tools/bench_fgd.py --imgsz 320 --batch 8 --boxes 20 --rounds 10

Per round: one full yolov8n training step (forward, Ultralytics detection loss, backward) on a random batch, then one
FGD forward + backward on neck features of the yolov8n student / yolov8s teacher shapes at the same size (student
features require grad, the adapters and GcBlocks are trained, teacher features are constants). The ratio of the two
medians is the acceptance figure (<= 0.10); per-round ratios give the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def random_boxes(batch: int, per_image: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised xywh boxes (sizes 2-30% of the image), class ids and image indices, ``per_image`` in every image."""
    n = batch * per_image
    wh = torch.rand(n, 2, generator=gen) * 0.28 + 0.02
    xy = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    idx = torch.arange(batch).repeat_interleave(per_image).float()
    return torch.cat([xy, wh], 1), torch.randint(0, 3, (n, 1), generator=gen).float(), idx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--boxes", type=int, default=50, help="boxes per image")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (Ultralytics' CPU default here: cores - 1)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import yolokd  # noqa: F401
    from yolokd.utils.offline import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG

    from yolokd.engine.models import head_channels
    from yolokd.methods import KDBatch, build_method, reduce_terms

    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=3, verbose=False).train()
    student.args = get_cfg(DEFAULT_CFG)
    teacher = DetectionModel("yolov8s.yaml", nc=3, verbose=False)
    s_ch, t_ch = head_channels(student), head_channels(teacher)
    fgd = build_method("fgd", s_ch, t_ch).train()
    params = list(student.parameters()) + list(fgd.parameters())
    bboxes, cls, idx = random_boxes(a.batch, a.boxes, gen)
    img = torch.rand(a.batch, 3, a.imgsz, a.imgsz, generator=gen)
    batch = {"img": img, "bboxes": bboxes, "cls": cls, "batch_idx": idx}
    strides = (8, 16, 32)
    s_feats = [torch.randn(a.batch, c, a.imgsz // s, a.imgsz // s, generator=gen, requires_grad=True)
               for c, s in zip(s_ch, strides)]
    t_feats = [torch.randn(a.batch, c, a.imgsz // s, a.imgsz // s, generator=gen) for c, s in zip(t_ch, strides)]

    def student_step() -> None:
        loss, _ = student.loss(batch)
        loss.sum().backward()
        for p in params:
            p.grad = None

    def fgd_step() -> None:
        terms = fgd(KDBatch(student_feats=s_feats, teacher_feats=t_feats, batch=batch))
        loss, _ = reduce_terms(terms, a.batch)
        loss.sum().backward()
        for p in [*params, *s_feats]:
            p.grad = None

    for _ in range(a.warmup):
        student_step()
        fgd_step()
    t_s, t_f = [], []
    for _ in range(a.rounds):
        for fn, out in ((student_step, t_s), (fgd_step, t_f)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    ratios = sorted(f / s for f, s in zip(t_f, t_s))
    res = {
        "command": f"python tools/bench_fgd.py --imgsz {a.imgsz} --batch {a.batch} --boxes {a.boxes} "
                   f"--rounds {a.rounds} --threads {a.threads}",
        "student_step_s": {"median": statistics.median(t_s), "min": min(t_s), "max": max(t_s)},
        "fgd_fwd_bwd_s": {"median": statistics.median(t_f), "min": min(t_f), "max": max(t_f)},
        "ratio_of_medians": statistics.median(t_f) / statistics.median(t_s),
        "per_round_ratio": {"min": ratios[0], "median": statistics.median(ratios), "max": ratios[-1]},
    }
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
