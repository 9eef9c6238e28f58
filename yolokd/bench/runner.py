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
import os
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


def default_jobs(device: str | None = None) -> int:
    """Jobs run side by side when ``jobs=`` is not given: one per listed GPU, else two on a CPU of two or more cores.

    On the 2-core reference machine two single-thread jobs side by side finish a protocol sooner than one two-thread job
    at a time (measured: ``docs/benchmarks.md``, "Parallel jobs"); Ultralytics' small convolutions scale poorly with
    threads, while the two jobs never wait for each other.
    """
    devices = _devices(device)
    if devices:
        return len(devices)
    return min(2, os.cpu_count() or 1)


def _devices(device: str | None) -> list[str]:
    """CUDA device ids in ``device=0,1``; empty for the CPU or when not given."""
    d = str(device if device is not None else "").replace(" ", "")
    return [] if d in {"", "cpu", "None"} else [x for x in d.split(",") if x]


def slots(jobs: int, device: str | None = None, threads: int | None = None) -> list[dict[str, Any]]:
    """Where each of ``jobs`` parallel jobs runs: its device and its CPU thread count.

    On GPUs, job slot k gets device ``k % len(devices)`` (several jobs may share one large GPU). CPU threads are split
    evenly (``cores // jobs``, at least 1) unless ``threads`` is given. The thread count is fixed per job, not left to
    Ultralytics (``cores - 1``): a float reduction's result depends on how many threads split it, so a job is only
    reproducible at a fixed thread count (``docs/benchmarks.md``, "Reproducibility").
    """
    if jobs < 1:
        raise ProtocolError(f"jobs={jobs}: give 1 or more parallel jobs")
    devices = _devices(device)
    t = int(threads) if threads else max(1, (os.cpu_count() or 1) // jobs)
    if t < 1:
        raise ProtocolError(f"threads={threads}: give 1 or more CPU threads per job")
    dev = [devices[k % len(devices)] for k in range(jobs)] if devices else [("cpu" if device == "cpu" else None)] * jobs
    return [{"device": d, "threads": t} for d in dev]


def _train_args(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """A variant's arguments without its method hyperparameters (those are compared resolved, as ``hparams``)."""
    from yolokd.methods import is_hyperparameter

    return {k: v for k, v in args.items() if not is_hyperparameter(method, k)}


class _Job:
    """One (teacher | student-init | method, seed) job: its folder, its description and whether it needs the teacher."""

    def __init__(self, folder: Path, spec: dict[str, Any], needs_teacher: bool = False) -> None:
        self.folder, self.spec, self.needs_teacher = folder, spec, needs_teacher
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0

    @property
    def name(self) -> str:
        return self.folder.name

    def finished_result(self) -> dict[str, Any] | None:
        """The result of an earlier invocation, if this job finished then and was defined the same way."""
        result = self.folder / "result.json"
        if not result.exists():
            return None
        if not (self.folder / "job.json").exists():
            # A teacher result restored from docs/bench (tools/restore_bench.py) comes without its job record; a
            # teacher is defined by the recipe, which the folder's hash already checked.
            return json.loads(result.read_text())
        old = json.loads((self.folder / "job.json").read_text())
        # A variant redefined under the same name, or a method whose cfg defaults changed, must not reuse the old
        # result. A run is its method, its resolved hyperparameters and its training arguments: how a variant spells
        # the hyperparameters (written out, or left to defaults that now say the same) does not matter. Runs written
        # before hyperparameters were recorded carry no "hparams" and are checked on method and args as written.
        for k in ("method", "args", "hparams", "revision"):
            if k not in self.spec or (k == "hparams" and k not in old):
                continue
            was, now = old.get(k), self.spec[k]
            if k == "revision":  # runs written before revisions were recorded ran revision 1 of every part
                was = was or {part: 1 for part in now}
                if was != now:
                    raise ProtocolError(
                        f"{self.name} was run with revision {was} of the method's code, which is now at {now} (a fix "
                        f"that changes its results at the same hyperparameters; see the method's module): delete "
                        f"{self.folder} to run it again (docs/bench keeps the old numbers)")
                continue
            if k == "args" and "hparams" in old and "hparams" in self.spec:
                was, now = (_train_args(self.spec["method"], a or {}) for a in (was, now))
            if was != now:
                raise ProtocolError(f"{self.name} was run with {k}={was}, the protocol now says {now}: "
                                    f"give the new definition another name, or delete {self.folder} to replace the result")
        return json.loads(result.read_text())

    def start(self, slot: dict[str, Any], jobs: int, teacher: dict[str, Any] | None) -> None:
        """Start the job's worker process in ``slot`` (an unfinished run restarts from scratch)."""
        shutil.rmtree(self.folder, ignore_errors=True)  # no half-trained state mixes in
        self.folder.mkdir(parents=True)
        job = {**self.spec, "result": str((self.folder / "result.json").resolve()), **slot, "jobs": jobs}
        if self.needs_teacher:
            job["teacher_weights"] = teacher["weights"]
        (self.folder / "job.json").write_text(json.dumps(job, indent=1))
        with open(self.folder / "log.txt", "w") as f:  # the child keeps its own handle
            self.proc = subprocess.Popen([sys.executable, "-m", "yolokd.bench.worker", str(self.folder / "job.json")],
                                         stdout=f, stderr=subprocess.STDOUT)
        self.t0 = time.perf_counter()

    def outcome(self) -> dict[str, Any]:
        """The finished process's result, or BenchJobError with the end of its log."""
        rc = self.proc.returncode
        if rc != 0 or not (self.folder / "result.json").exists():
            tail = "".join((self.folder / "log.txt").read_text().splitlines(keepends=True)[-15:])
            raise BenchJobError(f"job {self.folder} failed (exit {rc}); last lines of {self.folder / 'log.txt'}:\n{tail}")
        return json.loads((self.folder / "result.json").read_text())


def _run_jobs(queue: list[_Job], slot_list: list[dict[str, Any]], log: Callable[[str], None],
              poll_s: float = 0.5) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run ``queue`` on the slots, in queue order as far as the teacher dependency allows.

    A job that needs the teacher waits for the teacher job; the others (the teacher itself, ``none``, the student-init
    reference) start at once, so a teacher-free entry trains while the teacher does. When a job fails, no new job
    starts, the running ones finish (their results are kept), then the failure is raised. Interrupted (Ctrl-C), the
    running jobs are stopped; they restart from scratch next time.

    Returns:
        ({job name: result}, names of the jobs run now, in the order they finished).
    """
    results: dict[str, dict[str, Any]] = {}
    ran: list[str] = []
    pending = list(queue)
    running: dict[int, _Job] = {}
    failure: BenchJobError | None = None
    teacher_name = next((j.name for j in queue if j.spec.get("kind") == "teacher"), None)
    try:
        while pending or running:
            for k, job in list(running.items()):
                if job.proc.poll() is None:
                    continue
                del running[k]
                try:
                    results[job.name] = job.outcome()
                    ran.append(job.name)
                    log(f"yolokd bench: {job.name} done in {time.perf_counter() - job.t0:.0f} s")
                except BenchJobError as e:
                    failure = failure or e
            if failure is not None:
                pending.clear()
            for job in list(pending):
                if job.needs_teacher and teacher_name not in results:
                    continue  # waits for the teacher (which is queued first)
                old = job.finished_result()
                if old is not None:
                    results[job.name] = old
                    pending.remove(job)
                    continue
                free = [k for k in range(len(slot_list)) if k not in running]
                if not free:
                    break
                job.start(slot_list[free[0]], len(slot_list), results.get(teacher_name))
                running[free[0]] = job
                pending.remove(job)
                where = slot_list[free[0]]
                log(f"yolokd bench: running {job.name} ({job.spec['kind']}; device {where['device'] or 'auto'}, "
                    f"{where['threads']} thread(s), {len(slot_list)} job(s) side by side), log: {job.folder / 'log.txt'}")
            if pending and not running and all(j.needs_teacher for j in pending) and teacher_name not in results:
                raise BenchJobError("the teacher job did not produce a result; nothing that needs it can run")
            if running:
                time.sleep(poll_s)
    except BaseException:
        for job in running.values():  # Ctrl-C or an error here: no orphaned trainings keep the cores busy
            job.proc.terminate()
        for job in running.values():
            job.proc.wait()
        raise
    if failure is not None:
        raise failure
    return results, ran


def run_bench(protocol: str | dict[str, Any] = "synthetic", methods: list[str] | None = None,
              seeds: list[int] | None = None, project: str | Path = "runs/bench",
              overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print, jobs: int | None = None,
              device: str | None = None, threads: int | None = None, report_only: bool = False) -> dict[str, Any]:
    """Run (or resume) a benchmark and write its tables.

    Args:
        protocol: A protocol name in ``cfg/protocols``, a path to one, or a protocol dict.
        methods: Entries to run (methods or the protocol's variants); default: the protocol's list.
        seeds: Seeds; default: the protocol's list.
        project: Parent folder of the results.
        overrides: Training arguments that replace the protocol's (they change the recipe hash and the folder name).
        log: Progress printer.
        jobs: (method, seed) jobs run side by side; default ``default_jobs(device)``. Their timings are marked as
            taken in parallel in the tables.
        device: ``cpu``, a CUDA id or ``0,1,...`` (job slot k uses device k mod n); default: Ultralytics' choice.
        threads: CPU threads per job; default ``cores // jobs``.
        report_only: Run nothing; tabulate the runs that finished so far (e.g. while a long benchmark is still
            running, or after one was stopped). Needs the teacher's result.

    Returns:
        {"out": folder, "ran": names of the jobs run now, "summary": per-entry rows, "markdown": table text}.
    """
    from yolokd.methods import get_method

    proto = protocol if isinstance(protocol, dict) else load_protocol(protocol)
    rec = recipe(proto, overrides)
    h = recipe_hash(rec)
    out = Path(project).resolve() / (f"{proto['name']}-v{proto['version']}" + (f"-{h}" if overrides else ""))
    names = list(methods or proto.get("methods") or ["none", "ultralytics"])
    seeds = [int(s) for s in (seeds if seeds is not None else proto.get("seeds", [0]))]
    ents = entries(proto, names)  # validate before any compute
    slot_list = slots(jobs or default_jobs(device), device, threads)
    out.mkdir(parents=True, exist_ok=True)
    rfile = out / "recipe.yaml"
    if rfile.exists():
        old = yaml.safe_load(rfile.read_text())
        # The stored recipe rehashed under today's rule: folders written when the hash still covered a label resume.
        if h not in {old.get("hash"), recipe_hash({k: v for k, v in old.items() if k != "hash"})}:
            raise ProtocolError(f"protocol '{proto['name']}' v{proto['version']} changed since {out} was written (recipe "
                                f"{old.get('hash')} -> {h}): bump its 'version' or use another project=")
    else:
        rfile.write_text(yaml.safe_dump({"hash": h, **rec}, sort_keys=False))

    if report_only:
        if not (out / "teacher" / "result.json").exists():
            raise ProtocolError(f"nothing to report in {out}: its teacher has not finished yet")
        init_file = out / "student-init" / "result.json"
        return _tabulate(out, proto, rec, h, names, seeds, overrides, json.loads((out / "teacher" / "result.json")
                         .read_text()), json.loads(init_file.read_text()) if init_file.exists() else None, [], log)
    data = resolve_data(rec["data"])
    train = dict(rec["train"])
    student = resolve_weights(str(rec["student"]))
    tcfg = dict(rec["teacher"], init=resolve_weights(str(rec["teacher"]["init"])))
    queue = [_Job(out / "teacher", {"kind": "teacher", "teacher": tcfg, "data": data, "train": train})]
    if student.endswith(".pt"):
        queue.append(_Job(out / "student-init", {"kind": "student_init", "student": student, "data": data,
                                                  "train": train}))
    for s in seeds:  # seed-major: an interrupted or still-running benchmark has every entry at the first seeds
        for name, e in ents.items():
            folder = out / "runs" / f"{name}-s{s}"
            spec = {"kind": "train", "entry": name, "method": e["method"], "args": e["args"], "hparams": e["hparams"],
                    "revision": e["revision"], "seed": s, "data": data, "train": train, "student": student,
                    "teacher_weights": None, "run_dir": str(folder)}
            queue.append(_Job(folder, spec, needs_teacher=get_method(e["method"]).uses_teacher))
    results, ran = _run_jobs(queue, slot_list, log)
    return _tabulate(out, proto, rec, h, names, seeds, overrides, results["teacher"], results.get("student-init"), ran,
                     log)


def _tabulate(out: Path, proto: dict[str, Any], rec: dict[str, Any], h: str, names: list[str], seeds: list[int],
              overrides: dict[str, Any] | None, teacher: dict[str, Any], init: dict[str, Any] | None, ran: list[str],
              log: Callable[[str], None]) -> dict[str, Any]:
    """Write results.csv, the summary (CSV, Markdown) and the plots from every finished run in ``out``."""
    runs = collect_runs(out)
    if not runs:
        raise ProtocolError(f"no finished run in {out / 'runs'} yet: nothing to tabulate")
    head = f"{proto['headline']}_{proto['metric']}"
    rows = report.summarise(runs, teacher, head)
    cmd = "yolokd bench " + " ".join([f"protocol={proto['name']}", f"methods={','.join(names)}",
                                      f"seeds={','.join(map(str, seeds))}"]
                                     + [f"{k}={v}" for k, v in (overrides or {}).items()])
    info = {"recipe": rec, "hash": h, "teacher": teacher, "student_init": init, "headline": head, "command": cmd,
            "out": _display(out)}
    md = report.markdown(rows, info)
    deltas = report.epoch_deltas(runs, proto["metric"])
    if deltas:
        md += "\n" + report.epoch_deltas_markdown(deltas, proto["metric"])
        report.write_epoch_deltas_csv(out / "epoch_deltas.csv", deltas)
    classes = report.per_class_rows(runs)
    if classes:
        md += "\n" + report.per_class_markdown(report.per_class_deltas(classes, proto["metric"]), proto["metric"])
        report.write_per_class_csv(out / "per_class.csv", classes)
    report.write_runs_csv(out / "results.csv", runs)
    report.write_summary_csv(out / "summary.csv", rows)
    (out / "summary.md").write_text(md)
    report.plot(out / "summary.png", rows, info)
    report.plot_curves(out / "curves.png", runs, info, out / "teacher")
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
        runs.append({"entry": job["entry"], "method": job["method"], "seed": job["seed"], "run_dir": str(res.parent),
                     "jobs": job.get("jobs", 1), "threads": job.get("threads", ""), **json.loads(res.read_text())})
    rank = {"none": 0, "ultralytics": 1}
    return sorted(runs, key=lambda r: (rank.get(r["entry"], 2), r["entry"], r["seed"]))


def _split(v: Any) -> list[str]:
    return [s for s in str(v).replace(" ", ",").split(",") if s] if not isinstance(v, list) else [str(s) for s in v]


def cmd_bench(argv: list[str]) -> int:
    """``yolokd bench protocol=NAME methods=a,b seeds=0,1 [jobs=N device=0,1 threads=T project=DIR] [train overrides]``.

    Or ``yolokd bench protocols`` to list them, and ``yolokd bench report protocol=NAME ...`` to tabulate the runs
    that finished so far without running anything.
    """
    from yolokd.cli import parse_args

    report_only = bool(argv) and argv[0] == "report"
    argv = argv[1:] if report_only else argv
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
    jobs = int(kw.pop("jobs")) if "jobs" in kw else None
    threads = int(kw.pop("threads")) if "threads" in kw else None
    device = str(kw.pop("device")) if "device" in kw else None
    if "protocol" in kw:
        proto: str | dict[str, Any] = kw.pop("protocol")
    elif {"teacher", "data"} <= set(kw):
        proto = adhoc_protocol(kw.pop("teacher"), kw.pop("student", "yolov8n.yaml"), kw.pop("data"),
                               int(kw.pop("teacher_epochs", 0)))
    else:
        raise SystemExit("yolokd bench: give protocol=NAME (see `yolokd bench protocols`) or teacher=, student=, data=")
    run_bench(proto, methods=methods, seeds=seeds, project=project, overrides=kw or None, jobs=jobs, device=device,
              threads=threads, report_only=report_only)
    return 0
