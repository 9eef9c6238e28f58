"""``ld``: output distillation on the Detect head: Localization Distillation of the box distributions (Zheng et al.,
"Localization Distillation for Dense Object Detection", CVPR 2022) plus soft-target distillation of the class scores.

Spec: ``../shared/docs/methods.md`` §5 (LD: KL between the teacher's and the student's discretised edge distributions,
T = 10, "a natural fit for YOLOv8's DFL head"), §6.2 (loss scale), §6.8 (precision). Both terms are read from the raw
head outputs (``KDBatch.teacher_preds`` / ``student_preds``: ``boxes`` (N, 4*reg_max, A), ``scores`` (N, nc, A)) and
weighted by the student's own task-aligned assignment (``KDBatch.student_assignment``, recorded from the student's
detection loss by the criterion, see ``yolokd/engine/providers.py``). Per image n and level l, with w_a = sum_c
target_scores[a, c] and S = target_scores_sum (the batch's sum of target scores, at least 1), as in Ultralytics' DFL:

- ``ld_box`` = box_weight * N * sum_{a in fg(n, l)} w_a * mean_{side} KL(softmax(t_side / T) || softmax(s_side / T))
  * T^2 / S, the KL summed over the reg_max bins of each side (left, top, right, bottom), T = ``box_temperature``;
- ``ld_cls`` = cls_weight * N * sum_{a in (n, l)} sum_c KLb(sigmoid(t_ac / T) || sigmoid(s_ac / T)) * T^2 / S over
  every anchor, with KLb the binary KL of one class (T = ``cls_temperature``).

The factor N with the batch-wide S makes term[n, l] image n's share of a batch loss normalised as Ultralytics
normalises its own, so the terms add up to ``N x`` that loss, Ultralytics' ``batch_size x`` convention (§6.2), and the
logged value (sum / N) is in the units of the logged ``dfl_loss`` / ``cls_loss`` (before their gains).

Forms, and why:

- **Box: KL over the DFL bins, per side, on the student's positives, weighted and normalised like the DFL loss.**
  Ultralytics' DFL head predicts, per side, a distribution over ``reg_max`` bins: exactly the "discretised edge
  distribution" LD distils. The region and weights are those of the loss LD sits next to: the DFL term covers the
  positives of the student's TAL assignment, weighted by their target score and normalised by the batch's target score
  sum, so ``ld_box`` and ``dfl_loss`` share units and a weight of 1 makes the two comparable. (LD on GFL weights its
  ATSS positives by the student's max class score; TAL's target score is the aligned analogue: the normalised
  alignment of score and IoU.) The proper KL is summed over the bins, not averaged as mmdet's
  ``KnowledgeDistillationKLDivLoss`` does, so that it is the divergence itself (zero exactly when the distributions
  agree); the mean over the four sides follows ``DFLoss``.
- **Class scores: binary KL per class at temperature T, over all anchors, normalised by S.** Ultralytics' heads score
  each class with an independent sigmoid (BCE), so the natural soft target is the teacher's Bernoulli per class, not
  a softmax over classes (LD's GFL ``loss_kd`` softmaxes sigmoid logits, which mixes classes that are not exclusive).
  KLb(p_t || p_s) = BCE(s / T, p_t) - BCE(t / T, p_t): the BCE against the teacher's temperature-scaled probabilities
  minus the teacher's entropy, so it is zero exactly when the student's logits equal the teacher's, and its gradient
  T * (p_s - p_t) keeps the scale of Hinton's T^2 convention. All anchors, because Ultralytics' cls BCE covers all of
  them (the background is where most of a detector's false positives are taught away), and the same normaliser S
  keeps ``ld_cls`` in the units of ``cls_loss``.

Decisions on the points the spec leaves open (tested in ``tests/test_output_kd.py``):

- **Region**: the positives (``fg_mask``) of the *student's* assignment, the same anchors as its DFL loss, on the
  batch labels. LD's "valuable localisation region" (VLR) is not offered: in LD it is the set of preset anchor boxes
  whose DIoU with a GT lies between alpha_vl and 1 times ATSS's positive threshold (mean + std of the candidates' IoU),
  which needs a preset anchor box per location. YOLOv8's head is anchor-free and TAL ranks points by a prediction-based
  metric, so there is no IoU of a fixed anchor box to threshold; substituting the predicted box would make the region
  follow the student's own errors, a different method, not LD's VLR.
- **Heads without DFL** (``reg_max == 1``, YOLO26-style), or teacher and student with different ``reg_max``: there is
  no common distribution to compare, so ``ld_box`` becomes an L1 between the decoded side distances (the expectation
  of a DFL distribution; the raw distance of a ``reg_max == 1`` head), scaled to the image as Ultralytics' own L1 box
  term is (distance * stride / image width or height), mean over the four sides, on the same region, weights and
  normaliser; ``box_temperature`` does not apply to it.
- **End-to-end heads** (``one2many`` / ``one2one``): the one-to-many branch of both models, as every provider uses.
  The student's assignment is that branch's (TAL top-10, as v8's), and YOLO26's one-to-one branch is fed detached
  features, so a term on it would not reach the student's neck; the one-to-one head is left to the detection loss.
- **Images without boxes**: no positives, so ``ld_box`` is 0 for that image; ``ld_cls`` still distils its background
  (S is at least 1, as in Ultralytics).
- **Instance weights** (``KDBatch.instance_weights``) are not applied; the per-image, per-level terms are what a
  wrapper reweights.
- **Precision**: logits are cast to fp32 before the softmaxes (the criterion also runs the terms in fp32 with autocast
  off); fp16 inputs give the fp32 result. The teacher's outputs are detached.

No trainable parts: nothing is added to the optimiser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from yolokd.methods.base import (Assignment, KDBatch, KDMethod, coefficients, level_sums, one2many,
                                 positive_temperature)


def side_logits(boxes: Tensor) -> Tensor:
    """(N, A, 4, reg_max) from a raw ``boxes`` output (N, 4 * reg_max, A), fp32: the bins of each side last."""
    n, c, a = boxes.shape
    return boxes.float().reshape(n, 4, c // 4, a).permute(0, 3, 1, 2)


def side_distances(boxes: Tensor) -> Tensor:
    """(N, A, 4) decoded side distances in grid cells: the DFL expectation, or the raw output when ``reg_max == 1``."""
    logits = side_logits(boxes)
    reg_max = logits.shape[-1]
    if reg_max == 1:
        return logits[..., 0]
    bins = torch.arange(reg_max, dtype=logits.dtype, device=logits.device)
    return logits.softmax(-1) @ bins


def distribution_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2 over the last dim (the bins); shape without it."""
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * temperature**2


def binary_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Element-wise KL(Bernoulli(sigmoid(t / T)) || Bernoulli(sigmoid(s / T))) * T^2, from logits.

    Written as BCE(s / T, p_t) - BCE(t / T, p_t) with PyTorch's stable BCE-with-logits: the cross-entropy against the
    teacher's probabilities minus the teacher's entropy. Identical logits give exactly 0.
    """
    p_t = torch.sigmoid(teacher / temperature)
    bce_s = F.binary_cross_entropy_with_logits(student / temperature, p_t, reduction="none")
    bce_t = F.binary_cross_entropy_with_logits(teacher / temperature, p_t, reduction="none")
    return (bce_s - bce_t) * temperature**2


def anchor_strides(level_hw: list[tuple[int, int]], img_hw: tuple[int, int], device: torch.device) -> Tensor:
    """(A,) the stride of every anchor, from the image and feature sizes (exact for Ultralytics' batch shapes)."""
    return torch.cat([torch.full((h * w,), img_hw[0] / h, device=device) for h, w in level_hw])


class LD(KDMethod):
    """Localization distillation of the DFL distributions and binary-KL distillation of the class scores."""

    name = "ld"
    term_names = ("ld_box", "ld_cls")
    needs = frozenset({"teacher_preds", "student_preds", "student_assignment"})

    def __init__(
        self,
        student_channels: list[int],
        teacher_channels: list[int],
        box_weight: float,
        cls_weight: float,
        box_temperature: float,
        cls_temperature: float,
    ) -> None:
        """Validate the coefficients and temperatures; LD has no trainable parts."""
        super().__init__(student_channels, teacher_channels)
        self.box_weight, self.cls_weight = coefficients(self.name, box_weight=box_weight, cls_weight=cls_weight)
        self.box_temperature = positive_temperature(self.name, box_temperature, "box_temperature")
        self.cls_temperature = positive_temperature(self.name, cls_temperature, "cls_temperature")

    def box_terms(self, student: Tensor, teacher: Tensor, assigned: Assignment, strides: Tensor,
                  img_hw: tuple[int, int]) -> Tensor:
        """(N, A): each positive anchor's weighted localization term (before the normaliser), 0 elsewhere."""
        pos = assigned.fg_mask.nonzero(as_tuple=True)
        out = student.new_zeros(assigned.fg_mask.shape, dtype=torch.float32)
        if not pos[0].numel():
            return out
        s_logits, t_logits = side_logits(student)[pos], side_logits(teacher)[pos]  # (P, 4, reg_max)
        if s_logits.shape[-1] == t_logits.shape[-1] > 1:
            per = distribution_kl(s_logits, t_logits, self.box_temperature).mean(-1)
        else:  # no common distribution: L1 of the decoded distances, scaled to the image like Ultralytics' L1 term
            scale = strides[pos[1]][:, None] / torch.tensor([img_hw[1], img_hw[0]] * 2, device=strides.device)
            dist_s, dist_t = side_distances(student)[pos], side_distances(teacher)[pos]
            per = ((dist_s - dist_t) * scale).abs().mean(-1)
        return out.index_put(pos, per * assigned.anchor_weights[pos])

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return ``{"ld_box": (N, L), "ld_cls": (N, L)}``."""
        if kd.teacher_preds is None or kd.student_preds is None or kd.student_assignment is None:
            raise ValueError("method 'ld' needs teacher_preds, student_preds and student_assignment in its KDBatch "
                             "(KDCriterion provides them for methods that declare them in `needs`)")
        s_raw, t_raw = one2many(kd.student_preds), one2many(kd.teacher_preds)
        if s_raw["scores"].shape != t_raw["scores"].shape:
            raise ValueError(f"ld: student scores {tuple(s_raw['scores'].shape)} and teacher scores "
                             f"{tuple(t_raw['scores'].shape)} differ (classes or anchors)")
        n = kd.batch_size
        level_hw = [tuple(f.shape[-2:]) for f in kd.student_feats]
        sizes = [h * w for h, w in level_hw]
        img_hw = tuple(kd.batch["img"].shape[-2:])
        assigned = kd.student_assignment
        norm = n / assigned.target_scores_sum
        strides = anchor_strides(level_hw, img_hw, s_raw["boxes"].device)
        box = self.box_terms(s_raw["boxes"], t_raw["boxes"].detach(), assigned, strides, img_hw)
        cls = binary_kl(s_raw["scores"].float(), t_raw["scores"].detach().float(), self.cls_temperature).sum(1)
        return {"ld_box": self.box_weight * norm * level_sums(box, sizes),
                "ld_cls": self.cls_weight * norm * level_sums(cls, sizes)}
