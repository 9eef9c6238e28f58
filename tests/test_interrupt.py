"""Reliability (issue 14): a training process killed outright (SIGKILL: OOM killer, preemption, a lost node).

Each kill happens in a child interpreter at a chosen, deterministic point (a training callback, or a patched write that
stops half-way through a checkpoint); the test then inspects what is on disk and resumes from it in this process.
The teacher cache's "complete entries only" rule is checked with a fake, instant fine-tuning.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY

#: The settings ``conftest.make_trainer`` uses (tiny data, 2 steps per epoch, validation every epoch).
BASE = dict(TINY, teacher="yolov8s.yaml", student="yolov8n.yaml", method="mimic")

#: Child 1: train, and SIGKILL itself after the second training batch of the second epoch (before its validation and
#: checkpoint), first saving the method state it holds at that moment (argv[2]) so the test can tell it apart.
KILL_MID_EPOCH = r"""
import json, os, signal, sys
import torch
from yolokd.engine.trainer import KDTrainer

trainer = KDTrainer(overrides=json.loads(sys.argv[1]))
seen = {"batches": 0}

def kill(tr):
    if tr.epoch == 1:
        seen["batches"] += 1
        if seen["batches"] == 2:
            torch.save({k: v.detach().cpu().clone() for k, v in tr.method.state_dict().items()}, sys.argv[2])
            os.kill(os.getpid(), signal.SIGKILL)

trainer.add_callback("on_train_batch_end", kill)
trainer.train()
sys.exit(3)  # not reached: the kill did not happen
"""

#: Child 2: train; from the end of the second epoch on, the chosen write of the checkpoint save writes half its bytes
#: to the real file, then SIGKILLs the process. argv[2]: "staging" (Ultralytics' write of last.pt into the staging
#: folder) or "rewrite" (yolokd's ``_rewrite`` of last.pt: its temp file, before the os.replace). The epoch-1 last.pt is
#: copied to argv[3] when it is saved, as the reference for "the previous complete checkpoint".
KILL_IN_SAVE = r"""
import io, json, os, pathlib, shutil, signal, sys
import torch
from yolokd.engine import trainer as kd_trainer

mode, armed = sys.argv[2], {"on": False}

def write_half_and_die(path, data):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "staging":
    real_write_bytes = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if armed["on"] and self.name == "last.pt":  # (into the staging folder, unless save_model regressed)
            write_half_and_die(self, data)
        return real_write_bytes(self, data)

    pathlib.Path.write_bytes = write_bytes
else:
    real_save = kd_trainer.torch.save

    def save(obj, f, *args, **kwargs):
        if armed["on"] and isinstance(f, (str, os.PathLike)) and "last.pt" in os.path.basename(f):  # .last.pt.tmp
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            write_half_and_die(f, buf.getvalue())
        return real_save(obj, f, *args, **kwargs)

    kd_trainer.torch.save = save

trainer = kd_trainer.KDTrainer(overrides=json.loads(sys.argv[1]))

def keep_first(tr):
    if tr.epoch == 0:
        shutil.copyfile(tr.last, sys.argv[3])

def arm(tr):
    if tr.epoch == 1:
        armed["on"] = True

trainer.add_callback("on_model_save", keep_first)
trainer.add_callback("on_train_epoch_end", arm)
trainer.train()
sys.exit(3)  # not reached: the kill did not happen
"""


def _start_child(code: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter with this process's env (offline, private caches)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=str(cwd))


def _epochs(results_csv: Path) -> list[int]:
    with open(results_csv, newline="") as f:
        return [int(float(next(v for k, v in r.items() if k.strip() == "epoch"))) for r in csv.DictReader(f)]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _leftovers(wdir: Path) -> list[str]:
    """What a killed save may leave in the weights folder: the staging folder and temp files."""
    return sorted(p.name for p in wdir.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def _resume(last: Path) -> tuple[object, dict]:
    """Resume from ``last`` in this process; report the start epoch and whether the method state is the saved one."""
    from yolokd.engine.trainer import KDTrainer

    saved = _load(last)["yolokd"]["state_dict"]
    resumed = KDTrainer(overrides={"resume": str(last)})
    seen = {}

    def check(tr):
        state = tr.method.state_dict()
        seen["start"] = tr.start_epoch
        seen["method_restored"] = state.keys() == saved.keys() and all(
            torch.equal(v.cpu(), saved[k]) for k, v in state.items())

    resumed.add_callback("on_pretrain_routine_end", check)
    resumed.train()
    return resumed, seen


# --------------------------------------------------------------------------------------------- SIGKILL mid-epoch
@pytest.fixture(scope="module")
def killed_runs(tiny_data, tmp_path_factory) -> dict:
    """The three killed runs, started together (they are independent; the slow part of this file) and awaited.

    ``"mid_epoch"``: a 3-epoch mimic run SIGKILLed in the middle of its second epoch. ``"staging"`` / ``"rewrite"``: a
    2-epoch run SIGKILLed half-way through writing last.pt at the end of epoch 2, in Ultralytics' staged save or in
    yolokd's rewrite. Each: ``(root, returncode, output)``.
    """
    roots = {k: tmp_path_factory.mktemp(f"killed-{k}") for k in ("mid_epoch", "staging", "rewrite")}
    procs = {"mid_epoch": _start_child(KILL_MID_EPOCH, json.dumps(dict(BASE, epochs=3, data=tiny_data,
                                                                      project=str(roots["mid_epoch"]), name="run")),
                                       str(roots["mid_epoch"] / "at_kill.pt"), cwd=roots["mid_epoch"])}
    for mode in ("staging", "rewrite"):
        args = dict(BASE, data=tiny_data, project=str(roots[mode]), name="run")
        procs[mode] = _start_child(KILL_IN_SAVE, json.dumps(args), mode, str(roots[mode] / "epoch1_last.pt"),
                                   cwd=roots[mode])
    out, deadline = {}, time.monotonic() + 300  # a child that neither dies nor finishes fails the test, not hangs it
    try:
        for k, p in procs.items():
            try:
                output = p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
            except subprocess.TimeoutExpired:
                p.kill()
                output = p.communicate()[0] + "\n[killed by the test: still running after 300 s]"
            out[k] = (roots[k], p.returncode, output)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


@pytest.fixture
def killed_mid_epoch(killed_runs):
    """(weights dir, returncode, output, method state at the kill) of the run killed mid-epoch."""
    root, rc, output = killed_runs["mid_epoch"]
    return root / "run" / "weights", rc, output, root / "at_kill.pt"


@pytest.mark.slow
def test_sigkill_mid_epoch_leaves_the_last_complete_checkpoint_and_resumes(killed_mid_epoch):
    """Guards against: a kill between checkpoints losing or tearing last.pt, a torn or temp file that resume could
    pick up, a resume that restarts the method from scratch (or from anything but the saved state), and a
    results.csv that repeats or skips epochs after the resume."""
    wdir, rc, output, at_kill = killed_mid_epoch
    assert rc == -signal.SIGKILL, f"rc={rc}\n{output[-3000:]}"
    assert at_kill.exists()  # killed where intended, in epoch 2
    last = wdir / "last.pt"
    ck = _load(last)
    assert ck["epoch"] == 0 and set(ck["yolokd"]) >= {"spec", "state_dict"}
    saved = ck["yolokd"]["state_dict"]
    live = torch.load(at_kill)
    assert saved.keys() == live.keys() and any(not torch.equal(saved[k], live[k]) for k in saved)  # epoch 2 trained on
    assert sorted(p.name for p in wdir.iterdir()) == ["best.pt", "last.pt"]  # no staging folder, no temp file
    from ultralytics.utils.files import get_latest_run

    assert Path(get_latest_run(str(wdir.parent.parent))) == last  # what `resume=True` would pick
    assert _epochs(wdir.parent / "results.csv") == [1]

    resumed, seen = _resume(last)
    assert seen == {"start": 1, "method_restored": True}
    assert _epochs(resumed.csv) == [1, 2, 3]
    assert _leftovers(wdir) == []


# --------------------------------------------------------------------------------- SIGKILL during a checkpoint save
@pytest.fixture(params=["staging", "rewrite"])
def killed_in_save(request, killed_runs):
    """(mode, weights dir, returncode, output, copy of the epoch-1 last.pt) of a run killed inside a save."""
    root, rc, output = killed_runs[request.param]
    return request.param, root / "run" / "weights", rc, output, root / "epoch1_last.pt"


@pytest.mark.slow
def test_sigkill_during_checkpoint_save_keeps_the_previous_checkpoint(killed_in_save):
    """Guards against: a torn last.pt after a kill inside the save (Ultralytics' write or yolokd's rewrite), a torn
    file being taken for a checkpoint by resume, a leftover staging folder / temp file breaking the next save, and a
    resume that repeats the killed epoch's row in results.csv."""
    mode, wdir, rc, output, epoch1 = killed_in_save
    assert rc == -signal.SIGKILL, f"rc={rc}\n{output[-3000:]}"
    last = wdir / "last.pt"
    assert last.read_bytes() == epoch1.read_bytes()  # untouched: the previous complete checkpoint
    ck = _load(last)
    assert ck["epoch"] == 0 and "state_dict" in ck["yolokd"]
    torn = wdir / ".staging" / "last.pt" if mode == "staging" else wdir / ".last.pt.tmp"
    assert torn.exists() and 0 < torn.stat().st_size < last.stat().st_size  # the kill hit mid-write, where intended
    with pytest.raises(Exception):
        _load(torn)
    from ultralytics.utils.files import get_latest_run

    assert Path(get_latest_run(str(wdir.parent.parent))) == last  # the torn file is not taken for a checkpoint
    # A torn leftover under a name the next save does not write (a save_period run killed writing its epochN.pt):
    # the next save must clear it, not move it into place (or fail to load it).
    (wdir / ".staging" / "epoch9.pt").write_bytes(last.read_bytes()[:1000])

    resumed, seen = _resume(last)
    assert seen == {"start": 1, "method_restored": True}
    assert _leftovers(wdir) == [] and not (wdir / "epoch9.pt").exists()  # the resumed run's saves cleared/replaced them
    assert _epochs(resumed.csv) == [1, 2]  # epoch 2 once, though the killed run had logged it before its save
    final = _load(last)
    assert final["yolokd"]["spec"]["method"] == "mimic" and "state_dict" not in final["yolokd"]  # finished cleanly


# ------------------------------------------------------------------------------------------------- teacher cache
class _FakeFinetune:
    """Stands in for Ultralytics' DetectionTrainer in ``finetune_teacher``: writes a best.pt at once, records calls.

    With ``die`` set, the training instead writes half a best.pt and raises, as a run killed mid-way would leave it.
    """

    calls: list[dict] = []
    die = False

    def __init__(self, overrides):
        self.overrides = overrides
        self.metrics = {"metrics/mAP50(B)": 0.5, "metrics/mAP50-95(B)": 0.25, "fitness": 0.3}

    def train(self):
        out = Path(self.overrides["project"]) / self.overrides["name"]
        type(self).calls.append({**self.overrides, "marker_while_training": (out / "teacher.json").exists()})
        (out / "weights").mkdir(parents=True, exist_ok=True)
        torch.save({"fake": len(type(self).calls)}, out / "weights" / "best.pt")
        if type(self).die:
            type(self).die = False
            (out / "weights" / "best.pt").write_bytes((out / "weights" / "best.pt").read_bytes()[:10])
            raise KeyboardInterrupt("killed while fine-tuning the teacher")


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A private teacher cache and the fake trainer; returns a function that fine-tunes (or reuses) the teacher."""
    import ultralytics.models.yolo.detect as detect

    from yolokd.engine.teacher import finetune_teacher

    monkeypatch.setenv("YOLOKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(detect, "DetectionTrainer", _FakeFinetune)
    monkeypatch.setattr(_FakeFinetune, "calls", [])
    monkeypatch.setattr(_FakeFinetune, "die", False)
    teacher, data = tmp_path / "t.pt", tmp_path / "d.yaml"
    teacher.write_bytes(b"teacher weights")
    data.write_text("names: [a]\n")

    def run():
        return finetune_teacher(str(teacher), str(data), epochs=1, imgsz=64, batch=2, workers=0)

    return run


def test_complete_cached_teacher_is_reused_without_training(fake_cache, tmp_path):
    """Guards against: a complete cache entry (teacher.json + best.pt) being trained again, or reused with other
    metrics than the ones it recorded."""
    best, metrics = fake_cache()
    assert len(_FakeFinetune.calls) == 1 and (best.parent.parent / "teacher.json").exists()
    assert best.is_relative_to(tmp_path / "cache" / "teachers")
    again, metrics2 = fake_cache()
    assert len(_FakeFinetune.calls) == 1  # reused
    assert again == best and metrics2 == metrics == {"metrics/mAP50(B)": 0.5, "metrics/mAP50-95(B)": 0.25,
                                                      "fitness": 0.3}
    assert _load(best) == {"fake": 1}


@pytest.mark.parametrize("damage", ["killed_mid_training", "no_marker", "truncated_best_no_marker",
                                    "marker_without_best", "marker_tmp_only"])
def test_half_written_cached_teacher_is_never_reused(fake_cache, damage):
    """Guards against: reusing a cache entry whose fine-tuning did not complete (a fine-tuning that died half-way;
    best.pt present or torn but no teacher.json marker; a marker whose best.pt is gone; only the marker's temp file),
    and a marker that exists while best.pt is still being written."""
    if damage == "killed_mid_training":
        _FakeFinetune.die = True
        with pytest.raises(KeyboardInterrupt):
            fake_cache()
        (call,) = _FakeFinetune.calls
        out = Path(call["project"]) / call["name"]
        best, marker = out / "weights" / "best.pt", out / "teacher.json"
        assert best.exists() and not marker.exists()  # what the dead run left: a torn best.pt and no marker
    else:
        best, _ = fake_cache()
        marker = best.parent.parent / "teacher.json"
        if damage in {"no_marker", "truncated_best_no_marker", "marker_tmp_only"}:
            if damage == "marker_tmp_only":
                marker.with_suffix(".tmp").write_text(marker.read_text()[:20])  # killed while writing the marker
            marker.unlink()
        if damage == "truncated_best_no_marker":
            best.write_bytes(best.read_bytes()[:10])
        if damage == "marker_without_best":
            best.unlink()
    again, metrics = fake_cache()
    assert len(_FakeFinetune.calls) == 2  # trained again
    assert again == best and marker.exists() and _load(best) == {"fake": 2}
    assert metrics["metrics/mAP50-95(B)"] == 0.25 and json.loads(marker.read_text())["metrics"] == metrics
    assert not any(c["marker_while_training"] for c in _FakeFinetune.calls)  # the marker comes after best.pt
    assert fake_cache()[0] == best and len(_FakeFinetune.calls) == 2  # and from now on it is reused
