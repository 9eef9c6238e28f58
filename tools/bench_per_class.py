"""Per-class accuracy of a benchmark's runs, and each entry's paired per-class delta to ``none``.

The harness tabulates the mean over classes; on KITTI the classes differ in size and count (car: large and frequent;
pedestrian, cyclist: small and rare), and a user shipping a driving detector needs to know which of them a method
helps. ``yolokd bench`` now writes this table itself (the end of ``summary.md``, ``per_class.csv``) for the protocol's
metric; this prints it for another metric or another folder:

    python tools/bench_per_class.py runs/bench/kitti-1k-v1 [--metric mAP50] [--csv docs/bench/kitti-1k-v1/per_class.csv]

Each run's rows come from its ``result.json`` (``per_class``, recorded since 2026-11-30) or, for older runs, from the
last validation table in its ``log.txt``; runs with neither (old runs restored from ``docs/bench``) are named and
skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout: yolokd importable
from yolokd.bench.report import per_class_deltas, per_class_markdown, per_class_rows, write_per_class_csv  # noqa: E402
from yolokd.bench.runner import collect_runs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path, help="a protocol's results folder, e.g. runs/bench/kitti-1k-v1")
    ap.add_argument("--metric", default="mAP50", choices=["mAP50", "mAP50-95", "P", "R"])
    ap.add_argument("--csv", type=Path, help="also write every run's per-class rows here")
    a = ap.parse_args(argv)
    rows = per_class_rows(collect_runs(a.bench_dir), skipped=lambda run: print(f"skipped {run}: no per-class result "
                                                                                "and no validation table in its log"))
    if not rows:
        print(f"no run with a per-class result under {a.bench_dir / 'runs'}", file=sys.stderr)
        return 1
    if a.csv:
        write_per_class_csv(a.csv, rows)
    print(per_class_markdown(per_class_deltas(rows, a.metric), a.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
