"""Test set-up: offline switches and private config/cache dirs before anything imports Ultralytics."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="yolokd-tests-"))
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "0"
os.environ.setdefault("YOLO_CONFIG_DIR", str(_TMP / "yolo-config"))
os.environ["YOLOKD_CACHE"] = str(_TMP / "cache")  # tests never touch the user's cache

import yolokd  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_file(rel: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"needs ../shared/data/{rel} (present in CI and on the dev machine, absent in a bare clone)")
    return p


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """A small synthetic driving dataset (16 train / 8 val images), generated once per session."""
    from yolokd.data.synthetic import generate_dataset

    return str(generate_dataset(tmp_path_factory.mktemp("synthetic"), n_train=16, n_val=8, seed=0, width=256,
                                height=80))


#: Tiny but complete training settings: 2 iterations per epoch, validation every epoch.
TINY = dict(epochs=2, imgsz=64, batch=8, nbs=8, warmup_epochs=0, workers=0, device="cpu", plots=False, seed=0,
            exist_ok=True)  # nbs=batch and no warm-up: every iteration is a real optimizer step


def make_trainer(tmp_path: Path, data: str, **overrides):
    """A KDTrainer writing into tmp_path, with a random-weight yolov8s teacher unless told otherwise."""
    from yolokd.engine.trainer import KDTrainer

    args = dict(TINY, teacher="yolov8s.yaml", student="yolov8n.yaml", method="mimic", data=data,
                project=str(tmp_path), name="run")
    args.update(overrides)
    return KDTrainer(overrides=args)


BLOCKED_LOADER = r"""
import builtins, json, os, sys
_real = builtins.__import__
def _guard(name, *a, **k):
    if name == "yolokd" or name.startswith("yolokd."):
        raise ImportError("importing yolokd is blocked in this process")
    return _real(name, *a, **k)
builtins.__import__ = _guard
os.environ["YOLO_OFFLINE"] = "1"
import torch
from ultralytics import YOLO
out = {}
for f in sys.argv[1:]:
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(f)
    m = YOLO(f)
    out[f] = {"unsafe_yolokd": [g for g in unsafe if "yolokd" in g], "cls": type(m.model).__name__,
              "keys": sorted(m.model.state_dict()), "names": m.names}
print("RESULT" + json.dumps(out))
"""


def load_without_yolokd(*files: Path) -> dict:
    """Load checkpoints in a fresh interpreter in which importing yolokd raises; return what it saw."""
    import json

    env = {**os.environ, "PYTHONPATH": ""}
    r = subprocess.run([sys.executable, "-c", BLOCKED_LOADER, *map(str, files)], capture_output=True, text=True,
                       env=env, cwd=str(_TMP))
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])
