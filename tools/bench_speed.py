"""Speed and memory benchmark of a KD training iteration (issue acceptance: docs/performance.md).

Speed (one process, interleaved): for each method a real ``KDTrainer`` is set up (model, optimizer, EMA, KD
criterion), then rounds of A B C ... run on the *same* preprocessed batches: one full training iteration per method
(forward, detection + KD loss, backward, ``optimizer_step`` with clipping and EMA) and one no-grad forward of the
teacher object the KD trainers use. Interleaving spreads the noise of this 2-core machine over all rows alike.

Memory (one fresh process per row): peak RSS (``ru_maxrss``) of N training iterations per method, of a teacher-only
inference process, and of an idle interpreter with torch and Ultralytics imported.

    python tools/bench_speed.py                       # speed, teacher yolov8s.yaml, student yolov8n.yaml, 320, batch 8
    python tools/bench_speed.py --memory              # peak RSS rows and the 1.10 criterion
    python tools/bench_speed.py --rounds 30 --json out.json
    python tools/bench_speed.py --methods none,fgd,gkd --vs fgd   # also each row / the fgd row (issue criteria)
    python tools/bench_speed.py --methods none,fgd,gkd,gkd:grad_path=direct --vs fgd   # a row with hyperparameters
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLOKD_CACHE", str(Path(tempfile.gettempdir()) / "yolokd-bench-cache"))

import yolokd  # noqa: E402,F401

METHODS = ("none", "mimic", "ultralytics", "fgd")  # default rows; "none" is always first: the reference of the ratios


def parse_row(row: str) -> tuple[str, dict[str, str]]:
    """``"gkd:grad_path=direct:bmfi=false"`` -> ``("gkd", {"grad_path": "direct", "bmfi": "false"})``: a row is a method
    with optional hyperparameters (cast and checked by the method, like a CLI value)."""
    method, *pairs = row.split(":")
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise SystemExit(f"row {row!r}: expected method:key=value[:key=value...], got {bad[0]!r}")
    return method, dict(p.split("=", 1) for p in pairs)


def setup(row: str, teacher: str, student: str, data: str, imgsz: int, batch: int, tmp: str):
    """A KD trainer for ``row`` (a method, optionally ``:key=value`` hyperparameters), set up but not started."""
    import torch

    from yolokd.engine.trainer import KDTrainer

    method, hparams = parse_row(row)
    torch.manual_seed(0)
    tr = KDTrainer(overrides=dict(teacher=teacher, student=student, method=method, data=data, imgsz=imgsz,
                                  batch=batch, workers=0, device="cpu", plots=False, val=False, project=tmp,
                                  name=row.replace(":", "_"), exist_ok=True, amp=False, nbs=batch, warmup_epochs=0,
                                  **hparams))
    tr._setup_train()
    tr.model.train()
    return tr


def step(tr, batch) -> None:
    """One training iteration as the Ultralytics loop runs it (without data loading and logging)."""
    loss, _ = tr.model(batch)
    loss.sum().backward()
    tr.optimizer_step()


def batches(tr, n: int) -> list[dict]:
    """n preprocessed training batches (mosaic on), reused by every method."""
    out = []
    for b in tr.train_loader:
        out.append(tr.preprocess_batch(b))
        if len(out) == n:
            break
    return out


def run_speed(a) -> dict:
    """Interleaved timing; returns medians and spreads per row."""
    import torch

    torch.set_num_threads(a.threads)
    from yolokd.data import resolve_data

    data = resolve_data(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        methods = a.methods
        trainers = {m: setup(m, a.teacher, a.student, data, a.imgsz, a.batch, tmp) for m in methods}
        bs = batches(trainers["none"], a.batches)
        # a separately loaded, complete teacher: the KD trainers' copy may skip its head (feature-only methods)
        from yolokd.engine.models import load_teacher

        kd = trainers[methods[1]]
        teacher = load_teacher(kd.kd.teacher, kd.data)
        times: dict[str, list[float]] = {m: [] for m in (*methods, "teacher_fwd")}
        for r in range(a.warmup + a.rounds):
            b = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in bs[r % len(bs)].items()}
            for m in (*methods, "teacher_fwd"):
                t0 = time.perf_counter()
                if m == "teacher_fwd":
                    with torch.no_grad():
                        teacher(b["img"])
                else:
                    step(trainers[m], b)
                dt = time.perf_counter() - t0
                if r >= a.warmup:
                    times[m].append(dt)
    res = {m: {"median_s": statistics.median(v), "p25_s": _q(v, 0.25), "p75_s": _q(v, 0.75), "n": len(v)}
           for m, v in times.items()}
    base = res["none"]["median_s"] + res["teacher_fwd"]["median_s"]
    for m in methods[1:]:
        res[m]["ratio_vs_student_plus_teacher"] = res[m]["median_s"] / base
        # per-round ratio, for its spread
        per = [k / (n + t) for k, n, t in zip(times[m], times["none"], times["teacher_fwd"])]
        res[m]["ratio_p25"], res[m]["ratio_p75"] = _q(per, 0.25), _q(per, 0.75)
        if a.vs and m != a.vs:  # e.g. GKD's criterion: its iteration against FGD's, paired per round
            per = [k / r for k, r in zip(times[m], times[a.vs])]
            res[m][f"ratio_vs_{a.vs}"] = statistics.median(per)
            res[m][f"ratio_vs_{a.vs}_p25"], res[m][f"ratio_vs_{a.vs}_p75"] = _q(per, 0.25), _q(per, 0.75)
    return res


def _q(v: list[float], q: float) -> float:
    """Quantile by linear interpolation."""
    s = sorted(v)
    i = q * (len(s) - 1)
    lo, hi = int(i), min(int(i) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def rss_worker(a) -> None:
    """Child process for one memory row; prints its peak RSS in MiB."""
    import torch

    torch.set_num_threads(a.threads)
    import ultralytics  # noqa: F401  (the idle row includes the Ultralytics import, as every other row does)

    if a.rss_row == "idle":
        pass
    elif a.rss_row == "teacher":
        from yolokd.engine.models import load_teacher

        t = load_teacher(a.teacher, {"nc": 3, "names": {0: "car", 1: "pedestrian", 2: "cyclist"}, "channels": 3})
        x = torch.rand(a.batch, 3, a.imgsz, a.imgsz)
        for _ in range(a.steps):
            with torch.no_grad():
                t(x)
    else:
        from yolokd.data import resolve_data

        with tempfile.TemporaryDirectory() as tmp:
            tr = setup(a.rss_row, a.teacher, a.student, resolve_data(a.data), a.imgsz, a.batch, tmp)
            bs = batches(tr, min(a.steps, 4))
            for i in range(a.steps):
                step(tr, bs[i % len(bs)])
    print("RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_memory(a) -> dict:
    """One fresh process per row (peak RSS is per process)."""
    out = {}
    for row in ("idle", "teacher", *a.methods):
        cmd = [sys.executable, __file__, "--rss-row", row, "--teacher", a.teacher, "--student", a.student,
               "--data", a.data, "--imgsz", str(a.imgsz), "--batch", str(a.batch), "--steps", str(a.steps),
               "--threads", str(a.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("RSS_MIB")]
        if not line:
            raise RuntimeError(f"row {row} failed:\n{r.stderr[-2000:]}")
        out[row] = float(line[0].split()[1])
    teacher_extra = out["teacher"] - out["idle"]
    for m in a.methods[1:]:
        out[f"{m}_ratio"] = out[m] / (out["none"] + teacher_extra)
        if a.vs and m != a.vs:
            out[f"{m}_ratio_vs_{a.vs}"] = out[m] / out[a.vs]
    out["teacher_extra"] = teacher_extra
    return out


def main() -> None:
    """CLI."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="yolov8s.yaml")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="iterations per memory row")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--rss-row", help=argparse.SUPPRESS)
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of rows; none is added first if missing")
    p.add_argument("--vs", help="also report each row's ratio to this method's row (e.g. fgd)")
    p.add_argument("--json")
    a = p.parse_args()
    a.methods = ["none", *[m for m in a.methods.split(",") if m and m != "none"]]
    if len(a.methods) < 2 or (a.vs and a.vs not in a.methods):
        p.error(f"--methods needs a KD method besides none, and --vs one of them (got {a.methods}, --vs {a.vs})")
    if a.rss_row:
        return rss_worker(a)
    res = run_memory(a) if a.memory else run_speed(a)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "result": res}, indent=1))


if __name__ == "__main__":
    main()
