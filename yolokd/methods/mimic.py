"""``mimic``: FitNet-style feature imitation on the three neck levels that feed Detect.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015: a trainable 1x1 regressor maps the student feature to
the teacher's width, and an L2 loss pulls it to the teacher feature at every position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from yolokd.methods.base import KDBatch, KDMethod, coefficients
from yolokd.nn.connectors import build_connectors


class Mimic(KDMethod):
    """L2 between adapted student and teacher neck features, averaged over channels and positions per image and level.

    The per-image mean (not sum) keeps the term independent of the input size and of the teacher's width, so one
    ``weight`` fits every teacher/student pair and every imgsz.
    """

    name = "mimic"
    term_names = ("mimic",)

    def __init__(self, student_channels: list[int], teacher_channels: list[int], weight: float) -> None:
        """Build one always-trainable 1x1 connector per level (FitNet's regressor)."""
        super().__init__(student_channels, teacher_channels)
        (self.weight,) = coefficients(self.name, weight=weight)
        self.connectors = build_connectors("conv1x1_always", student_channels, teacher_channels)

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return ``{"mimic": (N, L)}``: weight x mean squared error of each image at each level."""
        per_level = [
            (conn(s) - t).pow(2).flatten(1).mean(1)
            for conn, s, t in zip(self.connectors, kd.student_feats, kd.teacher_feats)
        ]
        return {"mimic": self.weight * torch.stack(per_level, 1)}
