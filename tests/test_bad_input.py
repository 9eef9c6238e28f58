"""The bad-input matrix: every case is a ``yolokd`` command a user might type, run through the CLI in-process.

Each case must end with exit code 2 and one clear line on stderr (what is wrong, the values, how to fix it), before
any training, with no traceback and nothing on disk changed (no run folder left behind, no input file touched).
``docs/reliability.md`` is generated from this table and the messages the code actually prints, and a test fails when
the committed page differs (regenerate it: ``YOLOKD_WRITE_DOCS=1 make test`` or run this file alone with it).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TINY

from yolokd.cli import run
from yolokd.methods import METHODS, MODIFIERS, check_method, method_defaults

DOC = REPO / "docs" / "reliability.md"


@dataclass(frozen=True)
class Case:
    """A user's command (``{name}`` fields are files of the ``world`` fixture) and what its error must say."""

    id: str
    what: str  # what the user did, for the docs
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # regexes the message must match (the values involved and the fix)


TRAIN = ("train", "data={data}", "project={project}", "name={case}", "epochs=1", "imgsz=64", "batch=8", "workers=0",
         "device=cpu")


def train(*extra: str, teacher: str = "teacher={teacher}") -> tuple[str, ...]:
    """``yolokd train`` on the tiny data with the good teacher, plus ``extra``."""
    return (*TRAIN, teacher, *extra)


def on_data(data: str) -> tuple[str, ...]:
    """``yolokd train`` with the good teacher on another dataset."""
    return ("train", f"data={data}", *TRAIN[2:], "teacher={teacher}")


CASES = [
    # ------------------------------------------------------------------ models
    Case("teacher-missing", "teacher file does not exist", train(teacher="teacher={tmp}/nowhere/yolov8x.pt"),
         (r"teacher weights '.*nowhere/yolov8x.pt' not found", r"never downloads", r"teacher=yolov8x.yaml")),
    Case("teacher-corrupt", "teacher file is not a checkpoint (random bytes)", train(teacher="teacher={corrupt}"),
         (r"teacher=.*corrupt.pt", r"not a readable PyTorch checkpoint", r"re-export|copy")),
    Case("teacher-truncated", "teacher file cut short (an interrupted copy)", train(teacher="teacher={truncated}"),
         (r"teacher=.*truncated.pt", r"not a readable PyTorch checkpoint", r"truncated|incomplete")),
    Case("teacher-not-checkpoint", "teacher .pt holds no model (e.g. a bare state_dict)",
         train(teacher="teacher={state_dict}"), (r"teacher=.*state_dict.pt", r"no model", r"Ultralytics checkpoint")),
    Case("teacher-not-detection", "teacher is a classification model", train(teacher="teacher={cls}"),
         (r"teacher=.*cls.pt", r"ClassificationModel", r"detection")),
    Case("student-missing", "student file does not exist", train("student={tmp}/nowhere/yolov8n.pt"),
         (r"student weights '.*nowhere/yolov8n.pt' not found", r"student=yolov8n.yaml")),
    Case("student-corrupt", "student file is not a checkpoint", train("student={corrupt}"),
         (r"student=.*corrupt.pt", r"not a readable PyTorch checkpoint")),
    Case("student-not-detection", "student is a classification model", train("student={cls}"),
         (r"student=.*cls.pt", r"ClassificationModel", r"detection")),
    Case("model-bad-suffix", "teacher given as an .onnx file", train(teacher="teacher={tmp}/t.onnx"),
         (r"teacher=.*t.onnx: expected a .pt checkpoint or a model .yaml",)),
    Case("classes-count", "teacher trained on 5 classes, data has 3", train(teacher="teacher={t5}"),
         (r"teacher has 5 classes but the dataset has 3", r"teacher_epochs=N")),
    Case("classes-names", "teacher has 3 classes with other names", train(teacher="teacher={names}"),
         (r"teacher class names .*truck.* differ from the dataset's .*car", r"teacher_epochs=N")),
    Case("channels", "teacher takes 1 input channel, data has 3", train(teacher="teacher={c1}"),
         (r"teacher takes 1 input channels but the dataset has 3", r"channels")),
    Case("head-levels", "teacher with 4 detection levels (P3-P6), student P3-P5", train(teacher="teacher={p6}"),
         (r"strides \[8, 16, 32, 64\] differ from the student's \[8, 16, 32\]", r"same detection levels")),
    Case("teacher-epochs-not-needed", "teacher_epochs= with a teacher that already matches the data",
         train("teacher_epochs=5"), (r"teacher_epochs=5", r"already .*dataset's 3 classes", r"drop teacher_epochs")),
    Case("close-kd-fraction", "close_kd= not a whole number of epochs", train("close_kd=0.5"),
         (r"close_kd=0.5: expected a whole number of final epochs",)),
    Case("close-kd-all-epochs", "close_kd= as long as the whole run", train("close_kd=1"),
         (r"close_kd=1 with epochs=1 leaves no epoch to distil in", r"method=none")),
    # ------------------------------------------------------------------ methods
    Case("method-unknown", "a misspelt method", train("method=fgdd"), (r"unknown method 'fgdd'", r"fgd")),
    Case("hparam-unknown", "a hyperparameter the method does not have", train("method=fgd", "tau=2"),
         (r"unknown argument 'tau'", r"hyperparameters of method 'fgd'")),
    Case("hparam-other-method", "another method's hyperparameter", train("method=mimic", "dis_weight=1.0"),
         (r"'dis_weight' is a hyperparameter of method ultralytics",)),
    Case("hparam-negative-weight", "a negative loss weight", train("method=mimic", "weight=-1"),
         (r"method 'mimic': weight must be >= 0, got -1",)),
    Case("hparam-non-numeric", "a word where a number belongs", train("method=fgd", "alpha=big"),
         (r"method 'fgd': alpha='big' is not a float",)),
    Case("hparam-temperature-zero", "temperature 0", train("method=ld", "box_temperature=0"),
         (r"method 'ld': box_temperature must be > 0, got 0",)),
    Case("hparam-ratio-range", "a mask ratio above 1", train("method=mgd", "lambda_mgd=1.5"),
         (r"method 'mgd': lambda_mgd must lie in \[0, 1\), got 1.5",)),
    Case("hparam-bad-choice", "an option that does not exist", train("method=gkd", "grad_path=partial"),
         (r"method 'gkd': grad_path='partial' must be one of total, direct",)),
    Case("compose-twice", "a method combined with itself", train("method=fgd+fgd"), (r"names fgd twice",)),
    Case("compose-modifier-twice", "a modifier twice", train("method=fgd+aid+aid"), (r"names aid twice",)),
    Case("compose-none", "the plain student combined with a modifier", train("method=none+aid"),
         (r"'none' has no distillation term", r"method=none")),
    Case("compose-ambiguous", "a hyperparameter two parts share, without saying whose", train("method=fgd+aid",
         "alpha=0.2"), (r"'alpha' is a hyperparameter of fgd and aid", r"aid.alpha=")),
    # ------------------------------------------------------------------ data
    Case("data-missing", "dataset YAML does not exist", on_data("{tmp}/nowhere.yaml"),
         (r"dataset .*nowhere.yaml.*does not exist", r"data=path/to/data.yaml")),
    Case("data-no-images", "dataset whose train folder has no images", on_data("{no_images}"),
         (r"no images", r"no_images", r"train")),
    Case("data-no-labels", "images but no label files", on_data("{no_labels}"), (r"no labels", r"labels")),
    Case("data-class-id", "a label with class id 7 in a 3-class dataset", on_data("{bad_class}"),
         (r"class 7", r"3 classes", r"\.txt")),
    # ------------------------------------------------------------------ resume
    Case("resume-missing", "resume= a file that does not exist", ("train", "resume={tmp}/nowhere/last.pt"),
         (r"resume checkpoint not found: .*nowhere/last.pt",)),
    Case("resume-finished", "resume= a run that already finished", ("train", "resume={finished}"),
         (r"finished", r"start a new run")),
    Case("resume-not-yolokd", "resume= a plain Ultralytics run", ("train", "resume={plain_run}"),
         (r"not a yolokd run", r"yolo train resume=")),
    Case("resume-teacher-moved", "resume= after the teacher file was moved away", ("train", "resume={moved}"),
         (r"teacher .*gone.pt.* no longer exists", r"resume=.* teacher=")),
    # ------------------------------------------------------------------ export, bench, CLI
    Case("export-missing", "export a checkpoint that does not exist", ("export", "model={tmp}/nowhere/best.pt",
         "format=onnx"), (r"nowhere/best.pt", r"not found")),
    Case("export-not-detection", "export a classification checkpoint", ("export", "model={cls}", "format=onnx"),
         (r"cls.pt", r"ClassificationModel", r"detection")),
    Case("bench-protocol", "bench with an unknown protocol", ("bench", "protocol=kitti-2k", "methods=none"),
         (r"unknown protocol 'kitti-2k'", r"kitti-1k")),
    Case("bench-method", "bench with an unknown method", ("bench", "protocol=synthetic", "methods=none,mimik"),
         (r"unknown method 'mimik'", r"mimic")),
    Case("cli-not-key-value", "an argument without '='", ("train", "epochs"), (r"expected key=value, got 'epochs'",)),
    Case("cli-unknown-argument", "a misspelt training argument", train("epoch=3"),
         (r"unknown argument 'epoch'", r"'epochs'")),
]


def _save(model, path: Path, **extra) -> str:
    torch.save({"model": model, **extra}, path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_data) -> dict[str, str]:
    """The files the cases point at: broken and mismatched models, broken datasets, runs to resume."""
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel

    from yolokd.engine.trainer import KDTrainer

    tmp = tmp_path_factory.mktemp("bad-input")
    names = {0: "car", 1: "pedestrian", 2: "cyclist"}

    def det(cfg="yolov8n.yaml", nc=3, ch=3, nm=None):
        m = DetectionModel(cfg, nc=nc, ch=ch, verbose=False)
        m.names = nm or (names if nc == 3 else {i: f"c{i}" for i in range(nc)})
        return m.half()

    w = {"tmp": str(tmp), "data": tiny_data, "project": str(tmp / "runs")}
    w["teacher"] = _save(det(), tmp / "teacher.pt")
    raw = Path(w["teacher"]).read_bytes()
    (tmp / "corrupt.pt").write_bytes(b"\x00not a checkpoint\xff" * 64)
    (tmp / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    w["corrupt"], w["truncated"] = str(tmp / "corrupt.pt"), str(tmp / "truncated.pt")
    torch.save(det().state_dict(), tmp / "state_dict.pt")
    w["state_dict"] = str(tmp / "state_dict.pt")
    w["cls"] = _save(ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False), tmp / "cls.pt")
    w["t5"] = _save(det(nc=5), tmp / "t5.pt")
    w["names"] = _save(det(nm={0: "truck", 1: "bus", 2: "van"}), tmp / "names.pt")
    w["c1"] = _save(det(ch=1), tmp / "c1.pt")
    w["p6"] = _save(det("yolov8-p6.yaml"), tmp / "p6.pt")

    # Datasets: copies of the tiny one, broken in one way each.
    src = Path(tiny_data).parent
    for name, breaker in (("no_images", _drop_images), ("no_labels", _drop_labels), ("bad_class", _bad_class)):
        dst = tmp / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.cache"))
        cfg = yaml.safe_load(Path(tiny_data).read_text())
        cfg["path"] = str(dst)
        (dst / "data.yaml").write_text(yaml.safe_dump(cfg))
        breaker(dst)
        w[name] = str(dst / "data.yaml")

    # Runs to resume: one finished yolokd run (1 epoch), an interrupted one whose teacher was then moved, and an
    # interrupted plain Ultralytics run (the same checkpoint without yolokd's record).
    tr = KDTrainer(overrides=dict(TINY, epochs=1, teacher=w["teacher"], student="yolov8n.yaml", method="mimic",
                                  data=tiny_data, project=str(tmp / "done"), name="run"))
    tr.train()
    w["finished"] = str(tr.last)
    ck = torch.load(tr.last, map_location="cpu", weights_only=False)
    ck["epoch"] = 0  # an interrupted run: Ultralytics resumes a checkpoint whose epoch is not -1
    for k in ("optimizer", "ema", "updates"):
        ck.setdefault(k, None)
    mid = dict(ck, yolokd={**ck["yolokd"], "spec": {**ck["yolokd"]["spec"], "teacher": str(tmp / "gone.pt")},
                           "state_dict": {}})
    (tmp / "moved" / "weights").mkdir(parents=True)
    torch.save(mid, tmp / "moved" / "weights" / "last.pt")
    w["moved"] = str(tmp / "moved" / "weights" / "last.pt")
    from yolokd.methods import build_method

    state = build_method("mimic", [64, 128, 256], [64, 128, 256]).state_dict()
    tuned = dict(ck, yolokd={**ck["yolokd"], "spec": {**ck["yolokd"]["spec"], "teacher_epochs": 3}, "state_dict": state})
    (tmp / "tuned" / "weights").mkdir(parents=True)
    torch.save(tuned, tmp / "tuned" / "weights" / "last.pt")
    w["tuned_run"] = str(tmp / "tuned" / "weights" / "last.pt")
    plain = {k: v for k, v in ck.items() if k != "yolokd"}
    (tmp / "plain" / "weights").mkdir(parents=True)
    torch.save(plain, tmp / "plain" / "weights" / "last.pt")
    w["plain_run"] = str(tmp / "plain" / "weights" / "last.pt")
    return w


def test_a_run_started_with_teacher_epochs_resumes_with_its_fine_tuned_teacher(world):
    """Such a run stores the fine-tuned teacher (which matches the data) with teacher_epochs=N: resuming must neither
    fine-tune again nor refuse it as 'teacher_epochs with a matching teacher'."""
    from yolokd.engine.trainer import KDTrainer

    tr = KDTrainer(overrides={"resume": world["tuned_run"]})
    assert tr.kd.teacher == world["teacher"] and tr.kd.teacher_epochs == 0 and tr.teacher is not None


def _drop_images(root: Path) -> None:
    for f in (root / "images" / "train").iterdir():
        f.unlink()


def _drop_labels(root: Path) -> None:
    shutil.rmtree(root / "labels")


def _bad_class(root: Path) -> None:
    f = sorted((root / "labels" / "train").glob("*.txt"))[0]
    f.write_text("7 0.5 0.5 0.1 0.1\n" + f.read_text())


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time; label caches Ultralytics writes are left out."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and p.suffix != ".cache"}


def _invoke(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(argv)
    return code, out.getvalue(), err.getvalue()


_SEEN: dict[str, tuple[int, str]] = {}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_early_and_clearly(case, world, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing may be written into the working directory either
    argv = [a.format(**world, case=case.id) for a in case.argv]
    before = _snapshot(Path(world["tmp"]))
    code, out, err = _invoke(argv)
    msg = err.strip()
    assert code == 2, f"exit code {code}, stderr: {err[-2000:]}"
    assert msg.startswith("yolokd: error: ") and "Traceback" not in err, err
    for pattern in case.expect:
        assert re.search(pattern, msg), f"{pattern!r} not in: {msg}"
    assert not (Path(world["project"]) / case.id).exists(), "a run folder was left behind"
    after = _snapshot(Path(world["tmp"]))
    assert {k: v for k, v in after.items() if k in before} == before, "an input file was changed or removed"
    assert not [k for k in after if k not in before], f"files were written: {[k for k in after if k not in before]}"
    assert not any(tmp_path.iterdir()), f"files written into the working directory: {list(tmp_path.iterdir())}"
    _SEEN[case.id] = (code, _portable(msg, world["tmp"]))


def _portable(msg: str, tmp: str) -> str:
    """The message as the docs show it: without this machine's folders and file sizes."""
    msg = msg.replace(tmp, "<tmp>")
    msg = re.sub(r"in \S+/weights\)", "in <weights_dir>)", msg)  # Ultralytics' weights_dir setting
    return re.sub(r"\(\d[\d,]* bytes", "(<size> bytes", msg)


@pytest.mark.parametrize("name", sorted(set(METHODS) | {f"fgd+{m}" for m in MODIFIERS}))
def test_every_hyperparameter_of_every_method_refuses_bad_values(name):
    """Negative or NaN numbers, words where numbers belong, unknown options and non-booleans: each is a ValueError that
    names the hyperparameter, raised by ``check_method`` (what ``yolokd train`` calls before loading anything)."""
    checked = 0
    for key, default in method_defaults(name).items():
        if isinstance(default, bool):
            bad = ["maybe"]
        elif isinstance(default, (int, float)):
            bad = [-1, float("nan"), "big"]
        elif isinstance(default, str):
            bad = ["bogus"]
        else:
            continue
        for value in bad:
            with pytest.raises(ValueError, match=re.escape(key.split(".")[-1])):
                check_method(name, {key: value})
            checked += 1
    assert checked >= 1 or name == "none"
    check_method(name, {})  # and the defaults themselves are valid


def test_reliability_doc_lists_every_case_as_the_code_prints_it():
    """Runs after the matrix (same module): the committed page must equal the one generated from the messages."""
    if len(_SEEN) != len(CASES):
        pytest.skip("the bad-input matrix did not run completely in this session (run the whole file)")
    page = render_doc(_SEEN)
    if os.environ.get("YOLOKD_WRITE_DOCS"):
        DOC.write_text(page)
    assert DOC.read_text() == page, f"{DOC} is out of date: regenerate with YOLOKD_WRITE_DOCS=1 pytest {__file__}"


def render_doc(seen: dict[str, tuple[int, str]]) -> str:
    rows = ["| case | what the user did | command | exit | what the user sees (stderr) |", "|---|---|---|---|---|"]
    for c in CASES:
        code, msg = seen[c.id]
        cmd = "yolokd " + " ".join(a for a in c.argv if not a.startswith(("project=", "name=", "imgsz=", "batch=",
                                                                          "workers=", "device=", "epochs=1")))
        cmd = cmd.replace("{tmp}", "<tmp>").replace("{", "<").replace("}", ">")
        rows.append(f"| {c.id} | {c.what} | `{cmd}` | {code} | {msg.replace('|', '&#124;')} |")
    return _HEAD + "\n".join(rows) + "\n" + _TAIL


_HEAD = """# Reliability: what a user sees when something is wrong

Generated by `tests/test_bad_input.py` from the messages the code prints (a test fails when this page differs from
them; regenerate with `YOLOKD_WRITE_DOCS=1 .venv/bin/python -m pytest tests/test_bad_input.py`). `<tmp>` stands for
the test's scratch folder; `<data>`, `<teacher>`, ... for the files the test prepares (see its `world` fixture).

## Bad input

Every case ends before any training with exit code 2 and the one line below on stderr (no traceback), leaves no run
folder behind and changes no file. Failed benchmark runs and broken exports exit with 1 (their logs have details).

"""

_TAIL = """
## Interrupted runs, non-finite losses, multi-GPU

| situation | what happens | tested by |
|---|---|---|
| a run is killed (SIGKILL) mid-epoch | `yolokd train resume=.../weights/last.pt` continues from the last finished epoch with the method's state (connectors, generators) restored; nothing before the interrupted epoch is lost | `tests/test_interrupt.py` |
| a kill during a checkpoint save | checkpoints are written to `weights/.staging` or a `.tmp` file and moved into place with `os.replace`: `last.pt` is always the previous complete checkpoint or the new one, never a torn file | `tests/test_interrupt.py` |
| a kill while a teacher is being fine-tuned (`teacher_epochs=`) | the cached teacher counts as done only once its `teacher.json` marker is written after `best.pt`; a half-written entry is trained again, never reused | `tests/test_interrupt.py` |
| an interrupted `yolokd bench` | rerunning the same command skips finished runs and resumes the rest | `tests/test_bench.py` |
| a training step whose KD terms are NaN/Inf | that step trains on the detection loss alone (the method's buffers are restored), the count is logged per epoch in `results.csv` (`kd/nonfinite_steps`) with one warning; after 50 such steps in a row the run stops with `NonFiniteKDError` and advice | `tests/test_reliability.py` |
| exploding method gradients | the method's parameters are clipped to norm 10 like the student's (in AMP's scaled space) | `tests/test_reliability.py` |
| several GPUs (`device=0,1`) | Ultralytics' DDP relaunch rebuilds the KD trainer with its method; the method's gradients are averaged over ranks, so every rank holds the same method weights | `tests/test_train_e2e.py`, `tests/test_ddp.py` |
"""
