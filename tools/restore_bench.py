"""Put a protocol's committed runs back under runs/bench, so that ``yolokd bench`` does not run them again.

The inverse of ``tools/collect_bench.sh``: the repository keeps every finished run's small files in
``docs/bench/<protocol>-v<version>/`` (``run-<entry>-s<seed>.json`` / ``.job.json`` / ``.args.yaml`` /
``.results.csv``), while the harness resumes from ``runs/bench/<protocol>-v<version>/``. On a fresh machine or a new
clone that folder is empty and a benchmark would re-train every entry (a KD run costs 15-30 minutes on the 2-core CPU);
restoring the committed runs lets it run only what is missing, and lets ``yolokd bench report`` tabulate the new runs
next to the old ones.

    python tools/restore_bench.py kitti-1k-v1 [synthetic-ft-v1 ...] [--docs docs/bench] [--runs runs/bench]

What is restored, and what is not:

- every ``run-*`` of the folder, as ``runs/<entry>-s<seed>/{result.json, job.json, args.yaml, results.csv}``; each
  ``job.json`` gets a ``restored`` field (source and date). A run folder that already holds a ``result.json`` is never
  touched.
- ``recipe.yaml`` and the student-init validation, when missing.
- the teacher's result **only when its weights exist** at the recorded path (the teacher cache of this machine):
  weights are not committed, and a restored result without them would make every KD job fail. Otherwise the harness
  re-trains the teacher on first use.

A restored run is comparable with a new one only if both were made at the same thread count on the same machine kind
(``docs/benchmarks.md``, "Reproducibility"): rerun ``none`` once and compare before pairing new runs with old ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

SUFFIXES = {".job.json": "job.json", ".args.yaml": "args.yaml", ".results.csv": "results.csv", ".json": "result.json"}


def _run_files(src: Path) -> dict[str, dict[str, Path]]:
    """``{run name: {file name in the run folder: committed file}}`` for every ``run-*`` file of ``src``."""
    runs: dict[str, dict[str, Path]] = {}
    for f in sorted(src.glob("run-*")):
        for suffix, target in SUFFIXES.items():  # longest suffixes first: ".job.json" before ".json"
            if f.name.endswith(suffix):
                runs.setdefault(f.name[len("run-"):-len(suffix)], {})[target] = f
                break
    return runs


def restore(name: str, docs: Path, runs_root: Path, log=print) -> list[str]:
    """Restore one protocol folder ``name`` (e.g. ``kitti-1k-v1``); returns the restored run names."""
    src, out = docs / name, runs_root / name
    if not src.is_dir():
        raise SystemExit(f"restore_bench: {src} does not exist (the committed folders: "
                         f"{', '.join(sorted(p.name for p in docs.iterdir() if p.is_dir())) or 'none'})")
    stamp = datetime.date.today().isoformat()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if (src / "recipe.yaml").exists() and not (out / "recipe.yaml").exists():
        shutil.copy(src / "recipe.yaml", out / "recipe.yaml")
    restored = []
    for run, files in _run_files(src).items():
        dst = out / "runs" / run
        if (dst / "result.json").exists():
            log(f"kept {dst} (it has a result)")
            continue
        if "result.json" not in files or "job.json" not in files:
            log(f"skipped {run}: its result or job file is missing in {src}")
            continue
        shutil.rmtree(dst, ignore_errors=True)  # an unfinished run restarts from scratch anyway
        dst.mkdir(parents=True)
        for target, f in files.items():
            if target != "job.json":
                shutil.copy(f, dst / target)
        job = json.loads(files["job.json"].read_text())
        job["restored"] = f"from {src} on {stamp}"
        (dst / "job.json").write_text(json.dumps(job, indent=1))
        restored.append(run)
    init = src / "student-init.json"
    if init.exists() and not (out / "student-init" / "result.json").exists():
        (out / "student-init").mkdir(parents=True, exist_ok=True)
        shutil.copy(init, out / "student-init" / "result.json")
    teacher = src / "teacher.json"
    if teacher.exists() and not (out / "teacher" / "result.json").exists():
        weights = Path(json.loads(teacher.read_text()).get("weights", ""))
        if weights.is_file():
            (out / "teacher").mkdir(parents=True, exist_ok=True)
            shutil.copy(teacher, out / "teacher" / "result.json")
        else:
            log(f"teacher not restored: its weights {weights} are not on this machine (the harness re-trains it)")
    log(f"restored {len(restored)} run(s) of {name} into {out / 'runs'}: {', '.join(restored) or '-'}")
    return restored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("protocols", nargs="+", help="committed folders under --docs, e.g. kitti-1k-v1")
    ap.add_argument("--docs", type=Path, default=Path("docs/bench"))
    ap.add_argument("--runs", type=Path, default=Path("runs/bench"))
    a = ap.parse_args(argv)
    for name in a.protocols:
        restore(name, a.docs, a.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
