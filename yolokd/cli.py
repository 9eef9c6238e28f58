"""The ``yolokd`` command: Ultralytics-style ``key=value`` arguments.

    yolokd train teacher=teacher.pt student=yolov8n.yaml method=fgd data=kitti.yaml epochs=100 imgsz=640
    yolokd val model=runs/detect/train/weights/best.pt data=kitti.yaml
    yolokd export model=runs/detect/train format=onnx
    yolokd convert kitti src=KITTI/training dst=datasets/kitti policy=merge
    yolokd bench protocol=kitti-1k methods=none,ultralytics seeds=0
    yolokd demo
    yolokd methods
    yolokd help
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

import yolokd  # noqa: F401  (sets the offline switches before anything imports Ultralytics)

#: Values of these keys are names or paths and are never converted (``method=none`` must stay the string "none").
_STRING_KEYS = {"teacher", "student", "model", "method", "data", "project", "name", "format", "device", "optimizer",
                "src", "dst", "instances", "images", "policy", "split", "protocol", "methods"}

HELP = f"""yolokd {yolokd.__version__}: knowledge distillation for Ultralytics YOLO.

Usage: yolokd MODE key=value ...

Modes:
  train    Distil a student:  yolokd train teacher=T.pt student=yolov8n.yaml method=fgd data=data.yaml [epochs=..]
           Takes every Ultralytics train argument, plus:
             teacher=         teacher checkpoint (.pt) trained on the data's classes (or a .yaml: random weights)
             student=         student checkpoint or model YAML (default yolov8n.yaml)
             method=          distillation method (default ld; list: `yolokd methods`); a+b sums methods'
                              terms (fgd+ld), +aid reweights them (fgd+aid); aid alone = fkd+aid
             teacher_epochs=N fine-tune a teacher with other classes (e.g. COCO) on the data first, cached
             close_kd=N       train the final N epochs without distillation (early-stopped KD; default 0)
             <hyperparameter>=value of the chosen method; <part>.<hyperparameter>=value for a part of a
                              combined method (fgd.alpha=1e-3 aid.alpha=0.2)
           data=synthetic (the default) uses the built-in synthetic driving scenes.
           Resume a killed run: yolokd train resume=runs/detect/train/weights/last.pt
  val      Validate a checkpoint:  yolokd val model=best.pt data=data.yaml
  export   Export a checkpoint or run dir with Ultralytics' exporter, then check it:
             yolokd export model=best.pt format=onnx [imgsz=640] [dynamic=True] [half=True] [int8=True data=D.yaml]
           ONNX exports are checked against the checkpoint on real images (data= val split, images=DIR, or
           Ultralytics' samples) and fail if parity breaks; val=True data=D.yaml also reports both mAPs.
             yolokd export model=best.pt format=jetson data=D.yaml   ONNX + a bundle to build FP16/INT8 engines on a Jetson
  convert  Datasets to YOLO format:
             yolokd convert kitti src=KITTI/training dst=DIR [policy=merge|papers|all8] [val_fraction=0.2] [seed=0]
             yolokd convert coco-traffic instances=instances_train2017.json images=train2017/ dst=DIR
                    [split=train2017] [classes=13|11]
  bench    Compare methods under a named, versioned protocol (cfg/protocols), resumable:
             yolokd bench protocol=synthetic-ft methods=none,ultralytics seeds=0,1,2 [jobs=2] [project=runs/bench]
               jobs=N side by side (CPU threads split; device=0,1 gives each job slot a GPU), threads=T per job
             yolokd bench protocols       (list them)
             yolokd bench report protocol=NAME   (tabulate the runs finished so far; runs nothing)
  demo     Teacher, then students with none / ultralytics / mimic on synthetic scenes, and a results table
  methods  List the methods and modifiers, their loss terms and hyperparameters, and how to combine them
  help     This text

Everything runs offline: missing weights are an error, never a download (YOLO_OFFLINE=0 allows Ultralytics downloads).
"""


def parse_args(args: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` tokens; values are read as YAML scalars (numbers, booleans, lists) except names and paths."""
    out: dict[str, Any] = {}
    for tok in args:
        if "=" not in tok or tok.startswith("="):
            raise SystemExit(f"yolokd: expected key=value, got '{tok}' (see `yolokd help`)")
        k, v = tok.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        if k in out:
            raise SystemExit(f"yolokd: '{k}' given twice")
        if k in _STRING_KEYS:
            out[k] = v
            continue
        out[k] = _value(v)
    return out


def _value(v: str) -> Any:
    """Number if it parses as one (YAML 1.1 would keep ``1e-3`` a string), else a YAML scalar or list."""
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    try:
        val = yaml.safe_load(v) if v != "" else None
    except yaml.YAMLError:
        return v
    return None if isinstance(val, str) and val.lower() in {"none", "null"} else val


def cmd_methods() -> None:
    """Print every registered method and modifier with its docstring, loss terms and hyperparameters, and the rules
    for combining them (``yolokd.methods.compose``)."""
    from yolokd.engine.spec import DEFAULT_METHOD
    from yolokd.methods import METHODS, MODIFIERS, method_defaults
    from yolokd.methods.compose import describe_forms

    for name, cls in METHODS.items():
        terms = ", ".join(f"{t}_loss" for t in cls.term_names) or "(no KD term)"
        label = f"{name} (default: the best as measured, docs/benchmarks.md)" if name == DEFAULT_METHOD else name
        _describe(label, cls, f"logged terms: {terms}", method_defaults(name))
    print("\nModifiers (combined with methods: they reweight the methods' terms and add none of their own)")
    for name, cls in MODIFIERS.items():
        alone = f"; alone, method={name} is method={cls.base}+{name}" if cls.base else ""
        _describe(name, cls, f"logged per epoch: {', '.join(cls.stats_names) or 'nothing'}{alone}",
                  method_defaults(name))
    print(f"\nCombining: method= takes {describe_forms()}. Each part keeps its hyperparameters: write "
          f"<part>.<name>=value (e.g. method=fgd+aid fgd.alpha=1e-3 aid.alpha=0.2); a bare name works when only one "
          f"part has it (granularity=object). Terms are logged under each method's own names.")


def _describe(name: str, cls: type, logged: str, hparams: dict[str, Any]) -> None:
    """One entry of ``yolokd methods``: name, first docstring line, what is logged, hyperparameters with defaults."""
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    print(f"{name}\n    {doc}\n    {logged}")
    print("    hyperparameters: " + (", ".join(f"{k}={v}" for k, v in hparams.items()) or "none"))


def cmd_convert(rest: list[str]) -> int:
    """``yolokd convert kitti|coco-traffic key=value ...``."""
    kinds = {"kitti": ("src", "dst"), "coco-traffic": ("instances", "images", "dst")}
    if not rest or rest[0] not in kinds:
        raise SystemExit(f"yolokd convert: say what to convert: {' or '.join(kinds)} (see `yolokd help`)")
    kind, kw = rest[0], parse_args(rest[1:])
    missing = [k for k in kinds[kind] if k not in kw]
    if missing:
        raise SystemExit(f"yolokd convert {kind}: missing {', '.join(k + '=' for k in missing)}")
    if kind == "kitti":
        from yolokd.data.kitti import convert_kitti

        allowed = {"src", "dst", "policy", "val_fraction", "seed"}
        fn = convert_kitti
    else:
        from yolokd.data.coco_traffic import convert_coco_traffic

        allowed = {"instances", "images", "dst", "split", "classes"}
        fn = convert_coco_traffic
        if "classes" in kw:
            kw["n_classes"] = kw.pop("classes")
            allowed = allowed - {"classes"} | {"n_classes"}
    extra = set(kw) - allowed
    if extra:
        raise SystemExit(f"yolokd convert {kind}: unknown key(s) {sorted(extra)}; valid: {sorted(allowed)}")
    out = fn(**kw)
    stats = Path(out).parent / "stats.yaml"
    print(f"yolokd convert {kind}: wrote {out}" + (f"\n{stats.read_text()}" if stats.exists() else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"help", "-h", "--help"}:
        print(HELP)
        return 0
    mode, rest = argv[0], argv[1:]
    if mode in {"version", "--version"}:
        print(yolokd.__version__)
        return 0
    if mode == "methods":
        cmd_methods()
        return 0
    if mode == "convert":
        return cmd_convert(rest)
    if mode == "bench":
        from yolokd.bench.runner import cmd_bench

        return cmd_bench(rest)
    kw = parse_args(rest)
    if mode == "train":
        from yolokd.engine.trainer import KDTrainer

        KDTrainer(overrides=kw).train()
        return 0
    if mode == "val":
        from yolokd.utils.offline import prepare_ultralytics

        prepare_ultralytics()
        from ultralytics import YOLO

        from yolokd.deploy.export import checkpoint_path

        model = YOLO(str(checkpoint_path(kw.pop("model", None))))
        if "data" in kw:
            from yolokd.data import resolve_data

            kw["data"] = resolve_data(kw["data"])
        model.val(**kw)
        return 0
    if mode == "export":
        from yolokd.utils.offline import prepare_ultralytics

        prepare_ultralytics()
        from yolokd.deploy.export import export

        if "data" in kw:
            from yolokd.data import resolve_data

            kw["data"] = resolve_data(kw["data"])
        report = export(kw.pop("model", None), **kw)
        print(report["exported"])
        return 0
    if mode == "demo":
        from yolokd.demo import run_demo

        run_demo(**kw)
        return 0
    import difflib

    close = difflib.get_close_matches(mode, ["train", "val", "export", "convert", "bench", "demo", "methods", "help"], n=1)
    raise SystemExit(f"yolokd: unknown mode '{mode}'." + (f" Did you mean '{close[0]}'?" if close else "")
                     + " See `yolokd help`.")


def run(argv: list[str] | None = None) -> int:
    """``main`` with bad input reported as one ``yolokd: error: ...`` line on stderr and exit code 2, no traceback.

    A failed benchmark run (its log has the traceback) or a broken export exits with 1; anything else is a bug and
    keeps its full traceback.
    """
    from yolokd.bench.runner import BenchJobError
    from yolokd.deploy.parity import ParityError
    from yolokd.engine.models import KDConfigError

    try:
        return main(argv)
    except (KDConfigError, FileNotFoundError, ValueError) as e:  # ProtocolError is a ValueError
        print(f"yolokd: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argument errors raised as SystemExit("message")
        if isinstance(e.code, str):
            print(f"yolokd: error: {e.code.removeprefix('yolokd: ')}", file=sys.stderr)
            return 2
        raise
    except (BenchJobError, ParityError) as e:
        print(f"yolokd: {e}", file=sys.stderr)
        return 1


def entrypoint() -> None:
    """Console-script entry point (``run``)."""
    sys.exit(run())
