"""Fine-tuning a teacher on the student's dataset, cached: the first step of the two-step recipe.

A COCO-pretrained teacher (80 classes) cannot distil a 3-class driving dataset: its head scores the wrong classes. With
``teacher_epochs=N`` the teacher is first trained on the dataset with plain Ultralytics, its mAP is reported, and the
result is cached under ``$YOLOKD_CACHE/teachers/`` keyed by everything that changes it, so the next run reuses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from yolokd.utils.paths import cache_dir


def _fingerprint(path: str | Path) -> str:
    """Content hash of a file (size + first/last MiB, cheap for big checkpoints), or the name of a bundled YAML."""
    p = Path(path)
    if not p.exists():
        return str(path)
    h = hashlib.sha1(str(p.stat().st_size).encode())
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if p.stat().st_size > 1 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()


def teacher_cache_key(teacher: str, data_yaml: str, settings: dict[str, Any]) -> str:
    """Key of a fine-tuned teacher: teacher weights, the dataset YAML's content, training settings, Ultralytics version.

    Label files are not hashed (a large dataset would make every run slow): after editing labels in place, delete the
    cached teacher under ``$YOLOKD_CACHE/teachers`` or change the YAML.
    """
    import ultralytics

    parts = [_fingerprint(teacher), _fingerprint(data_yaml), json.dumps(settings, sort_keys=True), ultralytics.__version__]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def finetune_teacher(
    teacher: str, data: str, epochs: int, imgsz: int = 640, batch: int = 16, device: str | None = None,
    workers: int = 8, seed: int = 0, **extra: Any,
) -> tuple[Path, dict[str, float]]:
    """Train ``teacher`` on ``data`` with plain Ultralytics (or reuse the cached result) and return (best.pt, metrics).

    Args:
        teacher: Starting checkpoint (.pt) or model YAML.
        data: Dataset YAML.
        epochs: Fine-tuning epochs.
        imgsz, batch, device, workers, seed: As for ``yolo train``.
        **extra: Further Ultralytics train arguments (part of the cache key).

    Returns:
        The fine-tuned ``best.pt`` and its validation metrics (``metrics/mAP50(B)``, ``metrics/mAP50-95(B)``, ...).
    """
    settings = {"epochs": int(epochs), "imgsz": imgsz, "batch": batch, "seed": seed, **extra}
    key = teacher_cache_key(teacher, data, settings)
    out = cache_dir() / "teachers" / f"{Path(teacher).stem}-{Path(data).stem}-{key}"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Parallel benchmark jobs, or two runs started at once, may ask for the same teacher: the second waits for the
    # first instead of training it again beside it (and then reuses its result).
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _finetune_locked(teacher, data, epochs, imgsz, batch, device, workers, seed, settings, out, extra)


def _finetune_locked(teacher: str, data: str, epochs: int, imgsz: int, batch: int, device: str | None, workers: int,
                     seed: int, settings: dict[str, Any], out: Path, extra: dict[str, Any]) -> tuple[Path, dict[str, float]]:
    """The body of ``finetune_teacher``, run while holding the cache entry's lock."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import LOGGER

    marker = out / "teacher.json"
    best = out / "weights" / "best.pt"
    if marker.exists() and best.exists():
        info = json.loads(marker.read_text())
        LOGGER.info(f"yolokd: reusing fine-tuned teacher {best} (mAP50-95 {info['metrics'].get('metrics/mAP50-95(B)', 0):.3f})")
        return best, info["metrics"]
    LOGGER.info(f"yolokd: fine-tuning teacher {teacher} on {data} for {epochs} epochs -> {out}")
    marker.unlink(missing_ok=True)  # a stale marker (its best.pt gone) must not vouch for a best.pt being rewritten
    overrides = dict(model=teacher, data=data, epochs=int(epochs), imgsz=imgsz, batch=batch, seed=seed, workers=workers,
                     project=str(out.parent), name=out.name, exist_ok=True, plots=False, **extra)
    if device is not None:
        overrides["device"] = device
    trainer = DetectionTrainer(overrides=overrides)
    trainer.train()
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items() if isinstance(v, (int, float))}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"teacher": str(teacher), "data": str(data), "settings": settings, "metrics": metrics}, indent=1))
    os.replace(tmp, marker)  # the marker appears only once best.pt is complete
    LOGGER.info(f"yolokd: teacher mAP50 {metrics.get('metrics/mAP50(B)', 0):.3f}, "
                f"mAP50-95 {metrics.get('metrics/mAP50-95(B)', 0):.3f} on {data}")
    return best, metrics
