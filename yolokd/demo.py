"""``yolokd demo``: the main job on the built-in synthetic driving scenes, small enough for a 2-core CPU.

1. Generates the synthetic dataset (cached).
2. Fine-tunes the COCO-pretrained yolov8s on it (the ``teacher_epochs`` path: 80 COCO classes -> car, pedestrian,
   cyclist), caches it (later demos reuse it) and reports its mAP.
3. Trains yolov8n students from the COCO-pretrained yolov8n with identical settings: ``none`` (no KD),
   ``ultralytics`` (the built-in distillation reproduced) and the default method with its defaults, the one that
   measured best across the reported benchmark protocols (``DEFAULT_METHOD``, ``ld`` since 2026-11-30;
   docs/benchmarks.md).
4. Prints and saves a table whose every number comes from these runs (final-epoch mAP50-95 and mAP50, deltas vs
   ``none`` and vs ``ultralytics``, median seconds per iteration) and a plot, under ``runs/demo/``.

The COCO weights are looked up locally (``$YOLOKD_WEIGHTS``, ``../shared/data/weights`` next to the checkout,
Ultralytics' weights dir, the working directory); nothing is downloaded. Without them the demo trains both models from
scratch, which at this budget gives near-zero mAP, and says so.

What it shows: the whole pipeline working offline end to end, and the size of the KD effect at this tiny budget. What it
does not show: converged accuracy or a statistically solid ranking of methods (one seed, two epochs).
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path
from typing import Any

from yolokd.engine.spec import DEFAULT_METHOD
from yolokd.utils.paths import find_weights  # noqa: F401  (re-exported: part of the demo's public surface)

#: Demo settings, chosen so that the first run (teacher included) fits in 10 minutes on 2 CPU cores. All images are
#: 512x160, so rect batches (320x128) keep shuffling and spend no compute on letterbox padding.
DEMO = dict(
    n_train=600, n_val=200, width=512, height=160, seed=0,  # data
    imgsz=320, rect=True, batch=16, teacher_epochs=2, student_epochs=2, workers=0,  # training
    methods=("none", "ultralytics", DEFAULT_METHOD),
)


class _IterTimer:
    """Callbacks measuring each training iteration's wall time."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.times: list[float] = []

    def start(self, trainer) -> None:
        self.t0 = time.perf_counter()

    def end(self, trainer) -> None:
        self.times.append(time.perf_counter() - self.t0)


def run_demo(project: str = "runs/demo", **overrides: Any) -> list[dict[str, Any]]:
    """Run the demo; ``overrides`` change any key of ``DEMO`` (e.g. ``student_epochs=3`` for a quick look)."""
    from yolokd.utils.offline import prepare_ultralytics

    prepare_ultralytics()
    from yolokd.api import read_last_epoch
    from yolokd.data.synthetic import synthetic_dataset
    from yolokd.engine.teacher import finetune_teacher
    from yolokd.engine.trainer import KDTrainer

    unknown = set(overrides) - set(DEMO)
    if unknown:
        raise ValueError(f"unknown demo setting(s) {sorted(unknown)}; valid: {sorted(DEMO)}")
    cfg = {**DEMO, **overrides}
    out = Path(project).resolve()
    t_start = time.perf_counter()
    data = str(synthetic_dataset(n_train=cfg["n_train"], n_val=cfg["n_val"], seed=cfg["seed"], width=cfg["width"],
                                 height=cfg["height"]))
    common = dict(imgsz=cfg["imgsz"], batch=cfg["batch"], workers=cfg["workers"], seed=cfg["seed"], device="cpu",
                  rect=cfg["rect"], val=False)
    t_init, s_init = find_weights("yolov8s.pt"), find_weights("yolov8n.pt")
    pretrained = t_init is not None and s_init is not None
    if not pretrained:
        print("yolokd demo: COCO weights yolov8s.pt / yolov8n.pt not found locally (set YOLOKD_WEIGHTS=<dir>); "
              "training both models from scratch, which gives near-zero mAP at this budget.")
    teacher, tmetrics = finetune_teacher(str(t_init) if pretrained else "yolov8s.yaml", data, cfg["teacher_epochs"],
                                         **common)
    cfg["init"] = "COCO-pretrained" if pretrained else "from scratch"

    rows: list[dict[str, Any]] = [{
        "model": "teacher yolov8s", "method": "-", "mAP50-95": tmetrics.get("metrics/mAP50-95(B)", float("nan")),
        "mAP50": tmetrics.get("metrics/mAP50(B)", float("nan")), "s_per_it": float("nan")}]
    for method in cfg["methods"]:
        timer = _IterTimer()
        student = str(s_init) if pretrained else "yolov8n.yaml"
        tr = KDTrainer(overrides=dict(teacher=str(teacher), student=student, method=method, data=data,
                                      epochs=cfg["student_epochs"], project=str(out), name=method, exist_ok=True,
                                      plots=False, **common))
        tr.add_callback("on_train_batch_start", timer.start)
        tr.add_callback("on_train_batch_end", timer.end)
        tr.train()
        last = read_last_epoch(tr.csv)
        rows.append({"model": "student yolov8n", "method": method, "mAP50-95": last["metrics/mAP50-95(B)"],
                     "mAP50": last["metrics/mAP50(B)"], "s_per_it": statistics.median(timer.times)})
    ref = {r["method"]: r for r in rows}
    for r in rows[1:]:
        for base in ("none", "ultralytics"):
            r[f"d_vs_{base}"] = r["mAP50-95"] - ref[base]["mAP50-95"] if base in ref else float("nan")
    table = format_table(rows, cfg, time.perf_counter() - t_start)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_results.md").write_text(table + "\n")
    with open(out / "demo_results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[-1]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "demo_results.png")
    print(f"Saved {out / 'demo_results.md'}, demo_results.csv and demo_results.png")
    return rows


def format_table(rows: list[dict[str, Any]], cfg: dict[str, Any], seconds: float) -> str:
    """Markdown table of the demo's own numbers."""
    f = lambda v, s="": "-" if v != v else f"{v:{s}.3f}"  # noqa: E731  (NaN -> "-")
    lines = [
        f"yolokd demo: synthetic driving scenes ({cfg['n_train']} train / {cfg['n_val']} val, {cfg['width']}x"
        f"{cfg['height']}), imgsz {cfg['imgsz']}{' rect' if cfg['rect'] else ''}, batch {cfg['batch']}, models "
        f"{cfg['init']}: teacher fine-tuned {cfg['teacher_epochs']} epochs, students {cfg['student_epochs']} epochs, "
        f"seed {cfg['seed']}, CPU. Total {seconds / 60:.1f} min.",
        "Student metrics are the final epoch's; deltas are in mAP50-95 points (x100 for %).",
        "",
        "| model | method | mAP50-95 | mAP50 | Δ vs none | Δ vs ultralytics | s/iter |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {f(r['mAP50-95'])} | {f(r['mAP50'])} | "
                     f"{f(r.get('d_vs_none', float('nan')), '+')} | {f(r.get('d_vs_ultralytics', float('nan')), '+')} | "
                     f"{f(r['s_per_it'])} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of mAP50-95 and mAP50 per student, with the teacher as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = rows[1:]
    names = [r["method"] for r in students]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [r["mAP50-95"] for r in students], 0.4, label="mAP50-95")
    ax.bar([i + 0.2 for i in x], [r["mAP50"] for r in students], 0.4, label="mAP50")
    ax.axhline(rows[0]["mAP50-95"], ls="--", c="C0", lw=1, label="teacher mAP50-95")
    ax.axhline(rows[0]["mAP50"], ls=":", c="C1", lw=1, label="teacher mAP50")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("final-epoch mAP (val)")
    ax.set_title("yolov8n students distilled from a yolov8s teacher (synthetic)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
