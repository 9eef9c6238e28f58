"""AID, FKD and method composition against independent references: Ultralytics' own loss on one image at a time,
hand-made assignments, naive loops, and the composed methods' own terms (methods.md §3, §6.4, §6.5)."""

from __future__ import annotations

import math

import pytest
import torch

from test_fgd import CS, CT, FULL_FGD, SIZES, _batch, _feats, _randomise_gcblocks
from test_gkd import _detector
from yolokd.engine.criterion import KDCriterion
from yolokd.engine.models import head_channels
from yolokd.engine.providers import teacher_detection_loss, teacher_instance_losses
from yolokd.methods import MODIFIERS, KDBatch, build_method, get_method, method_defaults, resolve_hparams
from yolokd.methods.aid import AID
from yolokd.methods.base import InstanceLosses
from yolokd.methods.fkd import FKD


# ------------------------------------------------------------------------- the provider against Ultralytics' loss
def _hyp():
    from ultralytics.cfg import get_cfg

    return get_cfg(overrides={"box": 5.0, "cls": 0.7, "dfl": 2.0})  # not the defaults: the gains must be applied


def _labelled_batch(size=64):
    """Three images: several boxes, one box, none (its loss is cls only)."""
    g = torch.Generator().manual_seed(0)
    return {"img": torch.rand(3, 3, size, size, generator=g), "batch_idx": torch.tensor([0.0, 0.0, 0.0, 1.0]),
            "cls": torch.tensor([[0.0], [2.0], [1.0], [1.0]]),
            "bboxes": torch.tensor([[0.3, 0.4, 0.4, 0.5], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9],
                                    [0.5, 0.5, 0.6, 0.5]])}


def _alone(batch, i):
    """Image i as a batch of one, with its own labels."""
    keep = batch["batch_idx"] == i
    return {"img": batch["img"][i:i + 1], "batch_idx": torch.zeros(int(keep.sum())), "cls": batch["cls"][keep],
            "bboxes": batch["bboxes"][keep]}


@pytest.mark.parametrize("cfg,terms", [("yolov8n.yaml", ("cls", "box")), ("yolov8n.yaml", ("cls", "box", "dfl")),
                                       ("yolo26n.yaml", ("cls", "box", "dfl"))])  # yolo26: no DFL, the L1 term
def test_per_image_teacher_losses_equal_ultralytics_loss_on_each_image_alone(cfg, terms):
    from ultralytics.utils.loss import v8DetectionLoss

    from yolokd.methods.base import one2many

    teacher = _detector(1, cfg).eval().requires_grad_(False)
    teacher.args = _hyp()
    batch = _labelled_batch()
    loss = teacher_detection_loss(teacher, _hyp())
    with torch.no_grad():
        raw_batch = teacher(batch["img"])[1]
        losses = teacher_instance_losses(loss, raw_batch, batch)
        reference = v8DetectionLoss(teacher)  # Ultralytics' own, reading the teacher's args
        alone = []
        for i in range(3):
            part = _alone(batch, i)
            own, _ = reference(one2many(teacher(part["img"])[1]), part)  # x batch size 1
            alone.append(sum(own[["box", "cls", "dfl"].index(t)] for t in terms).item())
        whole, _ = reference(one2many(teacher(batch["img"])[1]), batch)
    assert losses.fg_mask[:2].any(dim=1).all() and not losses.fg_mask[2].any()  # positives where there are boxes
    assert losses.box[2].abs().sum() == 0 and losses.dfl[2].abs().sum() == 0  # no boxes: cls only
    d = losses.per_image(terms)
    assert d.tolist() == pytest.approx(alone, rel=1e-4)
    assert losses.per_image_level(terms).sum(1).tolist() == pytest.approx(d.tolist(), rel=1e-5)  # shares of D[n]
    total = sum(whole[["box", "cls", "dfl"].index(t)] for t in terms).item() / 3  # v8 returns it x batch size
    assert losses.per_batch_level(terms).sum().item() == pytest.approx(total, rel=1e-4)
    assert losses.level_sizes == [64, 16, 4]  # P3, P4, P5 at imgsz 64
    raw = one2many(raw_batch)
    half = {"boxes": raw["boxes"].half(), "scores": raw["scores"].half(), "feats": raw["feats"]}  # AMP outputs
    assert teacher_instance_losses(loss, half, batch).per_image(terms).tolist() == pytest.approx(d.tolist(), rel=2e-2)

    aid = AID(alpha=0.3, granularity="image", terms="+".join(terms), normalize=False)
    w = aid.weigh(KDBatch([], [], batch, teacher_losses=losses)).image
    assert w.shape == (3, 1) and not w.requires_grad
    # D matches the independent per-image losses to rel 1e-4 (float sums in another order, thread-count dependent), so
    # w = exp(-0.3 D) matches to about 0.3 * D * 1e-4 relative (D ~ 10 here): rel 1e-3. The formula itself is exact.
    assert w.view(-1).tolist() == pytest.approx([math.exp(-0.3 * v) for v in alone], rel=1e-3)
    assert w.view(-1).tolist() == pytest.approx([math.exp(-0.3 * v) for v in d.tolist()], rel=1e-6)
    assert ((w > 0) & (w <= 1)).all()


def test_the_criterion_gives_the_teachers_own_losses_not_the_students():
    """Through KDCriterion (method mimic+aid): the teacher's head runs, and D is the teacher's loss on each image."""
    from ultralytics.utils.loss import v8DetectionLoss

    teacher = _detector(1).eval().requires_grad_(False)
    student = _detector(0).train()
    method = build_method("mimic+aid", head_channels(student), head_channels(teacher))
    seen = {}
    real = method.aid.weigh

    def spy(kd):
        seen["losses"] = kd.teacher_losses
        return real(kd)

    method.aid.weigh = spy
    student.criterion = KDCriterion(student.init_criterion(), teacher, method)
    batch = _labelled_batch()
    student.loss(batch)
    teacher.args = student.args  # the student's gains, as the criterion uses them
    with torch.no_grad():
        alone = [v8DetectionLoss(teacher)(teacher(p["img"])[1], p)[0][:2].sum().item()
                 for p in (_alone(batch, i) for i in range(3))]
    assert seen["losses"].per_image(("cls", "box")).tolist() == pytest.approx(alone, rel=1e-4)
    assert method.epoch_stats()["aid/w_mean"] == pytest.approx(sum(math.exp(-0.1 * v) for v in alone) / 3, rel=1e-5)
    assert math.isnan(method.epoch_stats()["aid/w_mean"])  # reset after reading: one row per epoch


@pytest.mark.parametrize("name", ["fgd+aid", "gkd+aid", "mimic+aid", "ultralytics+aid", "ld+aid", "fgd+ld"])
def test_combinations_run_through_the_criterion_on_real_models(name):
    teacher = _detector(1, "yolov8s.yaml").eval().requires_grad_(False)
    student = _detector(0).train()
    method = build_method(name, head_channels(student), head_channels(teacher), **_full(name))
    student.criterion = KDCriterion(student.init_criterion(), teacher, method)
    loss, items = student.loss(_labelled_batch())
    assert loss.shape[0] == 3 + len(method.term_names) and torch.isfinite(loss).all()
    assert all(items[f"{t}_loss"] > 0 for t in method.term_names if t != "gkd_glob")  # gkd_glob: lambda 0 by default
    loss.sum().backward()
    params = list(method.parameters())  # ld has none
    assert not params or any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    if "aid" in name:
        stats = method.epoch_stats()
        assert 0 < stats["aid/w_min"] <= stats["aid/w_mean"] <= stats["aid/w_max"] <= 1


# -------------------------------------------------------------------------------------- hand-made assignments
def _hand_losses():
    """Two images, levels of 4 and 2 anchors; image 0: boxes 0 (anchors 0, 1) and 1 (anchor 4); image 1: box 0
    (anchor 2) and box 1, which gets no positive. Background anchors carry cls loss only."""
    fg = torch.zeros(2, 6, dtype=torch.bool)
    fg[0, [0, 1, 4]] = True
    fg[1, 2] = True
    gt = torch.zeros(2, 6, dtype=torch.long)
    gt[0, 4] = 1
    w = torch.tensor([[0.8, 0.6, 0, 0, 0.3, 0], [0, 0, 0.5, 0, 0, 0]])
    box = torch.tensor([[0.4, 0.2, 0, 0, 0.9, 0], [0, 0, 0.7, 0, 0, 0]])
    cls = torch.tensor([[0.1, 0.3, 0.05, 0.05, 0.2, 0.1], [0.02, 0.02, 0.6, 0.02, 0.04, 0.04]])
    dfl = torch.tensor([[0.5, 0.5, 0, 0, 1.0, 0], [0, 0, 0.25, 0, 0, 0]])
    return InstanceLosses(box=box, cls=cls, dfl=dfl, anchor_weights=w, fg_mask=fg, target_gt_idx=gt,
                          level_sizes=[4, 2])


HAND_IDX = torch.tensor([0.0, 0.0, 1.0, 1.0])


def test_reductions_equal_hand_values():
    losses = _hand_losses()
    # image 0: box+cls over all anchors = 1.5 + 0.8 = 2.3, sum of w = 1.7; image 1: 0.7 + 0.74 = 1.44, w 0.5 -> 1
    assert losses.per_image(("cls", "box")).tolist() == pytest.approx([2.3 / 1.7, 1.44])
    assert torch.allclose(losses.per_image_level(("box", "cls")),
                          torch.tensor([[(0.6 + 0.5) / 1.7, (0.9 + 0.3) / 1.7], [(0.7 + 0.66) / 1, 0.08]]))
    assert losses.per_batch_level(("box", "cls")).tolist() == pytest.approx([(1.1 + 1.36) / 2.2, (1.2 + 0.08) / 2.2])
    assert losses.per_image(("cls", "box", "dfl")).tolist() == pytest.approx([(2.3 + 2.0) / 1.7, 1.44 + 0.25])
    # box 0 of image 0: anchors 0 and 1, w 1.4; box 1: anchor 4, w 0.3 -> clamped to 1 (v8's floor); image 1 box 0:
    # anchor 2; image 1 box 1: no positive -> its image's loss
    assert losses.per_object(("cls", "box"), HAND_IDX).tolist() == pytest.approx(
        [(0.4 + 0.2 + 0.1 + 0.3) / 1.4, 0.9 + 0.2, 0.7 + 0.6, 1.44])
    with pytest.raises(ValueError, match="subset"):
        losses.total(("box", "giou"))


@pytest.mark.parametrize("granularity", ["image", "image_level", "batch_level", "object"])
def test_weights_are_exp_minus_alpha_d_detached_in_the_unit_interval(granularity):
    losses = _hand_losses()
    aid = AID(alpha=0.5, granularity=granularity, terms="cls+box", normalize=False)
    rw = aid.weigh(KDBatch([], [], {"batch_idx": HAND_IDX}, teacher_losses=losses))
    image = torch.tensor([2.3 / 1.7, 1.44])
    expected = {"image": image[:, None], "image_level": losses.per_image_level(("cls", "box")),
                "batch_level": losses.per_batch_level(("cls", "box"))[None],
                "object": image[:, None]}[granularity]
    assert torch.allclose(rw.image, torch.exp(-0.5 * expected))
    if granularity == "object":
        d = torch.tensor([1.0 / 1.4, 1.1, 1.3, 1.44])  # the hand values above, the last one its image's
        assert torch.allclose(rw.objects, torch.exp(-0.5 * d))
    else:
        assert rw.objects is None
    w = rw.objects if granularity == "object" else rw.image
    assert not w.requires_grad and ((w > 0) & (w <= 1)).all()
    stats = aid.epoch_stats()
    assert stats == pytest.approx({"aid/w_mean": w.mean().item(), "aid/w_min": w.min().item(),
                                   "aid/w_max": w.max().item()})


def test_normalize_and_non_finite_losses():
    losses = _hand_losses()
    kd = KDBatch([], [], {"batch_idx": HAND_IDX}, teacher_losses=losses)
    w = AID(alpha=0.5, granularity="image", terms="cls+box", normalize=True).weigh(kd).image
    assert w.mean().item() == pytest.approx(1.0) and w.max() > 1  # mean one: a weight may exceed 1
    aid = AID(alpha=0.5, granularity="image", terms="cls+box", normalize=False)
    assert aid.weights(torch.tensor([float("nan"), float("inf"), 0.0])).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="granularity='box' must be one of image, image_level, object, batch_level"):
        AID(alpha=0.1, granularity="box", terms="cls+box", normalize=False)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        AID(alpha=-1, granularity="image", terms="cls+box", normalize=False)


# ------------------------------------------------------------------------------------------------ composition
def _object_losses(batch, d_per_box, n_images):
    """InstanceLosses in which box r (row of ``batch``) has one teacher positive of weight 1 and cls loss d[r]."""
    idx = batch["batch_idx"].long()
    a = sum(h * w for h, w in SIZES)
    cls = torch.zeros(n_images, a)
    fg = torch.zeros(n_images, a, dtype=torch.bool)
    gt = torch.zeros(n_images, a, dtype=torch.long)
    count = [0] * n_images
    for r, b in enumerate(idx.tolist()):
        j = count[b]
        count[b] += 1
        fg[b, j], gt[b, j], cls[b, j] = True, j, d_per_box[r]
    zeros = torch.zeros(n_images, a)
    return InstanceLosses(box=zeros, cls=cls, dfl=zeros, anchor_weights=fg.float(), fg_mask=fg, target_gt_idx=gt,
                          level_sizes=[h * w for h, w in SIZES])


def _full(name: str) -> dict:
    """Every FGD term on when ``fgd`` is a part (its defaults keep the foreground term only)."""
    return {f"fgd.{k}": v for k, v in FULL_FGD.items()} if "fgd" in name.split("+") else {}


def _composed(name, **kw):
    torch.manual_seed(0)
    m = build_method(name, CS, CT, **{**_full(name), **kw})
    if hasattr(m, "fgd"):
        _randomise_gcblocks(m.fgd)
    return m


@pytest.mark.parametrize("granularity", ["image", "image_level", "batch_level"])
@pytest.mark.parametrize("name", ["fgd+aid", "mimic+aid"])
def test_composition_multiplies_exactly_the_wrapped_terms(name, granularity):
    batch = _batch()
    d = torch.linspace(0.5, 3.0, len(batch["bboxes"]))
    losses = _object_losses(batch, d.tolist(), 4)
    kd = KDBatch(_feats(CS, 4, 1), _feats(CT, 4, 2), batch, teacher_losses=losses)
    m = _composed(name, **{"aid.alpha": 0.4, "aid.granularity": granularity})
    inner = getattr(m, name.split("+")[0])
    own = inner(kd)
    if granularity == "image":
        per_image = [sum(v for v, b in zip(d.tolist(), batch["batch_idx"].tolist()) if b == n) /
                     max(1, int((batch["batch_idx"] == n).sum())) for n in range(4)]  # image 2 has no box: 0
        w = torch.exp(-0.4 * torch.tensor(per_image))[:, None]
    elif granularity == "image_level":
        w = torch.exp(-0.4 * losses.per_image_level(("cls",)))
    else:
        w = torch.exp(-0.4 * losses.per_batch_level(("cls",)))[None]
    out = m(kd)
    assert tuple(out) == tuple(own) == get_method(name).term_names
    for k in own:
        assert torch.allclose(out[k], own[k] * w, rtol=1e-6, atol=0), k


def test_object_weights_reach_each_boxs_mask_region_and_the_rest_takes_image_weights(monkeypatch):
    import yolokd.methods.fgd as fgd_module

    batch = _batch()
    d = torch.linspace(0.5, 3.0, len(batch["bboxes"]))
    kd = KDBatch(_feats(CS, 4, 1), _feats(CT, 4, 2), batch, teacher_losses=_object_losses(batch, d.tolist(), 4))
    m = _composed("fgd+aid", **{"aid.alpha": 0.4}, granularity="object")
    masks = []
    real = fgd_module.fgd_masks
    monkeypatch.setattr(fgd_module, "fgd_masks", lambda *a: masks.append((a, real(*a))) or masks[-1][1])
    out = m(kd)
    w_obj = torch.exp(-0.4 * d)
    (args, (fg, _)) = masks[0]  # P3
    assert torch.allclose(args[-1], w_obj)  # each row of batch["bboxes"] got its own box's weight
    alone = [real(args[0][r:r + 1], args[1][r:r + 1], 4, args[3], args[4])[0] for r in range(len(w_obj))]
    checked = 0
    for r, fg_r in enumerate(alone):  # on the cells where box r alone defines the mask: S_r * w_r
        mine = (fg_r > 0) & torch.stack([fg_r >= a for a in alone]).all(0) & (
            torch.stack([(a == fg_r) & (a > 0) for a in alone]).sum(0) == 1)
        checked += bool(mine.any())
        assert torch.allclose(fg[mine], fg_r[mine] * w_obj[r]), r
    assert checked >= len(w_obj) - 2  # all but the equal-size twins
    own = m.fgd(KDBatch(kd.student_feats, kd.teacher_feats, batch, instance_weights=w_obj))
    assert torch.allclose(out["fgd_fg"], own["fgd_fg"])  # the object terms: the instance weights only
    n_boxes = torch.stack([(batch["batch_idx"] == n).sum() for n in range(4)]).clamp(min=1)
    per_image = torch.zeros(4).index_add_(0, batch["batch_idx"].long(), d) / n_boxes
    plain = m.fgd(KDBatch(kd.student_feats, kd.teacher_feats, batch))
    for k in ("fgd_bg", "fgd_at", "fgd_gl"):  # the others: the image weight
        assert torch.allclose(out[k], plain[k] * torch.exp(-0.4 * per_image)[:, None], rtol=1e-6), k


def test_methods_sum_and_a_shared_term_name_is_prefixed(monkeypatch):
    import yolokd.methods as methods
    from yolokd.methods.compose import composite_class
    from yolokd.methods.mimic import Mimic

    kd = KDBatch(_feats(CS, 4, 1), _feats(CT, 4, 2), _batch())
    m = _composed("fgd+mimic", **{"mimic.weight": 0.5})
    out = m(kd)
    assert tuple(out) == ("fgd_fg", "fgd_bg", "fgd_at", "fgd_gl", "mimic")
    for k, v in {**m.fgd(kd), **m.mimic(kd)}.items():
        assert torch.equal(out[k], v)
    assert m.mimic.weight == 0.5 and sorted(n for n, _ in m.named_children()) == ["fgd", "mimic"]

    twin = type("Twin", (Mimic,), {"name": "twin"})  # another method with a term called "mimic"
    monkeypatch.setitem(methods.METHODS, "twin", twin)
    try:
        assert get_method("mimic+twin").term_names == ("mimic_mimic", "twin_mimic")
    finally:
        composite_class.cache_clear()


# ----------------------------------------------------------------------------------------------------- fkd
def _conv1x1(conv, x):
    """(C_out, H, W) from (C_in, H, W), by the weight matrix."""
    return torch.einsum("oc,chw->ohw", conv.weight[:, :, 0, 0], x) + conv.bias[:, None, None]


def _naive_nonlocal(block, x):
    """The non-local block of methods.md §3.3 on a batch (BN with batch statistics, as in training), in loops."""
    n, c, h, w = x.shape
    kh, kw = min(block.pool, h), min(block.pool, w)
    ys = []
    for b in range(n):
        theta, phi, g = (_conv1x1(conv, x[b]) for conv in (block.theta, block.phi, block.g))
        pooled = [[(phi[:, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].amax((1, 2)),
                    g[:, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].amax((1, 2)))
                   for j in range(w // kw)] for i in range(h // kh)]
        keys = [p for row in pooled for p in row]
        y = torch.zeros(theta.shape[0], h, w)
        for i in range(h):
            for j in range(w):
                for key, value in keys:
                    y[:, i, j] += (theta[:, i, j] @ key) / len(keys) * value
        ys.append(_conv1x1(block.out[0], y))
    wy = torch.stack(ys)
    bn = block.out[1]
    mean, var = wy.mean((0, 2, 3)), wy.var((0, 2, 3), unbiased=False)
    normed = (wy - mean[:, None, None]) / (var[:, None, None] + bn.eps).sqrt()
    return x + normed * bn.weight[:, None, None] + bn.bias[:, None, None]


def _naive_attention(f, t):
    """FKD's spatial (H, W) and channel (C,) attention of one image's map, from the formulas."""
    c, h, w = f.shape
    s = torch.exp(f.abs().mean(0) / t)
    ch = torch.exp(f.abs().mean((1, 2)) / t)
    return h * w * s / s.sum(), c * ch / ch.sum()


def _naive_fkd(m, kd):
    out = {k: torch.zeros(kd.batch_size, len(kd.student_feats)) for k in m.term_names}
    for lvl, (s, t) in enumerate(zip(kd.student_feats, kd.teacher_feats)):
        nl_s, nl_t = _naive_nonlocal(m.nl_student[lvl], s), _naive_nonlocal(m.nl_teacher[lvl], t)
        for b in range(kd.batch_size):
            fs, ft = s[b], t[b]
            adapted = _conv1x1(m.connectors[lvl], fs)
            sp_t, ch_t = _naive_attention(ft, m.temperature)
            sp_s, ch_s = _naive_attention(fs if fs.shape[0] == ft.shape[0] else adapted, m.temperature)
            weight = (sp_t + sp_s)[None] / 2 * ((ch_t + ch_s) / 2)[:, None, None]
            feat = (weight * (ft - adapted) ** 2).sum().sqrt()
            lin = m.channel_adapters[lvl]
            chan = ((ft.mean((1, 2)) - (lin.weight @ fs.mean((1, 2)) + lin.bias)) ** 2).sum().sqrt()
            conv = m.spatial_adapters[lvl]
            pad = torch.nn.functional.pad(fs.mean(0), (1, 1, 1, 1))
            h, w = fs.shape[1:]
            mapped = conv.bias[0] + sum(conv.weight[0, 0, di, dj] * pad[di:di + h, dj:dj + w]
                                        for di in range(3) for dj in range(3))
            spat = ((ft.mean(0) - mapped) ** 2).sum().sqrt()
            nl = ((_conv1x1(m.nl_adapters[lvl], nl_s[b]) - nl_t[b]) ** 2).sum().sqrt()
            for k, v, c in zip(m.term_names, (feat, chan, spat, nl),
                               (m.feat_weight, m.channel_weight, m.spatial_weight, m.nonlocal_weight)):
                out[k][b, lvl] = c * v
    return out


def _fkd_feats(channels, n, seed, sizes=((8, 16), (3, 5), (1, 3))):  # pool kernels clamped on the small maps
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, h, w, generator=g) for c, (h, w) in zip(channels, sizes)]


def test_fkd_equals_a_naive_implementation_of_the_spec():
    torch.manual_seed(0)
    m = build_method("fkd", CS, CT, feat_weight=0.7, channel_weight=0.3, spatial_weight=0.5, nonlocal_weight=0.2,
                     temperature=0.5)
    assert isinstance(m, FKD) and [b.theta.out_channels for b in m.nl_teacher] == [1, 1, 5]  # C/4, C/4, C/2
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero BN affine, so the non-local branch counts
        for block in (*m.nl_student, *m.nl_teacher):
            block.out[1].weight.copy_(torch.rand(block.out[1].weight.shape, generator=g) + 0.5)
            block.out[1].bias.copy_(torch.randn(block.out[1].bias.shape, generator=g))
    kd = KDBatch(_fkd_feats(CS, 3, 1), _fkd_feats(CT, 3, 2), batch={})
    terms = m(kd)
    with torch.no_grad():
        ref = _naive_fkd(m, kd)
    assert tuple(terms) == m.term_names
    for k in m.term_names:
        assert torch.allclose(terms[k], ref[k], rtol=1e-4, atol=1e-7), (k, terms[k], ref[k])
        assert (terms[k] > 0).all()


def test_fkd_gradients_reach_the_student_and_every_trainable_part_never_the_teacher():
    torch.manual_seed(0)
    m = build_method("fkd", CS, CT)
    s = [f.requires_grad_() for f in _fkd_feats(CS, 3, 1)]
    t = [f.requires_grad_() for f in _fkd_feats(CT, 3, 2)]
    sum(v.sum() for v in m(KDBatch(s, t, batch={})).values()).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s) and all(x.grad is None for x in t)
    skipped = {n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}
    # theta, phi, g and W's conv sit behind W's zero-initialised BN: no gradient until the BN has learnt (the code's
    # block does the same); everything else learns from the first step
    assert skipped == {f"{side}.{lvl}.{conv}.{p}" for side in ("nl_student", "nl_teacher") for lvl in range(3)
                       for conv in ("theta", "phi", "g", "out.0") for p in ("weight", "bias")}


# --------------------------------------------------------------------------------- names, errors, addressing
@pytest.mark.parametrize("name,message", [
    ("aid+aid", r"names aid twice"),
    ("fgd+fgd+aid", r"names fgd twice"),
    ("none+aid", r"'none' has no distillation term"),
    ("fgd+bogus", r"unknown method 'bogus' in method=fgd\+bogus"),
    ("fgd+aidd", r"Did you mean aid\?"),
    ("fgd+", r"empty part"),
])
def test_bad_combinations_fail_early_naming_the_problem_and_the_valid_forms(name, message):
    with pytest.raises(ValueError, match=message) as e:
        get_method(name)
    assert "fgd+aid" in str(e.value) and "aid = fkd+aid" in str(e.value)  # the valid forms


def test_composed_names_are_canonical_and_aid_alone_is_fkd_plus_aid():
    from yolokd.methods import canonical_name

    assert canonical_name("aid") == "fkd+aid" and get_method("aid") is get_method("fkd+aid")
    assert canonical_name("aid+fgd") == "fgd+aid" and canonical_name("mimic") == "mimic"
    cls = get_method("gkd+ld+aid")
    assert cls.needs == {"teacher_grads", "student_grads", "teacher_preds", "student_preds", "student_assignment",
                         "teacher_instance_losses"}
    assert cls.uses_teacher and cls.term_names == ("gkd_map", "gkd_box", "gkd_att", "gkd_glob", "ld_box", "ld_cls")
    m = build_method("gkd+ld+aid", CS, CT, target="pred")
    assert m.grad_options.target == "pred"  # the part's gradient options reach the criterion
    assert not list(m.aid.parameters()) and set(MODIFIERS) == {"aid"}


def test_hyperparameters_of_parts_are_addressable():
    hp = resolve_hparams("fgd+aid", {"fgd.alpha": 1e-3, "aid.alpha": "0.2", "granularity": "object"})
    assert hp["fgd.alpha"] == 1e-3 and hp["aid.alpha"] == 0.2 and hp["aid.granularity"] == "object"
    assert set(hp) == set(method_defaults("fgd+aid")) and all(k.count(".") == 1 for k in hp)
    assert resolve_hparams("fgd+aid", {"aid": {"alpha": 0.3}, "fgd": {"alpha": 2e-3}})["aid.alpha"] == 0.3
    assert resolve_hparams("aid", {"alpha": 0.3, "feat_weight": 1e-3}) == {
        **method_defaults("fkd+aid"), "aid.alpha": 0.3, "fkd.feat_weight": 1e-3}  # bare names one part owns
    assert resolve_hparams("mimic", {"mimic.weight": 2}) == {"weight": 2.0}  # a single method's own prefix
    with pytest.raises(ValueError, match=r"'alpha' is a hyperparameter of fgd and aid .*fgd\.alpha= or aid\.alpha="):
        resolve_hparams("fgd+aid", {"alpha": 0.2})
    with pytest.raises(ValueError, match=r"'ld' is not a part of method=fgd\+aid"):
        resolve_hparams("fgd+aid", {"ld.box_weight": 1})
    with pytest.raises(ValueError, match=r"method 'aid' has no hyperparameter 'alhpa'.*'alpha'"):
        resolve_hparams("fgd+aid", {"aid.alhpa": 1})
    with pytest.raises(ValueError, match=r"aid\.alpha given twice"):
        resolve_hparams("fgd+aid", {"aid.alpha": 1, "aid": {"alpha": 2}})
    m = build_method("fgd+aid", CS, CT, **hp)
    assert m.fgd.alpha == 1e-3 and m.aid.alpha == 0.2 and m.aid.granularity == "object"


def test_cli_and_python_api_address_part_hyperparameters():
    from ultralytics.utils import DEFAULT_CFG_KEYS

    from yolokd.api import YoloKD
    from yolokd.cli import parse_args
    from yolokd.engine.spec import split_overrides

    kw = parse_args(["method=fgd+aid", "aid.alpha=0.2", "fgd.alpha=1e-3", "granularity=object", "epochs=3"])
    spec = split_overrides(kw)
    assert spec.method == "fgd+aid" and kw == {"epochs": 3}  # only Ultralytics' keys are left
    assert (spec.hparams["aid.alpha"], spec.hparams["fgd.alpha"], spec.hparams["aid.granularity"]) == (
        0.2, 1e-3, "object")
    assert split_overrides({"method": "aid"}).method == "fkd+aid"
    with pytest.raises(ValueError, match="unknown argument 'alhpa'"):
        split_overrides({"method": "fgd+aid", "alhpa": 1})
    kd = YoloKD(teacher="t.pt", method="aid+fgd", aid={"alpha": 0.2}, fgd={"alpha": 1e-3})
    assert kd.method == "fgd+aid" and kd.hparams["aid.alpha"] == 0.2 and kd.hparams["fgd.alpha"] == 1e-3
    assert YoloKD(teacher="t.pt", method="fgd+aid", **{"aid.alpha": 0.2}).hparams["aid.alpha"] == 0.2
    for name in MODIFIERS:  # modifiers' names are as safe as methods' (tests/test_methods.py)
        assert not set(method_defaults(name)) & set(DEFAULT_CFG_KEYS)


def test_the_relaunch_arguments_rebuild_the_composed_method(tmp_path, tiny_data):
    """KDTrainer.kd_in_args -> vars(args) -> a new KDTrainer (what Ultralytics' DDP worker does) keeps the method."""
    from conftest import make_trainer
    from yolokd.engine.trainer import KDTrainer

    trainer = make_trainer(tmp_path, tiny_data, method="fgd+aid", **{"aid.alpha": 0.2}, granularity="object")
    with trainer.kd_in_args():
        args = dict(vars(trainer.args))
    assert args["method"] == "fgd+aid" and args["aid.alpha"] == 0.2
    rebuilt = KDTrainer(overrides=args)
    assert rebuilt.kd.method == trainer.kd.method and rebuilt.kd.hparams == trainer.kd.hparams
