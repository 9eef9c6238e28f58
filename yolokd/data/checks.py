"""Early dataset checks: the mistakes of a self-converted dataset, found before any model is loaded.

Ultralytics drops a label file with a class id beyond the data's classes with a warning and trains on without that
image, and finds a split without images or labels only when it builds the dataloaders, after the teacher was loaded
(and maybe fine-tuned for hours). A distillation run on such data is wasted, so yolokd stops at once instead, naming
the split, the files and the fix. Image and label paths are found with Ultralytics' own helpers.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable

from yolokd.engine.models import KDConfigError

#: How many offending label files an error message names.
SHOWN = 3


def check_labels(data: dict[str, Any], splits: Iterable[str] = ("train", "val")) -> None:
    """Every split has images, some labels, and only class ids in ``[0, nc)`` with five or more numbers per line.

    Args:
        data: The dataset dict of Ultralytics' ``check_det_dataset`` (absolute ``train``/``val`` paths, ``names``).
        splits: The splits to check; a split the YAML does not define is skipped.

    Raises:
        KDConfigError: With the split, the offending files (first few) and how to fix them.
    """
    from ultralytics.data.base import BaseDataset
    from ultralytics.data.utils import img2label_paths

    nc = len(data["names"])
    for split in splits:
        src = data.get(split)
        if not src:
            continue
        try:  # Ultralytics' own image listing (folders, .txt lists, lists of either)
            with _random_untouched():  # it samples files with `random` to time reads
                images = BaseDataset.get_img_files(SimpleNamespace(prefix="", fraction=1.0), src)
        except FileNotFoundError as e:
            raise KDConfigError(
                f"dataset {split} split: no images found in {src}. Put the {split} images there (jpg, png, ...; "
                f"Ultralytics' formats), or fix '{split}:' in the data YAML"
            ) from e
        labels = [Path(p) for p in img2label_paths(images)]
        present = [p for p in labels if p.exists()]
        if not present:
            raise KDConfigError(
                f"dataset {split} split: no labels for its {len(images)} images (looked for e.g. {labels[0]}). "
                f"YOLO labels are one .txt per image in a labels/ folder beside images/ (class x y w h per line, "
                f"normalised); convert your annotations first (e.g. `yolokd convert kitti ...`)"
            )
        bad_class, malformed = [], []
        for p in present:
            for line in p.read_text(errors="replace").splitlines():
                parts = line.split()
                if not parts:
                    continue
                try:
                    values = [float(v) for v in parts]
                except ValueError:
                    malformed.append(f"{p} ('{line.strip()[:40]}')")
                    break
                if len(values) < 5 or values[0] != int(values[0]):
                    malformed.append(f"{p} ('{line.strip()[:40]}')")
                    break
                if not 0 <= values[0] < nc:
                    bad_class.append(f"{p} (class {int(values[0])})")
                    break
        if bad_class:
            raise KDConfigError(
                f"dataset {split} split: {len(bad_class)} label file(s) use a class id outside the data's {nc} classes "
                f"0..{nc - 1} ({_listed(data['names'])}): {', '.join(bad_class[:SHOWN])}"
                f"{' ...' if len(bad_class) > SHOWN else ''}. Fix those labels, or the data YAML's names (Ultralytics "
                f"would silently train without these images)"
            )
        if malformed:
            raise KDConfigError(
                f"dataset {split} split: {len(malformed)} label file(s) are not YOLO labels (class x y w h per line): "
                f"{', '.join(malformed[:SHOWN])}{' ...' if len(malformed) > SHOWN else ''}"
            )


@contextmanager
def _random_untouched():
    """Restore Python's ``random`` state afterwards: the check runs after Ultralytics seeded the run (``init_seeds``),
    and a draw here would shift the run's augmentation stream, so the same seed would no longer give the same run as
    before the check existed."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def _listed(names: Any, k: int = 5) -> str:
    """``0 car, 1 pedestrian, ...`` for the message."""
    items = list(dict(names).items()) if isinstance(names, dict) else list(enumerate(names))
    return ", ".join(f"{i} {n}" for i, n in items[:k]) + (", ..." if len(items) > k else "")
