"""``gkd``: Gradient-guided Knowledge Distillation with bounding-box-aware multi-grained feature imitation (BMFI)
(Lan & Tian, "Gradient-Guided Knowledge Distillation for Object Detectors", WACV 2024, arXiv 2303.04240), on the
three neck levels that feed Detect (P3/P4/P5).

Spec: ``../shared/docs/methods.md`` §2.2-2.4 and §2.6 (the method, the released code's defects), §6.2 (loss scale),
§6.6 (GKD on YOLO), §6.8 (pitfalls). Per level l, with g = dL_det/dF the detection-loss gradient at a Detect input
(``KDBatch.teacher_grads`` / ``student_grads``, computed once per batch by the criterion, see
``yolokd/engine/providers.py``):

- **maps** (§2.4): M = Norm(sum_c w_c |F_c|) with w_c = mean_ij |g_c| (``grad=abs``, what the released code computes
  through its ``abs`` reshape transform), or M = Norm(ReLU(sum_c w_c F_c)) with w_c = mean_ij g_c (``grad=signed``,
  the paper's Eq. 1 as quoted, Grad-CAM proper). Norm is min-max per image and level with eps 1e-7, so M lies in
  [0, 1]; the map is first divided by its peak, so that eps acts relative to it (see below). The teacher map is
  detached; the student's weights w are constants but its map keeps the graph through F^S, so the loss reaches the
  student (the released code computes both maps in numpy and gives the student no gradient,
  §2.2 (a): not copied). Maps are computed on the augmented training batch itself (no re-read of the un-flipped
  image, §2.2 (b)), and no adapter is needed (one channel per map).
- **BMFI** (§2.3), with the teacher's FGD attentions A^S_T, A^C_T at temperature T (``fgd.attention``), phi a 1x1
  connector student -> teacher channels (``build_connectors("conv1x1")``, identity where widths match) and
  D = (F^T - phi(F^S))^2: the Gaussian-extended box mask G (below), ``gkd_box`` = alpha * sum G * A^S_T * A^C_T * D,
  ``gkd_att`` = gamma * FGD's attention L1 (``fgd.attention_l1``), ``gkd_glob`` = lambda_global * sum A^S_T * A^C_T * D
  / (H*W).
- **terms** per image and level, ``variant=bmfi`` (§2.3/§2.4, default): ``gkd_map`` = beta * mean_ij |M^T - M^S|,
  plus the three BMFI terms. ``variant=gmask``, the authors' own configuration (§2.6, ``Cam_Gmask_FeatureLoss``):
  ``gkd_map`` = beta * sum_ij |sqrt(G) M^T - sqrt(G) M^S| (restricted to boxes, not divided by H*W); ``gkd_box`` with
  D = (sqrt(M^T) F^T - sqrt(M^S) phi(F^S))^2; ``gkd_glob`` = lambda_global * FGD's GcBlock relation loss
  sum (R_S(phi(F^S)) - R_T(F^T))^2 (two trainable ``GcBlock`` per level); ``gkd_att`` as in bmfi.

The Gaussian-extended box mask G (§2.3, with the released code's placement bug fixed): with wmin = floor and wmax = ceil
of the box's edges in cells (``fgd.box_extents(..., inclusive=False)``, clamped), the box covers the w = wmax - wmin
columns wmin..wmax - 1 and the h = hmax - hmin rows hmin..hmax - 1 (the cells it overlaps; at least one), centred at
(xc, yc) = ((wmin + wmax - 1) / 2, (hmin + hmax - 1) / 2) in cell indices, i.e. on the box. The box cells get 1; the
other cells of the patch |x - xc| <= w, |y - yc| <= h (about 2w x 2h) get exp(-1/2 ((x - xc)/w)^2) *
exp(-1/2 ((y - yc)/h)^2); everything times 1/(4wh). The released code writes the patch at twice the box position and
crops at H/2, which reflects it about the map centre (only centred boxes come out right); here the patch is centred on
the box (``test_gaussian_mask_peaks_at_the_box_centre``). Until 2026-11-30 the box cells here were FGD's inclusive
wmin..wmax, one cell past the box on the right and bottom, which put G's centre half a cell off the box's.

Decisions on points the spec leaves open (each tested in ``tests/test_gkd.py``):

- **eps of the normalisation is relative**: (M - min) / (max - min + 1e-7) is computed on M / max(M). Min-max
  normalisation ignores the scale of M, but the spec's absolute eps does not: the gradients' scale follows the loss
  convention (Ultralytics sums over the batch and applies gains, §6.2) and the features' scale the model (a
  random-init teacher's P5 is ~1e-10), and a map whose range falls below 1e-7 would collapse to ~0. The result equals
  the spec's wherever max - min >> 1e-7; an all-zero map (zero gradients) stays 0.
- **Degenerate boxes**: a box marks at least the one cell its start lies in (w, h >= 1: no zero sigma or 1/(4wh),
  methods.md §6.8); boxes with no area inside the image mark nothing.
- **Overlaps and instance weights**: boxes combine by element-wise max; ``KDBatch.instance_weights`` multiply the
  value of the box that defines G at a cell (``fgd.combine_boxes``, the FGD rule, §6.5), so they scale ``gkd_box``
  and, in ``gmask``, ``gkd_map`` (``object_terms``). The whole-image terms are left to a wrapper's image-level
  weights.
- **sqrt(M^S) in gmask's ``gkd_box``** is a constant weight (detached): its derivative is infinite where M^S = 0, which
  min-max normalisation guarantees at one cell per map; the student map is learnt through ``gkd_map``. The released
  code treats both maps as constants.
- **Switches**: ``bmfi=false`` is plain GKD: ``gkd_box``, ``gkd_att`` and ``gkd_glob`` are returned as zeros (the term
  names are fixed per method: results.csv columns) and no connector or GcBlock is built; ``gkd_map`` follows the
  variant (``variant=gmask bmfi=false`` is the authors' ``only_cam_gmask`` configuration).
- **Gradients** (``grad_path``, ``target``, ``pred_conf``, ``pred_topk``) are options of the criterion's providers
  (``GradOptions``): ``grad_path=direct`` gives the teacher head-only gradients; the student's are always total.
- **Precision**: features and gradients are cast to fp32 first (the criterion runs the terms in fp32, autocast off);
  fp16 inputs give the fp32 result.

Scale (§6.2): each term is per image; the trainer sums over images (Ultralytics' ``batch_size x`` convention), which
keeps the code's "sum / N" KD:detection ratio; Ultralytics' detection loss has gains, so the coefficients need tuning.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from yolokd.methods.base import GradOptions, KDBatch, KDMethod, choice, coefficients, flag, positive_temperature
from yolokd.methods.fgd import attention, attention_l1, box_extents, combine_boxes, focal_error, inside_image
from yolokd.nn.connectors import build_connectors
from yolokd.nn.gcblock import GcBlock

#: eps of the min-max normalisation (released code and methods.md §2.2 step 5): all-zero maps stay 0, never NaN.
EPS = 1e-7


def grad_map(feat: Tensor, grad: Tensor, mode: str) -> Tensor:
    """The gradient-guided map of one level, (N, H, W) in [0, 1], min-max normalised per image (methods.md §2.4).

    Args:
        feat: (N, C, H, W) features; the map is differentiable through them.
        grad: (N, C, H, W) dL/dfeat; used as constant channel weights.
        mode: ``abs``: sum_c mean_ij|g_c| * |F_c|; ``signed``: ReLU(sum_c mean_ij(g_c) * F_c).
    """
    g = grad.detach()
    if mode == "abs":
        m = (g.abs().mean((2, 3))[:, :, None, None] * feat.abs()).sum(1)
    else:
        m = torch.relu((g.mean((2, 3))[:, :, None, None] * feat).sum(1))
    # Peak-scaled first, so that eps is relative to the map: min-max normalisation ignores the map's scale, but an
    # absolute eps does not, and the scale of g follows the loss convention (x batch size, Ultralytics' gains, §6.2).
    m = m / m.amax((1, 2), keepdim=True).clamp(min=torch.finfo(m.dtype).tiny)
    lo = m.amin((1, 2), keepdim=True)
    return (m - lo) / (m.amax((1, 2), keepdim=True) - lo + EPS)


def gaussian_box_masks(
    boxes: Tensor,
    batch_idx: Tensor,
    n_images: int,
    img_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    weights: Tensor | None = None,
) -> Tensor:
    """BMFI's Gaussian-extended box masks of one level, (N, H, W), correctly centred (see the module docstring).

    Args:
        boxes: (n, 4) normalised xywh boxes of the batch (``batch["bboxes"]``).
        batch_idx: (n,) image index of each box.
        n_images: N.
        img_hw: Size of the batch image tensor.
        feat_hw: (H, W) of the level.
        weights: Optional (n,) per-object weights; the weight of the box defining G at a cell multiplies it there.
    """
    h, w = feat_hw
    device = boxes.device
    n = boxes.shape[0]
    vals = torch.zeros(n, h * w, device=device)
    if n:
        r0, r1, c0, c1 = box_extents(boxes, img_hw, feat_hw, inclusive=False)  # cells c0..c1 - 1, r0..r1 - 1
        bw, bh = (c1 - c0).float(), (r1 - r0).float()  # at least 1
        dx = torch.arange(w, device=device)[None].float() - (c0 + c1 - 1).float()[:, None] / 2  # (n, W) to the centre
        dy = torch.arange(h, device=device)[None].float() - (r0 + r1 - 1).float()[:, None] / 2  # (n, H)
        gx = torch.exp(-0.5 * (dx / bw[:, None]) ** 2) * (dx.abs() <= bw[:, None])  # 0 outside the patch
        gy = torch.exp(-0.5 * (dy / bh[:, None]) ** 2) * (dy.abs() <= bh[:, None])
        in_x = dx.abs() <= (bw[:, None] - 1) / 2  # the box's own cells c0..c1 - 1
        in_y = dy.abs() <= (bh[:, None] - 1) / 2
        g = torch.where(in_y[:, :, None] & in_x[:, None, :], 1.0, gy[:, :, None] * gx[:, None, :])
        g = g / (4 * bw * bh)[:, None, None] * inside_image(boxes)[:, None, None]
        vals = g.view(n, h * w)
    return combine_boxes(vals, batch_idx, n_images, weights).view(n_images, h, w)


class GKD(KDMethod):
    """Gradient-guided map imitation, with optional BMFI (Gaussian box, attention and global feature imitation)."""

    name = "gkd"
    revision = 2  # 2026-11-30: BMFI's Gaussian box mask centred on the box (revision 1: half a cell right and below)
    term_names = ("gkd_map", "gkd_box", "gkd_att", "gkd_glob")
    needs = frozenset({"teacher_grads", "student_grads"})

    def __init__(
        self,
        student_channels: list[int],
        teacher_channels: list[int],
        beta: float,
        alpha: float,
        gamma: float,
        lambda_global: float,
        temperature: float,
        grad: str,
        grad_path: str,
        target: str,
        pred_conf: float,
        pred_topk: int,
        bmfi: bool,
        variant: str,
    ) -> None:
        """Validate the hyperparameters; build phi per level (and two GcBlocks per level for gmask) when BMFI is on."""
        super().__init__(student_channels, teacher_channels)
        self.beta, self.alpha, self.gamma, self.lambda_global = coefficients(
            self.name, beta=beta, alpha=alpha, gamma=gamma, lambda_global=lambda_global)
        self.temperature = positive_temperature(self.name, temperature)
        self.grad = choice(self.name, "grad", grad, ("abs", "signed"))
        self.variant = choice(self.name, "variant", variant, ("bmfi", "gmask"))
        self.bmfi = flag(self.name, "bmfi", bmfi)
        self.grad_options = GradOptions(
            path=choice(self.name, "grad_path", grad_path, ("total", "direct")),
            target=choice(self.name, "target", target, ("gt", "pred")),
            pred_conf=float(pred_conf),
            pred_topk=int(pred_topk),
        )
        if self.bmfi:
            self.connectors = build_connectors("conv1x1", student_channels, teacher_channels)
            if self.variant == "gmask":
                self.gc_student = nn.ModuleList(GcBlock(c) for c in teacher_channels)
                self.gc_teacher = nn.ModuleList(GcBlock(c) for c in teacher_channels)

    @property
    def object_terms(self) -> frozenset[str]:
        """The terms the instance weights scale box by box: the Gaussian-masked ``gkd_box``, and ``gkd_map`` when
        ``variant=gmask`` restricts it to the boxes."""
        return frozenset({"gkd_box", "gkd_map"} if self.variant == "gmask" else {"gkd_box"})

    def maps(self, kd: KDBatch) -> list[tuple[Tensor, Tensor]]:
        """Per level, the teacher map (detached) and the student map (in the graph), each (N, H, W) fp32 in [0, 1]."""
        if kd.teacher_grads is None or kd.student_grads is None:
            raise ValueError("method 'gkd' needs teacher_grads and student_grads in its KDBatch (KDCriterion computes "
                             "them for methods that declare them in `needs`)")
        return [(grad_map(t.detach().float(), gt.float(), self.grad).detach(),
                 grad_map(s.float(), gs.float(), self.grad))
                for s, t, gs, gt in zip(kd.student_feats, kd.teacher_feats, kd.student_grads, kd.teacher_grads)]

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return the four ``{term: (N, L)}`` tensors; with ``bmfi`` off the three BMFI terms are zeros."""
        batch = kd.batch
        n = kd.batch_size
        img_hw = tuple(batch["img"].shape[-2:])
        gmask = self.variant == "gmask"
        per_level = []
        for lvl, (s, t, (m_t, m_s)) in enumerate(zip(kd.student_feats, kd.teacher_feats, self.maps(kd))):
            self.check_level(lvl, s, t)
            ft = t.detach().float()
            zero = m_s.new_zeros(n)
            box = att = glob = zero
            g = None
            if gmask or self.bmfi:
                g = gaussian_box_masks(batch["bboxes"].to(ft.device), batch["batch_idx"], n, img_hw,
                                       tuple(ft.shape[-2:]), kd.instance_weights)
            if gmask:
                cam = self.beta * (g.sqrt() * (m_t - m_s).abs()).sum((1, 2))
            else:
                cam = self.beta * (m_t - m_s).abs().mean((1, 2))
            if self.bmfi:
                fs = self.connectors[lvl](s.float())
                att_s_t, att_c_t = attention(ft, self.temperature)
                if gmask:  # sqrt(M^S) is a constant weight: see the module docstring
                    err = focal_error(fs * m_s.detach().sqrt()[:, None], ft * m_t.sqrt()[:, None], att_s_t, att_c_t)
                else:
                    err = focal_error(fs, ft, att_s_t, att_c_t)
                box = self.alpha * (g * err).sum((1, 2))
                att = self.gamma * attention_l1(fs, att_s_t, att_c_t, self.temperature)
                if gmask:
                    rel = self.gc_student[lvl](fs) - self.gc_teacher[lvl](ft)
                    glob = self.lambda_global * rel.pow(2).sum((1, 2, 3))
                else:
                    glob = self.lambda_global * err.mean((1, 2))
            per_level.append((cam, box, att, glob))
        return self.stack_levels(per_level)

    def plot(self, kd: KDBatch, stem: Path) -> list[Path]:
        """One picture per level, ``<stem>_P<k>.jpg``: each image, its teacher map and its student map side by side."""
        from yolokd.utils.plots import save_map_panels

        img = kd.batch["img"]
        paths = []
        for m_t, m_s in self.maps(kd):
            level = round(math.log2(img.shape[-1] / m_t.shape[-1]))  # P3 at stride 8
            path = stem.with_name(f"{stem.name}_P{level}.jpg")
            paths.append(save_map_panels(img, {"teacher": m_t, "student": m_s}, path))
        return paths
