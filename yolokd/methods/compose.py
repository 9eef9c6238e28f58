"""Composition of methods: ``method=a+b`` (and modifiers such as ``aid``), parsed here and nowhere else.

Forms (``describe_forms`` says the same to a user):

- ``a``: one registered method.
- ``a+b(+c...)``: the methods' terms are summed; each part keeps its own trainable parts and hyperparameters.
- ``a+b+m``: with a modifier m (``KDModifier``, e.g. ``aid``), which adds no term but reweights the methods' terms.
- ``m`` alone: the modifier on its ``base`` method (``aid`` means ``fkd+aid``, AID's paper setting).

Refused, before anything is built: unknown parts, a part twice (``aid+aid``, ``fgd+fgd``), ``none`` with anything (it
has no term), modifiers without a method and without a ``base``. The canonical name lists the methods in the order given
and the modifiers last (``aid+fgd`` is ``fgd+aid``); it is what checkpoints, logs and bench records hold.

Hyperparameters of a composed method are addressed per part: ``<part>.<name>`` always (``fgd.alpha=``,
``aid.alpha=``), a bare ``<name>`` when exactly one part has it (``granularity=object``), and from Python also
``<part>={name: value}``. A bare name two parts share is refused with both spellings. The resolved set is stored under
``<part>.<name>`` keys (``KDSpec.hparams``); a single method keeps its plain names (and accepts ``<method>.<name>``).

Logged term names are the parts' own (all distinct across registered methods); a name two parts share would be
prefixed with its method (``<method>_<term>``) in both.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from yolokd.methods.base import KDBatch, KDMethod, KDModifier

SEPARATOR = "+"


@dataclass(frozen=True)
class Composition:
    """A parsed ``method=`` value: its methods (in order), its modifiers, and the canonical name."""

    methods: tuple[str, ...]
    modifiers: tuple[str, ...]

    @property
    def name(self) -> str:
        """Canonical name: methods as given, then modifiers (``fgd+ld+aid``); a single method is its own name."""
        return SEPARATOR.join(self.methods + self.modifiers)

    @property
    def parts(self) -> tuple[str, ...]:
        """Every part, methods first."""
        return self.methods + self.modifiers


def _registry() -> tuple[dict[str, type[KDMethod]], dict[str, type[KDModifier]]]:
    """The registered methods and modifiers (imported late: the registry imports this module)."""
    from yolokd.methods import METHODS, MODIFIERS

    return METHODS, MODIFIERS


def describe_forms() -> str:
    """The valid forms of ``method=``, for error messages and ``yolokd methods``."""
    methods, modifiers = _registry()
    bases = ", ".join(f"{m} = {c.base}+{m}" for m, c in modifiers.items() if c.base)
    return (f"a method ({', '.join(methods)}); methods joined by '+' to sum their terms (e.g. fgd+ld); "
            f"with a modifier ({', '.join(modifiers)}) that reweights them (e.g. fgd+aid); or a modifier alone "
            f"({bases})")


def is_composed(name: Any) -> bool:
    """Whether ``name`` goes through composition (a ``+`` or a modifier), rather than naming one method."""
    _, modifiers = _registry()
    return SEPARATOR in str(name) or str(name).strip() in modifiers


def parse(name: str) -> Composition:
    """Parse a ``method=`` value; fail early, naming the problem and the valid forms."""
    methods, modifiers = _registry()
    parts = [p.strip() for p in str(name).split(SEPARATOR)]
    forms = f"Valid forms: {describe_forms()}; see `yolokd methods`."
    if any(not p for p in parts):
        raise ValueError(f"method={name!r} has an empty part. {forms}")
    for p in parts:
        if p not in methods and p not in modifiers:
            close = difflib.get_close_matches(p, [*methods, *modifiers], n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ValueError(f"unknown method '{p}' in method={name}.{hint} {forms}")
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        raise ValueError(f"method={name} names {', '.join(twice)} twice; each method or modifier may appear once. "
                         f"{forms}")
    found = tuple(p for p in parts if p in methods)
    mods = tuple(p for p in parts if p in modifiers)
    if "none" in found and len(parts) > 1:
        raise ValueError(f"method={name}: 'none' has no distillation term to combine or reweight; use method=none "
                         f"alone, or drop it. {forms}")
    if not found:
        bases = [modifiers[m].base for m in mods]
        if len(mods) != 1 or bases[0] is None:
            raise ValueError(f"method={name}: modifiers reweight the terms of methods and need one to act on "
                             f"(e.g. method=fgd+{mods[0]}). {forms}")
        found = (bases[0],)
    return Composition(found, mods)


def canonical_name(name: str) -> str:
    """The canonical spelling of a ``method=`` value (a single method stays as it is)."""
    return parse(name).name if is_composed(name) else str(name)


# ------------------------------------------------------------------------------------------------ hyperparameters
def _defaults(part: str) -> dict[str, Any]:
    """The YAML defaults of one part (method or modifier)."""
    from yolokd.methods import method_defaults

    return method_defaults(part)


def split_hparams(comp: Composition, overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Assign every user key to its part: ``part.name``, a bare name one part owns, or ``part={name: value}``.

    Raises:
        ValueError: a part that is not in the composition, a bare name two parts share, a name given twice, or a name
            no part has (with the closest valid spelling).
    """
    defaults = {p: _defaults(p) for p in comp.parts}
    out: dict[str, dict[str, Any]] = {p: {} for p in comp.parts}

    def put(part: str, key: str, value: Any, given: str) -> None:
        if key in out[part]:
            raise ValueError(f"method={comp.name}: {part}.{key} given twice (last as '{given}')")
        out[part][key] = value

    for k, v in overrides.items():
        if k in comp.parts and isinstance(v, dict):
            for kk, vv in v.items():
                put(k, kk, vv, f"{k}={{{kk}: ...}}")
        elif "." in k:
            part, key = k.split(".", 1)
            if part not in comp.parts:
                raise ValueError(f"'{k}': '{part}' is not a part of method={comp.name} (parts: "
                                 f"{', '.join(comp.parts)})")
            put(part, key, v, k)
        else:
            owners = [p for p in comp.parts if k in defaults[p]]
            if len(owners) > 1:
                raise ValueError(f"'{k}' is a hyperparameter of {' and '.join(owners)} in method={comp.name}: write "
                                 f"{' or '.join(f'{p}.{k}=' for p in owners)}")
            if not owners:
                valid = [f"{p}.{kk}" for p in comp.parts for kk in defaults[p]] if len(comp.parts) > 1 else \
                    list(defaults[comp.parts[0]])
                close = difflib.get_close_matches(k, valid + [kk for d in defaults.values() for kk in d], n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"method '{comp.name}' has no hyperparameter '{k}'.{hint} Its hyperparameters: "
                                 f"{', '.join(valid) or 'none'}.")
            put(owners[0], k, v, k)
    return out


def is_hyperparameter(name: str, key: str) -> bool:
    """Whether ``key`` addresses a hyperparameter of method ``name`` in any accepted spelling (validated later)."""
    comp = parse(name) if is_composed(name) else Composition((str(name),), ())
    return "." in key or key in comp.parts or any(key in _defaults(p) for p in comp.parts)


def resolve(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Resolved hyperparameters of a composed method under ``<part>.<name>`` keys, each part's checked and cast by the
    registry's ``resolve_part`` (YAML defaults, casts, unknown names)."""
    from yolokd.methods import resolve_part

    comp = parse(name)
    by_part = split_hparams(comp, overrides)
    return {f"{p}.{k}": v for p in comp.parts for k, v in resolve_part(p, by_part[p]).items()}


# ------------------------------------------------------------------------------------------------ the composite
class Composite(KDMethod):
    """The sum of several methods' terms, reweighted by modifiers; one subclass per canonical name
    (``composite_class``), so ``name``, ``term_names``, ``needs`` and ``uses_teacher`` are class attributes like a
    registered method's.

    Each part is a submodule named after it, so its trainable parts are optimised with the student and saved under
    ``<part>.`` in ``ckpt["yolokd"]`` (never in the student checkpoint), and a composed method resumes as itself.
    """

    composition: ClassVar[Composition]
    #: Per method, its term name -> the logged name (the same unless two parts share a term name).
    renames: ClassVar[dict[str, dict[str, str]]]

    def __init__(self, student_channels: list[int], teacher_channels: list[int], **hparams: Any) -> None:
        """Build every part from ``<part>.<name>`` hyperparameters (``resolve`` gives them)."""
        from yolokd.methods import build_method, resolve_part

        super().__init__(student_channels, teacher_channels)
        _, modifiers = _registry()
        by_part = split_hparams(self.composition, hparams)
        for p in self.composition.methods:
            self.add_module(p, build_method(p, student_channels, teacher_channels, **by_part[p]))
        for p in self.composition.modifiers:
            self.add_module(p, modifiers[p](**resolve_part(p, by_part[p])))
        options = {m.grad_options for m in self.methods().values() if m.grad_options is not None}
        if len(options) > 1:
            raise ValueError(f"method={self.name}: its parts ask for different gradient options {options}")
        self.grad_options = options.pop() if options else None

    def methods(self) -> dict[str, KDMethod]:
        """The composed methods, by name, in order."""
        return {p: getattr(self, p) for p in self.composition.methods}

    def modifiers(self) -> dict[str, KDModifier]:
        """The modifiers, by name."""
        return {p: getattr(self, p) for p in self.composition.modifiers}

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Every method's terms, multiplied by the modifiers' weights (``Reweighting``).

        Image weights multiply each (N, L) term; per-object weights go to the methods as ``instance_weights``, and the
        terms a method lists in ``object_terms`` then take those instead of the image weights.
        """
        image = objects = None
        for mod in self.modifiers().values():
            rw = mod.weigh(kd)
            image = _product(image, rw.image)
            objects = _product(objects, rw.objects)
        sub = kd if objects is None else replace(kd, instance_weights=_product(kd.instance_weights, objects))
        out = {}
        for p, method in self.methods().items():
            own = method.object_terms if objects is not None else frozenset()
            for k, v in method(sub).items():
                out[self.renames[p][k]] = v if image is None or k in own else v * image
        return out

    def plot(self, kd: KDBatch, stem: Path) -> list[Path]:
        """Each method's pictures, named ``<stem>_<method>*``."""
        return [f for p, m in self.methods().items() for f in m.plot(kd, stem.with_name(f"{stem.name}_{p}"))]

    def epoch_stats(self) -> dict[str, float]:
        """Every part's epoch statistics (modifiers' weight statistics, ...)."""
        return {k: v for part in (*self.methods().values(), *self.modifiers().values())
                for k, v in part.epoch_stats().items()}


def _product(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """a * b, where None means 1."""
    return b if a is None else a if b is None else a * b


@lru_cache(maxsize=None)
def composite_class(name: str) -> type[Composite]:
    """The ``Composite`` subclass of a ``method=`` value (cached per canonical name)."""
    comp = parse(name)
    if comp.name != name:
        return composite_class(comp.name)
    methods, modifiers = _registry()
    classes = [methods[p] for p in comp.methods]
    names = [t for c in classes for t in c.term_names]
    renames = {c.name: {t: t if names.count(t) == 1 else f"{c.name}_{t}" for t in c.term_names} for c in classes}
    needs = frozenset().union(*(c.needs for c in classes), *(modifiers[m].needs for m in comp.modifiers))
    return type(f"Composite[{comp.name}]", (Composite,), {
        "__doc__": f"{comp.name}: " + " + ".join(comp.parts) + " (terms summed, modifiers reweight them).",
        "name": comp.name,
        "composition": comp,
        "renames": renames,
        "term_names": tuple(renames[c.name][t] for c in classes for t in c.term_names),
        "needs": needs,
        "uses_teacher": any(c.uses_teacher for c in classes),
    })
