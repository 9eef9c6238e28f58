"""Datasets: the built-in synthetic driving scenes and the resolution of ``data=`` names."""

from __future__ import annotations

from pathlib import Path

#: Built-in dataset names accepted by ``data=``.
BUILTIN = ("synthetic",)


def resolve_data(data: str | Path | None) -> str:
    """Map ``data=`` to a dataset YAML: ``synthetic`` (also the default) is generated on first use into the cache."""
    if data is None or str(data) in {"synthetic", "synthetic.yaml"}:
        from yolokd.data.synthetic import synthetic_dataset

        return str(synthetic_dataset())
    return str(data)
