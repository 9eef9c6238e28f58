"""``pkd``: Pearson-correlation feature distillation (Cao et al., "PKD: General Distillation Framework for Object
Detectors via Pearson Correlation Coefficient", NeurIPS 2022) on the three neck levels that feed Detect (P3/P4/P5).

Spec: ``../shared/docs/methods.md`` §5 (standardise each channel of both features, then MSE; magnitude-invariant, so
it works across heterogeneous teachers), §6.2 (loss scale). Per image n and level l, with phi the connector and
z(F)_c = (F_c - mean_ij F_c) / (std_ij F_c + eps) each channel standardised over its own H*W positions:

    pkd[n, l] = weight * mean_{c,i,j} (z(phi(F^S)) - z(F^T))^2 / 2

With the population std this equals weight * mean_c (1 - r_c) up to eps, r_c the Pearson correlation of the two
maps of channel c: PKD imitates where and how each channel varies, never its scale or offset, so a teacher whose
features are a per-channel affine (positive-scale) image of the student's costs nothing.

Decisions, and how they differ from mmrazor's ``PKDLoss`` (the authors' release; loss weight 6 for Faster R-CNN,
10 for RetinaNet):

- **Statistics per image** (over H, W), not per channel over the whole batch (N, H, W) as mmrazor's ``norm`` does: the
  terms are per image (a wrapper such as AID reweights them), and per-image statistics keep an image's term
  independent of which other images share its batch (Ultralytics' mosaics vary widely in content).
- **Population std** (mmrazor: the unbiased ``torch.std``), so that the identity with 1 - r above is exact and a 1x1
  map (P5 at imgsz 32) gives 0 instead of NaN; eps = 1e-6 added to the std, as mmrazor does, so a constant channel
  standardises to 0.
- **Reduction**: the mean over one image's C*H*W elements, / 2, as mmrazor's ``F.mse_loss(...) / 2`` is over the
  batch's; summed over images (Ultralytics' ``batch_size x`` convention, §6.2) this keeps mmrazor's KD:detection ratio.
- **Connector**: PKD needs none when the widths match (the identity, standardisation removes scale and offset by
  itself); across widths a 1x1 conv student -> teacher channels is required to compare channel by channel
  (``build_connectors("conv1x1")``). Its bias is removed by the standardisation, so its gradient is 0 by design.
- **Precision**: fp32 (the criterion runs with autocast off); the teacher is detached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from yolokd.methods.base import KDBatch, KDMethod, coefficients
from yolokd.nn.connectors import build_connectors

#: Added to each channel's std before dividing (mmrazor's ``PKDLoss`` value): a constant channel standardises to 0.
EPS = 1e-6


def standardise(feat: Tensor) -> Tensor:
    """Each channel of each image shifted to zero mean and scaled to unit (population) std over its positions."""
    flat = feat.flatten(2)
    mean = flat.mean(-1, keepdim=True)
    std = flat.std(-1, correction=0, keepdim=True)
    return ((flat - mean) / (std + EPS)).view_as(feat)


class PKD(KDMethod):
    """MSE / 2 between per-image, per-channel standardised adapted-student and teacher neck features."""

    name = "pkd"
    term_names = ("pkd",)

    def __init__(self, student_channels: list[int], teacher_channels: list[int], weight: float) -> None:
        """Build phi per level (1x1 conv where widths differ, identity where they match)."""
        super().__init__(student_channels, teacher_channels)
        (self.weight,) = coefficients(self.name, weight=weight)
        self.connectors = build_connectors("conv1x1", student_channels, teacher_channels)

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return ``{"pkd": (N, L)}``."""
        per_level = [(standardise(fs) - standardise(ft)).pow(2).flatten(1).mean(1) / 2
                     for fs, ft in self.adapted_levels(kd)]
        return {"pkd": self.weight * torch.stack(per_level, 1)}
