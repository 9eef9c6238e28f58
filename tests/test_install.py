"""The package installs as a wheel and works from outside the checkout (cfg/ ships inside it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_checkout(tmp_path, tiny_data):
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip("needs uv next to the test interpreter (make setup installs it into .venv)")
    # Build the wheel from the checkout (setuptools is in the environment: no build isolation, no download).
    _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp_path / "dist")], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("yolokd-*.whl"))
    # A fresh venv with the locked dependencies (from uv's cache when warm), then the wheel itself, non-editable.
    venv = tmp_path / "venv"
    _run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([str(uv), "pip", "sync", "-q", "--python", str(py), str(REPO / "requirements.lock")], cwd=tmp_path)
    _run([str(uv), "pip", "install", "-q", "--no-deps", "--python", str(py), str(wheel)], cwd=tmp_path)

    work = tmp_path / "elsewhere"  # outside the checkout: nothing may be found relative to it
    work.mkdir()
    where = _run([str(py), "-c", "import yolokd, yolokd.utils.paths as p; print(yolokd.__file__); print(p.CFG_DIR)"],
                 cwd=work).split()
    assert all(Path(x).is_relative_to(venv) for x in where[:2]), where
    yolokd = str(venv / "bin" / "yolokd")
    methods = _run([yolokd, "methods"], cwd=work)
    assert "fgd" in methods and "alpha" in methods  # the method defaults come from the packaged cfg/
    protocols = _run([yolokd, "bench", "protocols"], cwd=work)
    assert "synthetic-ft v1" in protocols and "kitti-1k v1" in protocols
    _run([yolokd, "train", "teacher=yolov8s.yaml", "student=yolov8n.yaml", "method=mimic", f"data={tiny_data}",
          "epochs=1", "imgsz=64", "batch=8", "workers=0", "device=cpu", "plots=False", f"project={work / 'runs'}",
          "name=t"], cwd=work)
    assert (work / "runs" / "t" / "weights" / "last.pt").is_file()
