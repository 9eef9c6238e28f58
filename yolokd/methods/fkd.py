"""``fkd``: attention-guided and non-local feature distillation (Zhang & Ma, "Improve Object Detection with
Feature-based Knowledge Distillation: Towards Accurate and Efficient Detectors", ICLR 2021), the distillation AID
reweights in its paper (``method=aid`` is ``fkd+aid``), on the three neck levels that feed Detect (P3/P4/P5).

Spec: ``../shared/docs/methods.md`` §3.3 (the form the AID authors' code gives it, ``kd_attention.py``; AID-weighted in
``kd_att_sw.py``), §6.2 (loss scale), §6.5 (per-image norms), §6.8 (fp32). Per level l, with T the temperature,
F^T the teacher feature (N, C_T, H, W), F^S the student's (N, C_S, H, W) and, for a map F of C channels,
A^S(F) = H*W * softmax_ij(mean_c |F| / T) and A^C(F) = C * softmax_c(mean_ij |F| / T) (``fgd.attention``):

- masks: M^S = (A^S(F^T) + A^S(F^S)) / 2 and M^C = (A^C(F^T) + A^C(F^S)) / 2, the average of teacher and student
  attention, **detached**;
- ``fkd_feat`` = feat_weight * || sqrt(M^S M^C) (F^T - phi(F^S)) ||_2: the L2 *norm* (not its square) of the
  attention-weighted error, phi a 1x1 conv C_S -> C_T (always built, as the code's ``adaptation_layers``);
- ``fkd_chan`` = channel_weight * || mean_ij F^T - psi(mean_ij F^S) ||_2, psi = Linear(C_S, C_T);
- ``fkd_spat`` = spatial_weight * || mean_c F^T - chi(mean_c F^S) ||_2, chi a 3x3 conv 1 -> 1 (padding 1);
- ``fkd_nl`` = nonlocal_weight * || rho(NL_S(F^S)) - NL_T(F^T) ||_2, NL a dot-product non-local block (``NonLocal``),
  one for the student and one for the teacher, both trainable, rho a 1x1 conv C_S -> C_T.

Decisions, where the code (written for 256-channel FPNs, P3-P7) leaves YOLO open:

- **Norms per image** (§6.5): the code takes each norm over the whole batch; here each image gets its own norm, so a
  modifier can weight images (AID per image); a term depends on the other images of the batch only through the
  non-local blocks' BatchNorm statistics. Summed over images (Ultralytics' ``batch_size x`` convention, §6.2). A batch norm of N equal images is sqrt(N) times one image's
  norm, while the sum of per-image norms is N times it: for the code's KD:detection ratio at its 2 images per GPU,
  multiply the weights by about sqrt(2); they are untuned for Ultralytics' scale anyway.
- **Student attention** is computed on the student feature in the teacher's channel layout: F^S itself when the widths
  match (the code's 256 -> 256 case, self-distillation), phi(F^S) otherwise (a channel mask over teacher channels has
  no other student counterpart). The "256" of the code's channel attention is the channel count C.
- **Non-local blocks**: theta, phi_nl, g are 1x1 convs to C/r channels, phi_nl and g followed by a max-pool of kernel
  and stride k, the affinity theta^T phi_nl divided by the number of pooled positions, the output through W = 1x1 conv
  + BatchNorm with the BN weight and bias zero (the block starts as the identity), plus the input. The code's
  (inter channels, pool) per level are (64, 8), (64, 4), then (128, 2) at 256 channels: here (C/4, 8), (C/4, 4),
  (C/2, 2) for P3, P4, P5 (and (C/2, 2) beyond), of each model's own width C. With YOLO's strides 8/16/32 this pools
  every level to the same stride-64 grid, as the code does for P3-P5. The pool kernel is clamped to the map (small
  images). The BN runs in training mode (batch statistics), as in the code.
- **Precision**: fp32 (sums over C*H*W elements, §6.8); the teacher feature is detached before anything else. The
  norms use ``torch.linalg.vector_norm``, whose gradient at a zero difference is 0 (a student equal to its teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolokd.methods.base import KDBatch, KDMethod, coefficients, positive_temperature
from yolokd.methods.fgd import attention
from yolokd.nn.connectors import build_connectors

#: (channel reduction r, pool kernel k) of the non-local block per level, P3 first; the last entry serves deeper levels.
NL_LAYOUT = ((4, 8), (4, 4), (2, 2))


class NonLocal(nn.Module):
    """Dot-product non-local block with max-pooled keys and values and a zero-initialised W (Wang et al., 2018)."""

    def __init__(self, channels: int, reduction: int, pool: int) -> None:
        """Build theta, phi, g (1x1 convs to ``channels // reduction``, at least 1) and W (1x1 conv + BN, BN zero)."""
        super().__init__()
        inter = max(1, channels // reduction)
        self.pool = pool
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x + W(softmax-free affinity x values)``, same shape as ``x``."""
        n, _, h, w = x.shape
        k = (min(self.pool, h), min(self.pool, w))
        query = self.theta(x).flatten(2)  # (N, C', HW)
        key = F.max_pool2d(self.phi(x), k).flatten(2)  # (N, C', P)
        value = F.max_pool2d(self.g(x), k).flatten(2)  # (N, C', P)
        affinity = query.transpose(1, 2) @ key / key.shape[-1]  # (N, HW, P)
        y = (affinity @ value.transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.out(y)


class FKD(KDMethod):
    """Attention-guided feature imitation, pooled channel and spatial imitation, and non-local relation imitation."""

    name = "fkd"
    term_names = ("fkd_feat", "fkd_chan", "fkd_spat", "fkd_nl")

    def __init__(
        self,
        student_channels: list[int],
        teacher_channels: list[int],
        feat_weight: float,
        channel_weight: float,
        spatial_weight: float,
        nonlocal_weight: float,
        temperature: float,
    ) -> None:
        """Build phi, psi, chi, rho and the two non-local blocks per level."""
        super().__init__(student_channels, teacher_channels)
        self.feat_weight, self.channel_weight, self.spatial_weight, self.nonlocal_weight = coefficients(
            self.name, feat_weight=feat_weight, channel_weight=channel_weight, spatial_weight=spatial_weight,
            nonlocal_weight=nonlocal_weight)
        self.temperature = positive_temperature(self.name, temperature)
        pairs = list(zip(student_channels, teacher_channels))
        layout = [NL_LAYOUT[min(i, len(NL_LAYOUT) - 1)] for i in range(len(pairs))]
        self.connectors = build_connectors("conv1x1_always", student_channels, teacher_channels)
        self.channel_adapters = nn.ModuleList(nn.Linear(cs, ct) for cs, ct in pairs)
        self.spatial_adapters = nn.ModuleList(nn.Conv2d(1, 1, 3, padding=1) for _ in pairs)
        self.nl_student = nn.ModuleList(NonLocal(cs, r, k) for cs, (r, k) in zip(student_channels, layout))
        self.nl_teacher = nn.ModuleList(NonLocal(ct, r, k) for ct, (r, k) in zip(teacher_channels, layout))
        self.nl_adapters = build_connectors("conv1x1_always", student_channels, teacher_channels)

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return the four ``{term: (N, L)}`` tensors, each a per-image L2 norm times its weight."""
        per_level = []
        for lvl, (s, t) in enumerate(zip(kd.student_feats, kd.teacher_feats)):
            self.check_level(lvl, s, t)
            fs, ft = s.float(), t.detach().float()
            adapted = self.connectors[lvl](fs)
            with torch.no_grad():
                att_s_t, att_c_t = attention(ft, self.temperature)
                att_s_s, att_c_s = attention(fs if fs.shape[1] == ft.shape[1] else adapted, self.temperature)
                mask = ((att_s_t + att_s_s)[:, None] * (att_c_t + att_c_s)[:, :, None, None] / 4).sqrt()
            feat = norms(mask * (ft - adapted))
            chan = norms(ft.mean((2, 3)) - self.channel_adapters[lvl](fs.mean((2, 3))))
            spat = norms(ft.mean(1, keepdim=True) - self.spatial_adapters[lvl](fs.mean(1, keepdim=True)))
            nl = norms(self.nl_adapters[lvl](self.nl_student[lvl](fs)) - self.nl_teacher[lvl](ft))
            per_level.append((self.feat_weight * feat, self.channel_weight * chan, self.spatial_weight * spat,
                              self.nonlocal_weight * nl))
        return self.stack_levels(per_level)


def norms(x: Tensor) -> Tensor:
    """(N,): the L2 norm of each image's slice of ``x`` (all dimensions but the first)."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1)
