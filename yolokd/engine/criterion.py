"""The KD criterion: the student's own detection loss plus the method's distillation terms.

It is installed as ``student.criterion`` once the trainer has built the EMA, so the student stays a plain Ultralytics
``DetectionModel``: the EMA, ``last.pt``/``best.pt`` and every exporter see no yolokd object. The features come from the
head outputs themselves (``preds["feats"]`` are the Detect inputs), so no forward hooks are attached to the student.
Gradient-guided methods get their detection-loss gradients, output-distillation methods the student's task-aligned
assignment, and AID the teacher's per-instance losses, from ``yolokd.engine.providers``, computed here once per batch
(so that the methods of a composed ``method=a+b`` share them).

Non-finite KD terms are caught here, where the loss vector is built, before the trainer sums it and back-propagates:
a step with a NaN/Inf term trains on the detection loss alone (``KDCriterion.dropped`` names the terms; the trainer
counts, logs and stops on persistent failure), so neither the student, nor the method, nor Ultralytics' logged losses
see the non-finite value, and Ultralytics' NaN recovery (a reload of ``last.pt``) is not triggered by it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from yolokd.engine.providers import (AssignmentRecorder, TeacherProbe, box_criterion, student_assignment,
                                     student_grads, teacher_detection_loss, teacher_instance_losses)
from yolokd.methods.base import GradOptions, KDBatch, KDMethod, reduce_terms


def head_feats(raw: dict[str, Any]) -> list[Tensor]:
    """Detect inputs (P3, P4, P5) from a raw head output; end-to-end heads keep them under ``one2many``."""
    return list(raw["one2many"]["feats"] if "one2many" in raw else raw["feats"])


def skip_head(model: nn.Module) -> None:
    """Make ``model`` return ``{"feats": [P3, P4, P5]}`` without running its Detect head (or decoding boxes).

    Feature-only methods (``mimic``, FGD, ...) read only the neck outputs, so the teacher's head and its box decoding are
    wasted work on every iteration. Applied to the trainer's private, frozen teacher copy only, never to a saved model.
    """
    from yolokd.engine.models import detect_head

    head = detect_head(model)
    head.forward = lambda x: {"feats": list(x)}  # instance attribute: shadows Detect.forward for this copy only


def grad_norm(loss: Tensor, params: list[Tensor]) -> float:
    """||d loss / d params||, the graph kept for the training backward that follows; 0 when ``loss`` does not depend
    on ``params`` (e.g. dropped KD terms)."""
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))


def grad_norm_ratio(num: Tensor, den: Tensor, params: list[Tensor]) -> float:
    """||d num / d params|| / ||d den / d params|| (``grad_norm``); NaN when ``den``'s gradient is zero."""
    d = grad_norm(den, params)
    return grad_norm(num, params) / d if d > 0 else float("nan")


class NonFiniteKDError(RuntimeError):
    """The method's distillation terms stayed NaN/Inf for too many consecutive training steps."""


class KDCriterion:
    """Callable like an Ultralytics criterion: ``(preds, batch) -> (loss vector, loss items)``.

    Attributes:
        det: The student's detection criterion (``v8DetectionLoss`` or the end-to-end variant).
        teacher: The frozen teacher (eval mode, no gradients); never a submodule of the student.
        method: The distillation method; its parameters are optimised by the trainer.
        probe: Runs the teacher with gradient taps when the method needs ``teacher_grads``, else None.
        teacher_loss: The teacher's ``v8DetectionLoss`` (student's gains) when the method needs
            ``teacher_instance_losses``, else None.
        plot_to: When set, the method draws its pictures of the next training batch to files named ``<plot_to>*``
            (one-shot; the trainer sets it at the start of the first and last epoch when ``plots=True``).
        dropped: After each training call, the names of the KD terms that were NaN/Inf (their step's KD loss was
            replaced by zeros); empty when all were finite.
        active: False in the epochs ``close_kd`` trains without distillation: the KD terms are zeros, the teacher
            is not run.
        grad_params: When set, the next training call also measures ``grad_ratio`` with respect to these parameters
            (one-shot; the trainer sets the student's at the start of each epoch).
        grad_ratio: The last measurement: ||d KD / d theta|| / ||d det / d theta|| over ``grad_params``, the share of
            the student's update the distillation drives (NaN until measured). The loss ratio cannot tell this: an
            L2-norm term (FKD) has a gradient of about its weight whatever its value, and a term may be large but
            flat in the student's parameters.
    """

    def __init__(self, det: Any, teacher: nn.Module | None, method: KDMethod) -> None:
        """Wrap the student's detection criterion; skip the teacher's head when the method never reads it."""
        self.det = det
        self.teacher = teacher
        self.method = method
        self.term_names = tuple(method.term_names)
        self.plot_to: Path | None = None
        self.dropped: tuple[str, ...] = ()
        self.active = True
        self.grad_params: list[Tensor] | None = None
        self.grad_ratio = float("nan")
        needs = method.needs
        self.probe = None
        self.teacher_loss = None
        if teacher is not None and method.uses_teacher:
            hyp = box_criterion(det).hyp  # the student's gains
            if "teacher_grads" in needs:
                self.probe = TeacherProbe(teacher, hyp)
            elif not needs & {"teacher_preds", "teacher_instance_losses"}:
                skip_head(teacher)
            if "teacher_instance_losses" in needs:
                self.teacher_loss = self.probe.loss if self.probe else teacher_detection_loss(teacher, hyp)

    def __deepcopy__(self, memo: dict) -> None:
        """EMA copies of the student get no criterion (they build a plain one): they must never carry the teacher."""
        return None

    def __reduce__(self):
        """Pickling a training student drops the criterion too (``None``), so no file can reference yolokd."""
        return type(None), ()

    def __getattr__(self, name: str) -> Any:
        """Delegate everything else (``update``, ``hyp``, ``assigner``, ...) to the detection criterion."""
        if name.startswith("__") or name == "det":
            raise AttributeError(name)
        return getattr(self.det, name)

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Detection loss, plus the KD terms when the student is training (raw dict outputs, grad enabled)."""
        recorder = AssignmentRecorder(self.det) if "student_assignment" in self.method.needs else nullcontext()
        with recorder:  # the assignment of the student's own loss, kept for a method that needs it
            det_loss, items = self.det(preds, batch)
        if isinstance(preds, tuple) or not torch.is_grad_enabled() or not self.active:  # validation, close_kd: zeros
            zeros = det_loss.new_zeros(len(self.term_names))
            return torch.cat([det_loss, zeros]), {**items, **{f"{k}_loss": z for k, z in zip(self.term_names, zeros)}}
        buffers = [b.detach().clone() for b in self.method.buffers()]  # BN statistics a non-finite forward may spoil
        kd_loss, kd_items = self.kd_terms(preds, batch, det_loss, getattr(recorder, "outputs", None))
        kd_loss, kd_items = self.drop_nonfinite(kd_loss, kd_items, buffers)
        if self.grad_params is not None:
            params, self.grad_params = self.grad_params, None
            self.grad_ratio = grad_norm_ratio(kd_loss.sum(), det_loss.sum(), params)
        return torch.cat([det_loss, kd_loss.to(det_loss.dtype)]), {**items, **kd_items}

    def drop_nonfinite(
        self, kd_loss: Tensor, kd_items: dict[str, Tensor], buffers: list[Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Replace the whole KD loss of a step with a NaN/Inf term by zeros *cut from the graph*; record the terms.

        Detached zeros, not ``torch.where(finite, kd, 0)``: the backward of ``where`` sends 0 into the NaN branch and
        ``0 * NaN`` is NaN again upstream, so only cutting the graph keeps the student and the method's gradients
        clean. All terms are dropped, not only the bad one: they share the method's modules, whose state produced it.
        The method's buffers (e.g. FKD's BatchNorm statistics) are put back to ``buffers``, taken before its forward.
        One host sync per step (the ``if``), like Ultralytics' per-step progress bar.
        """
        finite = torch.isfinite(kd_loss.detach())
        if bool(finite.all()):
            self.dropped = ()
            return kd_loss, kd_items
        self.dropped = tuple(t for t, ok in zip(self.term_names, finite.tolist()) if not ok)
        if buffers is not None:
            with torch.no_grad():
                for b, saved in zip(self.method.buffers(), buffers):
                    b.copy_(saved)
        zeros = kd_loss.detach().new_zeros(kd_loss.shape)
        return zeros, {k: torch.zeros_like(v) for k, v in kd_items.items()}

    def kd_terms(
        self, preds: dict[str, Any], batch: dict[str, Any], det_loss: Tensor | None = None,
        assigned: list[tuple[Tensor, ...]] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the teacher on the same augmented images and reduce the method's terms, all in fp32.

        ``det_loss`` is the student's detection loss on ``batch`` when the caller has it (the student gradients are
        taken from it), and ``assigned`` what its assigner returned (``AssignmentRecorder.outputs``); each is
        recomputed if a method needs it and it is not given.
        """
        img = batch["img"]
        if not self.term_names:
            return img.new_zeros(0), {}
        needs = self.method.needs
        options = self.method.grad_options or GradOptions()
        s_feats = head_feats(preds)
        s_grads = student_grads(self.det, preds, batch, det_loss, options) if "student_grads" in needs else None
        s_assign = student_assignment(self.det, preds, batch, assigned) if "student_assignment" in needs else None
        t_raw, t_grads = None, None
        t_feats: list[Tensor] = []
        if self.probe is not None:
            t_raw, t_feats, t_grads = self.probe(img, batch, options)
        elif self.method.uses_teacher:
            with torch.no_grad():
                t_out = self.teacher(img)
            t_raw = t_out[1] if isinstance(t_out, tuple) else t_out
            t_feats = [f.detach().float() for f in head_feats(t_raw)]
        t_losses = None if self.teacher_loss is None else teacher_instance_losses(self.teacher_loss, t_raw, batch)
        # fp32 even under AMP: the sums over N*C*H*W elements overflow fp16 (methods.md §6.8)
        with torch.autocast(device_type=img.device.type, enabled=False):
            kd = KDBatch(
                student_feats=[f.float() for f in s_feats],
                teacher_feats=t_feats,
                batch=batch,
                teacher_preds=t_raw if "teacher_preds" in needs else None,
                student_preds=preds if "student_preds" in needs else None,
                teacher_grads=t_grads,
                student_grads=s_grads,
                student_assignment=s_assign,
                teacher_losses=t_losses,
            )
            terms = self.method(kd)
            if tuple(terms) != self.term_names:
                raise RuntimeError(f"method '{self.method.name}' returned terms {tuple(terms)}, "
                                   f"declared {self.term_names}")
            if self.plot_to is not None:
                stem, self.plot_to = self.plot_to, None
                with torch.no_grad():
                    self.method.plot(kd, stem)
            return reduce_terms(terms, kd.batch_size)
