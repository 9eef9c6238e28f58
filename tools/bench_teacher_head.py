#!/usr/bin/env python
"""How much of the teacher's forward is its Detect head: what a method needing the teacher's outputs pays over a
feature-only one.

Feature methods (mimic, FGD, CWD, PKD, MGD, FKD) stop the frozen teacher at its Detect inputs (``skip_head``); methods
that read the teacher's predictions or its own loss (LD, GKD, AID) run the head too. Interleaved rounds of both
forwards on the same batch, no grad, fused teacher.

    python tools/bench_teacher_head.py                       # teacher yolov8s.yaml, imgsz 320, batch 8, 2 threads
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def main() -> None:
    """CLI."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="yolov8s.yaml")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from yolokd.engine.criterion import skip_head
    from yolokd.engine.models import load_teacher

    data = {"nc": 3, "names": {0: "car", 1: "pedestrian", 2: "cyclist"}, "channels": 3}
    full = load_teacher(a.teacher, data)
    feats_only = copy.deepcopy(full)
    skip_head(feats_only)
    x = torch.rand(a.batch, 3, a.imgsz, a.imgsz)
    times: dict[str, list[float]] = {"full": [], "feats_only": []}
    for r in range(a.rounds + 2):
        for name, m in (("full", full), ("feats_only", feats_only)):
            t = time.perf_counter()
            with torch.no_grad():
                m(x)
            if r >= 2:  # warm-up rounds
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    head = [f - g for f, g in zip(times["full"], times["feats_only"])]
    print(f"teacher forward {med['full']:.3f} s, up to the Detect inputs {med['feats_only']:.3f} s: the head costs "
          f"{statistics.median(head):.3f} s ({statistics.median(head) / med['full']:.0%} of the forward), median of "
          f"{a.rounds} rounds")


if __name__ == "__main__":
    main()
