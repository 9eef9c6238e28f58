"""``none``: the plain student, trained by the same pipeline with no distillation term (the reference row)."""

from __future__ import annotations

from torch import Tensor

from yolokd.methods.base import KDBatch, KDMethod


class NoKD(KDMethod):
    """Plain student: no KD term, and the teacher is never run (its cost is not charged to this row)."""

    name = "none"
    term_names = ()
    uses_teacher = False

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return no terms."""
        return {}
