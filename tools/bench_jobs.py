#!/usr/bin/env python
"""Which finishes a protocol sooner on this machine: N single-thread jobs side by side, or one N-thread job at a time?

A mini protocol on the synthetic-ft data (800 / 400 images, imgsz 320 rect, batch 16): the official yolov8s as the
teacher (validated only, no fine-tuning) and two plain students (``none``, ``none-rerun``) of one epoch each, run once
as ``jobs=2 threads=1`` and once as ``jobs=1 threads=2``, on an otherwise idle machine. Prints each wall time and the
median s/it of the jobs; the result files stay under ``--project``. ``yolokd bench``'s default ``jobs`` follows the
faster one (docs/benchmarks.md, "Parallel jobs").

    python tools/bench_jobs.py --project runs/bench-jobs
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

PROTOCOL = {"name": "jobs", "version": 1, "teacher": {"init": "yolov8s.pt", "epochs": 0}, "student": "yolov8n.pt",
            "train": {"epochs": 1, "imgsz": 320, "rect": True, "batch": 16, "warmup_epochs": 1, "workers": 2},
            "metric": "mAP50-95", "headline": "final", "variants": {"none-rerun": {"method": "none"}}}


def main() -> None:
    """CLI."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default="runs/bench-jobs")
    ap.add_argument("--cores", type=int, default=2, help="jobs (1 thread each) vs one job with this many threads")
    a = ap.parse_args()

    from yolokd.bench.runner import run_bench
    from yolokd.data.synthetic import synthetic_dataset

    proto = dict(PROTOCOL, data=str(synthetic_dataset(n_train=800, n_val=400, seed=0)))
    for jobs, threads in ((a.cores, 1), (1, a.cores)):
        project = Path(a.project) / f"j{jobs}t{threads}"
        t0 = time.perf_counter()
        res = run_bench(proto, methods=["none", "none-rerun"], seeds=[0], project=project, jobs=jobs, threads=threads,
                        log=lambda s: None)
        wall = time.perf_counter() - t0
        with open(res["out"] / "results.csv", newline="") as f:
            s_it = [float(r["s_per_it"]) for r in csv.DictReader(f)]
        print(f"jobs={jobs} threads={threads}: wall {wall:.1f} s (fresh runs: {', '.join(res['ran']) or 'none'}), "
              f"s/it of the jobs {', '.join(f'{x:.3f}' for x in s_it)}")


if __name__ == "__main__":
    main()
