"""``mgd``: Masked Generative Distillation (Yang et al., "Masked Generative Distillation", ECCV 2022) on the three
neck levels that feed Detect (P3/P4/P5).

Spec: ``../shared/docs/methods.md`` §5 (randomly mask student feature pixels, ratio 0.5-0.65; a generator 3x3 conv,
ReLU, 3x3 conv reconstructs the full teacher feature; MSE sum / N), §6.2 (loss scale). Per image n and level l, with
phi the connector and M a random pixel mask (N, 1, H, W), 0 on masked pixels (each pixel independently, with
probability ``lambda_mgd``, the same pixels for every channel) and 1 elsewhere:

    mgd[n, l] = alpha * sum_{c,i,j} (G(phi(F^S) * M) - F^T)^2

The student is not asked to copy the teacher pixel by pixel but to carry enough information that the generator G can
rebuild the teacher's whole map from a partly blanked-out copy of it. mmrazor's ``MGDLoss`` divides the batch's sum by
N (a batch mean); summing per-image sums over images is Ultralytics' ``batch_size x`` convention (§6.2), which keeps
mmrazor's KD:detection ratio for the same alpha.

Decisions (mmrazor's ``MGDConncetor`` layout, the authors' release):

- **Connector and generator**: phi is ``build_connectors("conv1x1")`` (a 1x1 conv student -> teacher channels only
  where the widths differ, as mmrazor's ``align``); G is conv3x3 (C_T -> C_T) - ReLU - conv3x3 (C_T -> C_T), one per
  level, in the teacher's width. Both are trainable, optimised with the student and never in its checkpoint.
- **Mask**: drawn afresh at every forward. Training uses the global torch RNG (so a seeded run is reproducible like
  the rest of Ultralytics' training); setting ``MGD.rng`` to a ``torch.Generator`` makes the masks reproducible on
  their own (tests), drawn level by level, P3 first, as ``torch.rand((N, 1, H, W), generator=rng) < lambda_mgd``
  (mmrazor masks where ``rand > 1 - lambda``: the same probability).
- **Precision**: fp32 (sums over C*H*W elements overflow fp16, methods.md §6.8); the teacher is detached.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from yolokd.methods.base import KDBatch, KDMethod, coefficients
from yolokd.nn.connectors import build_connectors


def generator(channels: int) -> nn.Sequential:
    """MGD's generation block: 3x3 conv, ReLU, 3x3 conv, all at the teacher's width (padding keeps the size)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, padding=1))


class MGD(KDMethod):
    """Teacher-feature reconstruction from the randomly masked, adapted student feature."""

    name = "mgd"
    term_names = ("mgd",)

    def __init__(self, student_channels: list[int], teacher_channels: list[int], alpha: float,
                 lambda_mgd: float) -> None:
        """Build phi (1x1 conv where widths differ) and one generator per level."""
        super().__init__(student_channels, teacher_channels)
        (self.alpha,) = coefficients(self.name, alpha=alpha)
        self.lambda_mgd = float(lambda_mgd)
        if not 0.0 <= self.lambda_mgd < 1.0:
            raise ValueError(f"method 'mgd': lambda_mgd must lie in [0, 1), got {self.lambda_mgd}")
        self.connectors = build_connectors("conv1x1", student_channels, teacher_channels)
        self.generators = nn.ModuleList(generator(c) for c in teacher_channels)
        #: Source of the random masks; None: the global torch RNG (training). Not a parameter, not saved.
        self.rng: torch.Generator | None = None

    def keep_mask(self, n: int, h: int, w: int, device: torch.device) -> Tensor:
        """(N, 1, H, W) fp32: 0 on the masked pixels (probability ``lambda_mgd`` each), 1 on the kept ones."""
        draw_on = self.rng.device if self.rng is not None else device
        u = torch.rand((n, 1, h, w), generator=self.rng, device=draw_on).to(device)
        return (u >= self.lambda_mgd).float()

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return ``{"mgd": (N, L)}``."""
        per_level = []
        for gen, (fs, ft) in zip(self.generators, self.adapted_levels(kd)):
            n, _, h, w = fs.shape
            rebuilt = gen(fs * self.keep_mask(n, h, w, fs.device))
            per_level.append((rebuilt - ft).pow(2).flatten(1).sum(1))
        return {"mgd": self.alpha * torch.stack(per_level, 1)}
