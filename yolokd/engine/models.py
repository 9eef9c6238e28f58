"""Resolving, loading and checking teacher and student models.

Everything here reads the models' own Detect heads, so any Ultralytics detection family (v8, 11, 26, and
cross-family pairs) is supported without per-architecture tables.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolokd.utils.offline import offline


class KDConfigError(ValueError):
    """Teacher, student and data do not fit together; raised before any training starts."""


def resolve_model(name: str | Path, role: str) -> str:
    """Turn a user's model argument into a local ``.pt`` path or a model ``.yaml`` name.

    Bare names get ``.pt`` (``yolov8x`` -> ``yolov8x.pt``), as Ultralytics does. A ``.pt`` that does not exist locally is
    an immediate error while offline (the default); with ``YOLO_OFFLINE=0`` Ultralytics downloads official weights.

    Args:
        name: Path, bare model name, or model YAML.
        role: ``teacher`` or ``student``, for the error message.
    """
    s = str(name)
    if not s:
        raise KDConfigError(f"{role}= is empty: pass a checkpoint (.pt) or a model YAML, e.g. {role}=yolov8n.yaml")
    p = Path(s).expanduser()
    if p.suffix in {".yaml", ".yml"}:
        return str(p) if p.exists() else s  # a bundled Ultralytics model YAML such as yolov8n.yaml
    if p.suffix == "":
        p = p.with_suffix(".pt")
    if p.suffix != ".pt":
        raise KDConfigError(f"{role}={s}: expected a .pt checkpoint or a model .yaml")
    if p.exists():
        return str(p.resolve())
    from ultralytics.utils import SETTINGS

    in_weights_dir = Path(SETTINGS.get("weights_dir", "weights")) / p.name
    if in_weights_dir.exists():
        return str(in_weights_dir.resolve())
    if offline():
        raise FileNotFoundError(
            f"{role} weights '{p}' not found (looked in the working directory and in {in_weights_dir.parent}). "
            f"yolokd runs offline and never downloads: pass a local file ({role}=/path/to/{p.name}), or a model YAML "
            f"to start from random weights ({role}={p.stem}.yaml), or set YOLO_OFFLINE=0 to let Ultralytics download "
            f"official weights on a machine with internet."
        )
    from ultralytics.utils.downloads import attempt_download_asset

    return str(attempt_download_asset(p.name))


def detect_head(model: nn.Module, what: str = "") -> nn.Module:
    """The model's Detect head (last layer); fails clearly for non-detection models (``what`` names the model)."""
    from ultralytics.nn.modules.head import Detect

    head = model.model[-1] if hasattr(model, "model") else None
    if not isinstance(head, Detect):
        raise KDConfigError(f"{what + ' is a ' if what else ''}{type(model).__name__}{',' if what else ''} which has no "
                            f"Detect head: yolokd distils and exports detection models only (a YOLO detection checkpoint such as "
                            f"yolov8n.pt, or the weights/best.pt of a `yolo detect train` run)")
    return head


def load_model_file(path: str | Path, role: str) -> nn.Module:
    """Load the model of a ``.pt`` file, turning unreadable, foreign and non-detection files into clear errors.

    ``torch.save`` writes zip archives whose directory is at the end, so a file cut short (an interrupted copy or
    download) is recognised before unpickling; anything that then fails to load holds no Ultralytics model.
    """
    from ultralytics.nn.tasks import load_checkpoint

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise KDConfigError(
            f"{role}={path} is not a readable PyTorch checkpoint ({path.stat().st_size:,} bytes, not a complete archive "
            f"as torch.save writes): the file is truncated or corrupted, e.g. an incomplete copy or download. Copy it "
            f"again, or re-export it from its training run (weights/best.pt)."
        )
    try:
        model = load_checkpoint(str(path))[0]
    except Exception as e:  # Ultralytics raises TypeError/KeyError/... for files that hold something else
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KDConfigError(
            f"{role}={path} holds no model Ultralytics can load ({reason}); pass an Ultralytics checkpoint (the "
            f"weights/best.pt of a `yolo train` run, or official weights such as yolov8n.pt), not a bare state_dict."
        ) from e
    detect_head(model, f"{role}={path}")
    return model


def head_channels(model: nn.Module) -> list[int]:
    """Widths of the tensors that feed Detect (P3, P4, P5 for standard heads), read from the head's first convs."""
    head = detect_head(model)
    return [int(branch[0].conv.in_channels) for branch in head.cv2]


def head_strides(model: nn.Module) -> list[int]:
    """Strides of the Detect levels."""
    return [int(s) for s in detect_head(model).stride.tolist()]


def is_end2end(model: nn.Module) -> bool:
    """True for heads with a one2one branch (YOLO26-style), which the teacher keeps unfused."""
    return getattr(detect_head(model), "one2one_cv2", None) is not None


def student_for_checks(src: str, data: dict[str, Any]) -> nn.Module:
    """The student as a model to check against the teacher and the data before training starts.

    Ultralytics builds its own copy later (``setup_model``); this one only makes a corrupt file, a non-detection model
    or a level mismatch fail before any run folder, teacher fine-tune or dataloader exists. It runs after Ultralytics
    seeded the run, so building it must not draw from torch's generator: the real student's initialisation (and with it
    the meaning of ``seed=``) stays what it is without yolokd's checks.
    """
    if str(src).endswith((".yaml", ".yml")):
        from ultralytics.nn.tasks import DetectionModel

        with torch.random.fork_rng(devices=[]):  # random init; the run's seeded stream must not move (see below)
            return DetectionModel(src, nc=data["nc"], ch=data.get("channels", 3), verbose=False)
    return load_model_file(src, "student")


def load_teacher(path: str, data: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """Load the teacher, freeze it and put it in eval mode.

    A ``.pt`` keeps its trained classes (checked against the data by ``check_compatible``); a ``.yaml`` builds a
    randomly initialised teacher for the data's classes (useful for tests and smoke runs only).
    """
    from ultralytics.nn.tasks import DetectionModel

    if str(path).endswith((".yaml", ".yml")):
        with torch.random.fork_rng(devices=[]):  # leave the run's seeded stream to the student (student_for_checks)
            teacher = DetectionModel(path, nc=data["nc"], ch=data.get("channels", 3), verbose=False)
        teacher.names = dict(data["names"])
    else:
        teacher = load_model_file(path, "teacher")
    teacher = teacher.float().to(device).eval()
    teacher.requires_grad_(False)
    if not is_end2end(teacher):  # fusing a YOLO26 head would drop the one2many branch the scores come from
        teacher = teacher.fuse(verbose=False)
    return teacher


def _names(names: Any) -> dict[int, str]:
    """Class names as {int: str}, whatever form a checkpoint or data YAML stores them in."""
    return {int(k): v for k, v in dict(names or {}).items()}


def classes_match(model: nn.Module, data: dict[str, Any]) -> bool:
    """Whether a detector was trained on exactly the dataset's classes (count, names and order)."""
    names, m_names = _names(data["names"]), _names(getattr(model, "names", None))
    return int(detect_head(model).nc) == len(names) and (not m_names or m_names == names)


def check_compatible(
    teacher: nn.Module, data: dict[str, Any], teacher_src: str, student: nn.Module | None = None
) -> None:
    """Teacher, student and data must agree on classes, input channels and strides; fail early and say how to fix it.

    The student always adopts the dataset's classes (Ultralytics builds its head for ``data``), so classes are checked
    between teacher and data; channels for both models; strides between teacher and student once the student exists.
    """
    names, t_names = _names(data["names"]), _names(getattr(teacher, "names", None))
    t_nc = int(detect_head(teacher).nc)
    if t_nc != len(names):
        raise KDConfigError(
            f"teacher has {t_nc} classes but the dataset has {len(names)} "
            f"(teacher: {_short(t_names)}; data: {_short(names)}). A teacher distils only the classes it was trained "
            f"on, so fine-tune it on this dataset first. Two-step recipe: (1) `yolo train model={teacher_src} "
            f"data=<your data.yaml>` and (2) `yolokd train teacher=runs/detect/train/weights/best.pt ...`; or in one "
            f"command add teacher_epochs=N (e.g. teacher_epochs=50): yolokd fine-tunes the teacher for N epochs, "
            f"caches it, reports its mAP, then distils."
        )
    if t_names and t_names != names:
        raise KDConfigError(
            f"teacher class names {_short(t_names)} differ from the dataset's {_short(names)}: same count, different "
            f"labels or order. Fine-tune the teacher on this dataset (teacher_epochs=N) or fix the data YAML's names."
        )
    ch_data = int(data.get("channels", 3))
    t_ch = int(teacher.yaml.get("channels", 3)) if hasattr(teacher, "yaml") else 3
    if t_ch != ch_data:
        raise KDConfigError(f"teacher takes {t_ch} input channels but the dataset has {ch_data}: use a teacher trained "
                            f"on {ch_data}-channel images, or set 'channels: {t_ch}' in the data YAML if the images "
                            f"really have {t_ch}")
    if student is None:
        return
    s_ch = int(student.yaml.get("channels", 3)) if hasattr(student, "yaml") else 3
    if s_ch != ch_data:
        raise KDConfigError(f"student takes {s_ch} input channels but the dataset has {ch_data}: start the student "
                            f"from a model YAML (student=yolov8n.yaml builds it for the data's channels) or a "
                            f"checkpoint trained on {ch_data}-channel images")
    ts, ss = head_strides(teacher), head_strides(student)
    if ts != ss:
        raise KDConfigError(
            f"teacher Detect strides {ts} differ from the student's {ss}: features are matched level by level at "
            f"the same stride, so choose a teacher and student with the same detection levels (e.g. both P3-P5)."
        )


def _short(names: dict[int, str], k: int = 4) -> str:
    """First few class names, for error messages."""
    items = [f"{i}:{n}" for i, n in list(names.items())[:k]]
    return "{" + ", ".join(items) + (", ..." if len(names) > k else "") + "}"
