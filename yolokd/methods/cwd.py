"""``cwd``: Channel-wise Distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction",
ICCV 2021) on the three neck levels that feed Detect (P3/P4/P5).

Spec: ``../shared/docs/methods.md`` §5 (per-channel spatial softmax at temperature tau, KL(teacher || student) * tau^2,
summed over channels and divided by C * N), §6.2 (loss scale). Per image n and level l, with phi the connector and
F_c one channel of a (C_T, H, W) map:

    cwd[n, l] = weight * tau^2 / C_T * sum_c KL(softmax_ij(F^T_c / tau) || softmax_ij(phi(F^S)_c / tau))

i.e. each channel is turned into a distribution over the H*W positions (where that channel "fires"), and the student
is pulled to the teacher's distribution channel by channel; the magnitude of a channel does not matter, only where its
mass lies (up to tau). mmrazor's ``ChannelWiseDivergence`` returns the same sum divided by C * N, a batch mean; summing
per-image values over images instead is Ultralytics' ``batch_size x`` convention (§6.2), which keeps mmrazor's
KD:detection ratio for the same weight.

Decisions:

- **Connector**: ``build_connectors("conv1x1")``: the identity where the widths match (mmrazor's detection configs
  distil equal-width FPNs and use none) and a 1x1 conv student -> teacher channels where they differ, since the
  per-channel distributions must be compared channel by channel.
- **Precision**: computed in fp32 (log-softmax over H*W positions; the criterion also runs with autocast off); the
  teacher is detached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from yolokd.methods.base import KDBatch, KDMethod, coefficients, positive_temperature
from yolokd.methods.ld import distribution_kl
from yolokd.nn.connectors import build_connectors


def channel_divergence(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """(N,): sum over channels of KL(spatial softmax of the teacher channel || the student's) * tau^2, divided by C."""
    n, c = teacher.shape[:2]
    return distribution_kl(student.reshape(n, c, -1), teacher.reshape(n, c, -1), temperature).sum(1) / c


class CWD(KDMethod):
    """Per-channel spatial-softmax KL between the adapted student and the teacher neck features."""

    name = "cwd"
    term_names = ("cwd",)

    def __init__(self, student_channels: list[int], teacher_channels: list[int], weight: float,
                 temperature: float) -> None:
        """Build phi per level (1x1 conv where widths differ, identity where they match)."""
        super().__init__(student_channels, teacher_channels)
        (self.weight,) = coefficients(self.name, weight=weight)
        self.temperature = positive_temperature(self.name, temperature)
        self.connectors = build_connectors("conv1x1", student_channels, teacher_channels)

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return ``{"cwd": (N, L)}``."""
        per_level = [channel_divergence(fs, ft, self.temperature) for fs, ft in self.adapted_levels(kd)]
        return {"cwd": self.weight * torch.stack(per_level, 1)}
