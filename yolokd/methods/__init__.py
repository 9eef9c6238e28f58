"""Registry of distillation methods: one module per method, one line per method below.

Adding a method: write ``yolokd/methods/<name>.py`` with a ``KDMethod`` subclass, put its defaults in
``cfg/methods/<name>.yaml``, and add the class to ``_REGISTERED`` (a ``KDModifier``, which reweights other methods'
terms, to ``_MODIFIERS``). Composed names (``fgd+ld``, ``fgd+aid``, ``aid``) are parsed in ``compose.py``; the
functions below accept them wherever they accept a method name.
"""

from __future__ import annotations

import difflib
import keyword
from typing import Any

import yaml

from yolokd.methods import compose
from yolokd.methods.aid import AID
from yolokd.methods.base import SUPPORTED_NEEDS, KDBatch, KDMethod, KDModifier, reduce_terms
from yolokd.methods.cwd import CWD
from yolokd.methods.fgd import FGD
from yolokd.methods.fkd import FKD
from yolokd.methods.gkd import GKD
from yolokd.methods.ld import LD
from yolokd.methods.mgd import MGD
from yolokd.methods.mimic import Mimic
from yolokd.methods.none import NoKD
from yolokd.methods.pkd import PKD
from yolokd.methods.ultralytics_sl2 import UltralyticsSL2
from yolokd.utils.paths import CFG_DIR

_REGISTERED: tuple[type[KDMethod], ...] = (NoKD, Mimic, UltralyticsSL2, FGD, GKD, LD, CWD, PKD, MGD, FKD)
METHODS: dict[str, type[KDMethod]] = {m.name: m for m in _REGISTERED}
_MODIFIERS: tuple[type[KDModifier], ...] = (AID,)
MODIFIERS: dict[str, type[KDModifier]] = {m.name: m for m in _MODIFIERS}

__all__ = ["METHODS", "MODIFIERS", "KDBatch", "KDMethod", "KDModifier", "build_method", "canonical_name",
           "get_method", "is_hyperparameter", "method_defaults", "method_revisions", "reduce_terms", "resolve_hparams",
           "resolve_part"]

canonical_name = compose.canonical_name
is_hyperparameter = compose.is_hyperparameter


def get_method(name: str) -> type[KDMethod]:
    """The class of ``method=name``: a registered method, or the composite of a composed name (``fgd+aid``, ``aid``).

    Fails with the list of methods, the closest match and the valid forms.
    """
    if compose.is_composed(name):
        return compose.composite_class(str(name).strip())
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" Did you mean method={close[0]}?" if close else ""
        raise ValueError(f"unknown method '{name}'.{hint} Available: {', '.join(METHODS)}; valid forms: "
                         f"{compose.describe_forms()} (see `yolokd methods`).")
    return METHODS[name]


def method_revisions(name: str) -> dict[str, int]:
    """``{part: revision}`` of every method and modifier in ``method=name`` (``KDMethod.revision``)."""
    parts = compose.parse(canonical_name(str(name))).parts if compose.is_composed(name) else (str(name),)
    return {p: (METHODS.get(p) or MODIFIERS[p]).revision for p in parts}


def method_defaults(name: str) -> dict[str, Any]:
    """Default hyperparameters of a registered method or modifier, read from ``cfg/methods/<name>.yaml``; of a composed
    name (``fgd+aid``), every part's under ``<part>.<name>``. A modifier's name gives its own defaults: canonicalise a
    user's ``method=`` first (``canonical_name``: ``aid`` is ``fkd+aid``)."""
    if compose.SEPARATOR in str(name):
        return {f"{p}.{k}": v for p in compose.parse(name).parts for k, v in method_defaults(p).items()}
    if name not in MODIFIERS:
        get_method(name)
    path = CFG_DIR / "methods" / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"defaults of method '{name}' missing: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    for k in data:
        if not k.isidentifier() or keyword.iskeyword(k):
            raise ValueError(f"{path}: hyperparameter '{k}' is not usable as a Python keyword argument")
    return data


def resolve_part(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A registered method's or modifier's YAML defaults with ``overrides`` (plain names) over them, each cast to the
    default's type; unknown names are an error."""
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


def resolve_hparams(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of ``method=name``: YAML defaults with the user's values over them, checked and cast.

    A single method takes its plain names (or ``<method>.<name>``) and returns plain names; a composed method takes
    ``<part>.<name>``, bare names one part owns, or ``<part>={...}``, and returns ``<part>.<name>`` keys
    (``compose.split_hparams``).
    """
    if compose.is_composed(name):
        return compose.resolve(name, overrides)
    return resolve_part(name, compose.split_hparams(compose.Composition((name,), ()), overrides)[name])


def build_method(
    name: str, student_channels: list[int], teacher_channels: list[int], **overrides: Any
) -> KDMethod:
    """Instantiate a method with its YAML defaults overridden by ``overrides``."""
    cls = get_method(name)
    unsupported = set(cls.needs) - SUPPORTED_NEEDS
    if unsupported:
        raise NotImplementedError(f"method '{name}' needs {sorted(unsupported)}, which this trainer does not provide")
    return cls(student_channels, teacher_channels, **resolve_hparams(name, overrides))


def check_method(name: str, hparams: dict[str, Any]) -> None:
    """Fail now on a bad hyperparameter value, by building the method on stand-in channels and dropping it.

    The real method is built once the student exists (``KDTrainer.setup_model``), after the teacher is loaded and the
    dataloaders are up; each method checks its own values in its constructor, so this reuses exactly those checks.
    """
    build_method(name, [64, 128, 256], [128, 256, 512], **hparams)
