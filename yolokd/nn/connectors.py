"""Connectors: per-level modules that map student neck features into the teacher's channel space.

They are separate from the losses (as in mmrazor) so that a method only names the connector it wants; the factory
below builds one per neck level. Connectors are trained with the student and never saved into the student checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def _conv1x1(cs: int, ct: int) -> nn.Module:
    """FitNet / FGD regressor: a single 1x1 convolution (identity when the widths already match, as in FGD)."""
    return nn.Identity() if cs == ct else nn.Conv2d(cs, ct, kernel_size=1)


def _conv1x1_always(cs: int, ct: int) -> nn.Module:
    """A 1x1 convolution even when widths match: FitNet's trainable hint regressor."""
    return nn.Conv2d(cs, ct, kernel_size=1)


def _mlp(cs: int, ct: int) -> nn.Module:
    """Ultralytics' built-in projector (``ultralytics/nn/distill_model.py``): 1x1 conv, ReLU, 1x1 conv."""
    return nn.Sequential(nn.Conv2d(cs, ct, 1), nn.ReLU(inplace=True), nn.Conv2d(ct, ct, 1))


CONNECTORS: dict[str, Callable[[int, int], nn.Module]] = {
    "identity": lambda cs, ct: nn.Identity(),
    "conv1x1": _conv1x1,
    "conv1x1_always": _conv1x1_always,
    "mlp": _mlp,
}


def build_connectors(kind: str, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """Build one connector per neck level.

    Args:
        kind: A key of ``CONNECTORS``.
        student_channels: Channels of the student's Detect inputs, P3 first.
        teacher_channels: Channels of the teacher's Detect inputs, same order.

    Returns:
        A ``ModuleList`` with one module per level.
    """
    if kind not in CONNECTORS:
        raise ValueError(f"unknown connector '{kind}', choose one of {sorted(CONNECTORS)}")
    if kind == "identity" and list(student_channels) != list(teacher_channels):
        raise ValueError(f"connector 'identity' needs equal widths, got student {student_channels} teacher {teacher_channels}")
    return nn.ModuleList(CONNECTORS[kind](cs, ct) for cs, ct in zip(student_channels, teacher_channels))
