"""``yolokd bench``: run every (method, seed) of a protocol with identical settings, resumably, and tabulate.

Layout of one protocol's results (``<project>/<name>-v<version>[-<hash>]``)::

    recipe.yaml           the resolved recipe and its hash (a changed protocol is refused, not mixed in)
    teacher/result.json   the teacher's weights and its own mAP on the val split
    student-init/         the untouched student initialisation's mAP (when it is a checkpoint)
    runs/<entry>-s<seed>/ an Ultralytics run dir plus job.json, log.txt and, once finished, result.json
    results.csv           every finished run;  summary.csv / summary.md / summary.png: mean ± std per entry

Every finished run in the folder is reported, also those of earlier invocations, so a new method adds its rows next to
the old ones without re-running them. Each job is a separate process (``yolokd.bench.worker``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from yolokd.bench import report
from yolokd.bench.protocol import (ProtocolError, adhoc_protocol, entries, list_protocols, load_protocol, recipe,
                                   recipe_hash, resolve_data, resolve_weights)


class BenchJobError(RuntimeError):
    """A benchmark job's process failed; its log says why."""


def _run_job(folder: Path, job: dict[str, Any], log: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """Result of a job: read back if finished before, else run it in a fresh process. Returns (result, ran)."""
    result = folder / "result.json"
    if result.exists():
        old = json.loads((folder / "job.json").read_text())
        # A variant redefined under the same name, or a method whose cfg defaults changed, must not reuse the old
        # result. Runs written before hyperparameters were recorded carry no "hparams" and are checked on the rest.
        for k in ("method", "args", "hparams"):
            if k in job and (k in old or k != "hparams") and old.get(k) != job[k]:
                raise ProtocolError(f"{folder.name} was run with {k}={old.get(k)}, the protocol now says {job[k]}: give "
                                    f"the new definition another name, or delete {folder} to replace the result")
        return json.loads(result.read_text()), False
    shutil.rmtree(folder, ignore_errors=True)  # an unfinished run restarts from scratch: no half-trained state mixes in
    folder.mkdir(parents=True)
    job = {**job, "result": str(result.resolve())}
    (folder / "job.json").write_text(json.dumps(job, indent=1))
    log(f"yolokd bench: running {folder.name} ({job['kind']}), log: {folder / 'log.txt'}")
    t0 = time.perf_counter()
    with open(folder / "log.txt", "w") as f:
        rc = subprocess.call([sys.executable, "-m", "yolokd.bench.worker", str(folder / "job.json")], stdout=f,
                             stderr=subprocess.STDOUT)
    if rc != 0 or not result.exists():
        tail = "".join((folder / "log.txt").read_text().splitlines(keepends=True)[-15:])
        raise BenchJobError(f"job {folder} failed (exit {rc}); last lines of {folder / 'log.txt'}:\n{tail}")
    log(f"yolokd bench: {folder.name} done in {time.perf_counter() - t0:.0f} s")
    return json.loads(result.read_text()), True


def run_bench(protocol: str | dict[str, Any] = "synthetic", methods: list[str] | None = None,
              seeds: list[int] | None = None, project: str | Path = "runs/bench",
              overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a benchmark and write its tables.

    Args:
        protocol: A protocol name in ``cfg/protocols``, a path to one, or a protocol dict.
        methods: Entries to run (methods or the protocol's variants); default: the protocol's list.
        seeds: Seeds; default: the protocol's list.
        project: Parent folder of the results.
        overrides: Training arguments that replace the protocol's (they change the recipe hash and the folder name).
        log: Progress printer.

    Returns:
        {"out": folder, "ran": names of the jobs run now, "summary": per-entry rows, "markdown": table text}.
    """
    proto = protocol if isinstance(protocol, dict) else load_protocol(protocol)
    rec = recipe(proto, overrides)
    h = recipe_hash(rec)
    out = Path(project).resolve() / (f"{proto['name']}-v{proto['version']}" + (f"-{h}" if overrides else ""))
    out.mkdir(parents=True, exist_ok=True)
    rfile = out / "recipe.yaml"
    if rfile.exists():
        old = yaml.safe_load(rfile.read_text())
        if old.get("hash") != h:
            raise ProtocolError(f"protocol '{proto['name']}' v{proto['version']} changed since {out} was written (recipe "
                                f"{old.get('hash')} -> {h}): bump its 'version' or use another project=")
    else:
        rfile.write_text(yaml.safe_dump({"hash": h, **rec}, sort_keys=False))
    names = list(methods or proto.get("methods") or ["none", "ultralytics"])
    seeds = [int(s) for s in (seeds if seeds is not None else proto.get("seeds", [0]))]
    ents = entries(proto, names)  # validate before any compute

    data = resolve_data(rec["data"])
    train = dict(rec["train"])
    student = resolve_weights(str(rec["student"]))
    tcfg = dict(rec["teacher"], init=resolve_weights(str(rec["teacher"]["init"])))
    ran = []
    teacher, did = _run_job(out / "teacher", {"kind": "teacher", "teacher": tcfg, "data": data, "train": train}, log)
    ran += ["teacher"] if did else []
    init = None
    if student.endswith(".pt"):
        init, did = _run_job(out / "student-init", {"kind": "student_init", "student": student, "data": data,
                                                    "train": train}, log)
        ran += ["student-init"] if did else []
    for name, e in ents.items():
        for s in seeds:
            folder = out / "runs" / f"{name}-s{s}"
            job = {"kind": "train", "entry": name, "method": e["method"], "args": e["args"], "hparams": e["hparams"],
                   "seed": s, "data": data, "train": train, "student": student, "teacher_weights": teacher["weights"],
                   "run_dir": str(folder)}
            _, did = _run_job(folder, job, log)
            ran += [folder.name] if did else []

    runs = collect_runs(out)
    head = f"{proto['headline']}_{proto['metric']}"
    rows = report.summarise(runs, teacher, head)
    cmd = "yolokd bench " + " ".join([f"protocol={proto['name']}", f"methods={','.join(names)}",
                                      f"seeds={','.join(map(str, seeds))}"]
                                     + [f"{k}={v}" for k, v in (overrides or {}).items()])
    info = {"recipe": rec, "hash": h, "teacher": teacher, "student_init": init, "headline": head, "command": cmd,
            "out": _display(out)}
    md = report.markdown(rows, info)
    report.write_runs_csv(out / "results.csv", runs)
    report.write_summary_csv(out / "summary.csv", rows)
    (out / "summary.md").write_text(md)
    report.plot(out / "summary.png", rows, info)
    log("\n" + md)
    return {"out": out, "ran": ran, "summary": rows, "markdown": md}


def _display(p: Path) -> str:
    """A path relative to the working directory when it is inside it (stable in docs), else absolute."""
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def collect_runs(out: Path) -> list[dict[str, Any]]:
    """Every finished run under ``out/runs``, ordered none, ultralytics, then the rest by name, then by seed."""
    runs = []
    for res in sorted((out / "runs").glob("*/result.json")):
        job = json.loads((res.parent / "job.json").read_text())
        runs.append({"entry": job["entry"], "method": job["method"], "seed": job["seed"], **json.loads(res.read_text())})
    rank = {"none": 0, "ultralytics": 1}
    return sorted(runs, key=lambda r: (rank.get(r["entry"], 2), r["entry"], r["seed"]))


def _split(v: Any) -> list[str]:
    return [s for s in str(v).replace(" ", ",").split(",") if s] if not isinstance(v, list) else [str(s) for s in v]


def cmd_bench(argv: list[str]) -> int:
    """``yolokd bench protocol=NAME methods=a,b seeds=0,1 [project=DIR] [train overrides]`` or ``yolokd bench protocols``."""
    from yolokd.cli import parse_args

    if argv and argv[0] == "protocols":
        for name in list_protocols():
            p = load_protocol(name)
            print(f"{name} v{p['version']} [{p.get('setting', '')}]: {p.get('description', '').strip().splitlines()[0]}")
            print(f"    methods {', '.join(p.get('methods', []))}; variants {', '.join(p['variants']) or '-'}; "
                  f"budget {p.get('budget', '-')}")
        return 0
    kw = parse_args(argv)
    methods = _split(kw.pop("methods")) if "methods" in kw else None
    seeds = [int(s) for s in _split(kw.pop("seeds"))] if "seeds" in kw else None
    project = kw.pop("project", "runs/bench")
    if "protocol" in kw:
        proto: str | dict[str, Any] = kw.pop("protocol")
    elif {"teacher", "data"} <= set(kw):
        proto = adhoc_protocol(kw.pop("teacher"), kw.pop("student", "yolov8n.yaml"), kw.pop("data"),
                               int(kw.pop("teacher_epochs", 0)))
    else:
        raise SystemExit("yolokd bench: give protocol=NAME (see `yolokd bench protocols`) or teacher=, student=, data=")
    run_bench(proto, methods=methods, seeds=seeds, project=project, overrides=kw or None)
    return 0
