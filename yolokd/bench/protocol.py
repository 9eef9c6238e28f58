"""Benchmark protocols: named, versioned recipes in ``cfg/protocols/<name>.yaml``.

A protocol fixes everything that changes a number: dataset (and how it is made), teacher and how it is trained, student
initialisation, training arguments, the headline metric and epoch. ``recipe()`` resolves one into a plain dict whose hash
names the results folder, so a number in the docs always points to the recipe that produced it, and a protocol edited
without bumping its ``version`` is caught instead of silently mixing results.
"""

from __future__ import annotations

import difflib

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from yolokd.utils.paths import CFG_DIR, cache_dir, find_weights, shared_data_dir

PROTOCOL_DIR = CFG_DIR / "protocols"
#: Keys of a protocol file; anything else is a typo.
PROTOCOL_KEYS = {"name", "version", "description", "setting", "data", "teacher", "student", "train", "methods", "seeds",
                 "metric", "headline", "variants", "budget"}


class ProtocolError(ValueError):
    """A protocol file or a bench request that cannot be run as given."""


def list_protocols() -> list[str]:
    """Names of the protocols shipped in ``cfg/protocols``."""
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def load_protocol(name_or_path: str) -> dict[str, Any]:
    """Read a protocol by name (``cfg/protocols``) or path and check its keys."""
    p = Path(name_or_path)
    if not p.suffix:
        p = PROTOCOL_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        close = difflib.get_close_matches(str(name_or_path), list_protocols(), n=1)
        raise ProtocolError(f"unknown protocol '{name_or_path}' (no such file or shipped protocol)."
                            f"{f' Did you mean {close[0]}?' if close else ''} Shipped protocols: "
                            f"{', '.join(list_protocols())} (`yolokd bench protocols`), or pass a protocol YAML's path")
    proto = yaml.safe_load(p.read_text())
    unknown = set(proto) - PROTOCOL_KEYS
    if unknown:
        raise ProtocolError(f"{p}: unknown key(s) {sorted(unknown)}; valid: {sorted(PROTOCOL_KEYS)}")
    for k in ("name", "version", "data", "teacher", "student", "train"):
        if k not in proto:
            raise ProtocolError(f"{p}: missing '{k}'")
    proto.setdefault("variants", {})
    proto.setdefault("metric", "mAP50-95")
    proto.setdefault("headline", "final")
    if proto["metric"] not in {"mAP50-95", "mAP50"} or proto["headline"] not in {"final", "best"}:
        raise ProtocolError(f"{p}: metric must be mAP50-95 or mAP50 and headline final or best")
    return proto


def adhoc_protocol(teacher: str, student: str, data: str, teacher_epochs: int = 0) -> dict[str, Any]:
    """A protocol for ``yolokd bench teacher=... student=... data=...`` (no file): defaults from Ultralytics."""
    return {"name": "custom", "version": 1, "description": "ad-hoc comparison from the command line",
            "setting": "custom", "data": data, "teacher": {"init": teacher, "epochs": teacher_epochs},
            "student": student, "train": {}, "methods": ["none", "ultralytics"], "seeds": [0], "metric": "mAP50-95",
            "headline": "final", "variants": {}}


def resolve_weights(name: str) -> str:
    """``yolov8s.pt`` -> a local official copy; a path stays a path; a model YAML stays a name (random init)."""
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        return str(Path(name).resolve()) if Path(name).is_file() else name
    found = find_weights(name)
    if found is None:
        raise FileNotFoundError(f"weights '{name}' not found locally (looked in $YOLOKD_WEIGHTS, ../shared/data/weights, "
                                f"the working directory, Ultralytics' weights dir); nothing is downloaded")
    return str(found)


def resolve_data(spec: Any) -> str:
    """Dataset YAML of a protocol's ``data``: ``synthetic`` settings, ``shared:<path>`` or a YAML path.

    ``shared:`` datasets are copied once into ``$YOLOKD_CACHE/datasets``: Ultralytics writes label caches next to the
    labels, and the shared folder is read-only (and must stay pristine).
    """
    if isinstance(spec, dict) and "synthetic" in spec:
        from yolokd.data.synthetic import synthetic_dataset

        return str(synthetic_dataset(**spec["synthetic"]))
    spec = str(spec)
    if spec.startswith("shared:"):
        root = shared_data_dir()
        rel = spec.split(":", 1)[1]
        if root is None or not (root / rel).is_file():
            raise FileNotFoundError(f"data '{spec}' needs ../shared/data/{rel} (or $YOLOKD_DATA pointing at a copy)")
        src = (root / rel).parent
        dst = cache_dir() / "datasets" / src.name
        if not (dst / ".complete").exists():
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.cache"))
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)
            (dst / ".complete").touch()
        return str(dst / Path(rel).name)
    if not Path(spec).is_file():
        raise FileNotFoundError(f"dataset YAML '{spec}' not found")
    return str(Path(spec).resolve())


def recipe(proto: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The protocol with command-line training overrides applied (they change the recipe, hence its hash)."""
    r = json.loads(json.dumps(proto))  # deep copy, JSON-clean
    r.pop("methods", None), r.pop("seeds", None), r.pop("budget", None)
    if overrides:
        r["train"].update(overrides)
        r["overrides"] = dict(sorted(overrides.items()))
    return r


def recipe_hash(r: dict[str, Any]) -> str:
    """Short content hash of the settings every entry shares.

    Excluded: descriptions and the ``setting`` label (rewording changes no number: a label may be corrected once the
    measurements say what a protocol is) and ``variants``: a variant's definition is recorded in each of its runs
    (``job.json``) and checked there, so adding a variant does not orphan the other entries' results.
    """
    core = {k: v for k, v in r.items() if k not in {"description", "setting", "budget", "variants"}}
    return hashlib.sha1(json.dumps(core, sort_keys=True).encode()).hexdigest()[:8]


def entries(proto: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """Each requested entry -> {method, args, hparams, revision}: a method (or a composed one, ``fgd+aid``), or a
    variant of the protocol.

    ``args`` are the variant's extra settings as written (train arguments and method hyperparameters); ``hparams`` are
    the method's resolved hyperparameters.
    """
    from yolokd.methods import canonical_name, get_method, is_hyperparameter, method_revisions, resolve_hparams

    def method_of(name: Any) -> str | None:
        """The canonical method name, or None when ``name`` is not a method or a valid combination."""
        try:
            get_method(str(name))
        except ValueError:
            return None
        return canonical_name(str(name))

    out = {}
    for n in names:
        if n in proto["variants"]:
            v = dict(proto["variants"][n])
            if method_of(v.get("method")) is None:
                raise ProtocolError(f"variant '{n}' names method '{v.get('method')}', not a method or a valid "
                                    f"combination (see `yolokd methods`)")
            out[n] = {"method": method_of(v.pop("method")), "args": v}
        elif method_of(n) is not None:
            out[n] = {"method": method_of(n), "args": {}}
        else:
            try:
                get_method(str(n))
                why = f"'{n}' is not a method"
            except ValueError as e:
                why = str(e)
            raise ProtocolError(f"{why} Nor is it a variant of protocol '{proto['name']}' (variants: "
                                f"{', '.join(proto['variants']) or 'none'}).")
        # The method's full hyperparameters (cfg defaults with the variant's values over them) are recorded per run, so
        # retuned defaults in cfg/methods/ are noticed instead of silently reusing results of the old ones.
        m = out[n]
        m["hparams"] = resolve_hparams(m["method"], {k: v for k, v in m["args"].items()
                                                     if is_hyperparameter(m["method"], k)})
        m["revision"] = method_revisions(m["method"])  # and the code's revision of each part, for the same reason
    return out
