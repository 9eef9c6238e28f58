"""The Python API: train returns best.pt's metrics, final_metrics the last epoch's; val and export work on the result."""

from __future__ import annotations

import pytest

from conftest import TINY


def test_yolokd_train_val_export(tmp_path, tiny_data):
    from yolokd import YoloKD
    from yolokd.api import read_last_epoch

    with pytest.raises(ValueError, match="no hyperparameter 'wieght'"):
        YoloKD(teacher="yolov8s.yaml", method="mimic", wieght=1.0)
    kd = YoloKD(teacher="yolov8s.yaml", student="yolov8n.yaml", method="mimic", weight=0.5)
    metrics = kd.train(data=tiny_data, project=str(tmp_path), name="api", **TINY)
    assert "metrics/mAP50-95(B)" in metrics and kd.trainer.kd.hparams == {"weight": 0.5}
    assert kd.final_metrics == read_last_epoch(kd.trainer.csv) and kd.final_metrics["epoch"] == 2
    assert kd.weights == kd.trainer.best
    val = kd.val(imgsz=64, batch=8, device="cpu", plots=False)
    assert 0.0 <= val.box.map <= 1.0
    onnx = kd.export(format="onnx", imgsz=64, device="cpu")
    assert str(onnx).endswith(".onnx") and (tmp_path / "api" / "weights" / "best.onnx").stat().st_size > 1e6
