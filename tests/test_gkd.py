"""GKD (+BMFI) and its gradient providers vs plain autograd, naive loops and hand values (methods.md §2, §6.6)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from test_fgd import (CS, CT, IMG_HW, SIZES, _batch, _feats, _naive_attention, _naive_gcblock, _randomise_gcblocks,
                      _xywh, assert_terms_equal)
from yolokd.engine.criterion import KDCriterion
from yolokd.engine.models import head_channels
from yolokd.engine.providers import TeacherProbe, feature_grads, student_grads
from yolokd.methods import KDBatch, build_method, method_defaults, reduce_terms
from yolokd.methods.base import GradOptions
from yolokd.methods.gkd import gaussian_box_masks, grad_map

TERMS = ("gkd_map", "gkd_box", "gkd_att", "gkd_glob")
BMFI_TERMS = ("gkd_box", "gkd_att", "gkd_glob")


# ------------------------------------------------------------------------------------------- real models (providers)
def _detector(seed: int, cfg: str = "yolov8n.yaml"):
    """A randomly initialised detector with Ultralytics' default hyperparameters as ``args``."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    m = DetectionModel(cfg, nc=3, verbose=False)
    m.args = get_cfg()
    return m


def _teacher(cfg: str = "yolov8n.yaml"):
    """Frozen, eval mode, BN unfused (so its running statistics can be checked)."""
    return _detector(1, cfg).eval().requires_grad_(False)


def _real_batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    return {"img": torch.rand(n, 3, size, size, generator=g), "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
            "cls": torch.tensor([[0.0], [2.0], [1.0]]),
            "bboxes": torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.4, 0.3]])}


def _labels_from_detections(y, img_hw, conf, topk):
    """Ultralytics' own decoded eval output -> NMS -> a label batch (normalised xywh)."""
    from ultralytics.utils.nms import non_max_suppression

    dets = non_max_suppression(y, conf_thres=conf, iou_thres=0.7, max_det=topk)
    h, w = img_hw
    rows = [(i, d[5].item(), min(max(d[0].item(), 0), w), min(max(d[1].item(), 0), h), min(max(d[2].item(), 0), w),
             min(max(d[3].item(), 0), h)) for i, ds in enumerate(dets) for d in ds]
    assert rows, "the reference needs some detections"
    return {"batch_idx": torch.tensor([r[0] for r in rows], dtype=torch.float32),
            "cls": torch.tensor([[r[1]] for r in rows]),
            "bboxes": torch.tensor([[(r[2] + r[4]) / 2 / w, (r[3] + r[5]) / 2 / h, (r[4] - r[2]) / w, (r[5] - r[3]) / h]
                                    for r in rows])}


def _plain_autograd_grads(teacher, batch, path, target_conf=None):
    """dL/dF at the Detect inputs by a plain backward through an unfrozen deep copy of the whole teacher."""
    from ultralytics.utils.loss import v8DetectionLoss

    ref = copy.deepcopy(teacher).requires_grad_(True)
    y, raw = ref(batch["img"])
    labels = batch if target_conf is None else _labels_from_detections(y, batch["img"].shape[-2:], target_conf, 10)
    if path == "direct":  # the head's inputs as leaf tensors: only the head lies between them and the loss
        feats = [f.detach().requires_grad_() for f in raw["feats"]]
        y, raw = ref.model[-1](feats)
    else:
        feats = raw["feats"]
        for f in feats:
            f.retain_grad()
    v8DetectionLoss(ref)(raw, labels)[0].sum().backward()
    if path == "total":
        assert all(p.grad is not None for p in ref.model[0].parameters())  # it really went through the backbone
    return [f.grad for f in feats]


@pytest.mark.parametrize("path,target", [("total", "gt"), ("direct", "gt"), ("total", "pred")])
def test_teacher_gradients_equal_plain_autograd_through_the_whole_teacher(path, target):
    from ultralytics.cfg import get_cfg

    teacher = _teacher()
    batch = _real_batch()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    conf = None
    if target == "pred":  # a threshold some random-init detections pass: the 12th best score of the batch
        with torch.no_grad():
            conf = teacher(batch["img"])[0][:, 4:].amax(1).flatten().sort(descending=True).values[11].item()
    graph_in_backbone = []
    spy = teacher.model[9].register_forward_hook(lambda m, i, o: graph_in_backbone.append(o.requires_grad))
    probe = TeacherProbe(teacher, get_cfg())
    raw, feats, grads = probe(batch["img"], batch, GradOptions(path=path, target=target,
                                                               pred_conf=conf if conf is not None else 0.3))
    spy.remove()
    ref = _plain_autograd_grads(teacher, batch, path, conf)
    for g, r in zip(grads, ref):
        assert g.dtype == torch.float32 and g.abs().sum() > 0
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-12), (g - r).abs().max()
    if (path, target) == ("total", "gt"):  # the test tells the two apart: P3 and P4 gain the PAN path, P5 has none
        direct = _plain_autograd_grads(teacher, batch, "direct")
        assert not torch.allclose(ref[0], direct[0], rtol=1e-3, atol=0) and torch.allclose(ref[2], direct[2])
    assert graph_in_backbone == [False]  # SPPF's output builds no graph: no backward through the backbone
    assert all(not f.requires_grad for f in feats) and not raw["boxes"].requires_grad
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items()) and not teacher.training
    assert not any(m._forward_hooks for m in teacher.modules())  # hooks removed


def test_student_gradients_equal_plain_autograd_and_leave_the_graph():
    student = _detector(0).train()
    det = student.init_criterion()
    batch = _real_batch()
    preds = student(batch["img"])
    loss, _ = det(preds, batch)
    grads = student_grads(det, preds, batch, loss, GradOptions())
    assert all(p.grad is None for p in student.parameters())  # autograd.grad touches no parameter
    loss.sum().backward()  # the training backward still works: the graph was kept
    again = student(batch["img"])  # same weights, same batch statistics: the same forward
    for f in again["feats"]:
        f.retain_grad()
    det(again, batch)[0].sum().backward()
    for g, f in zip(grads, again["feats"]):
        assert torch.allclose(g, f.grad, rtol=1e-4, atol=1e-12)


def test_gradients_survive_fp16():
    # a true gradient of 1e-8 per element is below fp16's smallest subnormal (6e-8): a fp16 backward flushes it to 0;
    # the providers' scaling keeps it (as a subnormal: a few 1e-3 of relative precision)
    x = torch.ones(4, 4, dtype=torch.float16, requires_grad=True)
    loss = (x.float() * 1e-8).sum()
    assert torch.autograd.grad(loss, [x], retain_graph=True)[0].abs().sum() == 0
    g = feature_grads(loss, [x], retain_graph=False)[0]
    assert g.dtype == torch.float32 and torch.allclose(g, torch.full((4, 4), 1e-8), rtol=5e-3)


# --------------------------------------------------------------------------------------- through the KD criterion
def _criterion(teacher, student, **kw):
    m = build_method("gkd", head_channels(student), head_channels(teacher), **kw)
    return KDCriterion(student.init_criterion(), teacher, m), m


def test_gkd_map_term_reaches_the_student_neck_and_parameters():
    teacher, student = _teacher(), _detector(0).train()
    crit, _ = _criterion(teacher, student, bmfi=False)  # gkd_map alone: the differentiable student map
    batch = _real_batch()
    preds = student(batch["img"])
    for f in preds["feats"]:
        f.retain_grad()
    loss, items = crit(preds, batch)
    assert items["gkd_map_loss"] > 0 and all(items[f"{k}_loss"] == 0 for k in BMFI_TERMS)
    loss[3].backward()  # the KD entry only
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in preds["feats"])
    for i in (0, 9, 15, 21):  # backbone, SPPF, P3 and P5 of the neck
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.model[i].parameters()), i


def test_criterion_gradient_ratio_equals_separate_backward_passes():
    # grad_ratio = ||d KD / d theta|| / ||d det / d theta||, measured inside the criterion with the graphs kept; here
    # from two plain backward passes of the same loss, accumulating into .grad (GKD: its KD terms include the
    # student's own gradient maps, a second-order graph).
    teacher, student = _teacher(), _detector(0).train()
    crit, _ = _criterion(teacher, student)
    batch = _real_batch()
    params = [p for p in student.parameters() if p.requires_grad]
    crit.grad_params = params
    loss, _ = crit(student(batch["img"]), batch)
    assert crit.grad_params is None and crit.grad_ratio > 0  # one-shot
    norms = []
    for part in (loss[3:].sum(), loss[:3].sum()):
        student.zero_grad()
        part.backward(retain_graph=True)
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None)))
    assert crit.grad_ratio == pytest.approx(norms[0] / norms[1], rel=1e-4)
    crit.grad_ratio = -1.0
    crit(student(batch["img"]), batch)  # not asked again: no new measurement
    assert crit.grad_ratio == -1.0


def test_teacher_parameters_and_bn_buffers_are_bit_identical_after_training_steps():
    teacher, student = _teacher(), _detector(0).train()
    crit, method = _criterion(teacher, student)
    student.criterion = crit
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert any("running_mean" in k for k in before)
    opt = torch.optim.SGD([*student.parameters(), *method.parameters()], lr=0.1)
    for _ in range(2):
        loss, items = student.loss(_real_batch())
        loss.sum().backward()
        opt.step()
        opt.zero_grad()
    assert all(float(items[f"{k}_loss"]) > 0 for k in ("gkd_map", "gkd_box", "gkd_att"))
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert not any(m._forward_hooks for m in teacher.modules())


@pytest.mark.parametrize("target", ["gt", "pred"])
def test_kd_terms_under_autocast_are_fp32_and_close_to_fp32(target):
    teacher, student = _teacher(), _detector(0).train()
    crit, _ = _criterion(teacher, student, lambda_global=1e-3, target=target, pred_conf=0.0)
    batch = _real_batch()
    ref, _ = crit.kd_terms(student(batch["img"]), batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # teacher probe, student loss and gradients in low precision
        preds = student(batch["img"])
        assert preds["feats"][0].dtype == torch.bfloat16
        out, _ = crit.kd_terms(preds, batch)
    assert out.dtype == torch.float32 and (out > 0).all()
    assert torch.allclose(out, ref, rtol=0.05)  # measured: within 1.5% (bf16 keeps 3 significant digits)


@pytest.mark.parametrize("teacher_cfg,student_cfg", [("yolo26n.yaml", "yolov8n.yaml"), ("yolov8n.yaml", "yolo26n.yaml")])
def test_end_to_end_heads_and_predicted_targets(teacher_cfg, student_cfg):
    teacher = _teacher(teacher_cfg)  # yolo26: one2many / one2one branches, no DFL, E2ELoss for the student
    student = _detector(0, student_cfg).train()
    for target in ("gt", "pred"):
        crit, _ = _criterion(teacher, student, target=target, pred_conf=0.0, lambda_global=1e-3)
        loss, items = crit(student(_real_batch()["img"]), _real_batch())
        assert torch.isfinite(loss).all() and all(float(items[f"{k}_loss"]) > 0 for k in TERMS), target


# ------------------------------------------------------------------------------------------------ maps and masks
def test_maps_equal_hand_values_and_lie_in_the_unit_interval():
    f = torch.tensor([[1.0, -2.0, 3.0], [0.0, 1.0, -1.0]]).view(1, 2, 1, 3)
    g = torch.tensor([[1.0, -1.0, 1.0], [2.0, 2.0, -2.0]]).view(1, 2, 1, 3)
    # abs: w = (1, 2), M = 1*|F0| + 2*|F1| = (1, 4, 5) -> (0, 3/4, 1)
    assert torch.allclose(grad_map(f, g, "abs").view(-1), torch.tensor([0.0, 0.75, 1.0]), atol=1e-6)
    # signed: w = (1/3, 2/3), sum w F = (1/3, 0, 1/3) -> (1, 0, 1)
    assert torch.allclose(grad_map(f, g, "signed").view(-1), torch.tensor([1.0, 0.0, 1.0]), atol=1e-6)
    for mode in ("abs", "signed"):
        m = grad_map(torch.randn(3, 5, 6, 7), torch.randn(3, 5, 6, 7), mode)
        assert m.shape == (3, 6, 7) and m.min() >= 0 and m.max() <= 1
        assert torch.allclose(m.amin((1, 2)), torch.zeros(3)) and torch.allclose(m.amax((1, 2)), torch.ones(3))
    assert (grad_map(f, torch.zeros_like(g), "abs") == 0).all()  # all-zero gradient: an all-zero map, no NaN
    # tiny gradients and features (loss scale, random-init teachers) give the same map: eps is relative to the peak
    for mode in ("abs", "signed"):
        assert torch.allclose(grad_map(1e-6 * f, 1e-5 * g, mode), grad_map(f, g, mode), atol=1e-6)


def _gauss(boxes_px, idx=None, n=1, feat_hw=(8, 16), weights=None):
    boxes = torch.tensor([_xywh(*b) for b in boxes_px], dtype=torch.float32).view(-1, 4)
    idx = torch.zeros(len(boxes_px)) if idx is None else torch.tensor(idx, dtype=torch.float32)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    return gaussian_box_masks(boxes, idx, n, IMG_HW, feat_hw, w)


def test_gaussian_mask_equals_hand_values():
    # pixels x 16..48, y 8..24 at stride 8: the box overlaps columns 2..5 (w = 4) and rows 1..2 (h = 2), centre
    # (1.5, 3.5) in cell indices; 1/(4wh) = 1/32
    g = _gauss([(16, 8, 48, 24)])[0]
    e = math.exp
    hand = {(1, 2): 1, (2, 5): 1, (1, 4): 1,  # the box
            (1, 6): e(-0.5 * (2.5 / 4) ** 2) * e(-0.5 * (0.5 / 2) ** 2), (1, 7): e(-0.5 * (3.5 / 4) ** 2) * e(-0.5 / 16),
            (0, 3): e(-0.5 * (0.5 / 4) ** 2) * e(-0.5 * (1.5 / 2) ** 2), (3, 4): e(-0.5 / 64) * e(-0.5 * (3 / 4) ** 2),
            (0, 0): e(-0.5 * (3.5 / 4) ** 2) * e(-0.5 * (3 / 4) ** 2), (3, 7): e(-0.5 * (3.5 / 4) ** 2) * e(-9 / 32)}
    for (i, j), v in hand.items():
        assert g[i, j].item() == pytest.approx(v / 32, rel=1e-6), (i, j)
    outside = torch.ones(8, 16, dtype=torch.bool)
    outside[0:4, 0:8] = False  # the patch, 2h x 2w: rows |i - 1.5| <= 2, columns |j - 3.5| <= 4
    assert (g[outside] == 0).all() and (g[~outside] > 0).all()


def test_gaussian_mask_peaks_at_the_box_centre():
    # an off-centre box, pixels x 24..40, y 8..24 at stride 8: it overlaps columns 3..4 and rows 1..2; its centre,
    # pixel (32, 16), is cell index (16 / 8 - 0.5, 32 / 8 - 0.5) = (1.5, 3.5); the map's centre is (3.5, 7.5). The
    # released code puts the patch centre at (hmin + hmax) - H/2 = -1 and (wmin + wmax) - W/2 = -1, off the map. Until
    # 2026-11-30 this port marked FGD's inclusive extents (columns 3..5, rows 1..3), half a cell right of and below
    # the box.
    g = _gauss([(24, 8, 40, 24)])[0]
    peak = {tuple(x) for x in (g == g.max()).nonzero().tolist()}
    assert peak == {(i, j) for i in range(1, 3) for j in range(3, 5)}
    ii, jj = torch.meshgrid(torch.arange(8.0), torch.arange(16.0), indexing="ij")
    assert (g * ii).sum() / g.sum() == pytest.approx(1.5) and (g * jj).sum() / g.sum() == pytest.approx(3.5)
    sym = torch.zeros_like(g)
    sym[0:4, 2:6] = g[0:4, 2:6].flip(0, 1)  # point reflection about (1.5, 3.5)
    assert torch.allclose(sym, g)


def test_gaussian_masks_overlap_by_max_and_take_the_winning_boxes_weight():
    a, b = (16, 8, 48, 24), (40, 16, 72, 40)
    ga, gb = _gauss([a])[0], _gauss([b])[0]
    both = _gauss([a, b])[0]
    assert torch.equal(both, torch.maximum(ga, gb))
    weighted = _gauss([a, b], weights=[0.5, 2.0])[0]
    assert torch.allclose(weighted, torch.where(ga >= gb, 0.5 * ga, 2.0 * gb))
    assert torch.equal(_gauss([a, b], weights=[1.0, 1.0]), _gauss([a, b]))
    # degenerate boxes are finite; a box outside the image and an image without boxes mark nothing
    g = _gauss([(16, 8, 16, 8), (130, 10, 150, 20)], idx=[0, 0], n=2)
    assert torch.isfinite(g).all() and g[0].max() == pytest.approx(1 / 4) and (g[1] == 0).all()
    assert (g[0][:, 8:] == 0).all()


# ------------------------------------------------------------------------------------- loss vs naive loops
def _naive_map(f, g, mode):
    """f, g: [C][H][W] floats -> [H][W] in [0, 1]."""
    c, h, w = len(f), len(f[0]), len(f[0][0])
    if mode == "abs":
        wt = [sum(abs(g[k][i][j]) for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
        m = [[sum(wt[k] * abs(f[k][i][j]) for k in range(c)) for j in range(w)] for i in range(h)]
    else:
        wt = [sum(g[k][i][j] for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
        m = [[max(0.0, sum(wt[k] * f[k][i][j] for k in range(c))) for j in range(w)] for i in range(h)]
    peak = max(max(r) for r in m)
    m = [[v / peak if peak > 0 else 0.0 for v in r] for r in m]  # eps relative to the map's peak
    lo, hi = min(min(r) for r in m), max(max(r) for r in m)
    return [[(v - lo) / (hi - lo + 1e-7) for v in r] for r in m]


def _naive_gauss(boxes, bidx, n_img, feat_hw, weights):
    """Per box and cell, in Python floats, from the definition in methods.md §2.3 (centred patch)."""
    h, w = feat_hw
    best = [[[(0.0, 0.0)] * w for _ in range(h)] for _ in range(n_img)]
    for k, (cx, cy, bw, bh) in enumerate(boxes.tolist()):
        if not (cx - bw / 2 < 1 and cx + bw / 2 > 0 and cy - bh / 2 < 1 and cy + bh / 2 > 0):
            continue
        # The box's cells: those whose span [j, j + 1) meets the box's edges in cell units (at least the cell of its
        # start, for a box of zero width); its centre is their mean index, its size their count.
        x1, x2, y1, y2 = (cx - bw / 2) * w, (cx + bw / 2) * w, (cy - bh / 2) * h, (cy + bh / 2) * h
        cols = [j for j in range(w) if j < x2 and j + 1 > x1] or [min(max(math.floor(x1), 0), w - 1)]
        rows = [i for i in range(h) if i < y2 and i + 1 > y1] or [min(max(math.floor(y1), 0), h - 1)]
        sw, sh = len(cols), len(rows)
        xc, yc = sum(cols) / sw, sum(rows) / sh
        wk = 1.0 if weights is None else float(weights[k])
        for i in range(h):
            for j in range(w):
                if i in rows and j in cols:
                    v = 1.0
                elif abs(j - xc) <= sw and abs(i - yc) <= sh:
                    v = math.exp(-0.5 * ((j - xc) / sw) ** 2) * math.exp(-0.5 * ((i - yc) / sh) ** 2)
                else:
                    continue
                v /= 4 * sw * sh
                cur = best[int(bidx[k])][i][j]
                if v > cur[0] or (v == cur[0] and wk > cur[1]):
                    best[int(bidx[k])][i][j] = (v, wk)
    return [[[v * wk for v, wk in row] for row in img] for img in best]


def _conv(conn, f):
    if not isinstance(conn, torch.nn.Conv2d):
        return f
    cw, cb = conn.weight.detach()[:, :, 0, 0].tolist(), conn.bias.detach().tolist()
    c, h, w = len(f), len(f[0]), len(f[0][0])
    return [[[sum(cw[o][k] * f[k][i][j] for k in range(c)) + cb[o] for j in range(w)] for i in range(h)]
            for o in range(len(cb))]


def _naive_gkd(m, kd):
    """{term: [[value per level] per image]} with per-image, per-cell, per-channel loops."""
    n_img, gmask = kd.batch_size, m.variant == "gmask"
    out = {t: [[0.0] * len(SIZES) for _ in range(n_img)] for t in TERMS}
    for lvl in range(len(SIZES)):
        h, w = kd.teacher_feats[lvl].shape[-2:]
        gm = _naive_gauss(kd.batch["bboxes"], kd.batch["batch_idx"].tolist(), n_img, (h, w),
                          None if kd.instance_weights is None else kd.instance_weights.tolist())
        for b in range(n_img):
            sl, tl = kd.student_feats[lvl][b].tolist(), kd.teacher_feats[lvl][b].tolist()
            mt = _naive_map(tl, kd.teacher_grads[lvl][b].tolist(), m.grad)
            ms = _naive_map(sl, kd.student_grads[lvl][b].tolist(), m.grad)
            fs = _conv(m.connectors[lvl], sl)
            ats_t, atc_t = _naive_attention(tl, m.temperature)
            ats_s, atc_s = _naive_attention(fs, m.temperature)
            cells = [(i, j) for i in range(h) for j in range(w)]
            if gmask:
                lm = sum(math.sqrt(gm[b][i][j]) * abs(mt[i][j] - ms[i][j]) for i, j in cells)
                err = [[sum(atc_t[k] * ats_t[i][j] * (math.sqrt(mt[i][j]) * tl[k][i][j]
                                                      - math.sqrt(ms[i][j]) * fs[k][i][j]) ** 2
                            for k in range(len(tl))) for j in range(w)] for i in range(h)]
                rs, rt = _naive_gcblock(m.gc_student[lvl], fs), _naive_gcblock(m.gc_teacher[lvl], tl)
                lg = sum((rs[k][i][j] - rt[k][i][j]) ** 2 for k in range(len(tl)) for i, j in cells)
            else:
                lm = sum(abs(mt[i][j] - ms[i][j]) for i, j in cells) / (h * w)
                err = [[sum(atc_t[k] * ats_t[i][j] * (tl[k][i][j] - fs[k][i][j]) ** 2 for k in range(len(tl)))
                        for j in range(w)] for i in range(h)]
                lg = sum(err[i][j] for i, j in cells) / (h * w)
            lb = sum(gm[b][i][j] * err[i][j] for i, j in cells)
            la = sum(abs(atc_s[k] - atc_t[k]) for k in range(len(tl)))
            la += sum(abs(ats_s[i][j] - ats_t[i][j]) for i, j in cells)
            for name, coef, v in zip(TERMS, (m.beta, m.alpha, m.gamma, m.lambda_global), (lm, lb, la, lg)):
                out[name][b][lvl] = coef * v
    return out


def _kd(n=4, weights=None, dtype=torch.float32, zero_grads=False, grad=False):
    sg = _feats(CS, n, 5, dtype=dtype)
    tg = _feats(CT, n, 6, dtype=dtype)
    if zero_grads:
        sg, tg = [torch.zeros_like(x) for x in sg], [torch.zeros_like(x) for x in tg]
    return KDBatch(_feats(CS, n, 1, dtype=dtype, grad=grad), _feats(CT, n, 2, scale=2.0, dtype=dtype), _batch(n),
                   teacher_grads=tg, student_grads=sg, instance_weights=weights)


def _build(**kw):
    torch.manual_seed(0)
    return build_method("gkd", CS, CT, **{"lambda_global": 0.3, **kw})


@pytest.mark.parametrize("variant,grad,weighted", [("bmfi", "abs", False), ("bmfi", "signed", True),
                                                   ("gmask", "abs", True)])
def test_vectorised_loss_equals_naive_loops(variant, grad, weighted):
    m = _build(variant=variant, grad=grad, alpha=0.7, beta=0.5, gamma=0.4, temperature=0.5)
    if variant == "gmask":
        _randomise_gcblocks(m)
    weights = torch.rand(len(_batch()["bboxes"]), generator=torch.Generator().manual_seed(4)) if weighted else None
    kd = _kd(weights=weights)
    terms = m(kd)
    assert tuple(terms) == TERMS and all(v.shape == (4, 3) and v.dtype == torch.float32 for v in terms.values())
    assert_terms_equal(terms, _naive_gkd(m, kd), rel=1e-4, abs=1e-9)
    assert (terms["gkd_box"][2] == 0).all()  # image 2 has no box
    assert (terms["gkd_map"][2] == 0).all() == (variant == "gmask")  # gmask's map term lives in the boxes


def test_gradients_reach_the_student_and_the_connectors_never_the_teacher():
    m = _build()
    kd = _kd(grad=True)
    kd.teacher_feats = [t.requires_grad_() for t in kd.teacher_feats]
    loss, _ = reduce_terms(m(kd), 4)
    loss[0].backward(retain_graph=True)  # the map term alone
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in kd.student_feats)
    loss.sum().backward()
    assert all(x.grad is None for x in kd.teacher_feats)
    assert all(c.weight.grad.abs().sum() > 0 for c in m.connectors if isinstance(c, torch.nn.Conv2d))


def test_empty_images_and_zero_gradients_give_finite_terms():
    for variant in ("bmfi", "gmask"):
        m = _build(variant=variant)
        for kd in (_kd(zero_grads=True), _kd()):
            kd.batch = {**kd.batch, "bboxes": torch.zeros(0, 4), "cls": torch.zeros(0, 1), "batch_idx": torch.zeros(0)}
            terms = m(kd)
            assert all(torch.isfinite(v).all() for v in terms.values()), variant
            assert (terms["gkd_box"] == 0).all()
        assert all(torch.isfinite(v).all() for v in m(_kd(zero_grads=True)).values())


def test_bmfi_off_removes_exactly_the_bmfi_terms():
    for variant in ("bmfi", "gmask"):
        full = _build(variant=variant)
        off = _build(variant=variant, bmfi=False)
        assert not any(True for _ in off.parameters())  # no connector, no GcBlock
        ref, out = full(_kd()), off(_kd())
        assert tuple(out) == TERMS
        assert torch.allclose(out["gkd_map"], ref["gkd_map"], rtol=1e-6) and (ref["gkd_map"] > 0).any()
        assert all((out[k] == 0).all() and out[k].shape == (4, 3) and (ref[k] > 0).any() for k in BMFI_TERMS)


def test_fp16_inputs_give_the_fp32_result():
    m = _build(variant="gmask")
    _randomise_gcblocks(m)
    k16, k32 = _kd(dtype=torch.float16), _kd()
    out = m(k16)
    same = m(replace(k16, **{k: [x.float() for x in getattr(k16, k)]
                             for k in ("student_feats", "teacher_feats", "student_grads", "teacher_grads")}))
    ref = m(k32)
    for k in TERMS:
        assert out[k].dtype == torch.float32 and torch.isfinite(out[k]).all(), k
        assert torch.allclose(out[k], same[k], rtol=1e-6, atol=0), k  # computed in fp32
        assert torch.allclose(out[k], ref[k], rtol=2e-2, atol=1e-6), k  # only the inputs' fp16 rounding differs


# ------------------------------------------------------------------------------- hyperparameters and pictures
def test_hyperparameters_come_from_the_yaml_and_are_checked():
    d = method_defaults("gkd")
    assert (d["beta"], d["alpha"], d["gamma"], d["lambda_global"], d["temperature"]) == (0.1, 1e-3, 1e-3, 0.0, 0.5)
    assert (d["grad"], d["grad_path"], d["target"], d["bmfi"], d["variant"]) == ("abs", "total", "gt", True, "bmfi")
    m = build_method("gkd", CS, CT, grad_path="direct", target="pred", pred_conf="0.5", pred_topk=3)
    assert m.grad_options == GradOptions(path="direct", target="pred", pred_conf=0.5, pred_topk=3)
    for bad, msg in [(dict(grad="relu"), "grad='relu' must be one of abs, signed"),
                     (dict(variant="fgd"), "variant='fgd' must be one of bmfi, gmask"),
                     (dict(grad_path="all"), "grad_path='all'"), (dict(bmfi="maybe"), "bmfi='maybe' is not a boolean"),
                     (dict(alpha=-1.0), "alpha must be >= 0"), (dict(pred_conf=2.0), "pred_conf must lie in")]:
        with pytest.raises(ValueError, match=msg):
            build_method("gkd", CS, CT, **bad)


def test_plot_draws_input_teacher_and_student_maps_per_level(tmp_path):
    import cv2

    m = _build()
    kd = _kd()
    kd.batch = {**kd.batch, "img": torch.rand(4, 3, *IMG_HW)}
    paths = m.plot(kd, tmp_path / "gkd_maps_epoch1")
    assert [p.name for p in paths] == [f"gkd_maps_epoch1_P{k}.jpg" for k in (3, 4, 5)]
    img = cv2.imread(str(paths[0]))
    assert img.shape == (4 * IMG_HW[0], 3 * IMG_HW[1], 3)  # 4 rows of input | teacher | student


# End to end with method=gkd (every term non-zero, plain checkpoint, the pictures next to train_batch*.jpg):
# tests/test_train_e2e.py::test_train_end_to_end[gkd-...].
