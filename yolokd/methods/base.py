"""The method plug-in interface: what a distillation method receives, and what it must return.

A method returns *terms*, not a finished scalar: each term is a tensor of shape (N, L), the contribution of image n at
neck level l, already multiplied by its coefficient. The caller (``reduce_terms``) sums them. This is what lets a
wrapper method such as AID reweight another method per image, per level or per object (``KDBatch.instance_weights``)
without knowing its internals.

Scale convention (``../shared/docs/methods.md`` §6.2): Ultralytics optimises ``batch_size x`` the per-image detection
loss and logs the per-image value. The KD terms follow it: the optimised KD loss is the *sum* over images of the per-image
terms, and the logged value is that sum divided by the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

#: Inputs a method may declare in ``KDMethod.needs``, beyond the neck features and the batch it always gets.
SUPPORTED_NEEDS = frozenset({"teacher_preds", "student_preds"})


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
        instance_weights: Per-object weights (n,), aligned with ``batch['bboxes']``, set by a wrapper method; methods
            with per-object terms multiply each object's region by its weight. None means 1.
    """

    student_feats: list[Tensor]
    teacher_feats: list[Tensor]
    batch: dict[str, Any]
    teacher_preds: dict[str, Any] | None = None
    student_preds: dict[str, Any] | None = None
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
    #: False for methods that never look at the teacher (``none``): the trainer then skips the teacher forward.
    uses_teacher: ClassVar[bool] = True

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
