#!/usr/bin/env python
"""GKD against FGD: iteration time, and where GKD's extra time goes (issue 11's criteria; docs/performance.md).

    python tools/bench_gkd.py                                  # teacher yolov8s, student yolov8n, imgsz 320, batch 8
    python tools/bench_gkd.py --rounds 20 --json docs/bench/gkd_breakdown_v8s_v8n_320_b8.json

One process, interleaved rounds on the same preprocessed batches (the set-up of ``tools/bench_speed.py``: real
``KDTrainer`` objects). Per round:

- ``fgd`` / ``gkd``: one full training iteration each (forward, detection + KD loss, backward, ``optimizer_step``);
  their per-round ratio is the acceptance figure (GKD <= 1.25 x FGD);
- the parts of GKD's criterion on the same batch, timed one by one:
  ``teacher_fwd`` (no-grad forward with the head, what a feature method pays), ``teacher_probe`` (forward with the
  gradient taps, the teacher's detection loss and ``autograd.grad`` to P3-P5: the extra over ``teacher_fwd`` is the
  partial teacher backward), ``student_fwd_loss`` (student forward and detection loss), ``student_grads`` (the partial
  student backward, graph kept), ``gkd_terms`` (maps and BMFI, forward) and ``gkd_terms_bwd`` (the backward of the
  GKD terms alone, through the student; in training it is part of the one combined backward, so it overlaps with the
  detection loss's backward and is not additive).

Peak memory: ``python tools/bench_speed.py --memory --methods fgd,gkd --vs fgd`` (one fresh process per row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_speed import _q, batches, setup, step  # tools/ is this script's own folder

PARTS = ("teacher_fwd", "teacher_probe", "student_fwd_loss", "student_grads", "gkd_terms", "gkd_terms_bwd")


def parts(tr, b: dict) -> dict[str, float]:
    """Time GKD's criterion piece by piece on batch ``b`` (no optimizer step: the trainer's weights do not move)."""
    from yolokd.engine.criterion import head_feats
    from yolokd.engine.providers import student_grads
    from yolokd.methods import KDBatch

    crit = tr.model.criterion
    opts = crit.method.grad_options
    out, t = {}, time.perf_counter
    t0 = t()
    with torch.no_grad():
        crit.teacher(b["img"])
    out["teacher_fwd"] = t() - t0
    t0 = t()
    _, t_feats, t_grads = crit.probe(b["img"], b, opts)
    out["teacher_probe"] = t() - t0
    t0 = t()
    preds = tr.model(b["img"])
    det_loss, _ = crit.det(preds, b)
    out["student_fwd_loss"] = t() - t0
    t0 = t()
    s_grads = student_grads(crit.det, preds, b, det_loss, opts)
    out["student_grads"] = t() - t0
    kd = KDBatch(student_feats=[f.float() for f in head_feats(preds)], teacher_feats=t_feats, batch=b,
                 teacher_grads=t_grads, student_grads=s_grads)
    t0 = t()
    terms = crit.method(kd)
    out["gkd_terms"] = t() - t0
    t0 = t()
    sum(v.sum() for v in terms.values()).backward()
    out["gkd_terms_bwd"] = t() - t0
    tr.optimizer.zero_grad()
    return out


def main() -> None:
    """CLI."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="yolov8s.yaml")
    ap.add_argument("--student", default="yolov8n.yaml")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    from yolokd.data import resolve_data

    data = resolve_data(a.data)
    times: dict[str, list[float]] = {k: [] for k in ("fgd", "gkd", *PARTS)}
    with tempfile.TemporaryDirectory() as tmp:
        tr = {m: setup(m, a.teacher, a.student, data, a.imgsz, a.batch, tmp) for m in ("fgd", "gkd")}
        torch.set_num_threads(a.threads)  # Ultralytics' select_device reset it to cores - 1
        bs = batches(tr["fgd"], a.batches)
        for r in range(a.warmup + a.rounds):
            b = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in bs[r % len(bs)].items()}
            row = {}
            for m in ("fgd", "gkd"):
                t0 = time.perf_counter()
                step(tr[m], b)
                row[m] = time.perf_counter() - t0
            row.update(parts(tr["gkd"], b))
            if r >= a.warmup:
                for k, v in row.items():
                    times[k].append(v)
    res = {k: {"median_s": statistics.median(v), "p25_s": _q(v, 0.25), "p75_s": _q(v, 0.75), "n": len(v)}
           for k, v in times.items()}
    per = [g / f for g, f in zip(times["gkd"], times["fgd"])]
    res["gkd_vs_fgd"] = {"median": statistics.median(per), "p25": _q(per, 0.25), "p75": _q(per, 0.75)}
    res["teacher_partial_backward_s"] = statistics.median(
        p - f for p, f in zip(times["teacher_probe"], times["teacher_fwd"]))
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "result": res}, indent=1))


if __name__ == "__main__":
    main()
