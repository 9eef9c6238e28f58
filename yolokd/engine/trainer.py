"""KDTrainer: Ultralytics' ``DetectionTrainer`` with a frozen teacher and a distillation method.

Design (why it looks like this):
- The student stays a plain ``DetectionModel``. The teacher and the method live beside it, and the KD loss enters
  through ``student.criterion`` (``KDCriterion``), installed after the EMA is built. So the EMA, every checkpoint
  (``last.pt``, ``best.pt``, ``epochN.pt``, also of a killed run) and every exporter see only Ultralytics classes.
- The method's trainable state (connectors, GcBlocks, ...) is optimised in extra parameter groups, saved as plain
  tensors under ``ckpt["yolokd"]`` for resume and NaN recovery, and dropped from the final checkpoints.
- A step whose KD terms are NaN/Inf trains on the detection loss alone (``KDCriterion.drop_nonfinite``); the trainer
  counts such steps per epoch (``kd/nonfinite_steps`` in results.csv, one warning per epoch) and stops after
  ``MAX_NONFINITE_STEPS`` in a row. The method's gradients are clipped like the student's (``optimizer_step``).
- Checkpoints are written to a staging folder and moved into place with ``os.replace``: a kill never leaves a torn file.
- Ultralytics' own methods are overridden and then called (``super()``); no trainer code is copied.
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolokd import __version__
from yolokd.data import resolve_data
from yolokd.data.checks import check_labels
from yolokd.engine.criterion import KDCriterion, NonFiniteKDError
from yolokd.engine.models import (
    KDConfigError,
    check_compatible,
    classes_match,
    head_channels,
    load_teacher,
    resolve_model,
    student_for_checks,
)
from yolokd.engine.spec import DEFAULT_STUDENT, KDSpec, split_overrides
from yolokd.methods import KDMethod, build_method, canonical_name, check_method, get_method
from yolokd.utils.offline import prepare_ultralytics

prepare_ultralytics()

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

#: Column of results.csv with the epoch's mean KD loss divided by its mean detection loss.
RATIO_KEY = "train/kd_det_ratio"
GRAD_RATIO_KEY = "train/kd_det_grad_ratio"  # ||grad KD|| / ||grad det|| on the student, epoch's first batch
#: What Ultralytics writes into a run folder during set-up; a folder holding only these is removed if set-up fails.
SETUP_FILES = frozenset({"args.yaml", "labels.jpg", "labels_correlogram.jpg"})
#: Column of results.csv with the number of the epoch's training steps whose KD terms were NaN/Inf (and dropped).
NONFINITE_KEY = "kd/nonfinite_steps"


class KDTrainer(DetectionTrainer):
    """Train a YOLO student with a frozen teacher and one of yolokd's distillation methods.

    Accepts every Ultralytics train argument plus ``teacher``, ``student`` (Ultralytics' ``model``), ``method``,
    ``teacher_epochs`` and the method's hyperparameters (see ``yolokd methods``).

    Examples:
        >>> trainer = KDTrainer(overrides=dict(teacher="teacher.pt", student="yolov8n.yaml", method="fgd",
        ...                                    data="kitti.yaml", epochs=100))
        >>> trainer.train()

    Attributes:
        MAX_NONFINITE_STEPS: Consecutive training steps with NaN/Inf KD terms after which the run stops
            (``NonFiniteKDError``); isolated ones are dropped, counted and logged.
        METHOD_MAX_NORM: Gradient-norm bound of the method's parameters, the student's bound in Ultralytics'
            ``optimizer_step``; the method's parameters are clipped as one group, separately from the student.
    """

    MAX_NONFINITE_STEPS: int = 50
    METHOD_MAX_NORM: float = 10.0

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks: dict | None = None):
        """Split yolokd's settings from Ultralytics' (see ``yolokd.engine.spec``), then check the teacher early."""
        overrides = dict(overrides or {})
        if overrides.get("resume"):
            spec = self._spec_for_resume(overrides)
        else:
            spec = split_overrides(overrides)
            check_method(spec.method, spec.hparams)  # bad values fail now, not after the teacher is loaded
            overrides["data"] = resolve_data(overrides.get("data"))
            overrides.setdefault("model", DEFAULT_STUDENT)
            overrides["model"] = resolve_model(overrides["model"], "student")
            if get_method(spec.method).uses_teacher:
                if not spec.teacher:
                    raise KDConfigError(f"method '{spec.method}' needs a teacher: add teacher=path/to/teacher.pt")
                spec.teacher = resolve_model(spec.teacher, "teacher")  # fail before Ultralytics creates a run folder
        self.kd: KDSpec = spec
        self.teacher: nn.Module | None = None
        self.method: KDMethod | None = None
        self.teacher_metrics: dict[str, float] = {}
        self.nonfinite_steps = 0  # this epoch's steps with NaN/Inf KD terms
        self.nonfinite_terms: set[str] = set()  # ... and their terms
        self.nonfinite_run: list[tuple[str, ...]] = []  # the current run of consecutive such steps
        with self._discard_run_on_error():
            super().__init__(cfg, overrides, _callbacks)
            if 0 < self.kd.close_kd and self.kd.close_kd >= self.args.epochs and self.kd.method != "none":
                raise KDConfigError(
                    f"close_kd={self.kd.close_kd} with epochs={self.args.epochs} leaves no epoch to distil in: use "
                    f"close_kd < epochs (e.g. close_kd={max(1, self.args.epochs // 4)}), or method=none for no "
                    f"distillation")
            for event, fn in (("on_train_epoch_start", _plot_method_maps), ("on_train_epoch_start", _reset_nonfinite),
                              ("on_train_epoch_start", _close_kd), ("on_train_epoch_start", _measure_grad_ratio),
                              ("on_train_batch_end", _count_nonfinite)):
                if fn not in self.callbacks[event]:  # a DDP relaunch brings them along
                    self.add_callback(event, fn)
            self._prepare_teacher()

    @contextmanager
    def _discard_run_on_error(self):
        """Remove the run folder Ultralytics created when set-up fails before training wrote anything into it.

        A folder holding only set-up files (``args.yaml``, label plots, an empty ``weights/``) carries nothing a user
        had; leaving it would only shift the next run's name (``train2``). Anything else is kept.
        """
        try:
            yield
        except Exception:
            save_dir = getattr(self, "save_dir", None)
            if RANK in {-1, 0} and save_dir is not None and Path(save_dir).is_dir():
                files = [f for f in Path(save_dir).rglob("*") if f.is_file()]
                if all(f.name in SETUP_FILES and f.parent == Path(save_dir) for f in files):
                    shutil.rmtree(save_dir, ignore_errors=True)
            raise

    def get_dataset(self) -> dict[str, Any]:
        """Ultralytics' dataset check, with a missing or broken dataset reported plainly, then yolokd's label check
        (``check_labels``: images present, class ids within the data's classes) before any model is loaded."""
        try:
            data = super().get_dataset()
        except RuntimeError as e:
            cause = e.__cause__ or e
            raise KDConfigError(
                f"dataset {self.args.data}: {str(cause).strip()}. Pass data=path/to/data.yaml in YOLO format (train/val "
                f"image folders, labels/ beside images/, names), or data=synthetic for the built-in scenes."
            ) from e
        if RANK in {-1, 0}:
            check_labels(data, splits=("train", "val"))
        return data

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _spec_for_resume(overrides: dict[str, Any]) -> KDSpec:
        """Read the run's KD settings back from the checkpoint being resumed; only ``teacher=`` may be re-pointed."""
        from ultralytics.utils.files import get_latest_run

        resume = overrides["resume"]
        path = Path(resume if isinstance(resume, (str, Path)) and Path(resume).exists() else get_latest_run())
        if not path.is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {resume}")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        state = ckpt.get("yolokd") or {}
        if "spec" not in state:
            raise KDConfigError(
                f"{path} is not a yolokd run (a plain Ultralytics checkpoint, without yolokd's record of teacher and "
                f"method): resume it with `yolo train resume={path}`, or start a distillation with `yolokd train`"
            )
        if "state_dict" not in state or ckpt.get("epoch", -1) == -1:
            raise KDConfigError(
                f"{path} is from a run that finished (method={state['spec'].get('method')}); there is nothing to "
                f"resume. To train longer, start a new run from it: yolokd train student={path} teacher=... epochs=N"
            )
        spec = KDSpec(**state["spec"])
        asked = overrides.pop("method", None)
        if asked is not None and canonical_name(str(asked).strip()) != spec.method:
            raise KDConfigError(f"{path} was trained with method={spec.method}; resume continues it, not method={asked}")
        spec.teacher = overrides.pop("teacher", None) or spec.teacher
        spec.teacher_epochs = 0  # a fine-tuned teacher is stored as its best.pt: resume uses it as it is
        if spec.teacher and not str(spec.teacher).endswith((".yaml", ".yml")) and not Path(spec.teacher).exists():
            raise KDConfigError(
                f"the run's teacher {spec.teacher} no longer exists (moved or deleted); say where it is now: "
                f"yolokd train resume={path} teacher=/new/path/to/{Path(spec.teacher).name}"
            )
        for k in [*spec.hparams, "student", "teacher_epochs", "close_kd"]:  # the run's own values are kept
            overrides.pop(k, None)
        return spec

    def _prepare_teacher(self) -> None:
        """Resolve, optionally fine-tune, load and check the teacher against the data, before any training."""
        cls = get_method(self.kd.method)
        student = student_for_checks(str(self.args.model), self.data) if not self.resume else None
        if not cls.uses_teacher:
            self.kd.teacher = None  # `none`: the teacher plays no part and is not loaded
            return
        src = resolve_model(self.kd.teacher, "teacher")
        teacher = load_teacher(src, self.data)
        matches = classes_match(teacher, self.data)
        if matches and self.kd.teacher_epochs > 0:
            raise KDConfigError(
                f"teacher_epochs={self.kd.teacher_epochs}, but the teacher {src} already has the dataset's "
                f"{len(self.data['names'])} classes {dict(self.data['names'])}: drop teacher_epochs to distil from it as "
                f"it is, or fine-tune it further yourself first (`yolo train model={src} data=...`)"
            )
        if not matches and self.kd.teacher_epochs > 0 and RANK in {-1, 0}:
            from yolokd.engine.teacher import finetune_teacher

            best, self.teacher_metrics = finetune_teacher(
                src, str(self.args.data), self.kd.teacher_epochs, imgsz=self.args.imgsz, batch=self.args.batch,
                device=self.args.device, workers=self.args.workers, seed=self.args.seed,
            )
            src = str(best)
            teacher = load_teacher(src, self.data)
        self.kd.teacher = src
        self.teacher = teacher
        check_compatible(teacher, self.data, src, student)  # before Ultralytics builds anything for training

    def setup_model(self):
        """Build the student as Ultralytics does, then the method (restoring its state when resuming)."""
        ckpt = super().setup_model()
        student = self.model
        if self.teacher is not None:
            check_compatible(self.teacher, self.data, self.kd.teacher, student)
            self.teacher = self.teacher.to(self.device)
        cs = head_channels(student)
        ct = head_channels(self.teacher) if self.teacher is not None else cs
        self.method = build_method(self.kd.method, cs, ct, **self.kd.hparams).to(self.device)
        if self.resume and ckpt:
            self._load_method_state(ckpt)
        return ckpt

    def _load_method_state(self, ckpt: dict) -> None:
        """Restore the method's trainable state from ``ckpt["yolokd"]``."""
        state = (ckpt.get("yolokd") or {}).get("state_dict")
        if state is None:
            raise KDConfigError("checkpoint has no yolokd method state to restore")
        self.method.load_state_dict(state)

    def resume_training(self, ckpt):
        """Ultralytics' resume, then drop the results.csv rows of epochs after the checkpoint's.

        A run killed after logging an epoch but before that epoch's checkpoint was in place (e.g. during the save)
        resumes from the previous checkpoint and trains that epoch again: without this its row would appear twice.
        """
        super().resume_training(ckpt)
        if ckpt and self.resume and RANK in {-1, 0} and self.csv.exists():
            header, *rows = self.csv.read_text(encoding="utf-8").splitlines(keepends=True)
            keep = [r for r in rows if _csv_epoch(r) is not None and _csv_epoch(r) <= self.start_epoch]
            if len(keep) < len(rows):
                tmp = self.csv.with_name(f".{self.csv.name}.tmp")
                tmp.write_text("".join([header, *keep]), encoding="utf-8")
                os.replace(tmp, self.csv)

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer for the student, plus the method's parameters in matching groups.

        Each method parameter joins a group cloned from Ultralytics' group of the same kind (weights with decay,
        normalisation weights, biases; Muon for matrices under MuSGD), so warm-up and schedules treat it alike.
        """
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if self.method is None:
            return optimizer
        bn = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)
        groups: dict[str, list[nn.Parameter]] = {}
        for mod in self.method.modules():
            for pname, p in mod.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                muon = any(g.get("use_muon") for g in optimizer.param_groups) and p.ndim in {2, 4}
                kind = "muon" if muon else "bias" if pname == "bias" else "bn" if isinstance(mod, bn) else "weight"
                groups.setdefault(kind, []).append(p)
        for kind, params in groups.items():
            template = next(g for g in optimizer.param_groups if g.get("param_group") == kind)
            optimizer.add_param_group({**{k: v for k, v in template.items() if k != "params"}, "params": params,
                                       "kd": True})
        n = sum(p.numel() for ps in groups.values() for p in ps)
        if n:
            LOGGER.info(f"yolokd: optimising {n:,} parameters of method '{self.kd.method}' alongside the student")
        return optimizer

    def _setup_train(self):
        """Ultralytics' set-up, then the KD criterion on the live student (after the EMA copy was taken)."""
        with self._discard_run_on_error():
            super()._setup_train()
        student = unwrap_model(self.model)
        det = getattr(student, "criterion", None) or student.init_criterion()
        student.criterion = KDCriterion(det, self.teacher, self.method)
        if RANK in {-1, 0}:
            LOGGER.info(
                f"yolokd: method={self.kd.method} {self.kd.hparams or ''} teacher={self.kd.teacher or '-'} "
                f"student levels {head_channels(student)} <- teacher "
                f"{head_channels(self.teacher) if self.teacher is not None else '-'}"
            )

    def train(self):
        """Train; a multi-GPU relaunch gets the KD settings through ``args`` (see ``kd_in_args``)."""
        if not self.ddp:
            return super().train()
        with self.kd_in_args():
            return super().train()

    @contextmanager
    def kd_in_args(self):
        """Put the KD settings into ``args`` while Ultralytics pickles ``vars(args)`` for its DDP workers.

        The worker rebuilds ``type(self)(cfg=..., overrides=vars(args))``, whose ``__init__`` pops them again before
        Ultralytics' key check; outside this context ``args`` holds only Ultralytics keys.
        """
        extra = self.kd.as_overrides()
        for k, v in extra.items():
            setattr(self.args, k, v)
        try:
            yield
        finally:
            for k in extra:
                delattr(self.args, k)

    def optimizer_step(self):
        """Average the method's gradients across GPUs and clip them like the student's, then Ultralytics' step.

        The method lives outside ``self.model``, so Ultralytics' ``optimizer_step`` neither all-reduces nor clips its
        gradients. They are clipped here to ``METHOD_MAX_NORM``, as one group of their own, *before* Ultralytics
        unscales the optimizer's gradients (it may do so only once per step): in AMP's scaled space the bound is
        ``METHOD_MAX_NORM x scaler.get_scale()``, so after the unscale the norm is at most ``METHOD_MAX_NORM``, as the
        student's. An overflowed (inf) gradient is left to the scaler, which skips that step.
        """
        if self.method is None:
            return super().optimizer_step()
        params = [p for p in self.method.parameters() if p.requires_grad]
        if self.world_size > 1:
            import torch.distributed as dist

            for p in params:
                if p.grad is None:  # e.g. a step whose KD terms were dropped on this rank only: every rank must join
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world_size
        grads = [p for p in params if p.grad is not None]
        if grads:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            torch.nn.utils.clip_grad_norm_(grads, max_norm=self.METHOD_MAX_NORM * scale,
                                           foreach=False if self.device.type == "npu" else None)
        return super().optimizer_step()

    def count_nonfinite(self, dropped: tuple[str, ...]) -> None:
        """Count a training step by the KD terms the criterion dropped (none: finite); stop on a persistent failure."""
        if not dropped:
            self.nonfinite_run = []
            return
        self.nonfinite_steps += 1
        self.nonfinite_terms.update(dropped)
        self.nonfinite_run.append(dropped)
        if len(self.nonfinite_run) >= self.MAX_NONFINITE_STEPS:
            terms = sorted({t for d in self.nonfinite_run for t in d})
            raise NonFiniteKDError(
                f"yolokd: method '{self.kd.method}' gave NaN/Inf distillation terms ({', '.join(terms)}) in "
                f"{len(self.nonfinite_run)} consecutive training steps (epoch {getattr(self, 'epoch', 0) + 1}; "
                f"the limit is KDTrainer.MAX_NONFINITE_STEPS={self.MAX_NONFINITE_STEPS}). Each step trained on the "
                f"detection loss alone, but the method is not recovering. Try lower weights for the method's terms "
                f"(hyperparameters {dict(self.kd.hparams) or 'defaults'}; see `yolokd methods`), a lower lr0, or "
                f"amp=False, and check the teacher ({self.kd.teacher}): does it validate with finite losses and mAP on "
                f"this data?"
            )

    # ------------------------------------------------------------------ state
    def kd_state(self, weights: bool = True) -> dict[str, Any]:
        """The plain-value record stored under ``ckpt["yolokd"]`` (tensors, strings, numbers only)."""
        state: dict[str, Any] = {"version": __version__, "spec": self.kd.to_dict()}
        if weights and self.method is not None:
            state["state_dict"] = {k: v.detach().cpu().clone() for k, v in self.method.state_dict().items()}
        return state

    def save_model(self):
        """Ultralytics' checkpoints, staged, given the KD state, then moved into place atomically."""
        wdir, last, best = self.wdir, self.last, self.best
        staging = wdir / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        for f in [*staging.glob("*"), *wdir.glob(".*.pt.tmp")]:
            f.unlink()  # leftovers of a killed save
        self.wdir, self.last, self.best = staging, staging / last.name, staging / best.name
        try:
            saved = super().save_model()
        finally:
            self.wdir, self.last, self.best = wdir, last, best
        state = self.kd_state()
        for f in sorted(staging.glob("*.pt")):
            _rewrite(f, wdir / f.name, state)
        staging.rmdir()
        return saved

    def final_eval(self):
        """Drop the method's training state from ``last.pt``/``best.pt`` (keeping the settings), then validate."""
        if RANK in {-1, 0}:
            for f in (self.last, self.best):
                if f.exists():
                    _rewrite(f, f, self.kd_state(weights=False))
        super().final_eval()

    def _handle_nan_recovery(self, epoch):
        """Ultralytics restores the student, optimizer and EMA from ``last.pt``; restore the method from it too."""
        recovered = super()._handle_nan_recovery(epoch)
        if recovered:
            self._load_method_state(torch.load(self.last, map_location="cpu", weights_only=False))
            LOGGER.info(f"yolokd: restored method '{self.kd.method}' state from {self.last}")
        return recovered

    def save_metrics(self, metrics):
        """Add the epoch's KD:detection loss ratio and gradient ratio (``_measure_grad_ratio``) to results.csv and the
        log, so the KD weight can be judged, and the method's own epoch statistics (``KDMethod.epoch_stats``: AID's
        ``aid/w_mean``, ``aid/w_min``, ``aid/w_max``), and the number of steps whose NaN/Inf KD terms were dropped
        (``kd/nonfinite_steps``; a warning when not 0)."""
        if self.tloss:
            kd_names = {f"{t}_loss" for t in (self.method.term_names if self.method else ())}
            kd = sum(float(v) for k, v in self.tloss.items() if k in kd_names)
            det = sum(float(v) for k, v in self.tloss.items() if k not in kd_names)
            ratio = kd / det if det > 0 else math.nan
            criterion = getattr(unwrap_model(self.model), "criterion", None)
            grad_ratio = (criterion.grad_ratio if isinstance(criterion, KDCriterion) else math.nan) if kd_names else 0.0
            metrics = {**metrics, RATIO_KEY: ratio, GRAD_RATIO_KEY: grad_ratio}
            if kd_names:
                LOGGER.info(f"yolokd: epoch {self.epoch + 1} KD/detection loss = {kd:.4g}/{det:.4g} = {ratio:.3g}, "
                            f"gradient on the student {grad_ratio:.3g} x the detection loss's"
                            + ("  (far from 0.1-1: consider changing the method's weight)"
                               if not 0.01 <= ratio <= 10 else ""))
        if self.method is not None:
            metrics = {**metrics, **self.method.epoch_stats(), NONFINITE_KEY: self.nonfinite_steps}
            if self.nonfinite_steps:
                LOGGER.warning(
                    f"yolokd: epoch {self.epoch + 1}: {self.nonfinite_steps} of {len(self.train_loader)} training "
                    f"steps had NaN/Inf KD terms ({', '.join(sorted(self.nonfinite_terms))}); their KD loss was "
                    f"dropped (those steps trained on the detection loss alone)"
                )
        super().save_metrics(metrics)


def _plot_method_maps(trainer: KDTrainer) -> None:
    """With ``plots=True``, have the method draw the first batch of the first and last epoch (e.g. GKD's maps).

    The pictures go next to Ultralytics' ``train_batch*.jpg`` as ``<method>_maps_epoch<E>*``; methods with nothing to
    show write nothing (``KDMethod.plot``).
    """
    if not trainer.args.plots or RANK not in {-1, 0} or trainer.epoch not in {0, trainer.epochs - 1}:
        return
    criterion = getattr(unwrap_model(trainer.model), "criterion", None)
    if isinstance(criterion, KDCriterion):
        criterion.plot_to = Path(trainer.save_dir) / f"{trainer.kd.method}_maps_epoch{trainer.epoch + 1}"


def _close_kd(trainer: KDTrainer) -> None:
    """``close_kd=N``: switch the KD terms off for the final N epochs, as Ultralytics closes mosaic (``close_mosaic``).

    Early-stopped distillation (Cho & Hariharan, ICCV 2019: a much larger teacher helps a small student early and
    constrains it late). On our long protocol every method's lead over the plain student shrank over the last quarter
    of training (``docs/benchmarks.md``, paired deltas by epoch), which is what this switch was built to test; on the
    tuning split it lost most of FGD's gain, so it is off by default. Off epochs train on the detection loss alone and
    skip the teacher; the KD columns log zeros.
    """
    criterion = getattr(unwrap_model(trainer.model), "criterion", None)
    if not isinstance(criterion, KDCriterion) or trainer.kd.close_kd <= 0:
        return
    active = trainer.epoch < trainer.epochs - trainer.kd.close_kd
    if criterion.active and not active and RANK in {-1, 0}:
        LOGGER.info(f"yolokd: closing distillation for the final {trainer.kd.close_kd} epochs (close_kd)")
    criterion.active = active


def _measure_grad_ratio(trainer: KDTrainer) -> None:
    """Have the criterion measure the KD:detection gradient ratio on the student on the epoch's first batch.

    Two extra backward passes once an epoch. Single-process training only: under DDP a partial ``autograd.grad``
    through the wrapped model would run outside DDP's gradient reduction, so the column stays NaN there. Under AMP the
    two gradients are taken unscaled, so tiny fp16 ones may underflow: a diagnostic, not an input to training.
    """
    criterion = getattr(unwrap_model(trainer.model), "criterion", None)
    if not isinstance(criterion, KDCriterion):
        return
    criterion.grad_ratio = float("nan")
    if trainer.world_size <= 1 and criterion.active and criterion.term_names:
        criterion.grad_params = [p for p in unwrap_model(trainer.model).parameters() if p.requires_grad]


def _reset_nonfinite(trainer: KDTrainer) -> None:
    """Start the epoch's count of steps with NaN/Inf KD terms (the run of consecutive ones carries over)."""
    trainer.nonfinite_steps = 0
    trainer.nonfinite_terms = set()


def _count_nonfinite(trainer: KDTrainer) -> None:
    """After each training batch: count it if the criterion dropped its KD terms (``KDCriterion.dropped``)."""
    criterion = getattr(unwrap_model(trainer.model), "criterion", None)
    if isinstance(criterion, KDCriterion):
        dropped, criterion.dropped = criterion.dropped, ()
        trainer.count_nonfinite(dropped)


def _csv_epoch(row: str) -> int | None:
    """The epoch (first column) of a results.csv row; None for a row that does not parse (torn by a kill)."""
    try:
        return int(float(row.split(",", 1)[0]))
    except ValueError:
        return None


def _rewrite(src: Path, dst: Path, state: dict[str, Any]) -> None:
    """Add ``state`` as ``ckpt["yolokd"]`` and write ``dst`` atomically (temp file in the same folder + replace)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    ckpt["yolokd"] = state
    tmp = dst.with_name(f".{dst.name}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, dst)
    if src != dst:
        src.unlink(missing_ok=True)
