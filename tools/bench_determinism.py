#!/usr/bin/env python
"""Is a benchmark run fixed by its seed? Same-seed reruns at one thread count, and the same job at 1 vs 2 threads.

The numbers behind docs/benchmarks.md ("Reproducible runs"): a small plain-student job (yolov8n from COCO, 64 synthetic
training images, 2 epochs = 8 iterations, imgsz 320 rect, workers 2) run through the benchmark harness three times:
twice at 1 thread (``none`` and its rerun ``none-rerun``) and once at 2 threads. Reported: the largest absolute
difference of any final weight, and whether every logged number in results.csv (all columns but the time) is equal.

    python tools/bench_determinism.py                       # about 3 minutes on 2 idle cores
    python tools/bench_determinism.py --json docs/bench/determinism.json

Needs ``yolov8n.pt`` (and ``yolov8s.pt`` for the protocol's teacher entry, which ``none`` does not train) locally.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def final_weights(run: Path) -> dict:
    """The run's final student weights as fp32 tensors by name."""
    import torch

    ck = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in ck["model"].state_dict().items()}


def logged(run: Path) -> list[list[str]]:
    """results.csv without its time column (wall time is the one thing a rerun may change)."""
    rows = [r.split(",") for r in (run / "results.csv").read_text().splitlines()]
    drop = rows[0].index("time") if "time" in rows[0] else None
    return [[c for i, c in enumerate(r) if i != drop] for r in rows]


def compare(a: Path, b: Path) -> dict:
    """Largest weight difference and whether the logs are equal, between two runs."""
    wa, wb = final_weights(a), final_weights(b)
    return {"max_abs_weight_diff": max(float((wa[k] - wb[k]).abs().max()) for k in wa),
            "logs_equal": logged(a) == logged(b)}


def main() -> None:
    """CLI."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--keep", help="folder for the runs (default: a temporary one)")
    a = ap.parse_args()

    from yolokd.bench.runner import run_bench
    from yolokd.data.synthetic import synthetic_dataset

    data = str(synthetic_dataset(n_train=64, n_val=32, seed=5))
    proto = {"name": "determinism", "version": 1, "data": data, "teacher": {"init": "yolov8s.pt", "epochs": 0},
             "student": "yolov8n.pt", "metric": "mAP50-95", "headline": "final",
             "train": {"epochs": 2, "imgsz": 320, "rect": True, "batch": 16, "warmup_epochs": 0, "workers": 2},
             "variants": {"none-rerun": {"method": "none"}}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        run_bench(proto, methods=["none", "none-rerun"], seeds=[0], project=str(root / "t1"), jobs=1, threads=1)
        run_bench(proto, methods=["none"], seeds=[0], project=str(root / "t2"), jobs=1, threads=2)
        runs = {t: next((root / t).glob("*/runs")) for t in ("t1", "t2")}
        out = {"rerun_1_thread": compare(runs["t1"] / "none-s0", runs["t1"] / "none-rerun-s0"),
               "1_vs_2_threads": compare(runs["t1"] / "none-s0", runs["t2"] / "none-s0")}
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
