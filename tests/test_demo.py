"""The demo at toy size: every number in its table comes from the runs it made."""

from __future__ import annotations

import csv
import math


def test_demo_table_comes_from_its_runs(tmp_path):
    from yolokd.api import read_last_epoch
    from yolokd.demo import run_demo
    from yolokd.engine.spec import DEFAULT_METHOD

    rows = run_demo(project=str(tmp_path / "demo"), n_train=16, n_val=8, width=256, height=80, imgsz=64,
                    teacher_epochs=1, student_epochs=1, batch=8)
    assert [r["method"] for r in rows] == ["-", "none", "ultralytics", DEFAULT_METHOD]
    by = {r["method"]: r for r in rows}
    for m in ("none", "ultralytics", DEFAULT_METHOD):
        last = read_last_epoch(tmp_path / "demo" / m / "results.csv")
        assert by[m]["mAP50-95"] == last["metrics/mAP50-95(B)"] and by[m]["mAP50"] == last["metrics/mAP50(B)"]
        assert by[m]["d_vs_none"] == by[m]["mAP50-95"] - by["none"]["mAP50-95"]
        assert by[m]["s_per_it"] > 0 and math.isfinite(by[m]["s_per_it"])
    table = (tmp_path / "demo" / "demo_results.md").read_text()
    assert f"| student yolov8n | {DEFAULT_METHOD} |" in table and "teacher" in table
    assert (tmp_path / "demo" / "demo_results.png").stat().st_size > 1000
    with open(tmp_path / "demo" / "demo_results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
