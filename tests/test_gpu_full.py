"""The GPU full setting (cfg/protocols/kitti-1k-gpu.yaml, tools/gpu_bundle.py, tools/gpu_full.sh), checked on the CPU.

The device command itself needs a lent GPU machine; here it runs as its CPU dry run (``GPU_FULL_DRYRUN=1``): a tiny
bundle (8 images per split, no wheels: the installed packages), the same script, the same protocol file at a tiny scale,
and the polars stand-in that the GPU machine will use.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import REPO, shared_file


def test_gpu_protocol_is_the_full_setting():
    from yolokd.bench.protocol import entries, load_protocol, recipe

    p = load_protocol("kitti-1k-gpu")
    r = recipe(p)
    t = r["train"]
    assert p["setting"] == "full-gpu" and p["data"] == "shared:kitti-1k/kitti-1k.yaml"
    assert t["imgsz"] == 640 and not t.get("rect", False)  # square 640 mosaics, as the papers train
    assert t.get("mosaic", 1.0) == 1.0 and t.get("close_mosaic", 10) == 10
    assert t["batch"] == 32 and t["epochs"] >= 20 and r["teacher"]["epochs"] >= 20
    assert r["teacher"]["init"] == "yolov8s.pt" and r["student"] == "yolov8n.pt"
    assert p["metric"] == "mAP50" and p["headline"] == "final"
    assert list(entries(p, p["methods"])) == ["none", "ultralytics", "fgd", "ld"]


def test_polars_stand_in_reads_results_csv(tmp_path):
    """The stand-in gives what Ultralytics' read_results_csv stores in checkpoints, and refuses anything else."""
    bundle = tmp_path / "b"
    r = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import gpu_bundle as g; "
                        f"p = __import__('pathlib').Path({str(bundle)!r}) / 'polars'; p.mkdir(parents=True); "
                        "(p / '__init__.py').write_text(g.POLARS_SHIM)"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code = ("import polars as pl\n"
            "d = pl.read_csv(b'epoch,time,train/box_loss,lr/pg0\\n1,2.5,1.25,0.001\\n2,5.0,1.0,\\n', "
            "infer_schema_length=None).to_dict(as_series=False)\n"
            "assert d == {'epoch': [1, 2], 'time': [2.5, 5.0], 'train/box_loss': [1.25, 1.0],\n"
            "             'lr/pg0': [0.001, None]}, d\n"
            "try:\n    pl.DataFrame\nexcept AttributeError as e:\n    assert 'stand-in' in str(e)\n"
            "else:\n    raise SystemExit(1)\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(bundle)}, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_gpu_full_dry_run(tmp_path):
    """Bundle (tiny) -> tools/gpu_full.sh GPU_FULL_DRYRUN=1 -> the result files the device would bring back."""
    shared_file("kitti-1k/kitti-1k.yaml")
    shared_file("weights/yolov8n.pt")
    shared_file("weights/yolov8s.pt")
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    t0 = time.time()
    r = subprocess.run([sys.executable, "tools/gpu_bundle.py", "--out", str(bundle), "--max-images", "8",
                        "--no-wheels"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (bundle / "kitti-1k.tar.gz").is_file() and not (bundle / "whl").exists()
    env = {**os.environ, "GPU_FULL_DRYRUN": "1", "GPU_BUNDLE": str(bundle), "OUT": str(out), "PYTHON": sys.executable,
           "GPU_FULL_POLARS": "shim"}  # the stand-in, as on the GPU machine (which has no polars)
    r = subprocess.run(["bash", "tools/gpu_full.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]
    assert "the bundle's stand-in" in log and "bench exit 0" in log
    files = {p.name for p in out.iterdir()}
    assert {"summary.md", "summary.csv", "results.csv", "runs.tar.gz", "gpu_full.log", "status.txt"} <= files, files
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())  # the device returns at most 8 files
    md = (out / "summary.md").read_text()
    table = md.split("Paired Δ")[0]  # the main table; the per-epoch deltas follow it
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["none", "ultralytics"], md
    with open(out / "results.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert sorted(x["entry"] for x in runs) == ["none", "ultralytics"]
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    for entry in ("none", "ultralytics"):
        for f in ("results.csv", "args.yaml", "job.json", "result.json", "log.txt"):
            assert any(n.endswith(f"runs/{entry}-s0/{f}") for n in names), (entry, f, names)
    assert any(n.startswith("teachers/") and n.endswith("/results.csv") for n in names), names
    assert not [n for n in names if n.endswith((".pt", ".pth"))], names
    assert not list(out.rglob("*.pt"))
    print(f"dry run: {time.time() - t0:.0f} s")
