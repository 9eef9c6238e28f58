"""The method plug-in interface: what a distillation method receives, and what it must return.

A method returns *terms*, not a finished scalar: each term is a tensor of shape (N, L), the contribution of image n at
neck level l, already multiplied by its coefficient. The caller (``reduce_terms``) sums them. This is what lets a
modifier such as AID (``KDModifier``, combined with methods by ``yolokd.methods.compose``) reweight another method per
image, per level or per object (``KDBatch.instance_weights``, on the terms a method lists in ``object_terms``) without
knowing its internals.

Scale convention (``../shared/docs/methods.md`` §6.2): Ultralytics optimises ``batch_size x`` the per-image detection
loss and logs the per-image value. The KD terms follow it: the optimised KD loss is the *sum* over images of the per-image
terms, and the logged value is that sum divided by the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

#: Inputs a method may declare in ``KDMethod.needs``, beyond the neck features and the batch it always gets.
SUPPORTED_NEEDS = frozenset({"teacher_preds", "student_preds", "teacher_grads", "student_grads",
                             "student_assignment", "teacher_instance_losses"})


def one2many(raw: dict[str, Any]) -> dict[str, Any]:
    """The one-to-many branch of a raw head output (end-to-end heads keep it under ``one2many``)."""
    return raw["one2many"] if "one2many" in raw else raw


def flag(method: str, name: str, value: Any) -> bool:
    """A boolean hyperparameter: a bool, 0/1, or a true/false-like string (from the Python API or a config)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
        return value.strip().lower() in {"true", "1", "yes", "on"}
    raise ValueError(f"method '{method}': {name}={value!r} is not a boolean (use true or false)")


def coefficients(method: str, **values: Any) -> list[float]:
    """Loss coefficients as floats, in the order given; each must be >= 0 (a negative one rewards imitation error)."""
    out = [float(v) for v in values.values()]
    for k, v in zip(values, out):
        if not 0 <= v < math.inf:  # also refuses NaN
            raise ValueError(f"method '{method}': {k} must be >= 0, got {values[k]}")
    return out


def positive_temperature(method: str, value: Any, name: str = "temperature") -> float:
    """A softmax temperature, which must be > 0."""
    t = float(value)
    if not 0 < t < math.inf:
        raise ValueError(f"method '{method}': {name} must be > 0, got {value}")
    return t


def choice(method: str, name: str, value: Any, options: Iterable[str]) -> str:
    """A string hyperparameter that must be one of ``options`` (case-insensitive)."""
    options = tuple(options)
    v = str(value).strip().lower()
    if v not in options:
        raise ValueError(f"method '{method}': {name}={value!r} must be one of {', '.join(options)}")
    return v


@dataclass(frozen=True)
class GradOptions:
    """How the criterion computes ``teacher_grads`` and ``student_grads`` (methods.md §2.4, §6.6).

    They are computed once per batch by ``KDCriterion``, not by the method, so that a wrapper composing several
    methods shares one teacher backward. A method that declares a ``*_grads`` need sets ``grad_options`` from its own
    hyperparameters; the defaults below are the spec's and only apply to a method that sets none.

    Attributes:
        path: ``total``: dL/dF including every path from F to the loss (through the rest of the neck, the PAN path
            from P3 to P4/P5, and the head), what a Grad-CAM hook on each tensor sees. ``direct``: only the path
            through the head (each Detect input detached), cheaper. Applies to the teacher; the student's gradients
            are always total (the student's graph is the training graph, which is not cut).
        target: ``gt``: the detection loss against the batch labels. ``pred``: against the model's own detections
            (confidence > ``pred_conf``, at most ``pred_topk`` per image after NMS), as the released GKD code does;
            the teacher uses its detections, the student its own.
        pred_conf: Confidence threshold of the ``pred`` targets.
        pred_topk: Detections kept per image for the ``pred`` targets.
    """

    path: str = "total"
    target: str = "gt"
    pred_conf: float = 0.3
    pred_topk: int = 10

    def __post_init__(self) -> None:
        """Reject values the criterion cannot act on."""
        if self.path not in {"total", "direct"}:
            raise ValueError(f"gradient path must be total or direct, got {self.path!r}")
        if self.target not in {"gt", "pred"}:
            raise ValueError(f"gradient target must be gt or pred, got {self.target!r}")
        if not 0.0 <= self.pred_conf <= 1.0 or self.pred_topk < 1:
            raise ValueError(f"pred_conf must lie in [0, 1] and pred_topk be >= 1, got {self.pred_conf}, "
                             f"{self.pred_topk}")


@dataclass(frozen=True)
class Assignment:
    """The student's task-aligned assignment of one batch: what its own detection loss was computed against.

    Filled by the criterion (``yolokd.engine.providers.student_assignment``) for methods that declare the
    ``student_assignment`` need, from the TaskAlignedAssigner of the student's (one-to-many) ``v8DetectionLoss``. All
    tensors are detached (the assigner runs under ``no_grad``), anchors in ``make_anchors`` order: P3 first, each level
    row-major.

    Attributes:
        fg_mask: (N, A) bool, the anchors the assigner made positive.
        target_scores: (N, A, nc) fp32, the soft class targets (IoU-normalised alignment metric on the assigned class,
            0 elsewhere); their sum over classes is the weight of an anchor in Ultralytics' box and DFL losses.
        target_bboxes: (N, A, 4) fp32, the assigned GT box of each anchor, xyxy in pixels of the batch image.
        target_gt_idx: (N, A) long, the index of that GT among its image's boxes (valid where ``fg_mask``).
    """

    fg_mask: Tensor
    target_scores: Tensor
    target_bboxes: Tensor
    target_gt_idx: Tensor

    @property
    def anchor_weights(self) -> Tensor:
        """(N, A): each anchor's weight in Ultralytics' box and DFL losses, sum_c target_scores (0 off positives)."""
        return self.target_scores.sum(-1) * self.fg_mask

    @property
    def target_scores_sum(self) -> Tensor:
        """The batch-wide normaliser of Ultralytics' detection loss: sum of all target scores, at least 1."""
        return self.target_scores.sum().clamp(min=1)


def level_sums(values: Tensor, sizes: list[int]) -> Tensor:
    """(N, L): per-anchor values (N, A) summed over each level's anchors (levels concatenated in ``sizes`` order)."""
    return torch.stack([v.sum(-1) for v in values.split(sizes, dim=-1)], 1)


#: The teacher loss terms an AID-style weight may be computed from (``InstanceLosses``), each with Ultralytics' gain.
LOSS_TERMS = ("box", "cls", "dfl")


@dataclass(frozen=True)
class InstanceLosses:
    """The teacher's own detection loss on this batch, per anchor and term, and its reductions (methods.md §6.4).

    Filled by the criterion (``yolokd.engine.providers.teacher_instance_losses``) for methods that declare the
    ``teacher_instance_losses`` need: the teacher's raw outputs on the same augmented batch, assigned by the teacher's
    own TaskAlignedAssigner (never the student's features or assignment), each term times the gain Ultralytics gives
    it (the student's box/cls/dfl), so that ``box + cls (+ dfl)`` summed over a batch and divided by the batch's target
    score sum is exactly the (un-``batch_size``-scaled) ``v8DetectionLoss`` of the teacher. All tensors detached, fp32,
    anchors in ``make_anchors`` order (P3 first, row-major).

    Attributes:
        box: (N, A) box gain x (1 - CIoU) x w_a on the teacher's positives, 0 elsewhere.
        cls: (N, A) cls gain x sum_c BCE(teacher logit, target score), on every anchor (background included).
        dfl: (N, A) dfl gain x DFL x w_a on the positives (the image-normalised L1 of the sides for heads without DFL).
        anchor_weights: (N, A) w_a = sum_c target_scores, an anchor's weight in the box/DFL terms (0 off positives).
        fg_mask: (N, A) bool, the teacher's positives.
        target_gt_idx: (N, A) long, index of the assigned box among its image's boxes (valid where ``fg_mask``).
        level_sizes: Anchors per level (H*W), P3 first.
    """

    box: Tensor
    cls: Tensor
    dfl: Tensor
    anchor_weights: Tensor
    fg_mask: Tensor
    target_gt_idx: Tensor
    level_sizes: list[int]

    def total(self, terms: Iterable[str]) -> Tensor:
        """(N, A): the chosen terms (a subset of ``LOSS_TERMS``) added up per anchor."""
        terms = tuple(terms)
        unknown = set(terms) - set(LOSS_TERMS)
        if unknown or not terms:
            raise ValueError(f"teacher loss terms must be a non-empty subset of {LOSS_TERMS}, got {terms}")
        return sum(getattr(self, t) for t in terms)

    def image_norm(self) -> Tensor:
        """(N,): each image's target score sum, at least 1: Ultralytics' normaliser, applied per image."""
        return self.anchor_weights.sum(1).clamp(min=1)

    def per_image(self, terms: Iterable[str]) -> Tensor:
        """(N,): each image's teacher loss, exactly ``v8DetectionLoss`` run on that image alone (batch of one)."""
        return self.total(terms).sum(1) / self.image_norm()

    def per_image_level(self, terms: Iterable[str]) -> Tensor:
        """(N, L): each image's loss split by the level of the anchors; the image's normaliser, so rows add up to
        ``per_image`` (mmdet's per-level shares, methods.md §6.4)."""
        return level_sums(self.total(terms), self.level_sizes) / self.image_norm()[:, None]

    def per_batch_level(self, terms: Iterable[str]) -> Tensor:
        """(L,): the batch loss split by level, normalised by the batch's target score sum (the released code's
        granularity); adds up to the batch's ``v8DetectionLoss`` (before its ``batch_size x``)."""
        return level_sums(self.total(terms), self.level_sizes).sum(0) / self.anchor_weights.sum().clamp(min=1)

    def per_object(self, terms: Iterable[str], batch_idx: Tensor) -> Tensor:
        """(n,): each GT box's loss over the teacher positives assigned to it, aligned with ``batch["bboxes"]``.

        D[g] = sum_{a: fg, gt_idx(a) = g} loss[a] / max(sum_{a in g} w_a, 1): Ultralytics' normalisation applied to the
        box's own positives (the clamp at 1 is v8's; a smaller floor would blow up the cls part, which is not weighted
        by w_a, for boxes the teacher barely matches). The background's cls loss belongs to no box. A box that gets no
        teacher positive (tiny, crowded, degenerate) has no loss of its own and takes its image's ``per_image`` value.
        Box j of image b is the j-th row of ``batch_idx`` equal to b, the order Ultralytics pads them in.
        """
        total = self.total(terms)
        idx = batch_idx.view(-1).long().to(total.device)
        n_img = total.shape[0]
        if not idx.numel():
            return total.new_zeros(0)
        within = (torch.nn.functional.one_hot(idx, n_img).cumsum(0) - 1).gather(1, idx[:, None]).squeeze(1)
        m = int(within.max()) + 1
        gt = torch.where(self.fg_mask, self.target_gt_idx.long(), 0).clamp(max=m - 1)
        fg = self.fg_mask.float()
        num = total.new_zeros(n_img, m).scatter_add_(1, gt, total * fg)
        wsum = total.new_zeros(n_img, m).scatter_add_(1, gt, self.anchor_weights * fg)
        count = total.new_zeros(n_img, m).scatter_add_(1, gt, fg)
        own = num / wsum.clamp(min=1)
        image = self.per_image(terms)[:, None].expand_as(own)
        return torch.where(count > 0, own, image)[idx, within]


@dataclass
class KDBatch:
    """Everything a method may look at for one training batch.

    Attributes:
        student_feats: Student Detect inputs, P3 first, each (N, C_s, H, W), fp32, in the autograd graph.
        teacher_feats: Teacher Detect inputs at the same strides, each (N, C_t, H, W), fp32, detached.
        batch: The Ultralytics training batch: ``img`` (N, 3, H, W) in [0, 1], ``bboxes`` (n, 4) normalised xywh of the
            letterboxed/mosaic image, ``cls`` (n, 1), ``batch_idx`` (n,).
        teacher_preds: The teacher's raw head outputs ``{"boxes": (N, 4*reg_max, A), "scores": (N, nc, A)}`` (and the
            ``one2one`` branch under that key for end-to-end heads), if the method declared ``teacher_preds``.
        student_preds: The student's raw head outputs, same layout, if the method declared ``student_preds``.
        teacher_grads: If the method declared ``teacher_grads``: dL_T/dF^T at each teacher Detect input, (N, C_t, H, W),
            fp32, detached, where L_T is the teacher's own detection loss (Ultralytics' ``v8DetectionLoss`` with the
            student's box/cls/dfl gains, summed over images as Ultralytics optimises it) on the same augmented batch,
            taken as ``KDMethod.grad_options`` says. ``teacher_feats`` are then the tensors these gradients belong to.
        student_grads: If the method declared ``student_grads``: dL_S/dF^S at each student Detect input, (N, C_s, H,
            W), fp32, detached (constants), with L_S the student's detection loss as the trainer optimises it (or
            against its own detections, ``grad_options.target == "pred"``). ``student_feats`` keep their graph.
        student_assignment: If the method declared ``student_assignment``: the task-aligned assignment the student's
            own detection loss used on this batch (``Assignment``; the one-to-many branch for end-to-end heads).
        teacher_losses: If the method declared ``teacher_instance_losses``: the teacher's own detection loss on this
            batch, per anchor and term (``InstanceLosses``), from its own assignment.
        instance_weights: Per-object weights (n,), aligned with ``batch['bboxes']``, set by a modifier (AID at
            ``granularity=object``); methods multiply each object's region by its weight in the terms they list in
            ``KDMethod.object_terms``. None means 1.
    """

    student_feats: list[Tensor]
    teacher_feats: list[Tensor]
    batch: dict[str, Any]
    teacher_preds: dict[str, Any] | None = None
    student_preds: dict[str, Any] | None = None
    teacher_grads: list[Tensor] | None = None
    student_grads: list[Tensor] | None = None
    student_assignment: Assignment | None = None
    teacher_losses: InstanceLosses | None = None
    instance_weights: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Number of images N."""
        return self.student_feats[0].shape[0]


class KDMethod(nn.Module):
    """Base class of every distillation method.

    Subclasses set ``name``, ``term_names`` (each logged as ``<term>_loss``), optionally ``needs``, accept their
    hyperparameters as keyword arguments (defaults live in ``cfg/methods/<name>.yaml``, never in the code) and implement
    ``forward``. Trainable parts (connectors, GcBlocks, ...) are submodules: the trainer optimises them with the student
    and keeps them out of the student checkpoint.
    """

    name: ClassVar[str] = ""
    term_names: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset()
    #: Raised by a fix that changes what the method computes at the same hyperparameters, so that benchmark runs of
    #: the old code are refused instead of silently paired with new ones (``yolokd.bench.runner``).
    revision: ClassVar[int] = 1
    #: False for methods that never look at the teacher (``none``): the trainer then skips the teacher forward.
    uses_teacher: ClassVar[bool] = True
    #: How ``teacher_grads`` / ``student_grads`` are computed, for methods that declare them (instance attribute).
    grad_options: GradOptions | None = None
    #: Terms computed over GT-box regions that ``KDBatch.instance_weights`` scale box by box (FGD's foreground term).
    #: A per-object modifier leaves them to those weights and gives every other term the image's weight.
    object_terms: frozenset[str] = frozenset()

    def __init__(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        """Record the per-level widths that connectors are built from."""
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                f"teacher and student must feed the same number of levels to Detect: student has "
                f"{len(student_channels)} ({student_channels}), teacher {len(teacher_channels)} ({teacher_channels})"
            )
        self.student_channels = list(student_channels)
        self.teacher_channels = list(teacher_channels)

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return ``{term: (N, L) tensor}``: each image's and level's weighted contribution to each term."""
        raise NotImplementedError

    def check_level(self, lvl: int, student: Tensor, teacher: Tensor) -> None:
        """Fail clearly when a level's student and teacher maps differ in batch size or resolution."""
        if student.shape[-2:] != teacher.shape[-2:] or student.shape[0] != teacher.shape[0]:
            raise ValueError(f"{self.name} level {lvl}: student {tuple(student.shape)} and teacher "
                             f"{tuple(teacher.shape)} differ")

    def adapted_levels(self, kd: KDBatch) -> Iterator[tuple[Tensor, Tensor]]:
        """Per level, ``(connector(student), teacher)``: both fp32, the teacher detached, sizes checked.

        For methods whose ``connectors`` (a ``ModuleList``, one per level) map the student into the teacher's channels
        and whose loss compares the two maps level by level.
        """
        for lvl, (conn, s, t) in enumerate(zip(self.connectors, kd.student_feats, kd.teacher_feats)):
            self.check_level(lvl, s, t)
            yield conn(s.float()), t.detach().float()

    def stack_levels(self, per_level: list[tuple[Tensor, ...]]) -> dict[str, Tensor]:
        """``{term: (N, L)}`` from one tuple of (N,) values per level, in ``term_names`` order."""
        return {k: torch.stack([values[i] for values in per_level], 1) for i, k in enumerate(self.term_names)}

    def plot(self, kd: KDBatch, stem: Path) -> list[Path]:
        """Draw what the method looks at for this batch into files named ``<stem>*``; return them.

        Called by the criterion (no grad, fp32) on the first batch of the first and last epoch when ``plots=True``, so
        the pictures lie next to Ultralytics' ``train_batch*.jpg``. Methods without anything to show keep this no-op.
        """
        return []

    def epoch_stats(self) -> dict[str, float]:
        """Values to add to results.csv once per epoch (e.g. AID's weight statistics), then start afresh.

        The trainer calls it when it writes the epoch's row; the keys must be the same every epoch (they are columns).
        """
        return {}


@dataclass(frozen=True)
class Reweighting:
    """What a modifier does to the terms of the methods it is combined with, for one batch.

    Attributes:
        image: Weights broadcastable to (N, L): (N, 1) per image, (N, L) per image and level, (1, L) per level. They
            multiply every term except, when ``objects`` is set, a method's ``object_terms``. None means 1.
        objects: (n,) per-object weights aligned with ``batch["bboxes"]``, handed to the methods as
            ``KDBatch.instance_weights``. None: no per-object weighting.
    """

    image: Tensor | None = None
    objects: Tensor | None = None


class KDModifier(nn.Module):
    """Base class of modifiers: combined with methods (``method=fgd+aid``), they add no term of their own but reweight
    the methods' terms (``Reweighting``). Hyperparameters come from ``cfg/methods/<name>.yaml`` like a method's.

    Attributes:
        base: The method a modifier given alone applies to (``method=aid`` means ``fkd+aid``); None: it needs one.
        stats_names: The results.csv columns its ``epoch_stats`` fills.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    revision: ClassVar[int] = 1  # as KDMethod.revision
    base: ClassVar[str | None] = None
    stats_names: ClassVar[tuple[str, ...]] = ()

    def weigh(self, kd: KDBatch) -> Reweighting:
        """The weights of this batch (detached constants)."""
        raise NotImplementedError

    def epoch_stats(self) -> dict[str, float]:
        """Like ``KDMethod.epoch_stats``."""
        return {}


def reduce_terms(
    terms: dict[str, Tensor], batch_size: int, image_weights: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Reduce per-image, per-level terms to the optimised loss vector and the logged items.

    Args:
        terms: ``{term: (N, L)}`` as returned by ``KDMethod.forward``.
        batch_size: N, for the logged per-image values.
        image_weights: Optional weights broadcastable to (N, L) (e.g. (N, 1) per image, or (N, L) per image and level).

    Returns:
        The loss vector (one entry per term, each the weighted sum over images and levels: the ``batch_size x``
        convention of Ultralytics) and the detached logged items ``{term}_loss`` (that sum / batch_size).
    """
    sums = []
    for t in terms.values():
        sums.append((t * image_weights).sum() if image_weights is not None else t.sum())
    loss = torch.stack(sums) if sums else torch.zeros(0)
    items = {f"{k}_loss": (s.detach() / batch_size) for k, s in zip(terms, sums)}
    return loss, items
