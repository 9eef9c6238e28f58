"""The distillation settings of a run (teacher, method, hyperparameters) and how they travel.

They are kept out of Ultralytics' ``args`` namespace on purpose: Ultralytics validates every key of ``args`` against its
``default.yaml`` (``check_dict_alignment``) when it resumes and drops unknown ones when it strips checkpoints. They
travel instead (1) in ``ckpt["yolokd"]`` of every checkpoint, as plain values that plain Ultralytics ignores, and (2)
through the multi-GPU relaunch, which rebuilds the trainer from ``vars(args)``: ``KDTrainer.train`` adds them to
``args`` just for that, and ``KDTrainer.__init__`` pops them again.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

from yolokd.methods import canonical_name, get_method, is_hyperparameter, method_defaults, resolve_hparams

#: yolokd's own keys, accepted next to every Ultralytics train argument and the method's hyperparameters.
KD_KEYS = ("teacher", "student", "method", "teacher_epochs", "close_kd")
#: The best method as measured across the reported protocols (docs/benchmarks.md, "Which method to use"; the rule is
#: tests/test_bench.py::test_the_default_method_is_the_best_measured_one_across_the_reported_protocols).
DEFAULT_METHOD = "ld"
DEFAULT_STUDENT = "yolov8n.yaml"


@dataclass
class KDSpec:
    """What to distil from: teacher source, method name (canonical: ``aid`` is stored as ``fkd+aid``) and its resolved
    hyperparameters (plain names for a single method, ``<part>.<name>`` for a composed one)."""

    teacher: str | None = None
    method: str = DEFAULT_METHOD
    hparams: dict[str, Any] = field(default_factory=dict)
    teacher_epochs: int = 0
    close_kd: int = 0  # train the final N epochs on the detection loss alone (early-stopped KD); 0: distil throughout

    def as_overrides(self) -> dict[str, Any]:
        """Flat ``key=value`` form, as a user would type it (used for the multi-GPU relaunch)."""
        return {"teacher": self.teacher, "method": self.method, "teacher_epochs": 0, "close_kd": self.close_kd,
                **self.hparams}

    def to_dict(self) -> dict[str, Any]:
        """Plain-value form stored in checkpoints."""
        return asdict(self)


def split_overrides(overrides: dict[str, Any]) -> KDSpec:
    """Pop yolokd's keys and the method's hyperparameters out of ``overrides`` (in place) and validate the rest.

    ``student=`` becomes Ultralytics' ``model=``. Any key that is neither an Ultralytics train argument, nor a yolokd
    key, nor a hyperparameter of the chosen method (in any spelling ``yolokd.methods.compose`` accepts, e.g.
    ``aid.alpha``) fails here, with the closest valid key as a suggestion.
    """
    from ultralytics.utils import DEFAULT_CFG_KEYS

    method = canonical_name(str(overrides.pop("method", None) or DEFAULT_METHOD).strip())
    get_method(method)
    hp_keys = set(method_defaults(method))
    student = overrides.pop("student", None)
    if student is not None:
        if overrides.get("model") not in (None, student):
            raise ValueError(f"student={student} and model={overrides['model']} disagree: pass only student=")
        overrides["model"] = student
    spec = KDSpec(
        teacher=overrides.pop("teacher", None),
        method=method,
        teacher_epochs=int(overrides.pop("teacher_epochs", 0) or 0),
        close_kd=_close_kd(overrides.pop("close_kd", 0)),
    )
    hparams = {k: overrides.pop(k) for k in list(overrides) if is_hyperparameter(method, k)}
    spec.hparams = resolve_hparams(method, hparams)
    valid = set(DEFAULT_CFG_KEYS) | set(KD_KEYS) | hp_keys | {"augmentations", "save_dir"}
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, sorted(valid), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        other = [m for m in _methods_with_key(k) if m != method]
        if other:
            hint += f" ('{k}' is a hyperparameter of method {', '.join(other)}, not of '{method}'.)"
        raise ValueError(
            f"unknown argument '{k}'.{hint} Valid keys: Ultralytics train arguments (`yolo cfg`), "
            f"{', '.join(KD_KEYS)}, and the hyperparameters of method '{method}' (`yolokd methods`)."
        )
    return spec


def _close_kd(value: Any) -> int:
    """``close_kd=N``: a whole number of final epochs >= 0 (like Ultralytics' ``close_mosaic``)."""
    try:
        n = float(value if value is not None else 0)
    except (TypeError, ValueError):
        n = -1.0
    if n < 0 or n != int(n):
        raise ValueError(f"close_kd={value!r}: expected a whole number of final epochs >= 0 to train without "
                         f"distillation (e.g. close_kd=4 of epochs=16; 0, the default, distils in every epoch)")
    return int(n)


def _methods_with_key(key: str) -> list[str]:
    """Methods that have ``key`` as a hyperparameter (for a helpful error)."""
    from yolokd.methods import METHODS, MODIFIERS

    return [m for m in (*METHODS, *MODIFIERS) if key in method_defaults(m)]
