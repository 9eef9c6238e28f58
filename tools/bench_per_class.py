"""Per-class accuracy of a benchmark's runs, and each entry's paired per-class delta to ``none``.

The harness tabulates the mean over classes; on KITTI the classes differ in size and count (car: large and frequent;
pedestrian, cyclist: small and rare), and a user shipping a driving detector needs to know which of them a method
helps. Ultralytics prints the per-class validation of ``best.pt`` at the end of every run; this reads that block from
each run's ``log.txt`` (the last one in the file), so it also covers runs made before anything recorded it.

    python tools/bench_per_class.py runs/bench/kitti-1k-v1 [--metric mAP50] [--csv docs/bench/kitti-1k-v1/per_class.csv]

Runs without a ``log.txt`` (e.g. restored from ``docs/bench``, which keeps no logs) are skipped and named.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout: yolokd importable
from yolokd.bench.report import paired  # noqa: E402

COLUMNS = ["entry", "seed", "class", "images", "instances", "P", "R", "mAP50", "mAP50-95"]
#: One row of Ultralytics' validation table: name, images, instances, P, R, mAP50, mAP50-95.
ROW = re.compile(r"^\s*(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def final_table(log: str) -> list[dict[str, float | str]]:
    """The last validation table of a log: the ``all`` row and the per-class rows under it."""
    lines = [ln.split("\r")[-1] for ln in log.splitlines()]  # progress bars rewrite a line with carriage returns
    starts = [i for i, ln in enumerate(lines) if (m := ROW.match(ln)) and m.group(1) == "all"]
    if not starts:
        return []
    rows = []
    for ln in lines[starts[-1]:]:
        m = ROW.match(ln)
        if not m:
            break
        name, *vals = m.groups()
        rows.append(dict(zip(COLUMNS[2:], [name, int(vals[0]), int(vals[1]), *map(float, vals[2:])])))
    return rows


def collect(bench_dir: Path, log=print) -> list[dict]:
    """Per-class rows of every finished run under ``bench_dir/runs``."""
    out = []
    for res in sorted((bench_dir / "runs").glob("*/result.json")):
        job = json.loads((res.parent / "job.json").read_text())
        f = res.parent / "log.txt"
        table = final_table(f.read_text(errors="replace")) if f.is_file() else []
        if not table:
            log(f"skipped {res.parent.name}: no validation table in {f}")
            continue
        out += [{"entry": job["entry"], "seed": job["seed"], **r} for r in table]
    return out


def paired_deltas(rows: list[dict], metric: str, base: str = "none") -> dict[str, dict[str, tuple[float, int, str]]]:
    """``{entry: {class: (mean delta, seeds, wins)}}`` over the seeds both the entry and ``base`` have."""
    val = {(r["entry"], r["seed"], r["class"]): r[metric] for r in rows}
    out: dict[str, dict[str, tuple[float, int, str]]] = {}
    for entry in dict.fromkeys(r["entry"] for r in rows):
        if entry == base:
            continue
        for cls in dict.fromkeys(r["class"] for r in rows if r["entry"] == entry):
            seeds = sorted({r["seed"] for r in rows if r["entry"] == entry and (base, r["seed"], cls) in val})
            diffs = [val[(entry, s, cls)] - val[(base, s, cls)] for s in seeds if (entry, s, cls) in val]
            if diffs:
                mean, _, wins = paired(diffs)
                out.setdefault(entry, {})[cls] = (mean, len(diffs), wins)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path, help="a protocol's results folder, e.g. runs/bench/kitti-1k-v1")
    ap.add_argument("--metric", default="mAP50", choices=["mAP50", "mAP50-95", "P", "R"])
    ap.add_argument("--csv", type=Path, help="also write every run's per-class rows here")
    a = ap.parse_args(argv)
    rows = collect(a.bench_dir)
    if not rows:
        print(f"no run with a validation table under {a.bench_dir / 'runs'}", file=sys.stderr)
        return 1
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    classes = list(dict.fromkeys(r["class"] for r in rows))
    print(f"Paired Δ {a.metric} vs none per class (seeds, k/n ahead), from the final validation of best.pt:\n")
    print("| entry | " + " | ".join(classes) + " |")
    print("|---|" + "---|" * len(classes))
    for entry, by_cls in paired_deltas(rows, a.metric).items():
        cells = [f"{by_cls[c][0]:+.3f} ({by_cls[c][2]})" if c in by_cls else "-" for c in classes]
        print(f"| {entry} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
