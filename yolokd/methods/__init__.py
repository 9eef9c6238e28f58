"""Registry of distillation methods: one module per method, one line per method below.

Adding a method: write ``yolokd/methods/<name>.py`` with a ``KDMethod`` subclass, put its defaults in
``cfg/methods/<name>.yaml``, and add the class to ``_REGISTERED``.
"""

from __future__ import annotations

import difflib
import keyword
from typing import Any

import yaml

from yolokd.methods.base import SUPPORTED_NEEDS, KDBatch, KDMethod, reduce_terms
from yolokd.methods.cwd import CWD
from yolokd.methods.fgd import FGD
from yolokd.methods.gkd import GKD
from yolokd.methods.ld import LD
from yolokd.methods.mgd import MGD
from yolokd.methods.mimic import Mimic
from yolokd.methods.none import NoKD
from yolokd.methods.pkd import PKD
from yolokd.methods.ultralytics_sl2 import UltralyticsSL2
from yolokd.utils.paths import CFG_DIR

_REGISTERED: tuple[type[KDMethod], ...] = (NoKD, Mimic, UltralyticsSL2, FGD, GKD, LD, CWD, PKD, MGD)
METHODS: dict[str, type[KDMethod]] = {m.name: m for m in _REGISTERED}

__all__ = ["METHODS", "KDBatch", "KDMethod", "build_method", "get_method", "method_defaults", "reduce_terms"]


def get_method(name: str) -> type[KDMethod]:
    """Return the class registered as ``name``, or fail with the list of methods and the closest match."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" Did you mean method={close[0]}?" if close else ""
        raise ValueError(f"unknown method '{name}'.{hint} Available: {', '.join(METHODS)} (see `yolokd methods`).")
    return METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """Default hyperparameters of a method, read from ``cfg/methods/<name>.yaml``."""
    get_method(name)
    path = CFG_DIR / "methods" / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"defaults of method '{name}' missing: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    for k in data:
        if not k.isidentifier() or keyword.iskeyword(k):
            raise ValueError(f"{path}: hyperparameter '{k}' is not usable as a Python keyword argument")
    return data


def resolve_hparams(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge user values over the YAML defaults, casting each to the default's type; unknown keys are an error."""
    defaults = method_defaults(name)
    unknown = [k for k in overrides if k not in defaults]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(defaults), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"method '{name}' has no hyperparameter '{k}'.{hint} Its hyperparameters: {defaults or 'none'}."
        )
    merged = dict(defaults)
    for k, v in overrides.items():
        d = defaults[k]
        try:
            merged[k] = type(d)(v) if isinstance(d, (int, float)) and not isinstance(d, bool) else v
        except (TypeError, ValueError) as e:
            raise ValueError(f"method '{name}': {k}={v!r} is not a {type(d).__name__}") from e
    return merged


def build_method(
    name: str, student_channels: list[int], teacher_channels: list[int], **overrides: Any
) -> KDMethod:
    """Instantiate a method with its YAML defaults overridden by ``overrides``."""
    cls = get_method(name)
    unsupported = set(cls.needs) - SUPPORTED_NEEDS
    if unsupported:
        raise NotImplementedError(f"method '{name}' needs {sorted(unsupported)}, which this trainer does not provide")
    return cls(student_channels, teacher_channels, **resolve_hparams(name, overrides))
