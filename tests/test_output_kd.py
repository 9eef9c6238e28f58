"""LD (output distillation) and the student-assignment provider vs Ultralytics' own losses, naive loops, hand values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from test_gkd import _detector, _real_batch, _teacher
from yolokd.engine.criterion import KDCriterion
from yolokd.engine.models import head_channels
from yolokd.engine.providers import AssignmentRecorder, student_assignment
from yolokd.methods import KDBatch, build_method, method_defaults, reduce_terms
from yolokd.methods.base import Assignment

TERMS = ("ld_box", "ld_cls")
IMG_HW = (32, 64)
SIZES = [(4, 8), (2, 4), (1, 2)]  # strides 8, 16, 32 of the 32x64 image
A = sum(h * w for h, w in SIZES)
LEVEL_OF = [lvl for lvl, (h, w) in enumerate(SIZES) for _ in range(h * w)]
STRIDE_OF = [IMG_HW[0] / SIZES[lvl][0] for lvl in LEVEL_OF]


# ------------------------------------------------------------------------------------------------ synthetic inputs
def _raw(n=3, nc=3, reg_max=16, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    out = {"boxes": torch.randn(n, 4 * reg_max, A, generator=g) * 2, "scores": torch.randn(n, nc, A, generator=g) * 3}
    if reg_max == 1:  # a DFL-free head predicts the side distances themselves (grid cells, >= 0)
        out["boxes"] = out["boxes"].abs()
    for v in out.values():
        v.requires_grad_(grad)
    return out


def _assignment(n=3, nc=3, seed=0, empty=(1,)):
    """Random positives (none in the images of ``empty``), each with a random target score on one class."""
    g = torch.Generator().manual_seed(seed + 100)
    fg = torch.rand(n, A, generator=g) < 0.3
    fg[list(empty)] = False
    labels = torch.randint(0, nc, (n, A, 1), generator=g)
    scores = torch.zeros(n, A, nc).scatter_(2, labels, torch.rand(n, A, 1, generator=g)) * fg[..., None]
    return Assignment(fg_mask=fg, target_scores=scores, target_bboxes=torch.zeros(n, A, 4),
                      target_gt_idx=torch.zeros(n, A, dtype=torch.long))


def _kd(student, teacher, assigned):
    n = student["scores"].shape[0]
    feats = [torch.zeros(n, 1, h, w) for h, w in SIZES]
    return KDBatch(feats, feats, {"img": torch.zeros(n, 3, *IMG_HW)}, teacher_preds=teacher, student_preds=student,
                   student_assignment=assigned)


def _build(**kw):
    return build_method("ld", [16, 32, 64], [24, 48, 96], **kw)


# ------------------------------------------------------------------------------------------------ naive reference
def _log_softmax(xs):
    m = max(xs)
    z = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - z for x in xs]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _side_distance(logits):
    """Decoded distance of one side: the raw value (reg_max 1) or the expectation of the softmax over the bins."""
    if len(logits) == 1:
        return logits[0]
    return sum(b * math.exp(lp) for b, lp in enumerate(_log_softmax(logits)))


def _naive_ld(s, t, asg, box_weight, cls_weight, box_t, cls_t, level_of=LEVEL_OF, stride_of=STRIDE_OF,
              img_hw=IMG_HW):
    """``{term: [[value per level] per image]}`` by explicit loops over images, anchors, sides, bins and classes."""
    s, t = ({k: v.detach().double() for k, v in x.items() if k in ("boxes", "scores")} for x in (s, t))
    n, nc, a = s["scores"].shape
    rs, rt = s["boxes"].shape[1] // 4, t["boxes"].shape[1] // 4
    tss = max(float(asg.target_scores.double().sum()), 1.0)
    n_levels = max(level_of) + 1
    box = [[0.0] * n_levels for _ in range(n)]
    cls = [[0.0] * n_levels for _ in range(n)]
    for i in range(n):
        for j in range(a):
            lvl = level_of[j]
            if asg.fg_mask[i, j]:
                weight = float(asg.target_scores[i, j].double().sum())
                sides = 0.0
                for side in range(4):
                    sl = [float(s["boxes"][i, side * rs + b, j]) for b in range(rs)]
                    tl = [float(t["boxes"][i, side * rt + b, j]) for b in range(rt)]
                    if rs == rt > 1:  # KL(softmax(t / T) || softmax(s / T)) * T^2 over the bins
                        ls, lt = _log_softmax([x / box_t for x in sl]), _log_softmax([x / box_t for x in tl])
                        sides += sum(math.exp(q) * (q - p) for p, q in zip(ls, lt)) * box_t**2
                    else:  # L1 of the decoded distances, x sides / image width, y sides / image height
                        size = img_hw[1] if side in (0, 2) else img_hw[0]
                        sides += abs(_side_distance(sl) - _side_distance(tl)) * stride_of[j] / size
                box[i][lvl] += weight * sides / 4
            for k in range(nc):
                p, q = _sigmoid(float(t["scores"][i, k, j]) / cls_t), _sigmoid(float(s["scores"][i, k, j]) / cls_t)
                cls[i][lvl] += (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))) * cls_t**2
    scale = n / tss
    return {"ld_box": [[box_weight * scale * v for v in row] for row in box],
            "ld_cls": [[cls_weight * scale * v for v in row] for row in cls]}


def _assert_terms(terms, ref, rel=1e-5, abs=1e-9):
    for name, rows in ref.items():
        for i, row in enumerate(rows):
            for lvl, v in enumerate(row):
                assert terms[name][i, lvl].item() == pytest.approx(v, rel=rel, abs=abs), (name, i, lvl)


# ------------------------------------------------------------------------------------------------ the loss itself
@pytest.mark.parametrize("reg_s,reg_t", [(16, 16), (1, 1), (1, 16), (16, 1), (8, 16)])
def test_ld_equals_naive_loops(reg_s, reg_t):
    """DFL heads with equal reg_max: the KL; otherwise (YOLO26-style reg_max 1, mixed pairs) the scaled L1."""
    hp = dict(box_weight=0.7, cls_weight=1.3, box_temperature=3.0, cls_temperature=2.0)
    s, t, asg = _raw(reg_max=reg_s), _raw(reg_max=reg_t, seed=1), _assignment()
    terms = _build(**hp)(_kd(s, t, asg))
    assert tuple(terms) == TERMS and all(v.shape == (3, 3) and v.dtype == torch.float32 for v in terms.values())
    _assert_terms(terms, _naive_ld(s, t, asg, *hp.values()))
    assert (terms["ld_box"][1] == 0).all() and (terms["ld_box"][[0, 2]].sum(1) > 0).all()  # image 1: no positives
    assert (terms["ld_cls"] > 0).all()  # the class term covers every anchor, background included


def test_ld_is_zero_when_the_student_equals_the_teacher():
    s, asg = _raw(), _assignment(empty=())
    terms = _build()(_kd(s, {k: v.clone() for k, v in s.items()}, asg))
    assert all((v.abs() < 1e-6).all() for v in terms.values())
    assert (_build()(_kd(_raw(seed=3), s, asg))["ld_box"].sum(1) > 0).all()  # and not zero otherwise


def test_ld_box_covers_the_assigned_region_only_and_scales_with_its_weight():
    s, t, asg = _raw(grad=True), _raw(seed=1), _assignment()
    terms = _build(cls_weight=0.0)(_kd(s, t, asg))
    assert (terms["ld_cls"] == 0).all()
    terms["ld_box"].sum().backward()
    touched = s["boxes"].grad.abs().sum(1) > 0  # (N, A)
    assert torch.equal(touched, asg.fg_mask & (asg.target_scores.sum(-1) > 0))
    doubled = Assignment(asg.fg_mask, asg.target_scores * 2, asg.target_bboxes, asg.target_gt_idx)
    # every weight doubled, and so the normaliser: the term is a weighted mean over the positives, unchanged
    assert torch.allclose(_build()(_kd(s, t, doubled))["ld_box"], terms["ld_box"], rtol=1e-6)


def test_ld_gradients_reach_the_student_outputs_never_the_teacher():
    s, t = _raw(grad=True), _raw(seed=1, grad=True)  # a teacher output that requires grad still gets none
    loss, items = reduce_terms(_build()(_kd(s, t, _assignment())), 3)
    loss.sum().backward()
    assert s["boxes"].grad.abs().sum() > 0 and s["scores"].grad.abs().sum() > 0
    assert t["boxes"].grad is None and t["scores"].grad is None
    assert set(items) == {"ld_box_loss", "ld_cls_loss"}
    assert not list(_build().parameters())  # nothing to optimise


@pytest.mark.parametrize("reg_max", [16, 1])
def test_fp16_inputs_give_the_fp32_result(reg_max):
    s, t, asg = _raw(reg_max=reg_max), _raw(reg_max=reg_max, seed=1), _assignment()
    half = [{k: v.half() for k, v in x.items()} for x in (s, t)]
    out = _build()(_kd(*half, asg))
    same_inputs = _build()(_kd(*[{k: v.float() for k, v in x.items()} for x in half], asg))
    ref = _build()(_kd(s, t, asg))
    for k in TERMS:
        assert out[k].dtype == torch.float32 and torch.isfinite(out[k]).all(), k
        assert torch.allclose(out[k], same_inputs[k], rtol=1e-6, atol=0), k  # computed in fp32
        assert torch.allclose(out[k], ref[k], rtol=2e-3, atol=1e-6), k  # only the inputs' rounding differs


def test_a_batch_without_positives_is_finite():
    s, t = _raw(), _raw(seed=1)
    asg = _assignment(empty=(0, 1, 2))
    assert float(asg.target_scores_sum) == 1.0  # clamped as in Ultralytics: no division by zero
    terms = _build()(_kd(s, t, asg))
    assert (terms["ld_box"] == 0).all() and torch.isfinite(terms["ld_cls"]).all() and (terms["ld_cls"] > 0).all()


def test_hyperparameters_come_from_the_yaml_and_are_checked():
    d = method_defaults("ld")
    assert set(d) == {"box_weight", "cls_weight", "box_temperature", "cls_temperature"}
    m = _build()
    assert (m.box_weight, m.cls_weight, m.box_temperature, m.cls_temperature) == tuple(
        d[k] for k in ("box_weight", "cls_weight", "box_temperature", "cls_temperature"))
    assert d["box_temperature"] == 10.0  # LD's T
    with pytest.raises(ValueError, match="box_weight must be >= 0"):
        _build(box_weight=-1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        _build(cls_temperature=0)
    with pytest.raises(ValueError, match="needs teacher_preds, student_preds and student_assignment"):
        _build()(_kd(_raw(), _raw(), None))


# ------------------------------------------------------------------------ real models: the provider and the criterion
def test_the_assignment_is_the_detection_losss_own_and_reproduces_its_dfl_and_cls_losses():
    """Region, weights and normaliser against Ultralytics' public entry point and its own DFL / BCE losses."""
    from ultralytics.utils.loss import DFLoss
    from ultralytics.utils.tal import bbox2dist

    student = _detector(0).train()
    det = student.init_criterion()
    batch = _real_batch()
    preds = student(batch["img"])
    with AssignmentRecorder(det) as rec:
        det(preds, batch)
    assert len(rec.outputs) == 1 and not det.assigner._forward_hooks  # one call seen, hook removed
    asg = student_assignment(det, preds, batch, rec.outputs)
    again = student_assignment(det, preds, batch)  # nothing recorded: computed by the provider itself
    (fg, gt_idx, boxes, anchors, strides), parts, _ = det.get_assigned_targets_and_loss(preds, batch)
    assert fg.any() and torch.equal(asg.fg_mask, fg) and torch.equal(again.fg_mask, fg)
    assert torch.equal(asg.target_gt_idx[fg], gt_idx[fg].long()) and torch.equal(asg.target_bboxes, boxes.float())
    assert torch.equal(asg.target_scores, again.target_scores) and not asg.target_scores.requires_grad
    # Ultralytics' DFL and cls losses, recomputed with the provider's target scores, are the ones the loss returned
    dist = preds["boxes"].detach().permute(0, 2, 1)
    target = bbox2dist(anchors, boxes / strides, 15)
    weight = asg.anchor_weights[fg][:, None]
    dfl = (DFLoss(16)(dist[fg].reshape(-1, 16), target[fg]) * weight).sum() / asg.target_scores_sum * det.hyp.dfl
    bce = F.binary_cross_entropy_with_logits(preds["scores"].detach().permute(0, 2, 1), asg.target_scores,
                                             reduction="none").sum() / asg.target_scores_sum * det.hyp.cls
    assert dfl.item() == pytest.approx(parts[2].item(), rel=1e-5)
    assert bce.item() == pytest.approx(parts[1].item(), rel=1e-5)


def _opinionated_teacher(cfg="yolov8n.yaml"):
    """A random-init teacher whose box and class outputs differ clearly from a random-init student's.

    Random-init heads start from the same biases (every DFL bin alike), so their distributions nearly coincide and a KL
    of ~1e-6 would test fp32 rounding rather than the loss; random biases in the last convs of the teacher's head fix
    it.
    """
    from yolokd.engine.models import detect_head

    teacher = _teacher(cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for branch in (*detect_head(teacher).cv2, *detect_head(teacher).cv3):
            branch[-1].bias.copy_(torch.randn(branch[-1].bias.shape, generator=g) * 2)
    return teacher


def _criterion(teacher, student, **kw):
    m = build_method("ld", head_channels(student), head_channels(teacher), **kw)
    return KDCriterion(student.init_criterion(), teacher, m), m


def test_ld_through_the_criterion_on_the_assignment_ultralytics_computes():
    teacher, student = _opinionated_teacher(), _detector(0).train()
    crit, _ = _criterion(teacher, student)
    batch = _real_batch()
    preds = student(batch["img"])
    loss, items = crit(preds, batch)
    (fg, *_), _, _ = crit.det.get_assigned_targets_and_loss(preds, batch)  # Ultralytics' own entry point
    asg = student_assignment(crit.det, preds, batch)
    with torch.no_grad():
        t_raw = teacher(batch["img"])[1]
    level_hw = [f.shape[-2:] for f in preds["feats"]]
    level_of = [lvl for lvl, (h, w) in enumerate(level_hw) for _ in range(h * w)]
    stride_of = [batch["img"].shape[-2] / level_hw[lvl][0] for lvl in level_of]
    d = method_defaults("ld")
    ref = _naive_ld(preds, t_raw, Assignment(fg, asg.target_scores, asg.target_bboxes, asg.target_gt_idx),
                    d["box_weight"], d["cls_weight"], d["box_temperature"], d["cls_temperature"], level_of=level_of,
                    stride_of=stride_of, img_hw=tuple(batch["img"].shape[-2:]))
    n = batch["img"].shape[0]
    for name in TERMS:  # the logged value is the per-image mean of the terms (Ultralytics' convention)
        assert items[f"{name}_loss"].item() == pytest.approx(sum(map(sum, ref[name])) / n, rel=1e-5)
        assert items[f"{name}_loss"] > 0
    assert torch.equal(crit.kd_terms(preds, batch)[0], loss[3:])  # without a recorded assignment: the same terms


def test_ld_under_autocast_is_fp32_and_close_to_fp32():
    teacher, student = _opinionated_teacher(), _detector(0).train()
    crit, _ = _criterion(teacher, student)
    batch = _real_batch()
    ref = crit(student(batch["img"]), batch)[0][3:]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # student, teacher, detection loss and assigner in low precision
        preds = student(batch["img"])
        assert preds["boxes"].dtype == torch.bfloat16
        out = crit(preds, batch)[0][3:]
    assert out.dtype == torch.float32 and (out > 0).all()
    assert torch.allclose(out, ref, rtol=0.05)  # measured: within 3% (bf16 keeps 3 significant digits)


def test_images_without_boxes_through_the_criterion():
    teacher, student = _teacher(), _detector(0).train()
    crit, _ = _criterion(teacher, student)
    batch = {**_real_batch(), "batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    loss, items = crit(student(batch["img"]), batch)
    assert torch.isfinite(loss).all() and items["ld_box_loss"] == 0 and items["ld_cls_loss"] > 0


@pytest.mark.parametrize("teacher_cfg,student_cfg",
                         [("yolo26n.yaml", "yolov8n.yaml"), ("yolov8n.yaml", "yolo26n.yaml")])
def test_end_to_end_heads_use_the_one2many_branch(teacher_cfg, student_cfg):
    teacher = _teacher(teacher_cfg)  # yolo26: one2many / one2one branches, reg_max 1 (no DFL): the L1 box term
    student = _detector(0, student_cfg).train()
    crit, method = _criterion(teacher, student)
    batch = _real_batch()
    preds = student(batch["img"])
    loss, items = crit(preds, batch)
    assert torch.isfinite(loss).all() and all(float(items[f"{k}_loss"]) > 0 for k in TERMS)
    with torch.no_grad():
        t_raw = teacher(batch["img"])[1]
    branch = {k: v["one2many"] if "one2many" in v else v for k, v in (("s", preds), ("t", t_raw))}
    kd = KDBatch([f.float() for f in branch["s"]["feats"]], [], batch, teacher_preds=branch["t"],
                 student_preds=branch["s"], student_assignment=student_assignment(crit.det, preds, batch))
    _, direct = reduce_terms(method(kd), batch["img"].shape[0])
    for k in TERMS:
        assert items[f"{k}_loss"].item() == pytest.approx(direct[f"{k}_loss"].item(), rel=1e-6)


# End to end with method=ld: tests/test_train_e2e.py::test_train_end_to_end[ld-...].
