"""Benchmark harness: protocols, resumable runs in worker processes, and the tables (checked against hand values)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY


def _tiny_protocol(data: str) -> dict:
    train = {k: v for k, v in TINY.items() if k not in {"seed", "exist_ok", "plots"}}
    train["epochs"] = 1
    return {"name": "tiny", "version": 1, "setting": "test", "description": "tiny test protocol", "data": data,
            "teacher": {"init": "yolov8s.yaml", "epochs": 0}, "student": "yolov8n.yaml", "train": train,
            "metric": "mAP50-95", "headline": "final",
            "variants": {"none-lowlr": {"method": "none", "lr0": 1e-4}, "none-rerun": {"method": "none"}}}


def test_bench_runs_tabulates_and_resumes(tiny_data, tmp_path):
    from yolokd.bench.runner import run_bench

    proto = _tiny_protocol(tiny_data)
    res = run_bench(proto, methods=["none", "mimic"], seeds=[0], project=tmp_path, log=lambda s: None)
    out = res["out"]
    assert res["ran"] == ["teacher", "none-s0", "mimic-s0"]
    with open(out / "results.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [(r["entry"], r["method"], r["seed"]) for r in runs] == [("none", "none", "0"), ("mimic", "mimic", "0")]
    for r in runs:
        for k in ("final_mAP50-95", "final_mAP50", "best_mAP50-95", "best_mAP50"):
            assert 0.0 <= float(r[k]) <= 1.0
        assert float(r["s_per_it"]) > 0 and float(r["peak_rss_mib"]) > 100 and r["epochs"] == "1"
    # The per-run numbers are the Ultralytics run's own results.csv (final epoch; the gradient ratio: mean of epochs).
    ul = list(csv.DictReader(open(out / "runs" / "mimic-s0" / "results.csv")))
    assert float(runs[1]["final_mAP50-95"]) == pytest.approx(float(ul[-1]["metrics/mAP50-95(B)"].strip()))
    grad_ratio = float(runs[1]["kd_det_grad_ratio"])
    assert grad_ratio == pytest.approx(float(ul[-1]["train/kd_det_grad_ratio"])) and grad_ratio > 0
    assert float(runs[0]["kd_det_grad_ratio"]) == 0.0  # none: no KD terms
    md = (out / "summary.md").read_text()
    assert "tiny v1" in md and "yolokd bench protocol=tiny methods=none,mimic seeds=0" in md
    main_table = md.split("Paired Δ")[0]
    assert main_table.count("\n| none |") == 1 and main_table.count("\n| mimic |") == 1
    assert (out / "summary.png").stat().st_size > 0 and (out / "recipe.yaml").exists()
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert float(summary[0]["delta_vs_none"]) == 0.0
    deltas = list(csv.DictReader(open(out / "epoch_deltas.csv")))  # 1 epoch: the final delta again, from the curves
    assert [(r["entry"], r["epoch"]) for r in deltas] == [("mimic", "1")]
    assert float(deltas[0]["delta"]) == pytest.approx(float(runs[1]["final_mAP50-95"]) - float(runs[0]["final_mAP50-95"]))
    assert "Paired Δ mAP50-95 vs none by epoch" in md
    # Per class: each run records the final validation's table, which must be the one Ultralytics printed in its log.
    from yolokd.bench.report import printed_per_class

    res = json.loads((out / "runs" / "mimic-s0" / "result.json").read_text())
    printed = printed_per_class((out / "runs" / "mimic-s0" / "log.txt").read_text(errors="replace"))
    assert printed and [c["class"] for c in res["per_class"]] == [c["class"] for c in printed]
    for mine, theirs in zip(res["per_class"], printed):
        assert (mine["images"], mine["instances"]) == (theirs["images"], theirs["instances"])
        for k in ("P", "R", "mAP50", "mAP50-95"):
            assert mine[k] == pytest.approx(theirs[k], abs=6e-4), (mine["class"], k)  # the log prints 3 decimals
    assert res["per_class"][0]["mAP50-95"] == pytest.approx(res["best_mAP50-95"])
    per_class = list(csv.DictReader(open(out / "per_class.csv")))
    assert {(r["entry"], r["class"]) for r in per_class} >= {("none", "all"), ("mimic", "all")}
    assert "Paired Δ mAP50-95 vs none per class" in md

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = run_bench(proto, methods=["none", "mimic"], seeds=[0], project=tmp_path, log=lambda s: None)
    assert again["ran"] == []  # nothing re-run
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == mtimes

    # An unfinished run (no result.json) is re-run; the finished ones are not.
    (out / "runs" / "mimic-s0" / "result.json").unlink()
    third = run_bench(proto, methods=["none", "mimic"], seeds=[0], project=tmp_path, log=lambda s: None)
    assert third["ran"] == ["mimic-s0"]

    # Round trip through the repository's copies: collect them (tools/collect_bench.sh), lose runs/bench (a fresh
    # machine), restore (tools/restore_bench.py): the harness re-runs nothing and tabulates the same runs.
    repo = Path(__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    shutil.copytree(out, clone / "runs" / "bench" / out.name)
    subprocess.run(["sh", str(repo / "tools" / "collect_bench.sh"), out.name], cwd=clone, check=True,
                   capture_output=True)
    shutil.rmtree(clone / "runs")
    subprocess.run([sys.executable, str(repo / "tools" / "restore_bench.py"), out.name], cwd=clone, check=True,
                   capture_output=True)
    job = json.loads((clone / "runs" / "bench" / out.name / "runs" / "mimic-s0" / "job.json").read_text())
    assert job["restored"].startswith(f"from docs/bench/{out.name} on ")
    back = run_bench(proto, methods=["none", "mimic"], seeds=[0], project=clone / "runs" / "bench", log=lambda s: None)
    # No student is re-trained. The teacher is re-validated: this one is built from yolov8s.yaml (epochs 0), so it has no
    # weights file, and a teacher result is restored only with its weights (test_restore_keeps_a_teacher_only_...).
    assert back["ran"] == ["teacher"]

    def rows(folder):
        return [{k: v for k, v in r.items() if k != "run_dir"} for r in csv.DictReader(open(folder / "results.csv"))]

    assert rows(back["out"]) == rows(out) and len(rows(out)) == 2
    # A run that has a result is never overwritten by a restore.
    (back["out"] / "runs" / "none-s0" / "result.json").write_text('{"edited": 1}')
    subprocess.run([sys.executable, str(repo / "tools" / "restore_bench.py"), out.name], cwd=clone, check=True,
                   capture_output=True)
    assert (back["out"] / "runs" / "none-s0" / "result.json").read_text() == '{"edited": 1}'

    # Editing the protocol without bumping its version is refused rather than mixed into the same table.
    changed = _tiny_protocol(tiny_data)
    changed["train"]["imgsz"] = 96
    from yolokd.bench.protocol import ProtocolError

    with pytest.raises(ProtocolError, match="bump its 'version'"):
        run_bench(changed, methods=["none"], project=tmp_path, log=lambda s: None)


def test_restore_keeps_a_teacher_only_with_its_weights_and_skips_incomplete_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    from restore_bench import restore

    docs = tmp_path / "docs" / "p-v1"
    docs.mkdir(parents=True)
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"w")
    (docs / "teacher.json").write_text(json.dumps({"weights": str(weights), "mAP50": 0.7}))
    (docs / "run-fgd-x0.3-s1.json").write_text('{"final_mAP50": 0.6}')
    (docs / "run-fgd-x0.3-s1.job.json").write_text('{"entry": "fgd-x0.3", "seed": 1}')
    (docs / "run-ld-s0.json").write_text('{"final_mAP50": 0.5}')  # no job file: not a run the harness can check
    logs: list[str] = []
    assert restore("p-v1", tmp_path / "docs", tmp_path / "runs", log=logs.append) == ["fgd-x0.3-s1"]
    out = tmp_path / "runs" / "p-v1"
    assert json.loads((out / "teacher" / "result.json").read_text())["mAP50"] == 0.7
    # The harness takes the restored teacher as finished, although no job record comes with it (coco128-ft's official
    # yolov8s teacher crashed the next `yolokd bench` on the missing job.json before this was handled).
    from yolokd.bench.runner import _Job

    assert _Job(out / "teacher", {"kind": "teacher"}).finished_result()["mAP50"] == 0.7
    assert sorted(p.name for p in (out / "runs" / "fgd-x0.3-s1").iterdir()) == ["job.json", "result.json"]
    assert not (out / "runs" / "ld-s0").exists() and any("ld-s0" in m for m in logs)

    weights.unlink()  # on another machine the teacher cache is empty: its result must not be restored
    shutil.rmtree(tmp_path / "runs")
    logs.clear()
    restore("p-v1", tmp_path / "docs", tmp_path / "runs", log=logs.append)
    assert not (out / "teacher" / "result.json").exists() and any("not on this machine" in m for m in logs)


@pytest.mark.parametrize("dof, t, p", [(1, 12.7062047, 0.05), (2, 4.30265273, 0.05), (3, 3.18244631, 0.05),
                                        (4, 2.77644511, 0.05), (4, 4.60409487, 0.01), (5, 2.01504837, 0.10),
                                        (9, 2.26215716, 0.05), (30, 2.04227246, 0.05), (4, 0.0, 1.0)])
def test_t_test_p_value_matches_the_printed_t_tables(dof, t, p):
    from yolokd.bench.report import t_two_sided_p

    assert t_two_sided_p(t, dof) == pytest.approx(p, abs=1e-7)
    assert t_two_sided_p(-t, dof) == pytest.approx(p, abs=1e-7)  # two-sided


def test_paired_p_edge_cases():
    from yolokd.bench.report import paired_p

    # kitti-1k's five ld - none deltas (docs/benchmarks.md): t = 3.69 with 4 dof.
    assert paired_p([0.004, 0.016, 0.030, 0.011, 0.019]) == pytest.approx(0.0208, abs=5e-4)
    assert paired_p([0.01, 0.01]) == 0.0 and paired_p([0.0, 0.0]) == 1.0  # no spread: decided either way
    assert math.isnan(paired_p([0.02])) and math.isnan(paired_p([]))


def test_summarise_against_hand_values():
    from yolokd.bench.report import summarise

    def run(entry, seed, f, b):
        return {"entry": entry, "method": entry.split("-")[0], "seed": seed, "final_mAP50-95": f, "final_mAP50": f + .2,
                "best_mAP50-95": b, "best_mAP50": b + .2, "s_per_it": 1.0 + seed, "peak_rss_mib": 1000.0 + seed}

    runs = [run("none", 0, 0.30, 0.35), run("none", 1, 0.34, 0.36), run("ultralytics", 0, 0.36, 0.37),
            run("ultralytics", 1, 0.38, 0.38), run("mimic", 0, 0.40, 0.40)]
    rows = {r["entry"]: r for r in summarise(runs, {"mAP50-95": 0.42, "mAP50": 0.62}, "final_mAP50-95")}
    assert rows["none"]["final_mAP50-95"] == pytest.approx(0.32)
    assert rows["none"]["final_mAP50-95_std"] == pytest.approx(math.sqrt(((0.02) ** 2 * 2) / 1))  # sample std
    # Deltas are paired by seed: ultralytics - none = 0.06 (seed 0) and 0.04 (seed 1).
    assert rows["ultralytics"]["delta_vs_none"] == pytest.approx(0.05)
    assert rows["ultralytics"]["delta_vs_none_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    assert rows["ultralytics"]["delta_vs_none_wins"] == "2/2"
    # Paired t = 0.05 / (0.01 * sqrt 2 / sqrt 2) = 5 with 1 degree of freedom: Student's t with 1 dof is the standard
    # Cauchy, whose two-sided tail is 1 - 2 atan(t) / pi.
    assert rows["ultralytics"]["delta_vs_none_p"] == pytest.approx(1 - 2 * math.atan(5) / math.pi)
    assert math.isnan(rows["mimic"]["delta_vs_none_p"]) and math.isnan(rows["none"]["delta_vs_none_p"])  # < 2 seeds
    assert rows["ultralytics"]["gap_closed"] == pytest.approx(0.05 / (0.42 - 0.32))
    # mimic has seed 0 only: compared with seed 0 of the others, not with their 2-seed means (0.40 - 0.37).
    assert rows["mimic"]["delta_vs_ultralytics"] == pytest.approx(0.40 - 0.36)
    assert math.isnan(rows["mimic"]["delta_vs_ultralytics_std"]) and rows["mimic"]["delta_vs_none_wins"] == "1/1"
    assert rows["mimic"]["gap_closed"] == pytest.approx((0.40 - 0.30) / (0.42 - 0.30))
    assert rows["none"]["gap_closed"] == 0.0 and rows["none"]["delta_vs_ultralytics_wins"] == "0/2"
    # Without an ultralytics entry there is nothing to pair with.
    alone = {r["entry"]: r for r in summarise([r for r in runs if r["entry"] != "ultralytics"],
                                               {"mAP50-95": 0.42, "mAP50": 0.62}, "final_mAP50-95")}
    assert math.isnan(alone["mimic"]["delta_vs_ultralytics"]) and alone["mimic"]["delta_vs_ultralytics_wins"] == ""
    assert math.isnan(rows["mimic"]["final_mAP50-95_std"])  # one seed: no std
    assert rows["none"]["s_per_it"] == pytest.approx(1.5) and rows["none"]["peak_rss_mib"] == 1001.0
    assert rows["none"]["n_seeds"] == 2 and rows["mimic"]["seeds"] == "0"
    # A teacher that is not better than the plain student has no gap to close.
    worse = summarise(runs, {"mAP50-95": 0.30, "mAP50": 0.5}, "final_mAP50-95")
    assert all(math.isnan(r["gap_closed"]) for r in worse)


def test_shipped_protocols_are_valid():
    from yolokd.bench.protocol import entries, list_protocols, load_protocol, recipe, recipe_hash

    names = list_protocols()
    assert {"synthetic", "synthetic-tune", "kitti-1k", "coco128-ft"} <= set(names)
    for n in names:
        p = load_protocol(n)
        entries(p, p["methods"])  # every listed method or variant exists
        assert recipe_hash(recipe(p)) != recipe_hash(recipe(p, {"epochs": 1}))
    for reported, tuning in (("synthetic", "synthetic-tune"), ("synthetic-ft", "synthetic-ft-tune")):
        syn, tune = load_protocol(reported), load_protocol(tuning)
        assert syn["data"]["synthetic"]["seed"] != tune["data"]["synthetic"]["seed"]  # tuning never on the reported split
        assert {k: v for k, v in syn["data"]["synthetic"].items() if k != "seed"} == \
            {k: v for k, v in tune["data"]["synthetic"].items() if k != "seed"}
        assert (syn["teacher"], syn["student"], syn["train"]) == (tune["teacher"], tune["student"], tune["train"])


def test_the_setting_label_is_not_part_of_the_recipe_and_old_folders_still_resume(tmp_path):
    import json

    from yolokd.bench.protocol import ProtocolError, load_protocol, recipe, recipe_hash
    from yolokd.bench.runner import run_bench

    p = load_protocol("synthetic")
    relabelled = {**p, "setting": "another label", "description": "reworded"}
    assert recipe_hash(recipe(p)) == recipe_hash(recipe(relabelled))  # a label changes no number
    # A results folder whose stored hash was computed by an older rule (here: a made-up one) is accepted when its
    # stored recipe, rehashed today, is the protocol's (here: nothing finished to tabulate yet) ...
    out = tmp_path / "synthetic-v1"
    (out / "teacher").mkdir(parents=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump({"hash": "01d0ha5h", **recipe(p)}, sort_keys=False))
    (out / "teacher" / "result.json").write_text(json.dumps({"mAP50-95": 0.5, "mAP50": 0.7}))
    with pytest.raises(ProtocolError, match="no finished run"):
        run_bench(relabelled, methods=["none"], project=tmp_path, report_only=True, log=lambda s: None)
    # ... and refused when a setting that changes numbers differs.
    changed = recipe(p)
    changed["train"]["epochs"] += 1
    (out / "recipe.yaml").write_text(yaml.safe_dump({"hash": "01d0ha5h", **changed}, sort_keys=False))
    with pytest.raises(ProtocolError, match="bump its 'version'"):
        run_bench(p, methods=["none"], project=tmp_path, report_only=True, log=lambda s: None)


def test_protocol_errors(tmp_path):
    from yolokd.bench.protocol import ProtocolError, entries, load_protocol

    with pytest.raises(ProtocolError, match="coco128-ft"):
        load_protocol("kitti1k")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "b", "version": 1, "data": "x", "teacher": {}, "student": "s", "train": {},
                                   "epoch": 3}))
    with pytest.raises(ProtocolError, match="epoch"):
        load_protocol(str(bad))
    with pytest.raises(ProtocolError, match="unknown method 'nonee'. Did you mean method=none.*Nor is it a variant"):
        entries(load_protocol("coco128-ft"), ["nonee"])


def test_shared_data_is_copied_out_of_the_read_only_folder(tmp_path, monkeypatch):
    from yolokd.bench.protocol import resolve_data

    shared = tmp_path / "shared"
    (shared / "toy" / "labels").mkdir(parents=True)
    (shared / "toy" / "toy.yaml").write_text("train: images\nval: images\nnames: {0: a}\n")
    (shared / "toy" / "labels" / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (shared / "toy" / "labels" / "labels.cache").write_text("stale")
    monkeypatch.setenv("YOLOKD_DATA", str(shared))
    monkeypatch.setenv("YOLOKD_CACHE", str(tmp_path / "cache"))
    y = Path(resolve_data("shared:toy/toy.yaml"))
    assert y == tmp_path / "cache" / "datasets" / "toy" / "toy.yaml" and y.read_text().startswith("train: images")
    assert (y.parent / "labels" / "x.txt").exists() and not (y.parent / "labels" / "labels.cache").exists()
    with pytest.raises(FileNotFoundError, match="shared/data/nope"):
        resolve_data("shared:nope/nope.yaml")


def test_a_redefined_variant_does_not_reuse_the_old_result(tmp_path):
    import json

    from yolokd.bench.protocol import ProtocolError
    from yolokd.bench.runner import _Job

    run = tmp_path / "none-lowlr-s0"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"kind": "train", "method": "none", "args": {"lr0": 1e-4}}))
    (run / "result.json").write_text(json.dumps({"final_mAP50-95": 0.3}))
    same = {"kind": "train", "method": "none", "args": {"lr0": 1e-4}}
    assert _Job(run, same).finished_result() == {"final_mAP50-95": 0.3}
    with pytest.raises(ProtocolError, match="another name"):
        _Job(run, {**same, "args": {"lr0": 1e-4, "warmup_bias_lr": 0.0}}).finished_result()


def test_a_fixed_method_does_not_reuse_results_of_its_old_code(tmp_path):
    """A run records the code revision of each part of its method; a run of an older revision is refused."""
    import json

    from yolokd.bench.protocol import ProtocolError, entries, load_protocol
    from yolokd.bench.runner import _Job
    from yolokd.methods import method_revisions

    assert method_revisions("gkd") == {"gkd": 2}  # the BMFI mask fix of 2026-11-30
    assert method_revisions("gkd+aid") == {"gkd": 2, "aid": 1} and method_revisions("aid") == {"fkd": 1, "aid": 1}
    ents = entries(load_protocol("synthetic"), ["gkd", "fgd+aid"])
    assert ents["gkd"]["revision"] == {"gkd": 2} and ents["fgd+aid"]["revision"] == {"fgd": 1, "aid": 1}
    spec = {"kind": "train", "method": "gkd", "args": {}, "revision": {"gkd": 2}}
    for name, recorded, reused in (("new", {"gkd": 2}, True), ("old", {"gkd": 1}, False), ("unrecorded", None, False)):
        run = tmp_path / name
        run.mkdir()
        job = {"kind": "train", "method": "gkd", "args": {}} | ({"revision": recorded} if recorded else {})
        (run / "job.json").write_text(json.dumps(job))
        (run / "result.json").write_text(json.dumps({"final_mAP50-95": 0.3}))
        if reused:
            assert _Job(run, spec).finished_result() == {"final_mAP50-95": 0.3}
        else:  # a run without the record ran revision 1, before revisions were recorded
            with pytest.raises(ProtocolError, match=r"revision \{'gkd': 1\}.*now at \{'gkd': 2\}.*delete"):
                _Job(run, spec).finished_result()
    # a method still at revision 1 reuses the runs made before revisions were recorded
    run = tmp_path / "fgd-old"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"kind": "train", "method": "fgd", "args": {}}))
    (run / "result.json").write_text(json.dumps({"final_mAP50-95": 0.3}))
    assert _Job(run, {"kind": "train", "method": "fgd", "args": {}, "revision": {"fgd": 1}}).finished_result()


def test_retuned_method_defaults_do_not_reuse_the_old_result(tmp_path, monkeypatch):
    """A run records its method's resolved hyperparameters; changed cfg defaults are refused, not silently reused."""
    import json

    import yolokd.methods as methods
    from yolokd.bench.protocol import ProtocolError, entries, load_protocol
    from yolokd.bench.runner import _Job

    proto = load_protocol("synthetic-tune")
    ents = entries(proto, ["fgd", "fgd-x3", "none"])
    assert ents["fgd"]["hparams"] == methods.method_defaults("fgd")
    # A variant's method values go over the defaults; the untouched ones (T, switches) stay the defaults.
    assert ents["fgd-x3"]["hparams"]["alpha"] == pytest.approx(6e-3)
    assert ents["fgd-x3"]["hparams"]["temperature"] == methods.method_defaults("fgd")["temperature"]

    run = tmp_path / "fgd-s0"
    run.mkdir()
    job = {"kind": "train", "method": "fgd", "args": {}, "hparams": ents["fgd"]["hparams"]}
    (run / "job.json").write_text(json.dumps(job))
    (run / "result.json").write_text(json.dumps({"final_mAP50-95": 0.12}))
    assert _Job(run, job).finished_result() == {"final_mAP50-95": 0.12}

    retuned = {**methods.method_defaults("fgd"), "alpha": 1.0}
    monkeypatch.setattr(methods, "method_defaults", lambda name: retuned)
    new = entries(proto, ["fgd"])["fgd"]
    assert new["hparams"]["alpha"] == 1.0
    with pytest.raises(ProtocolError, match="hparams"):
        _Job(run, {**job, "hparams": new["hparams"]}).finished_result()
    # A run written before hyperparameters were recorded is checked on method and args only.
    (run / "job.json").write_text(json.dumps({"kind": "train", "method": "fgd", "args": {}}))
    assert _Job(run, {**job, "hparams": new["hparams"]}).finished_result() == {"final_mAP50-95": 0.12}


def test_a_run_is_its_resolved_hyperparameters_not_how_the_variant_spelled_them(tmp_path):
    """A variant that wrote values out (`fgd-fg`) and defaults that later say the same are one job; a changed training
    argument or value is still refused."""
    import json

    from yolokd.bench.protocol import ProtocolError
    from yolokd.bench.runner import _Job

    hp = {"alpha": 2e-3, "beta": 0.0, "use_global": False}
    run = tmp_path / "fgd-fg-s0"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"kind": "train", "method": "fgd", "args": {**hp, "lr0": 1e-3},
                                              "hparams": hp}))
    (run / "result.json").write_text(json.dumps({"final_mAP50-95": 0.5}))
    spelled_out = {"kind": "train", "method": "fgd", "args": {"alpha": 0.002, "lr0": 1e-3}, "hparams": hp}
    assert _Job(run, spelled_out).finished_result() == {"final_mAP50-95": 0.5}
    with pytest.raises(ProtocolError, match="args"):  # a training argument is not a hyperparameter: compared as is
        _Job(run, {**spelled_out, "args": {"lr0": 2e-3}}).finished_result()
    with pytest.raises(ProtocolError, match="hparams"):
        _Job(run, {**spelled_out, "hparams": {**hp, "alpha": 4e-3}}).finished_result()


def test_parallel_jobs_run_side_by_side_and_teacher_free_entries_do_not_wait(tiny_data, tmp_path):
    """jobs=2: two jobs train at once (both start before either ends), `none` starts while the teacher trains, a KD
    entry only after it; all are tabulated and their timings marked as taken in parallel; a rerun of the same job
    (`none-rerun`, at the same fixed thread count, beside another job) is bitwise identical."""
    import json

    from yolokd.bench.runner import run_bench

    proto = _tiny_protocol(tiny_data)
    proto["teacher"]["epochs"] = 1  # a teacher job that trains, so there is something to wait for
    events: list[str] = []
    names = ["none", "mimic", "none-lowlr", "none-rerun"]
    res = run_bench(proto, methods=names, seeds=[0], project=tmp_path, jobs=2, threads=1, log=events.append)
    order = [(e.split()[3], "start") if e.startswith("yolokd bench: running") else (e.split()[2], "end")
             for e in events if e.startswith("yolokd bench: running") or " done in " in e]
    starts = [n for n, what in order if what == "start"]
    ends = [n for n, what in order if what == "end"]
    assert starts[:2] == ["teacher", "none-s0"]  # none did not wait for the teacher
    assert order.index(("none-s0", "start")) < order.index(("teacher", "end"))
    assert order.index(("mimic-s0", "start")) > order.index(("teacher", "end"))  # mimic needs the teacher's weights
    assert sorted(ends) == sorted(res["ran"]) == sorted(["teacher", *(f"{n}-s0" for n in names)])
    out = res["out"]
    with open(out / "results.csv", newline="") as f:
        runs = {r["entry"]: r for r in csv.DictReader(f)}
    assert set(runs) == set(names)
    assert all(r["jobs"] == "2" and r["threads"] == "1" for r in runs.values())
    assert json.loads((out / "runs" / "none-s0" / "job.json").read_text())["teacher_weights"] is None
    md = (out / "summary.md").read_text()
    assert md.count(" ∥2 |") == 4 and (out / "curves.png").stat().st_size > 0
    # Same seed, same thread count: the rerun equals the run in every logged number but the wall time, and in weights.
    a, b = (_rows_no_time(out / "runs" / f"{n}-s0" / "results.csv") for n in ("none", "none-rerun"))
    assert a == b and len(a) == 1
    sd = [torch.load(out / "runs" / f"{n}-s0" / "weights" / "last.pt", weights_only=False)["model"].state_dict()
          for n in ("none", "none-rerun")]
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    assert run_bench(proto, methods=names, seeds=[0], project=tmp_path, jobs=2,
                     log=lambda s: None)["ran"] == []  # resumable as before
    (out / "summary.md").unlink()
    (out / "runs" / "mimic-s0" / "result.json").unlink()  # as if still running: report mode leaves it out, runs nothing
    rep = run_bench(proto, methods=names, seeds=[0], project=tmp_path, report_only=True, log=lambda s: None)
    assert rep["ran"] == [] and [r["entry"] for r in rep["summary"]] == ["none", "none-lowlr", "none-rerun"]
    assert (out / "summary.md").exists() and not (out / "runs" / "mimic-s0" / "result.json").exists()
    from yolokd.bench.protocol import ProtocolError

    with pytest.raises(ProtocolError, match="teacher has not finished"):
        run_bench(proto, methods=["none"], project=tmp_path / "empty", report_only=True, log=lambda s: None)


def _rows_no_time(path: Path) -> list[dict]:
    """An Ultralytics results.csv without its wall-time column."""
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k.strip() != "time"} for r in csv.DictReader(f)]


def test_slots_split_devices_and_threads(monkeypatch):
    from yolokd.bench.protocol import ProtocolError
    from yolokd.bench.runner import default_jobs, slots

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert slots(2, "0,1") == [{"device": "0", "threads": 8}, {"device": "1", "threads": 8}]
    assert [s["device"] for s in slots(3, "0,1")] == ["0", "1", "0"]
    assert slots(4, "0") == [{"device": "0", "threads": 4}] * 4  # several jobs may share one large GPU
    assert slots(3, "cpu") == [{"device": "cpu", "threads": 5}] * 3
    assert slots(2, None, threads=3) == [{"device": None, "threads": 3}] * 2
    assert default_jobs("0,1,2") == 3 and default_jobs("cpu") == 2 and default_jobs(None) == 2
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_jobs(None) == 1 and slots(2, None)[0]["threads"] == 1
    with pytest.raises(ProtocolError, match="jobs=0"):
        slots(0)


def test_plateau_and_curves_against_hand_values(tmp_path):
    from yolokd.bench.report import epoch_curves, plateau

    assert plateau([0.1, 0.2, 0.3, 0.4, 0.41, 0.42, 0.43, 0.44]) == pytest.approx(0.44 - 0.42)  # last 2 of 8 epochs
    assert plateau([0.1, 0.2, 0.3]) == pytest.approx(0.3 - 0.2)
    assert math.isnan(plateau([0.5]))
    run = tmp_path / "r"
    run.mkdir()
    (run / "results.csv").write_text("epoch,  metrics/mAP50-95(B)\n1,0.25\n2,0.5\n")
    assert epoch_curves([{"entry": "none", "seed": 0, "run_dir": str(run)}]) == {"none": {"0": [0.25, 0.5]}}


def test_epoch_deltas_are_paired_by_seed_against_hand_values(tmp_path):
    from yolokd.bench.report import epoch_deltas, epoch_deltas_markdown

    def run(entry, seed, curve):
        d = tmp_path / f"{entry}-s{seed}"
        d.mkdir()
        (d / "results.csv").write_text("epoch,  metrics/mAP50(B)\n" + "".join(f"{i},{v}\n" for i, v in enumerate(curve)))
        return {"entry": entry, "seed": seed, "run_dir": str(d)}

    runs = [run("none", 0, [0.100, 0.200, 0.300]), run("none", 1, [0.125, 0.250, 0.375]),
            run("fgd", 0, [0.075, 0.250, 0.3375]), run("fgd", 1, [0.125, 0.250, 0.375, 0.5]),  # a longer run: cut
            run("cwd", 2, [0.5, 0.5, 0.5])]  # no seed in common with none: left out
    d = epoch_deltas(runs, "mAP50")
    assert list(d) == ["fgd"]
    assert [r["epoch"] for r in d["fgd"]] == [1, 2, 3] and {r["n_seeds"] for r in d["fgd"]} == {2}
    assert [r["delta"] for r in d["fgd"]] == pytest.approx([-0.0125, 0.025, 0.01875])  # means of (-.025, 0), (.05, 0)...
    assert d["fgd"][1]["delta_std"] == pytest.approx(math.sqrt(2 * 0.025**2))  # stdev of (0.05, 0.0)
    assert [r["wins"] for r in d["fgd"]] == ["0/2", "1/2", "1/2"]
    md = epoch_deltas_markdown(d, "mAP50")
    # epochs 1, 2, 3 (a quarter rounds to 1), then the mean of the three deltas: 0.03125 / 3
    assert "| fgd | 2 | -0.013 | +0.025 | +0.019 | +0.010 |" in md


def test_per_class_reads_the_last_printed_validation_table_and_pairs_by_seed():
    from yolokd.bench.report import per_class_deltas, per_class_markdown, printed_per_class

    log = ("                   all         10         20        0.1        0.2        0.3        0.4\n"  # an epoch's
           "                   car         10         15        0.1        0.2        0.3        0.4\n"
           "      3/3  0G  1.2  Class Images\rValidating best.pt...\n"
           "                 Class     Images  Instances      Box(P          R      mAP50  mAP50-95)\n"
           "                   all         10         20      0.713      0.594      0.645      0.345\n"
           "                   car          9         15      0.757       0.84       0.86      0.544\n"
           "            pedestrian          4          5      0.755      0.447      0.536      0.238\n"
           "               cyclist          2          3          1          0   0.000941   9.41e-05\n"  # %.3g
           "Speed: 0.1ms preprocess\n")
    t = printed_per_class(log)
    assert [r["class"] for r in t] == ["all", "car", "pedestrian", "cyclist"]
    assert (t[3]["P"], t[3]["R"], t[3]["mAP50-95"]) == (1.0, 0.0, 9.41e-05)
    assert t[2] == {"class": "pedestrian", "images": 4, "instances": 5, "P": 0.755, "R": 0.447, "mAP50": 0.536,
                    "mAP50-95": 0.238}
    rows = [{"entry": e, "seed": s, "class": "car", "mAP50": v}
            for e, s, v in (("none", 0, 0.5), ("none", 1, 0.6), ("fgd", 0, 0.55), ("fgd", 1, 0.58), ("fgd", 2, 0.9))]
    d = per_class_deltas(rows, "mAP50")
    assert d["fgd"]["car"][0] == pytest.approx((0.05 - 0.02) / 2) and d["fgd"]["car"][1:] == (2, "1/2")  # seed 2: no pair
    assert "| fgd | 2 | +0.015 (1/2) |" in per_class_markdown(d, "mAP50")


def test_the_default_method_is_the_best_measured_one_across_the_reported_protocols():
    """`method=`'s default (and so the demo's distilled row) is the method, at its shipped defaults, with the largest
    mean headline gain over the plain student (paired by seed) on the most reported protocols, counting a method on a
    protocol only when it ran there on at least 3 seeds and was ahead of `none` on more than half of them; a tie goes
    to the long protocol (synthetic-ft, the one with the smallest seed spread). A new measurement that changes the
    ranking fails here until the default follows it."""
    import csv

    from conftest import REPO
    from yolokd.engine.spec import DEFAULT_METHOD
    from yolokd.methods import METHODS

    protocols = ["synthetic-ft", "synthetic", "kitti-1k"]
    best: dict[str, str] = {}
    for p in protocols:
        with open(REPO / "docs" / "bench" / f"{p}-v1" / "summary.csv") as f:
            rows = {r["entry"]: r for r in csv.DictReader(f)}
        full = {}
        for e, r in rows.items():
            won, n = map(int, r["delta_vs_none_wins"].split("/")) if r["delta_vs_none_wins"] else (0, 0)
            if e in METHODS and e != "none" and n >= 3 and 2 * won > n:
                full[e] = float(r["delta_vs_none"])
        if full:
            best[p] = max(full, key=full.get)
    wins = {m: sum(b == m for b in best.values()) for m in set(best.values())}
    top = max(wins.values())
    leaders = [m for m in wins if wins[m] == top]
    expected = leaders[0] if len(leaders) == 1 else best["synthetic-ft"]
    assert DEFAULT_METHOD == expected, f"best per protocol: {best}"
