"""Methods against independent implementations: Ultralytics' own code, naive loops and hand-computed values."""

from __future__ import annotations

import keyword

import pytest
import torch

from yolokd.engine.spec import KD_KEYS
from yolokd.methods import METHODS, KDBatch, build_method, method_defaults, reduce_terms, resolve_hparams

CS, CT = [16, 32, 64], [24, 48, 96]
SIZES = [(8, 8), (4, 4), (2, 2)]


def _feats(channels, n=3, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(n, c, h, w, generator=g) for c, (h, w) in zip(channels, SIZES)]
    return [f.requires_grad_(grad) for f in out]


def _teacher_preds(n=3, nc=3, seed=1, end2end=False):
    g = torch.Generator().manual_seed(seed)
    a = sum(h * w for h, w in SIZES)
    one = {"boxes": torch.randn(n, 64, a, generator=g), "scores": torch.randn(n, nc, a, generator=g) * 3}
    if not end2end:
        return one
    return {"one2many": one, "one2one": {"boxes": torch.randn(n, 64, a, generator=g),
                                         "scores": torch.randn(n, nc, a, generator=g) * 3}}


def test_registry_hyperparameter_names_are_usable_and_do_not_collide():
    from ultralytics.utils import DEFAULT_CFG_KEYS

    for name in METHODS:
        for k in method_defaults(name):
            assert k.isidentifier() and not keyword.iskeyword(k), (name, k)
            assert k not in DEFAULT_CFG_KEYS, f"{name}.{k} shadows an Ultralytics train argument"
            assert k not in KD_KEYS, (name, k)


def test_resolve_hparams_casts_and_rejects_unknown():
    assert resolve_hparams("mimic", {"weight": "2"})["weight"] == 2.0
    assert resolve_hparams("mimic", {}) == method_defaults("mimic")
    with pytest.raises(ValueError, match="Did you mean 'weight'"):
        resolve_hparams("mimic", {"wieght": 1})
    with pytest.raises(ValueError, match="unknown method 'mimik'.*mimic"):
        build_method("mimik", CS, CT)


def test_mimic_equals_naive_loop():
    m = build_method("mimic", CS, CT, weight=0.7)
    s, t = _feats(CS), _feats(CT, seed=5)
    terms = m(KDBatch(s, t, batch={}))["mimic"]
    assert terms.shape == (3, 3)
    for lvl, (conn, sl, tl) in enumerate(zip(m.connectors, s, t)):
        w, b = conn.weight[:, :, 0, 0].detach(), conn.bias.detach()
        for n in range(3):
            total, count = 0.0, 0
            for y in range(sl.shape[2]):
                for x in range(sl.shape[3]):
                    proj = w @ sl[n, :, y, x] + b
                    total += float(((proj - tl[n, :, y, x]) ** 2).sum())
                    count += tl.shape[1]
            assert terms[n, lvl].item() == pytest.approx(0.7 * total / count, rel=1e-5)


@pytest.mark.parametrize("end2end", [False, True])
def test_ultralytics_method_equals_ultralytics_loss_sl2(end2end):
    """The per-image terms add up to exactly what Ultralytics' DistillationModel optimises (x batch size)."""
    from ultralytics.nn.distill_model import DistillationModel

    m = build_method("ultralytics", CS, CT, dis_weight=6.0)
    s, t = _feats(CS), _feats(CT, seed=5)
    tp = _teacher_preds(end2end=end2end)
    terms = m(KDBatch(s, t, batch={}, teacher_preds=tp))["dis"]

    # Ultralytics' own computation (DistillationModel.loss, 8.4.190), with our projectors as its projector.
    head = {"one2many": tp["one2many"], "one2one": tp["one2one"]} if end2end else tp
    scores = (DistillationModel.decouple_outputs(None, head, branch="one2many")["scores"]
              + DistillationModel.decouple_outputs(None, head, branch="one2one")["scores"]) / 2
    parts = torch.split(scores, [h * w for h, w in SIZES], dim=-1)
    tscores = tuple(p.sigmoid().max(dim=1, keepdim=True).values for p in parts)
    ref = sum(DistillationModel.loss_sl2(None, m.connectors[i](s[i]), t[i], i, tscores) * 6.0 for i in range(3))
    ref = ref * s[0].shape[0]
    assert terms.sum().item() == pytest.approx(ref.item(), rel=1e-5)


def test_reduce_terms_batch_size_convention_and_image_weights():
    terms = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([[0.5, 0.0], [0.0, 0.5]])}
    loss, items = reduce_terms(terms, batch_size=2)
    assert loss.tolist() == [10.0, 1.0]  # summed over images: Ultralytics' batch_size x per-image convention
    assert items["a_loss"].item() == 5.0 and items["b_loss"].item() == 0.5  # logged per image
    w = torch.tensor([[2.0], [0.0]])  # per-image weights, as a wrapper method (AID) would apply them
    loss, _ = reduce_terms(terms, batch_size=2, image_weights=w)
    assert loss.tolist() == [6.0, 1.0]
    wl = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # per image and level
    assert reduce_terms(terms, 2, wl)[0].tolist() == [5.0, 1.0]


def test_a_wrapper_can_reweight_another_method_per_image():
    """The interface contract AID relies on: terms are (N, L) and reducible by the caller."""
    inner = build_method("mimic", CS, CT, weight=1.0)
    s, t = _feats(CS), _feats(CT, seed=5)
    terms = inner(KDBatch(s, t, batch={}))
    w = torch.tensor([1.0, 0.0, 0.5]).view(3, 1)
    loss, _ = reduce_terms(terms, 3, image_weights=w)
    by_hand = terms["mimic"][0].sum() + 0.5 * terms["mimic"][2].sum()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["mimic", "ultralytics"])
def test_gradients_reach_student_and_connectors_not_teacher(name):
    m = build_method(name, CS, CT)
    s, t = _feats(CS, grad=True), _feats(CT, seed=5, grad=True)
    loss, _ = reduce_terms(m(KDBatch(s, [x.detach() for x in t], batch={}, teacher_preds=_teacher_preds())), 3)
    loss.sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_none_has_no_terms_and_no_teacher():
    m = build_method("none", CS, CS)
    assert m(KDBatch(_feats(CS), [], batch={})) == {} and not m.uses_teacher and not list(m.parameters())
