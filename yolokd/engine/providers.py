"""Providers: what a method needs beyond the features, computed once per batch by the criterion (methods.md §2.4, §6.6).

**Student assignment** (``student_assignment`` need; output distillation, ``ld``): the task-aligned assignment the
student's own detection loss uses, so that a head-output KD term covers exactly the anchors, with exactly the weights,
of Ultralytics' box / DFL losses. ``AssignmentRecorder`` puts a forward hook on the ``TaskAlignedAssigner`` of the
student's (one-to-many) ``v8DetectionLoss`` while the criterion computes the detection loss, and keeps what it returns:
no second assigner run, and the assignment is the loss's own by construction. Ultralytics 8.4.190's public
``get_assigned_targets_and_loss`` returns ``fg_mask``, ``target_gt_idx`` and ``target_bboxes`` but not the
``target_scores`` the weights come from; the hook sees all of them. When no assignment was recorded (a caller computing
the KD terms without the detection loss), ``student_assignment`` runs ``get_assigned_targets_and_loss`` itself under the
recorder, on detached outputs: one more assigner run plus the (discarded) loss arithmetic, no graph.

**Gradients**: dL_det/dF at the Detect inputs of teacher and student.

Gradient-guided methods (GKD) weight features by the gradient of a detection loss with respect to them. The criterion
computes these gradients, not the method, so that a wrapper composing methods (AID around GKD) shares one teacher
backward, and hands them over in ``KDBatch.teacher_grads`` / ``KDBatch.student_grads``.

- **Teacher** (``TeacherProbe``): the frozen teacher (``requires_grad`` False, eval mode) runs forward with grad
  enabled. Forward hooks on the layers that feed Detect replace the first one's output (P3 in v8/11) by
  ``out.detach().requires_grad_()``: nothing before it builds a graph (the parameters are frozen), so the graph covers
  only the rest of the neck (the PAN path P3 -> P4 -> P5) and the head. ``torch.autograd.grad`` of the teacher's own
  detection loss with respect to P3/P4/P5 then gives the total derivatives, what a Grad-CAM hook on each tensor sees,
  without a backward through the backbone and without touching any parameter's ``.grad``. ``path="direct"``
  detaches all three taps: head-only gradients, cheaper. The hooks are removed after every call, BN statistics are
  untouched (eval mode), and the teacher object is otherwise left as it was. The loss is Ultralytics'
  ``v8DetectionLoss`` built for the teacher with the *student's* box/cls/dfl gains (methods.md §6.4 step 1), on the
  one-to-many branch for end-to-end heads.
- **Student** (``feature_grads``): ``autograd.grad(L_det^S, student feats, retain_graph=True)`` on the loss the trainer
  is about to back-propagate, before that backward; it leaves the graph and every ``.grad`` as they were.
- **AMP** (methods.md §6.8): under fp16 autocast, small gradients underflow in the fp16 backward. The loss is
  multiplied by ``GRAD_SCALE`` (a power of two, exact) before ``autograd.grad`` and the fp32 gradients divided by it
  again, so the gradients handed over are true values in fp32.
- **Targets**: the batch labels (``target="gt"``) or the model's own detections (``target="pred"``: confidence >
  ``pred_conf``, class-aware NMS at IoU ``PRED_IOU``, at most ``pred_topk`` per image), as the released GKD code does.

Cost per batch: the teacher forward (already needed for feature KD) plus one backward through its neck tail and head,
and one partial backward of the student loss through the student's head and neck tail (methods.md §6.6).

**Teacher per-instance losses** (``teacher_instance_losses`` need; AID, methods.md §3, §6.4): the teacher's own
detection loss on the same augmented batch, per anchor and term, from the teacher's raw head outputs (the criterion
runs the head for this need) and the teacher's *own* task-aligned assignment, never the student's features (the
released AID code runs the teacher's head on the student's features, methods.md §3.2: not copied). The loss is
Ultralytics' ``v8DetectionLoss`` built for the teacher with the student's gains (``teacher_detection_loss``); its
``get_assigned_targets_and_loss`` runs the teacher's TaskAlignedAssigner, recorded by ``AssignmentRecorder`` for the
target scores. ``v8DetectionLoss`` and ``BboxLoss`` reduce to batch scalars, and AID needs sums per image, per image and
level, per GT box and per level, so the per-anchor values (the ``reduction="none"`` form of the loss) are computed
here from Ultralytics' own pieces on that assignment: the loss's BCE module, ``bbox_decode``, ``bbox_iou`` (CIoU),
``bbox2dist`` and its ``DFLoss``. Summed per image they equal ``v8DetectionLoss`` run on that image alone
(``tests/test_aid.py``). Cost: one more assigner run (its (N, max boxes, A) tensors, like the student's) and the loss
arithmetic, under ``no_grad``, on the teacher outputs the forward already produced.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from yolokd.methods.base import Assignment, GradOptions, InstanceLosses, one2many

#: Constant the loss is multiplied by before ``autograd.grad`` (and the gradients divided by after, in fp32), so that
#: fp16 backward passes under AMP do not flush small gradients to zero. 2^10 keeps typical detection-loss gradients
#: (1e-9..1e-2 per element) well inside fp16's range (6e-8..65504); a power of two makes the rescaling exact.
GRAD_SCALE = 2.0**10

#: IoU of the NMS that turns a model's outputs into ``target="pred"`` labels: Ultralytics' predict/val default.
PRED_IOU = 0.7


def feature_grads(loss: Tensor, feats: list[Tensor], retain_graph: bool) -> list[Tensor]:
    """dloss/dfeat for each tensor of ``feats``, fp32 and detached; zeros where a tensor does not reach the loss.

    Args:
        loss: A scalar in the graph of ``feats``.
        feats: Tensors of that graph (leaves or not).
        retain_graph: Keep the graph for a later backward (True for the student, whose training backward follows).
    """
    if not loss.requires_grad:
        return [torch.zeros_like(f, dtype=torch.float32) for f in feats]
    grads = torch.autograd.grad(loss * GRAD_SCALE, feats, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(f, dtype=torch.float32) if g is None else g.detach().float() / GRAD_SCALE
            for f, g in zip(feats, grads)]


def box_criterion(det: Any) -> Any:
    """The ``v8DetectionLoss`` inside a detection criterion (``E2ELoss`` holds one per branch)."""
    return getattr(det, "one2many", det)


class AssignmentRecorder:
    """Keeps what the student's task-aligned assigner returns while the ``with`` block runs.

    A forward hook on the assigner of ``box_criterion(det)`` (the one-to-many loss of end-to-end heads, whose assigner
    uses top-10 like v8's), removed on exit. The assigner's own arithmetic is untouched; the hook only holds references
    to its outputs, which the loss computes anyway.

    Attributes:
        outputs: The assigner's return values, one tuple per call (target_labels, target_bboxes, target_scores,
            fg_mask, target_gt_idx).
    """

    def __init__(self, det: Any) -> None:
        """Prepare to record the assigner of ``det`` (``v8DetectionLoss`` or ``E2ELoss``)."""
        self.assigner = box_criterion(det).assigner
        self.outputs: list[tuple[Tensor, ...]] = []
        self._handle = None

    def __enter__(self) -> AssignmentRecorder:
        """Start recording."""
        self._handle = self.assigner.register_forward_hook(lambda module, args, out: self.outputs.append(out))
        return self

    def __exit__(self, *exc: Any) -> None:
        """Stop recording (the hook is removed even when the loss raised)."""
        self._handle.remove()


def student_assignment(det: Any, preds: dict[str, Any], batch: dict[str, Any],
                       recorded: list[tuple[Tensor, ...]] | None = None) -> Assignment:
    """The task-aligned assignment of the student's detection loss on ``batch``.

    Args:
        det: The student's detection criterion (``v8DetectionLoss`` or ``E2ELoss``).
        preds: The student's raw training outputs.
        batch: The training batch.
        recorded: ``AssignmentRecorder.outputs`` of the detection loss just computed on ``batch``; when it holds
            exactly one call that one is used, else the assignment is computed here (one more assigner run).

    Returns:
        The assignment, detached, target scores and boxes in fp32.
    """
    if not recorded or len(recorded) != 1:
        raw = one2many(preds)
        detached = {"boxes": raw["boxes"].detach(), "scores": raw["scores"].detach(), "feats": raw["feats"]}
        with torch.no_grad(), AssignmentRecorder(det) as rec:
            box_criterion(det).get_assigned_targets_and_loss(detached, batch)
        recorded = rec.outputs
    _, target_bboxes, target_scores, fg_mask, target_gt_idx = recorded[0]
    return Assignment(fg_mask=fg_mask.bool(), target_scores=target_scores.detach().float(),
                      target_bboxes=target_bboxes.detach().float(), target_gt_idx=target_gt_idx.long())


def pseudo_targets(raw: dict[str, Any], det: Any, img_hw: tuple[int, int], conf: float, topk: int) -> dict[str, Tensor]:
    """A model's own detections as a batch of labels, in the layout of Ultralytics' training batch.

    Args:
        raw: Raw one-to-many head output ``{"boxes", "scores", "feats"}``.
        det: The model's ``v8DetectionLoss`` (its strides and DFL decoding are the model's own).
        img_hw: Size of the batch image tensor.
        conf: Confidence threshold.
        topk: Detections kept per image.

    Returns:
        ``{"batch_idx": (n,), "cls": (n, 1), "bboxes": (n, 4)}`` with normalised xywh boxes clipped to the image.
    """
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import xyxy2xywh
    from ultralytics.utils.tal import make_anchors

    anchors, strides = make_anchors(raw["feats"], det.stride, 0.5)
    dist = raw["boxes"].detach().float().permute(0, 2, 1)
    xyxy = det.bbox_decode(anchors.float(), dist) * strides.float()  # (N, A, 4) pixels
    scores = raw["scores"].detach().float().sigmoid().permute(0, 2, 1)
    dets = non_max_suppression(torch.cat([xyxy2xywh(xyxy), scores], -1).permute(0, 2, 1), conf_thres=conf,
                               iou_thres=PRED_IOU, max_det=topk)
    h, w = img_hw
    device = dist.device
    size = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
    boxes = torch.cat([d[:, :4] for d in dets]).view(-1, 4)
    boxes = torch.minimum(boxes.clamp(min=0), size)
    return {
        "batch_idx": torch.cat([torch.full((len(d),), float(i), device=device) for i, d in enumerate(dets)]),
        "cls": torch.cat([d[:, 5:6] for d in dets]).view(-1, 1),
        "bboxes": xyxy2xywh(boxes) / size,
    }


def student_grads(det: Any, preds: dict[str, Any], batch: dict[str, Any], det_loss: Tensor | None,
                  options: GradOptions) -> list[Tensor]:
    """dL_S/dF^S at the student's Detect inputs, before the training backward (its graph is kept).

    Args:
        det: The student's detection criterion (``v8DetectionLoss`` or ``E2ELoss``).
        preds: The student's raw training outputs.
        batch: The training batch.
        det_loss: The detection loss vector already computed on ``batch`` (recomputed when None).
        options: ``target="pred"`` replaces the labels by the student's own detections.
    """
    if options.target == "pred":
        labels = pseudo_targets(one2many(preds), box_criterion(det), tuple(batch["img"].shape[-2:]),
                                options.pred_conf, options.pred_topk)
        det_loss = det(preds, labels)[0]
    elif det_loss is None:
        det_loss = det(preds, batch)[0]
    return feature_grads(det_loss.sum(), list(one2many(preds)["feats"]), retain_graph=True)


def _detached(x: Any) -> Any:
    """A copy of a nested dict/list/tuple of tensors with every tensor detached."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_detached(v) for v in x)
    return x


def teacher_detection_loss(teacher: nn.Module, hyp: Any) -> Any:
    """Ultralytics' ``v8DetectionLoss`` of the teacher with the student's hyperparameters ``hyp`` (box/cls/dfl gains).

    ``v8DetectionLoss`` reads ``args`` from the model it is given; a view of the teacher carrying ``hyp`` is passed
    instead of setting ``teacher.args``, so the teacher object is not changed (its checkpoint ``args`` may be a plain
    dict, methods.md §6.4). For end-to-end heads it is the loss of the one-to-many branch (v8's, TAL top-10).
    """
    from ultralytics.utils.loss import v8DetectionLoss

    view = SimpleNamespace(args=hyp, model=teacher.model, parameters=teacher.parameters,
                           class_weights=getattr(teacher, "class_weights", None))
    return v8DetectionLoss(view)


def teacher_instance_losses(loss: Any, raw: dict[str, Any], batch: dict[str, Any]) -> InstanceLosses:
    """The teacher's own detection loss on ``batch``, per anchor and term (see the module docstring).

    Args:
        loss: The teacher's ``v8DetectionLoss`` (``teacher_detection_loss``).
        raw: The teacher's raw head output on the batch images (the one-to-many branch is taken).
        batch: The training batch (labels).

    Returns:
        ``InstanceLosses``: fp32, detached, non-finite values replaced (NaN by 0, +-inf by the largest float).
    """
    from ultralytics.utils.metrics import bbox_iou
    from ultralytics.utils.tal import bbox2dist

    raw = one2many(raw)
    preds = {"boxes": raw["boxes"].detach().float(), "scores": raw["scores"].detach().float(), "feats": raw["feats"]}
    with torch.no_grad(), torch.autocast(device_type=preds["boxes"].device.type, enabled=False):
        with AssignmentRecorder(loss) as rec:
            (fg, _, target_bboxes, anchors, strides), _, _ = loss.get_assigned_targets_and_loss(preds, batch)
        _, _, target_scores, _, target_gt_idx = rec.outputs[-1]
        hyp = loss.hyp
        pred_dist = preds["boxes"].permute(0, 2, 1)
        cls = loss.bce(preds["scores"].permute(0, 2, 1), target_scores)
        if loss.class_weights is not None:
            cls = cls * loss.class_weights
        weights = target_scores.sum(-1) * fg
        boxes = target_bboxes / strides  # grid units, as the loss compares them
        pos = fg.nonzero(as_tuple=True)
        box = torch.zeros_like(weights)
        dfl = torch.zeros_like(weights)
        if pos[0].numel():
            pred = loss.bbox_decode(anchors, pred_dist)
            iou = bbox_iou(pred[pos], boxes[pos], xywh=False, CIoU=True).squeeze(-1)
            box[pos] = (1.0 - iou) * weights[pos]
            if loss.use_dfl:
                sides = bbox2dist(anchors, boxes, loss.reg_max - 1)[pos]
                dfl[pos] = loss.bbox_loss.dfl_loss(pred_dist[pos].reshape(-1, loss.reg_max), sides).squeeze(-1)
            else:  # reg_max == 1: Ultralytics' L1 of the sides, each scaled by stride / image width or height
                img_hw = torch.tensor(preds["feats"][0].shape[2:], device=box.device) * loss.stride[0]
                scale = strides[pos[1]] / img_hw[[1, 0, 1, 0]].float()
                dfl[pos] = ((pred_dist[pos] - bbox2dist(anchors, boxes)[pos]) * scale).abs().mean(-1)
            dfl[pos] *= weights[pos]
        return InstanceLosses(
            box=torch.nan_to_num(box * hyp.box), cls=torch.nan_to_num(cls.sum(-1) * hyp.cls),
            dfl=torch.nan_to_num(dfl * hyp.dfl), anchor_weights=torch.nan_to_num(weights), fg_mask=fg.bool(),
            target_gt_idx=target_gt_idx.long(), level_sizes=[f.shape[-2] * f.shape[-1] for f in preds["feats"]],
        )


class TeacherProbe:
    """Runs the frozen teacher and returns its Detect inputs, raw outputs and detection-loss gradients at those inputs.

    Attributes:
        teacher: The frozen teacher (eval mode, parameters without grad); never modified.
        loss: Ultralytics' ``v8DetectionLoss`` of the teacher with the student's gains (``teacher_detection_loss``).
        taps: The layers whose outputs feed the teacher's Detect head, in Detect's input order.
    """

    def __init__(self, teacher: nn.Module, hyp: Any) -> None:
        """Build the teacher's loss with the student's hyperparameters ``hyp`` (box/cls/dfl gains)."""
        from yolokd.engine.models import detect_head

        self.teacher = teacher
        self.loss = teacher_detection_loss(teacher, hyp)
        self.taps = [teacher.model[i] for i in detect_head(teacher).f]

    def __call__(self, img: Tensor, batch: dict[str, Any], options: GradOptions
                 ) -> tuple[dict[str, Any], list[Tensor], list[Tensor]]:
        """Teacher forward on ``img`` and the gradients of its detection loss at its Detect inputs.

        Returns:
            ``(raw, feats, grads)``: the raw head output (detached), the Detect inputs (fp32, detached) and dL_T/dF
            for each (fp32, detached, true scale), all in Detect's input order.
        """
        outs: dict[int, Tensor] = {}

        def tap(k: int, module: nn.Module, inputs: Any, out: Tensor) -> Tensor:
            # The first tap to run always becomes a leaf: the backward stops there, never reaching the backbone. A
            # later one stays in the graph when it derives from an earlier tap (total derivative), else becomes a leaf.
            if options.path == "direct" or not outs or not out.requires_grad:
                out = out.detach().requires_grad_()
            outs[k] = out
            return out

        handles = [m.register_forward_hook(lambda mod, i, o, k=k: tap(k, mod, i, o)) for k, m in enumerate(self.taps)]
        try:
            with torch.enable_grad():
                out = self.teacher(img)
                raw = one2many(out[1] if isinstance(out, tuple) else out)
                feats = [outs[k] for k in range(len(self.taps))]
                labels = batch
                if options.target == "pred":
                    labels = pseudo_targets(raw, self.loss, tuple(img.shape[-2:]), options.pred_conf,
                                            options.pred_topk)
                loss = self.loss(raw, labels)[0].sum()
                grads = feature_grads(loss, feats, retain_graph=False)
        finally:
            for h in handles:
                h.remove()
        full = out[1] if isinstance(out, tuple) else out
        return _detached(full), [f.detach().float() for f in feats], grads
