"""``ultralytics``: the built-in distillation of Ultralytics >= 8.4.77 (``distill_model=``), reproduced as a method.

Source: ``ultralytics/nn/distill_model.py`` (8.4.190), ``DistillationModel.loss`` and ``loss_sl2``: per neck level, a
projector (1x1 conv, ReLU, 1x1 conv) maps the student feature to the teacher's width; the squared error at each
position is weighted by the teacher's highest class probability there (for end-to-end heads the mean of the one2many
and one2one scores), normalised by the batch's weight mass times the channel count, multiplied by ``dis`` (the default
6.0 is Ultralytics' ``dis``) and by the batch size.

It is reproduced rather than delegated so that it runs inside the same trainer as every other method (same teacher
loading, logging and checkpoint handling) and exposes per-image terms: term[n, l] is image n's share of Ultralytics'
level-l loss, so the terms add up to exactly the built-in value (``tests/test_methods.py`` checks this against
Ultralytics' own ``loss_sl2``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from yolokd.methods.base import KDBatch, KDMethod, coefficients
from yolokd.nn.connectors import build_connectors


def teacher_max_scores(teacher_preds: dict, level_sizes: list[int]) -> list[Tensor]:
    """Per-level (N, 1, H*W) maps of the teacher's highest class probability, as Ultralytics computes them."""
    if "one2one" in teacher_preds:  # end-to-end heads (YOLO26): average both branches' logits, as the built-in does
        scores = (teacher_preds["one2many"]["scores"] + teacher_preds["one2one"]["scores"]) / 2
    else:
        scores = teacher_preds["scores"]
    return [p.float().sigmoid().amax(1, keepdim=True) for p in scores.split(level_sizes, dim=-1)]


class UltralyticsSL2(KDMethod):
    """Teacher-score-weighted L2 on projected neck features (Ultralytics' built-in ``distill_model=``)."""

    name = "ultralytics"
    term_names = ("dis",)
    needs = frozenset({"teacher_preds"})

    def __init__(self, student_channels: list[int], teacher_channels: list[int], dis_weight: float) -> None:
        """Build Ultralytics' projector (1x1 conv, ReLU, 1x1 conv) per level."""
        super().__init__(student_channels, teacher_channels)
        (self.dis_weight,) = coefficients(self.name, dis_weight=dis_weight)
        self.connectors = build_connectors("mlp", student_channels, teacher_channels)

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return ``{"dis": (N, L)}`` whose sum is Ultralytics' optimised ``dis_loss`` (already x batch size)."""
        n = kd.batch_size
        sizes = [f.shape[-2] * f.shape[-1] for f in kd.teacher_feats]
        weights = teacher_max_scores(kd.teacher_preds, sizes)
        per_level = []
        for conn, s, t, w in zip(self.connectors, kd.student_feats, kd.teacher_feats, weights):
            c = t.shape[1]
            mse = (conn(s) - t).pow(2).flatten(2)  # (N, C, HW)
            per_image = (mse * w).sum((1, 2))  # (N,)
            per_level.append(per_image / (w.sum() * c + 1e-9))  # batch-wide normaliser, as in loss_sl2
        return {"dis": self.dis_weight * n * torch.stack(per_level, 1)}
