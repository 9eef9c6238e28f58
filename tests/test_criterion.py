"""The KD criterion on real Ultralytics models: taps from each model's own head, cross-family pairs, fp32 under AMP."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from yolokd.engine.criterion import KDCriterion
from yolokd.engine.models import head_channels, head_strides, is_end2end, load_teacher
from yolokd.methods import build_method

DATA = {"nc": 3, "names": {0: "car", 1: "pedestrian", 2: "cyclist"}, "channels": 3}


def _student(cfg: str):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    m = DetectionModel(cfg, nc=3, verbose=False)
    m.args = get_cfg()
    return m.train()


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(n, 3, size, size, generator=g),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0], [1.0]]),
        "bboxes": torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.4, 0.3]]),
    }


@pytest.mark.parametrize(
    "teacher,student,expected",
    [
        ("yolov8s.yaml", "yolov8n.yaml", ([128, 256, 512], [64, 128, 256])),
        ("yolo11s.yaml", "yolov8n.yaml", ([128, 256, 512], [64, 128, 256])),  # cross-family
        ("yolo26s.yaml", "yolo26n.yaml", ([128, 256, 512], [64, 128, 256])),  # end-to-end heads
        ("yolov8s.yaml", "yolo26n.yaml", ([128, 256, 512], [64, 128, 256])),  # cross-family, e2e student
    ],
)
@pytest.mark.parametrize("method", ["mimic", "ultralytics"])
def test_kd_step_on_real_model_pairs(teacher, student, expected, method):
    t = load_teacher(teacher, DATA)
    s = _student(student)
    assert (head_channels(t), head_channels(s)) == expected
    assert head_strides(t) == head_strides(s) == [8, 16, 32]
    m = build_method(method, head_channels(s), head_channels(t))
    crit = KDCriterion(s.init_criterion(), t, m)
    s.criterion = crit
    before = {k: v.clone() for k, v in t.state_dict().items()}
    loss, items = s.loss(_batch())
    term = m.term_names[0]
    assert torch.isfinite(loss).all() and loss.shape[0] == 4 and f"{term}_loss" in items
    assert items[f"{term}_loss"] > 0
    loss.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())  # BN stats untouched
    assert not t.training and is_end2end(t) == teacher.startswith("yolo26")


def test_kd_terms_are_fp32_under_autocast():
    t = load_teacher("yolov8s.yaml", DATA)
    s = _student("yolov8n.yaml")
    m = build_method("mimic", head_channels(s), head_channels(t))
    crit = KDCriterion(s.init_criterion(), t, m)
    batch = _batch()
    preds = s(batch["img"])
    ref, _ = crit.kd_terms(preds, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds_bf16 = s(batch["img"])
        assert preds_bf16["feats"][0].dtype == torch.bfloat16  # the student really ran in low precision
        out, _ = crit.kd_terms(preds_bf16, batch)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=0.05)  # same loss up to the student's bf16 forward


def test_criterion_never_travels_with_copies_of_the_student():
    t = load_teacher("yolov8s.yaml", DATA)
    s = _student("yolov8n.yaml")
    s.criterion = KDCriterion(s.init_criterion(), t, build_method("mimic", [64, 128, 256], [128, 256, 512]))
    assert copy.deepcopy(s).criterion is None  # the EMA copy
    blob = pickle.dumps(s)
    assert b"yolokd" not in blob and pickle.loads(blob).criterion is None


def test_validation_outputs_get_zero_kd_columns():
    t = load_teacher("yolov8s.yaml", DATA)
    s = _student("yolov8n.yaml")
    crit = KDCriterion(s.init_criterion(), t, build_method("mimic", [64, 128, 256], [128, 256, 512]))
    s.eval()
    batch = _batch()
    with torch.no_grad():
        preds = s(batch["img"])
        loss, items = crit(preds, batch)
    assert loss.shape[0] == 4 and loss[3] == 0 and items["mimic_loss"] == 0


def test_skipping_the_teacher_head_gives_the_same_features():
    from yolokd.engine.criterion import head_feats, skip_head

    t = load_teacher("yolov8s.yaml", DATA)
    x = _batch()["img"]
    with torch.no_grad():
        full = head_feats(t(x)[1])
        skip_head(t)
        out = t(x)
    assert set(out) == {"feats"} and all(torch.equal(a, b) for a, b in zip(full, head_feats(out)))
