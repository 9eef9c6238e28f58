"""One benchmark job in its own process: ``python -m yolokd.bench.worker job.json``.

A fresh process per run gives each run a clean peak-memory reading and keeps a crash, a leak or a global Ultralytics
setting of one run from touching the next. The job writes ``result.json`` atomically as its very last step: a folder
without it is an unfinished run, which the runner starts again from scratch.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from yolokd.bench.report import mean_std

#: Iterations left out of the speed figure: the first ones pay for allocator warm-up and lazy initialisation.
SKIP_ITERS = 3


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process, and peak CUDA memory when a GPU was used, in MiB."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _box(metrics: Any) -> dict[str, float]:
    """mAP50-95 and mAP50 from an Ultralytics validation result."""
    return {"mAP50-95": float(metrics.box.map), "mAP50": float(metrics.box.map50)}


def per_class(validator: Any) -> list[dict[str, Any]]:
    """The table Ultralytics prints after a detection validation: the ``all`` row, then one row per class (class,
    images, instances, P, R, mAP50, mAP50-95), at full precision.

    The mean over classes hides what a driving user ships for: on KITTI the small, rare classes (pedestrian, cyclist)
    move differently from cars, and the methods measured so far gain on different classes (fgd on pedestrians, ld on
    cyclists). Empty when the validation had no labels (Ultralytics then has no per-class table).
    """
    metrics = getattr(validator, "metrics", None)
    if metrics is None or not len(getattr(metrics, "ap_class_index", [])):
        return []
    p, r, map50, map5095 = (float(v) for v in metrics.mean_results())
    rows = [{"class": "all", "images": int(validator.seen), "instances": int(metrics.nt_per_class.sum()), "P": p, "R": r,
             "mAP50": map50, "mAP50-95": map5095}]
    return rows + [{"class": c["Class"], "images": int(c["Images"]), "instances": int(c["Instances"]),
                    "P": float(c["Box-P"]), "R": float(c["Box-R"]), "mAP50": float(c["mAP50"]),
                    "mAP50-95": float(c["mAP50-95"])} for c in metrics.summary(decimals=6)]


def use_threads(threads: int | None) -> None:
    """Fix this process's CPU thread count: Ultralytics resets it to ``cores - 1`` in every ``select_device`` call.

    Results are only reproducible at a fixed thread count (how many threads split a float reduction changes its
    rounding), and parallel jobs must not oversubscribe the cores.
    """
    if not threads:
        return
    import torch
    import ultralytics.utils.torch_utils as tu

    tu.NUM_THREADS = int(threads)  # read by select_device; patched here, Ultralytics' code is not copied
    torch.set_num_threads(int(threads))


def device_of(job: dict[str, Any]) -> str | None:
    """The job's device: its slot's, else the protocol's ``train.device``, else Ultralytics' choice."""
    return job.get("device") or job["train"].get("device")


def _folder(job: dict[str, Any]) -> Path:
    """The job's own folder (where its result.json goes)."""
    return Path(job["result"]).parent


def validate(weights: str, data: str, train: dict[str, Any], device: str | None = None,
             folder: Path | None = None) -> dict[str, float]:
    """Validate a checkpoint exactly as the trainer validates its students (same imgsz, rect, val batch of 2x).

    ``folder``: the job's folder, where Ultralytics' validation run folder goes (not ``runs/detect/val*`` of the
    working directory).
    """
    from ultralytics import YOLO

    args = dict(data=data, imgsz=train.get("imgsz", 640), batch=2 * train.get("batch", 16), plots=False,
                verbose=False, workers=train.get("workers", 0))
    if folder is not None:
        args.update(project=str(folder), name="val", exist_ok=True)
    if device is not None:
        args["device"] = device
    return _box(YOLO(weights).val(**args))


def job_teacher(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the teacher (cached across protocols and runs) when asked, then validate it on the protocol's split."""
    from yolokd.engine.teacher import finetune_teacher

    t = job["teacher"]
    weights = t["init"]
    if t.get("epochs", 0) > 0:
        args = {k: v for k, v in job["train"].items() if k not in {"epochs", "seed", "workers", "device"}}
        args.update(t.get("args", {}))
        best, _ = finetune_teacher(weights, job["data"], t["epochs"], seed=0, workers=job["train"].get("workers", 0),
                                   device=device_of(job), **args)
        weights = str(best)
        curve = best.parents[1] / "results.csv"  # the cached fine-tune's per-epoch log: the teacher's learning curve
        if curve.is_file():
            shutil.copyfile(curve, Path(job["result"]).parent / "results.csv")
    return {"weights": weights, **validate(weights, job["data"], job["train"], device_of(job), _folder(job))}


def job_student_init(job: dict[str, Any]) -> dict[str, Any]:
    """The untouched student initialisation on the same split: the reference that fine-tuning can erode.

    Only meaningful when the checkpoint already has the data's classes (coco128-ft); otherwise (a COCO student on
    KITTI) its head is re-initialised for training and there is nothing to measure: NaN, with the reason.
    """
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset

    from yolokd.engine.models import classes_match

    model = YOLO(job["student"])
    if not classes_match(model.model, check_det_dataset(job["data"])):
        return {"weights": job["student"], "mAP50-95": float("nan"), "mAP50": float("nan"),
                "note": "the student checkpoint's classes differ from the data's: its head is re-initialised"}
    return {"weights": job["student"], **validate(job["student"], job["data"], job["train"], device_of(job),
                                                  _folder(job))}


class _IterTimer:
    """Wall time of every training iteration (callbacks on batch start / end)."""

    def __init__(self) -> None:
        self.t0, self.times = 0.0, []

    def start(self, trainer) -> None:
        self.t0 = time.perf_counter()

    def end(self, trainer) -> None:
        self.times.append(time.perf_counter() - self.t0)


def read_epochs(csv_path: Path) -> list[dict[str, float]]:
    """Rows of an Ultralytics results.csv as floats."""
    with open(csv_path, newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def job_train(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, seed) combination and summarise it."""
    import torch

    from yolokd.engine.trainer import KDTrainer

    run = Path(job["run_dir"])
    overrides = dict(job["train"], **job["args"], student=job["student"], method=job["method"], data=job["data"],
                     seed=job["seed"], project=str(run.parent), name=run.name, exist_ok=True, plots=False)
    if job.get("teacher_weights"):  # None for methods that never load a teacher (they may start before it exists)
        overrides["teacher"] = job["teacher_weights"]
    if device_of(job) is not None:
        overrides["device"] = device_of(job)
    timer = _IterTimer()
    trainer = KDTrainer(overrides=overrides)
    trainer.add_callback("on_train_batch_start", timer.start)
    trainer.add_callback("on_train_batch_end", timer.end)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    rows = read_epochs(Path(trainer.csv))
    final = rows[-1]
    best_i = max(range(len(rows)), key=lambda i: (rows[i]["metrics/mAP50-95(B)"], i))  # Ultralytics: last max wins
    times = timer.times[SKIP_ITERS:] or timer.times
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    best = trainer.metrics or {}  # Ultralytics' final validation of best.pt
    return {
        "final_mAP50-95": final["metrics/mAP50-95(B)"], "final_mAP50": final["metrics/mAP50(B)"],
        "best_mAP50-95": float(best.get("metrics/mAP50-95(B)", rows[best_i]["metrics/mAP50-95(B)"])),
        "best_mAP50": float(best.get("metrics/mAP50(B)", rows[best_i]["metrics/mAP50(B)"])),
        "best_epoch": int(rows[best_i]["epoch"]), "epochs": len(rows),
        "kd_det_ratio": final.get("train/kd_det_ratio", float("nan")),
        # the KD:detection gradient ratio on the student, one batch an epoch: mean over the epochs
        "kd_det_grad_ratio": mean_std([r.get("train/kd_det_grad_ratio", float("nan")) for r in rows])[0],
        "s_per_it": statistics.median(times), "s_per_it_p25": q[0], "s_per_it_p75": q[2], "iters": len(timer.times),
        "wall_s": wall, "weights": str(trainer.best), "threads": torch.get_num_threads(),
        # the final validation of best.pt (the same pass as best_*), per class
        "per_class": per_class(trainer.validator) if trainer.metrics else [],
    }


JOBS = {"teacher": job_teacher, "student_init": job_student_init, "train": job_train}


def main(path: str) -> None:
    """Run the job described by the JSON file at ``path`` and write its ``result.json``."""
    from yolokd.utils.offline import prepare_ultralytics

    prepare_ultralytics()
    job = json.loads(Path(path).read_text())
    use_threads(job.get("threads"))
    result = JOBS[job["kind"]](job)
    result.update(peak_memory())
    result.update({"kind": job["kind"], "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    write_json(Path(job["result"]), result)


if __name__ == "__main__":
    main(sys.argv[1])
