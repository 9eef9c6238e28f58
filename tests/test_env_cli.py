"""The environment `make` builds, the offline switches, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolokd.cli import main, parse_args

YOLOKD = Path(sys.executable).parent / "yolokd"


def test_torchvision_nms_imports_and_runs():
    """The torch/torchvision trap: a local CPU torch wheel breaks torchvision's registry build (`torchvision::nms`)."""
    import torch
    from torchvision.ops import nms

    keep = nms(torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30.0]]), torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_ultralytics_in_supported_range():
    import ultralytics
    from ultralytics.nn import distill_model  # noqa: F401  (the built-in baseline exists: >= 8.4.77)

    major, minor, patch = (int(x) for x in ultralytics.__version__.split(".")[:3])
    assert (8, 4, 77) <= (major, minor, patch) <= (8, 4, 190)


def test_offline_switches_and_local_fonts():
    from ultralytics.utils import ONLINE, SETTINGS, USER_CONFIG_DIR

    from yolokd.utils.offline import prepare_ultralytics

    prepare_ultralytics()
    assert os.environ["YOLO_OFFLINE"] == "1" and ONLINE is False and SETTINGS["sync"] is False
    assert (Path(USER_CONFIG_DIR) / "Arial.ttf").stat().st_size > 10_000
    assert (Path(USER_CONFIG_DIR) / "Arial.Unicode.ttf").exists()


def test_missing_weights_are_an_immediate_error_naming_the_file():
    from yolokd.engine.models import resolve_model

    with pytest.raises(FileNotFoundError, match=r"student weights 'yolo11n.pt' not found.*student=yolo11n.yaml"):
        resolve_model("yolo11n", "student")
    assert resolve_model("yolov8n.yaml", "student") == "yolov8n.yaml"


def test_parse_args_keeps_names_as_strings_and_reads_numbers():
    kw = parse_args(["method=none", "epochs=3", "lr0=1e-3", "weight=2", "amp=False", "name=007", "device=0,1"])
    assert kw == {"method": "none", "epochs": 3, "lr0": 1e-3, "weight": 2, "amp": False, "name": "007",
                  "device": "0,1"}
    with pytest.raises(SystemExit, match="expected key=value"):
        parse_args(["epochs"])


def test_methods_and_help(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in ("none", "mimic", "ultralytics", "weight=1.0", "dis_weight=6.0", "mimic_loss"))
    from yolokd.engine.spec import DEFAULT_METHOD
    assert out.count("(default: the best as measured") == 1 and f"\n{DEFAULT_METHOD} (default:" in out
    assert main(["help"]) == 0
    helptext = capsys.readouterr().out
    assert "yolokd train" in helptext and f"(default {DEFAULT_METHOD};" in helptext  # the help states today's default
    with pytest.raises(SystemExit, match="Did you mean 'train'"):
        main(["trian"])


def test_console_script_reports_bad_input_in_one_line():
    """The installed `yolokd` command: exit code 2 and a clear message, no traceback."""
    if not YOLOKD.exists():
        pytest.skip("console script not installed next to this interpreter (run through `make test`)")
    r = subprocess.run([str(YOLOKD), "train", "method=fgdd"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown method 'fgdd'" in r.stderr and "Traceback" not in r.stderr
