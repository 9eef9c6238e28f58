"""Python API: ``YoloKD(teacher=..., student=..., method=..., **method_args).train(data=..., **train_args)``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from yolokd.engine.spec import DEFAULT_METHOD, DEFAULT_STUDENT
from yolokd.methods import canonical_name, resolve_hparams


class YoloKD:
    """Distil a YOLO student from a frozen teacher.

    Args:
        teacher: Teacher checkpoint (``.pt``) trained on the same classes as the data, or a model YAML (random weights,
            for smoke tests). Not needed for ``method="none"``.
        student: Student checkpoint or model YAML (default ``yolov8n.yaml``); its head adopts the dataset's classes.
        method: A registered method, or a combination (``"fgd+ld"``, ``"fgd+aid"``, ``"aid"`` = ``"fkd+aid"``; see
            ``yolokd methods``).
        **method_args: The method's hyperparameters; unknown names fail here. For a combination, per part:
            ``aid={"alpha": 0.2}``, ``**{"aid.alpha": 0.2}``, or a bare name only one part has (``granularity=...``).

    Examples:
        >>> kd = YoloKD(teacher="teacher.pt", student="yolov8n.pt", method="fgd", alpha=2e-3)
        >>> kd = YoloKD(teacher="teacher.pt", method="fgd+aid", fgd={"alpha": 1e-3}, aid={"alpha": 0.2})
        >>> metrics = kd.train(data="kitti.yaml", epochs=100, imgsz=640)
        >>> kd.final_metrics["metrics/mAP50-95(B)"], metrics["metrics/mAP50-95(B)"]
        >>> kd.export(format="onnx")
    """

    def __init__(self, teacher: str | None = None, student: str = DEFAULT_STUDENT, method: str = DEFAULT_METHOD,
                 **method_args: Any) -> None:
        """Validate the method and its hyperparameters now, before any data is touched."""
        self.hparams = resolve_hparams(method, method_args)
        self.teacher, self.student, self.method = teacher, student, canonical_name(method)
        self.trainer = None
        self.export_report: dict | None = None
        self.metrics: dict[str, float] = {}
        self.final_metrics: dict[str, float] = {}

    def train(self, data: str = "synthetic", **train_args: Any) -> dict[str, float]:
        """Train the student and return the validation metrics of its **best** checkpoint (``best.pt``).

        Like Ultralytics, the returned metrics come from the final re-validation of ``best.pt`` (the epoch with the
        highest fitness, 0.1 mAP50 + 0.9 mAP50-95). The final epoch's metrics, which benchmarks should report, are in
        ``self.final_metrics`` (the last row of ``results.csv``).

        Args:
            data: Dataset YAML, or ``synthetic`` for the built-in synthetic driving scenes.
            **train_args: Any Ultralytics train argument (epochs, imgsz, batch, device, ...), ``teacher_epochs=N``
                to fine-tune a teacher whose classes differ from the data's first, and ``close_kd=N`` to train the
                final N epochs without distillation.
        """
        from yolokd.engine.trainer import KDTrainer

        overrides = {"teacher": self.teacher, "student": self.student, "method": self.method, **self.hparams,
                     "data": data, **train_args}
        self.trainer = KDTrainer(overrides=overrides)
        self.trainer.train()
        self.metrics = {k: float(v) for k, v in (self.trainer.metrics or {}).items()}
        self.final_metrics = read_last_epoch(self.trainer.csv)
        return self.metrics

    @property
    def weights(self) -> Path:
        """The checkpoint that ``val`` and ``export`` use: ``best.pt`` of the last training run."""
        if self.trainer is None:
            raise RuntimeError("train() first")
        return self.trainer.best if self.trainer.best.exists() else self.trainer.last

    def val(self, **kwargs: Any):
        """Validate ``best.pt`` with Ultralytics (default: the training data); returns Ultralytics' metrics object."""
        from ultralytics import YOLO

        kwargs.setdefault("data", str(self.trainer.args.data))
        return YOLO(str(self.weights)).val(**kwargs)

    def export(self, **kwargs: Any) -> str:
        """Export ``best.pt`` (``yolokd.deploy.export.export``: Ultralytics' exporter, then the parity check for ONNX,
        ``val=True``, ``format="jetson"``); returns the exported file's path. The full report is ``.export_report``."""
        from yolokd.deploy.export import export

        self.export_report = export(self.weights, **kwargs)
        return self.export_report["exported"]


def read_last_epoch(csv_path: str | Path) -> dict[str, float]:
    """Last row of an Ultralytics results.csv as floats (the final epoch's metrics)."""
    path = Path(csv_path)
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k.strip(): float(v) for k, v in rows[-1].items()} if rows else {}
