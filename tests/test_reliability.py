"""Reliability of training (issue 14): non-finite distillation terms, and clipping of the method's gradients."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from conftest import make_trainer
from yolokd.engine.criterion import KDCriterion, NonFiniteKDError
from yolokd.engine.trainer import NONFINITE_KEY, KDTrainer


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]


def _poison(trainer, factors: dict[int, float] | None):
    """Make the method's terms NaN/Inf on the chosen training steps (all steps when ``factors`` is None).

    The bad terms stay in the autograd graph of the method's connectors and the student's features, as a real failure
    would: a drop that let any gradient through them would put NaN into the parameters.
    """
    calls = {"n": 0}

    def patch(tr):
        forward = tr.method.forward

        def poisoned(kd):
            terms, step = forward(kd), calls["n"]
            calls["n"] += 1
            f = math.nan if factors is None else factors.get(step)
            return terms if f is None else {k: v * f for k, v in terms.items()}

        tr.method.forward = poisoned  # instance attribute: nn.Module.__call__ finds it

    trainer.add_callback("on_pretrain_routine_end", patch)
    return calls


def _finite(module: nn.Module) -> bool:
    return all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())


def test_nonfinite_kd_steps_are_dropped_counted_and_logged(tmp_path, tiny_data, monkeypatch):
    trainer = make_trainer(tmp_path, tiny_data, method="mimic")  # 2 epochs x 2 steps
    calls = _poison(trainer, {0: math.nan, 1: math.inf, 3: math.nan})  # the last step too: its loss ends the epoch
    recoveries, warnings, start = [], [], {}
    recover = trainer._handle_nan_recovery

    def spy_recovery(epoch):
        recoveries.append(recover(epoch))
        return recoveries[-1]

    trainer._handle_nan_recovery = spy_recovery
    from yolokd.engine import trainer as trainer_module

    warn = trainer_module.LOGGER.warning
    monkeypatch.setattr(trainer_module.LOGGER, "warning", lambda msg, *a, **k: (warnings.append(str(msg)),
                                                                                 warn(msg, *a, **k)))
    trainer.add_callback("on_pretrain_routine_end",
                         lambda tr: start.update({k: v.clone() for k, v in tr.method.state_dict().items()}))
    trainer.train()

    assert calls["n"] == 4 and recoveries == [False, False]  # Ultralytics never saw a NaN: no reload of last.pt
    assert torch.isfinite(trainer.loss)  # the last step's summed loss, the one Ultralytics checks
    assert _finite(trainer.model) and _finite(trainer.method) and _finite(trainer.ema.ema)
    # step 2 was finite: the method still learnt from it (and only from it)
    assert any(not torch.equal(v, start[k]) for k, v in trainer.method.state_dict().items())
    rows = _rows(trainer.csv)
    assert [int(float(r[NONFINITE_KEY])) for r in rows] == [2, 1]
    kd = [float(r["train/mimic_loss"]) for r in rows]
    assert kd[0] == 0 and 0 < kd[1] < math.inf  # dropped steps log zeros, never NaN, in Ultralytics' running mean
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("train/box_loss", "train/kd_det_ratio"))
    ours = [w for w in warnings if "NaN/Inf KD terms" in w]
    assert len(ours) == 2 and "2 of 2 training steps" in ours[0] and "1 of 2" in ours[1]
    assert all("(mimic)" in w for w in ours)


def test_persistent_nonfinite_kd_terms_stop_the_run_with_advice(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(KDTrainer, "MAX_NONFINITE_STEPS", 3)  # 2 steps per epoch: the run spans an epoch boundary
    trainer = make_trainer(tmp_path, tiny_data, method="mimic")
    calls = _poison(trainer, None)
    advice = r"method 'mimic' gave NaN/Inf distillation terms \(mimic\) in 3 consecutive training steps \(epoch 2"
    with pytest.raises(NonFiniteKDError, match=advice + r".*lower weights.*check the teacher"):
        trainer.train()
    assert calls["n"] == 3 and _finite(trainer.model) and _finite(trainer.method)


def test_a_finite_step_resets_the_consecutive_count(tmp_path, tiny_data):
    trainer = make_trainer(tmp_path, tiny_data, method="mimic")
    trainer.MAX_NONFINITE_STEPS = 2
    trainer.count_nonfinite(("mimic",))
    trainer.count_nonfinite(())
    trainer.count_nonfinite(("mimic",))
    assert trainer.nonfinite_steps == 2 and len(trainer.nonfinite_run) == 1
    with pytest.raises(NonFiniteKDError, match="in 2 consecutive"):
        trainer.count_nonfinite(("mimic",))


class _BNMethod(nn.Module):
    """A stand-in method with a trainable connector and BatchNorm statistics (like FKD's non-local blocks)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)


def test_dropping_cuts_the_graph_and_restores_the_methods_buffers():
    crit = KDCriterion.__new__(KDCriterion)  # drop_nonfinite needs only the method and the term names
    crit.method, crit.term_names = _BNMethod().train(), ("a", "b")
    x = torch.randn(2, 2, 4, 4, requires_grad=True)
    buffers = [b.detach().clone() for b in crit.method.buffers()]
    y = crit.method.bn(crit.method.conv(x))  # moves the running statistics
    terms = torch.stack([y.mean(), (y * math.nan).mean()])  # "b" is NaN, "a" finite, both through the connector
    loss, items = crit.drop_nonfinite(terms, {"a_loss": terms[0].detach(), "b_loss": terms[1].detach()}, buffers)
    assert crit.dropped == ("b",) and torch.equal(loss, torch.zeros(2)) and not loss.requires_grad
    assert all(v == 0 for v in items.values())
    assert all(torch.equal(b, s) for b, s in zip(crit.method.buffers(), buffers))
    det = x.square().sum()  # the detection loss still trains
    (det + loss.sum()).backward()
    assert torch.isfinite(x.grad).all() and all(p.grad is None for p in crit.method.parameters())
    # torch.where would not do: its backward sends 0 into the NaN branch, and 0 * NaN is NaN upstream
    x.grad = None
    y = crit.method.conv(x)
    torch.where(torch.tensor(False), (y * math.nan).mean(), 0.0).backward()
    assert torch.isnan(x.grad).all()
    finite = torch.stack([y.mean(), y.sum()])
    out, _ = crit.drop_nonfinite(finite, {})
    assert out is finite and crit.dropped == ()


def _stepper(scale: float | None) -> KDTrainer:
    """A KDTrainer with only what ``optimizer_step`` uses: a student, a method, plain SGD (lr 1) and a scaler."""
    tr = KDTrainer.__new__(KDTrainer)
    tr.model, tr.method = nn.Linear(3, 2), nn.Linear(4, 3)
    tr.optimizer = torch.optim.SGD([*tr.model.parameters(), *tr.method.parameters()], lr=1.0, momentum=0.0,
                                   weight_decay=0.0)
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
    tr.device, tr.world_size, tr.ema = torch.device("cpu"), 1, None
    return tr


@pytest.mark.parametrize("scale", [None, 1024.0])  # AMP's scaler off (as on CPU), and on with a scale of 2^10
@pytest.mark.parametrize("method_norm", [1e6, 3.0])  # far above the bound, and below it (then left alone)
def test_method_gradients_are_clipped_like_the_students(scale, method_norm):
    tr = _stepper(scale)
    g = torch.Generator().manual_seed(0)
    grads, loss = {}, 0
    for mod, norm in ((tr.model, 5.0), (tr.method, method_norm)):  # the student's 5 is under Ultralytics' 10
        flat = torch.randn(sum(p.numel() for p in mod.parameters()), generator=g)
        flat *= norm / flat.norm()
        grads[mod] = flat
        for p, chunk in zip(mod.parameters(), flat.split([p.numel() for p in mod.parameters()])):
            loss = loss + (p * chunk.view_as(p)).sum()  # d loss / d p = chunk
    tr.scaler.scale(loss).backward()  # as the training loop does: .grad holds scale x the gradient
    if scale:
        assert torch.allclose(tr.method.weight.grad.flatten(), scale * grads[tr.method][:12], rtol=1e-5)
    before = {mod: torch.cat([p.detach().flatten() for p in mod.parameters()]).clone() for mod in grads}
    tr.optimizer_step()
    for mod, flat in grads.items():
        applied = before[mod] - torch.cat([p.detach().flatten() for p in mod.parameters()])  # lr 1: the gradient
        expected = flat * min(1.0, KDTrainer.METHOD_MAX_NORM / flat.norm().item())  # hand-clipped, unscaled
        assert torch.allclose(applied, expected, rtol=1e-4, atol=1e-5)
    assert (before[tr.method] - torch.cat([p.detach().flatten() for p in tr.method.parameters()])).norm() <= \
        KDTrainer.METHOD_MAX_NORM * (1 + 1e-5)
    assert all(p.grad is None for p in tr.optimizer.param_groups[0]["params"])  # Ultralytics' step ran to the end
