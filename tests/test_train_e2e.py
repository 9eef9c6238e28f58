"""End-to-end training on CPU with tiny settings: the trainer's promises, checked on real runs."""

from __future__ import annotations

import csv
import hashlib
import os
import re

import pytest
import torch

from conftest import TINY, load_without_yolokd, make_trainer, shared_file
from test_fgd import FULL_FGD
from yolokd.engine.models import KDConfigError, head_channels
from yolokd.methods import canonical_name
from yolokd.methods.compose import Composite


def _hash_state(module: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (BN running stats included)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _plain_student_keys() -> list[str]:
    from ultralytics.nn.tasks import DetectionModel

    return sorted(DetectionModel("yolov8n.yaml", nc=3, verbose=False).state_dict())


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]


#: Per-method settings of the end-to-end run: gkd's lambda_global is 0 by default (its gkd_glob column would be 0 by
#: design), and its run also checks the method's pictures (plots=True). ld's box term is weighted like the DFL loss,
#: by target scores that are ~1e-4 for a random-init student, between two nearly uniform random-init distributions:
#: ~3e-6 per image, below the 5 decimals results.csv keeps, so its weight is raised to make the column show. `aid`
#: (fkd+aid) runs as self-distillation (teacher and student both yolov8n), fgd+aid at per-object granularity. FGD runs
#: as the paper's full method (its defaults keep the foreground term only), so that every term and the GcBlocks train.
E2E_EXTRA = {"gkd": dict(lambda_global=1e-3, plots=True), "ld": dict(box_weight=1e4),
             "aid": dict(teacher="yolov8n.yaml"), "fgd": FULL_FGD, "fgd+aid": dict(granularity="object", **FULL_FGD)}


@pytest.mark.parametrize("method,terms", [("none", ()), ("mimic", ("mimic",)), ("ultralytics", ("dis",)),
                                          ("fgd", ("fgd_fg", "fgd_bg", "fgd_at", "fgd_gl")),
                                          ("gkd", ("gkd_map", "gkd_box", "gkd_att", "gkd_glob")),
                                          ("ld", ("ld_box", "ld_cls")), ("cwd", ("cwd",)), ("pkd", ("pkd",)),
                                          ("mgd", ("mgd",)), ("aid", ("fkd_feat", "fkd_chan", "fkd_spat", "fkd_nl")),
                                          ("fgd+aid", ("fgd_fg", "fgd_bg", "fgd_at", "fgd_gl"))])
def test_train_end_to_end(tmp_path, tiny_data, method, terms):
    trainer = make_trainer(tmp_path, tiny_data, method=method, **E2E_EXTRA.get(method, {}))
    seen = {}

    def after_setup(tr):
        seen["method_state"] = {k: v.clone() for k, v in tr.method.state_dict().items()}
        opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
        seen["teacher_in_optimizer"] = tr.teacher is not None and any(id(p) in opt_ids for p in tr.teacher.parameters())
        seen["method_in_optimizer"] = all(id(p) in opt_ids for p in tr.method.parameters())

    trainer.add_callback("on_pretrain_routine_end", after_setup)
    teacher_hash = _hash_state(trainer.teacher) if trainer.teacher is not None else None
    trainer.train()

    if method == "none":
        assert trainer.teacher is None  # never loaded, never run
    else:
        assert _hash_state(trainer.teacher) == teacher_hash and not trainer.teacher.training
        assert not seen["teacher_in_optimizer"] and seen["method_in_optimizer"]
        state = trainer.method.state_dict()
        parts = list(trainer.method.named_children())
        if isinstance(trainer.method, Composite):  # a composed method: the parts of each of its methods
            parts = [(f"{name}.{p}", m) for name, sub in parts for p, m in sub.named_children()]
        for part, mod in parts:  # every trainable part was optimised (fgd: the GcBlocks' zero-initialised last layers
            if any(True for _ in mod.parameters()):  # included)
                assert any(not torch.equal(v, seen["method_state"][k]) for k, v in state.items()
                           if k.startswith(part + ".")), f"{part} was not optimised"

    rows = _rows(trainer.csv)
    assert len(rows) == 2
    for term in terms:  # every KD term logged, finite and non-zero
        assert 0 < float(rows[-1][f"train/{term}_loss"]) < float("inf"), term
    if terms:
        assert float(rows[-1]["train/kd_det_ratio"]) > 0
        # the gradient ratio, measured on each epoch's first batch: every method's terms reach the student
        assert all(0 < float(r["train/kd_det_grad_ratio"]) < float("inf") for r in rows), method
    else:
        assert not any(k.startswith("train/") and k.endswith("_loss") and k.split("/")[1].split("_")[0]
                       not in {"box", "cls", "dfl"} for k in rows[-1])
    if "aid" in method:  # AID's weights of each epoch: in (0, 1], min <= mean <= max
        lo, mean, hi = (float(rows[-1][f"aid/w_{k}"]) for k in ("min", "mean", "max"))
        assert 0 < lo <= mean <= hi <= 1
    if method == "aid":  # self-distillation: the same architecture on both sides
        assert head_channels(trainer.teacher) == head_channels(trainer.model) and trainer.kd.method == "fkd+aid"

    if trainer.args.plots:  # the method's maps of the first batch of the first and last epoch, next to train_batch*
        pictures = sorted(p.name for p in trainer.save_dir.glob(f"{method}_maps_epoch*.jpg"))
        assert pictures == [f"{method}_maps_epoch{e}_P{k}.jpg" for e in (1, 2) for k in (3, 4, 5)]
        assert any(trainer.save_dir.glob("train_batch*.jpg"))

    files = [trainer.last, trainer.best]
    seen_by_ultralytics = load_without_yolokd(*files)
    keys = _plain_student_keys()
    for f in files:
        info = seen_by_ultralytics[str(f)]
        assert info["unsafe_yolokd"] == [] and info["cls"] == "DetectionModel"
        assert info["keys"] == keys  # exactly a plain student: no connector, no GcBlock, no teacher
        ck = torch.load(f, map_location="cpu", weights_only=False)
        spec = ck["yolokd"]["spec"]
        assert spec["method"] == canonical_name(method) and "state_dict" not in ck["yolokd"]  # final: settings only


@pytest.mark.parametrize("method,term", [("mimic", "mimic"), ("fgd+aid", "fgd_fg")])
def test_interrupted_run_loads_plainly_and_resumes_with_its_method(tmp_path, tiny_data, method, term):
    trainer = make_trainer(tmp_path, tiny_data, method=method, epochs=3)

    def crash(tr):
        raise KeyboardInterrupt("simulated kill after the first checkpoint")

    trainer.add_callback("on_model_save", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    last = trainer.last
    ck = torch.load(last, map_location="cpu", weights_only=False)
    assert ck["epoch"] == 0 and "state_dict" in ck["yolokd"]  # mid-run checkpoint: resumable KD state inside
    info = load_without_yolokd(last)[str(last)]
    assert info["unsafe_yolokd"] == [] and info["keys"] == _plain_student_keys()
    assert not (last.parent / ".staging").exists()

    from yolokd.engine.trainer import KDTrainer

    with pytest.raises(KDConfigError, match=re.escape(f"method={method};")):
        KDTrainer(overrides={"resume": str(last), "method": "ultralytics"})

    resumed = KDTrainer(overrides={"resume": str(last), "method": method})
    assert resumed.kd.method == method and resumed.kd.hparams == ck["yolokd"]["spec"]["hparams"]
    restored = {}

    def check_state(tr):
        restored["equal"] = all(torch.equal(v, ck["yolokd"]["state_dict"][k]) for k, v in tr.method.state_dict().items())
        restored["start"] = tr.start_epoch

    resumed.add_callback("on_pretrain_routine_end", check_state)
    resumed.train()
    assert restored == {"equal": True, "start": 1}
    rows = _rows(resumed.csv)
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3] and float(rows[-1][f"train/{term}_loss"]) > 0


def test_nan_recovery_restores_the_method_state(tmp_path, tiny_data):
    trainer = make_trainer(tmp_path, tiny_data, method="mimic", epochs=3)
    flag = {}

    def poison(tr):
        if tr.epoch == 1 and "poisoned" not in flag:
            flag["poisoned"] = True
            tr.loss = torch.tensor(float("nan"))

    def check(tr):
        if flag.get("poisoned") and "checked" not in flag:
            flag["checked"] = True
            saved = torch.load(tr.last, map_location="cpu", weights_only=False)["yolokd"]["state_dict"]
            flag["equal"] = all(torch.equal(v.cpu(), saved[k]) for k, v in tr.method.state_dict().items())

    trainer.add_callback("on_train_epoch_end", poison)
    trainer.add_callback("on_train_epoch_start", check)
    trainer.train()
    assert flag == {"poisoned": True, "checked": True, "equal": True}


def _save_teacher(path, nc=3, ch=3, cfg="yolov8n.yaml"):
    from ultralytics.nn.tasks import DetectionModel

    m = DetectionModel(cfg, nc=nc, ch=ch, verbose=False)
    m.names = {i: f"class{i}" for i in range(nc)} if nc != 3 else {0: "car", 1: "pedestrian", 2: "cyclist"}
    torch.save({"model": m.half()}, path)
    return str(path)


def test_class_mismatch_explains_the_two_step_recipe(tmp_path, tiny_data):
    t = _save_teacher(tmp_path / "t5.pt", nc=5)
    with pytest.raises(KDConfigError, match=r"teacher has 5 classes but the dataset has 3.*teacher_epochs"):
        make_trainer(tmp_path, tiny_data, teacher=t)


def test_coco_teacher_on_driving_data_is_refused_with_recipe(tmp_path, tiny_data):
    coco = shared_file("weights/yolov8s.pt")
    with pytest.raises(KDConfigError, match=r"80 classes but the dataset has 3.*person.*car.*teacher_epochs"):
        make_trainer(tmp_path, tiny_data, teacher=str(coco))


def test_channel_and_stride_mismatch(tmp_path, tiny_data):
    with pytest.raises(KDConfigError, match="teacher takes 1 input channels but the dataset has 3"):
        make_trainer(tmp_path, tiny_data, teacher=_save_teacher(tmp_path / "c1.pt", ch=1))
    p6 = _save_teacher(tmp_path / "p6.pt", cfg="yolov8-p6.yaml")
    with pytest.raises(KDConfigError, match=r"strides \[8, 16, 32, 64\] differ from the student's \[8, 16, 32\]"):
        make_trainer(tmp_path, tiny_data, teacher=p6)  # at construction: before any dataloader or teacher fine-tune


def test_bad_arguments_fail_before_anything_runs(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="unknown method 'mimik'"):
        make_trainer(tmp_path, tiny_data, method="mimik")
    with pytest.raises(ValueError, match="unknown argument 'epoch'.*'epochs'"):
        make_trainer(tmp_path, tiny_data, epoch=3)
    with pytest.raises(ValueError, match="'dis_weight' is a hyperparameter of method ultralytics"):
        make_trainer(tmp_path, tiny_data, method="mimic", dis_weight=1.0)
    with pytest.raises(KDConfigError, match="needs a teacher"):
        make_trainer(tmp_path, tiny_data, teacher=None)
    with pytest.raises(FileNotFoundError, match="yolov8x.pt' not found.*teacher=yolov8x.yaml"):
        make_trainer(tmp_path, tiny_data, teacher="yolov8x")
    for bad in (-1, 2.5, "four"):
        with pytest.raises(ValueError, match=f"close_kd={bad!r}: expected a whole number of final epochs"):
            make_trainer(tmp_path, tiny_data, close_kd=bad)
    with pytest.raises(KDConfigError, match="close_kd=2 with epochs=2 leaves no epoch to distil in"):
        make_trainer(tmp_path, tiny_data, close_kd=2, epochs=2)
    assert not (tmp_path / "run").exists()  # nothing was created


def test_close_kd_trains_the_final_epochs_on_the_detection_loss_alone(tmp_path, tiny_data):
    trainer = make_trainer(tmp_path, tiny_data, method="mimic", epochs=3, close_kd=1)
    teacher_runs = []
    trainer.teacher.register_forward_hook(lambda *_: teacher_runs.append(trainer.epoch))
    trainer.train()
    rows = _rows(trainer.csv)
    assert [float(r["train/mimic_loss"]) > 0 for r in rows] == [True, True, False]
    assert float(rows[-1]["train/mimic_loss"]) == 0 and float(rows[-1]["train/cls_loss"]) > 0  # still training
    assert teacher_runs and set(teacher_runs) == {0, 1}  # the closed epoch never runs the teacher
    assert torch.load(trainer.last, map_location="cpu", weights_only=False)["yolokd"]["spec"]["close_kd"] == 1


def test_teacher_finetune_one_command_path_is_cached(tmp_path, tiny_data):
    t = _save_teacher(tmp_path / "t5.pt", nc=5)
    first = make_trainer(tmp_path, tiny_data, teacher=t, teacher_epochs=1)
    assert "metrics/mAP50-95(B)" in first.teacher_metrics
    from yolokd.engine.models import detect_head

    assert int(detect_head(first.teacher).nc) == 3 and first.kd.teacher.endswith("best.pt")
    mtime = os.path.getmtime(first.kd.teacher)
    second = make_trainer(tmp_path, tiny_data, teacher=t, teacher_epochs=1)
    assert second.kd.teacher == first.kd.teacher and os.path.getmtime(second.kd.teacher) == mtime
    second.train()  # and it distils
    assert float(_rows(second.csv)[-1]["train/mimic_loss"]) > 0


def test_multi_gpu_relaunch_rebuilds_the_kd_trainer(tmp_path, tiny_data):
    """Ultralytics' DDP relaunch, minus NCCL: its generated worker script rebuilds the trainer from the cloudpickled
    class, ``vars(args)`` and callbacks; run without torch.distributed it trains in one CPU process."""
    import subprocess
    import sys

    from ultralytics.utils.dist import generate_ddp_file

    trainer = make_trainer(tmp_path, tiny_data, method="mimic", weight=2.5, epochs=1)
    with trainer.kd_in_args():
        script = generate_ddp_file(trainer)
    assert not hasattr(trainer.args, "method")  # args hold Ultralytics keys only outside the relaunch
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "yolokd: method=mimic {'weight': 2.5}" in r.stdout + r.stderr
    assert float(_rows(trainer.csv)[-1]["train/mimic_loss"]) > 0


def test_teacher_with_same_count_but_other_names_is_fine_tuned_too(tmp_path, tiny_data):
    from ultralytics.nn.tasks import DetectionModel

    m = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    m.names = {0: "truck", 1: "bus", 2: "van"}
    torch.save({"model": m.half()}, tmp_path / "other.pt")
    with pytest.raises(KDConfigError, match="differ from the dataset's"):
        make_trainer(tmp_path, tiny_data, teacher=str(tmp_path / "other.pt"))
    tr = make_trainer(tmp_path, tiny_data, teacher=str(tmp_path / "other.pt"), teacher_epochs=1)
    assert tr.teacher.names == {0: "car", 1: "pedestrian", 2: "cyclist"}


def test_kd_set_up_draws_nothing_from_the_run_s_random_streams(tmp_path, tiny_data):
    """A seed fixes a run only if yolokd's checks between Ultralytics' ``init_seeds`` and training (teacher and student
    loading, the label check, ...) take no draw from Python's, NumPy's or torch's generator: one ``random.sample`` in
    the label check once shifted every later run's augmentation stream. Compared with a plain DetectionTrainer."""
    import random

    import numpy as np
    from ultralytics.models.yolo.detect import DetectionTrainer

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    args = dict(TINY, model="yolov8n.yaml", data=tiny_data, project=str(tmp_path), exist_ok=True)
    DetectionTrainer(overrides=dict(args, name="plain"))
    plain = draws()
    make_trainer(tmp_path, tiny_data, name="kd", method="fgd")
    assert draws() == plain
