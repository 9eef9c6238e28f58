"""Benchmark tables: per-run CSV, per-entry summary (mean ± std over seeds) as CSV and Markdown, and a plot."""

from __future__ import annotations

import csv
import math
import re
import statistics
from pathlib import Path
from typing import Any, Callable

#: Per-run columns of results.csv, in order.
RUN_COLUMNS = ["entry", "method", "seed", "final_mAP50-95", "final_mAP50", "best_mAP50-95", "best_mAP50", "best_epoch",
               "epochs", "s_per_it", "s_per_it_p25", "s_per_it_p75", "peak_rss_mib", "cuda_peak_mib", "kd_det_ratio",
               "kd_det_grad_ratio", "wall_s", "jobs", "threads"]
METRICS = ["final_mAP50-95", "final_mAP50", "best_mAP50-95", "best_mAP50"]
NAN = float("nan")


def mean_std(vals: list[float]) -> tuple[float, float]:
    """Mean and sample std of the values that are not NaN (NaN when none; no std from one)."""
    vals = [v for v in vals if v == v]
    if not vals:
        return NAN, NAN
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else NAN


def paired(diffs: list[float]) -> tuple[float, float, str]:
    """Per-seed differences to a reference entry -> (mean, sample std, "k/n": ahead on k of n seeds)."""
    mean, std = mean_std(diffs)
    return mean, std, f"{sum(d > 0 for d in diffs)}/{len(diffs)}" if diffs else ""


def t_two_sided_p(t: float, dof: int) -> float:
    """Two-sided p-value of Student's t with an integer number of degrees of freedom.

    The closed-form series of Abramowitz & Stegun 26.7.3-4 for A(t | dof) = P(|T| < |t|), exact for integer dof,
    so the report needs no SciPy (Ultralytics does not bring it).
    """
    if dof < 1 or t != t:
        return NAN
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    # The series: odd dof: 1 + 2/3 c^2 + (2*4)/(3*5) c^4 + ... up to c^(dof-3); even dof: 1 + 1/2 c^2 + (1*3)/(2*4) c^4
    # + ... up to c^(dof-2).
    term, total = 1.0, 1.0
    k = 2 if dof % 2 else 1
    for _ in range((dof - 3) // 2 if dof % 2 else (dof - 2) // 2):
        term *= c2 * k / (k + 1)
        total += term
        k += 2
    if dof % 2:
        a = 2 / math.pi * (theta + (s * math.cos(theta) * total if dof > 1 else 0.0))
    else:
        a = s * total
    return min(1.0, max(0.0, 1.0 - a))


def paired_p(diffs: list[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean per-seed difference is zero (NaN under two seeds).

    What the per-seed deltas can and cannot resolve: with seed spreads as large as KD effects, a mean gain with p
    above 0.05 is not a measured gain. Identical non-zero differences (std 0) give p = 0.
    """
    vals = [d for d in diffs if d == d]
    if len(vals) < 2:
        return NAN
    mean, std = statistics.fmean(vals), statistics.stdev(vals)
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    return t_two_sided_p(mean / (std / math.sqrt(len(vals))), len(vals) - 1)


def summarise(runs: list[dict[str, Any]], teacher: dict[str, float], headline: str) -> list[dict[str, Any]]:
    """One row per entry: mean/std of every metric, deltas and the teacher-student gap closed on ``headline``.

    Args:
        runs: Per-run results.
        teacher: The teacher's own metrics on the same split (``mAP50-95``, ``mAP50``).
        headline: Column the deltas use, e.g. ``final_mAP50``.
    """
    order: list[str] = []
    for r in runs:
        if r["entry"] not in order:
            order.append(r["entry"])
    rows = []
    for e in order:
        rs = [r for r in runs if r["entry"] == e]
        row: dict[str, Any] = {"entry": e, "method": rs[0]["method"], "n_seeds": len(rs),
                               "seeds": " ".join(str(r["seed"]) for r in rs)}
        for m in METRICS:
            row[m], row[m + "_std"] = mean_std([r[m] for r in rs])
        row["s_per_it"] = statistics.median(r["s_per_it"] for r in rs)
        row["jobs"] = max(int(r.get("jobs", 1) or 1) for r in rs)  # >1: timed while other jobs shared the machine
        row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rs)
        row["cuda_peak_mib"] = max((r.get("cuda_peak_mib", NAN) for r in rs), default=NAN)
        row["kd_det_ratio"] = mean_std([r.get("kd_det_ratio", NAN) for r in rs])[0]
        row["kd_det_grad_ratio"] = mean_std([r.get("kd_det_grad_ratio", NAN) for r in rs])[0]
        rows.append(row)
    # Deltas are paired by seed (a seed fixes the student's init and the data order in every entry), over the seeds
    # both entries have: mean and sample std of the per-seed differences, and on how many seeds the entry was ahead.
    # Seed-to-seed spread is often as large as a KD effect; the paired std and the win count show whether it is.
    per_seed = {(r["entry"], r["seed"]): r[headline] for r in runs}
    t = teacher.get(headline.split("_", 1)[1], NAN)
    for row in rows:
        mine = [r["seed"] for r in runs if r["entry"] == row["entry"]]
        for base in ("none", "ultralytics"):
            shared = [s for s in mine if (base, s) in per_seed]
            diffs = [per_seed[(row["entry"], s)] - per_seed[(base, s)] for s in shared]
            row[f"delta_vs_{base}"], row[f"delta_vs_{base}_std"], row[f"delta_vs_{base}_wins"] = paired(diffs)
            row[f"delta_vs_{base}_p"] = paired_p(diffs) if row["entry"] != base else NAN
            if base == "none":  # gap closed over the same seeds: paired delta / (teacher - none on those seeds)
                gap = t - (statistics.fmean(per_seed[("none", s)] for s in shared) if shared else NAN)
                row["gap_closed"] = row["delta_vs_none"] / gap if gap == gap and gap > 0 else NAN
    return rows


def write_runs_csv(path: Path, runs: list[dict[str, Any]]) -> None:
    """Every finished run, one row each."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in runs:
            w.writerow({k: r.get(k, "") for k in RUN_COLUMNS})


def write_summary_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-entry summary, machine-readable."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _f(v: float, std: float = NAN, sign: bool = False) -> str:
    if v != v:
        return "-"
    s = f"{v:+.3f}" if sign else f"{v:.3f}"
    return s + (f" ± {std:.3f}" if std == std else "")


def _delta(row: dict[str, Any], base: str) -> str:
    if row["entry"] == base:
        return "+0.000"
    d = _f(row[f"delta_vs_{base}"], row[f"delta_vs_{base}_std"], sign=True)
    p = row.get(f"delta_vs_{base}_p", NAN)
    return d + (f" ({row[f'delta_vs_{base}_wins']}" + (f", p {p:.2g}" if p == p else "") + ")" if d != "-" else "")


def _par(row: dict[str, Any]) -> str:
    return f" ∥{row['jobs']}" if row.get("jobs", 1) > 1 else ""


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The summary as Markdown, headed by everything needed to trace and rerun it."""
    r, teacher, init = info["recipe"], info["teacher"], info.get("student_init")
    head = info["headline"]
    lines = [
        f"### {r['name']} v{r['version']} (recipe {info['hash']}, {r.get('setting', '')})",
        "",
        f"Command: `{info['command']}`  ",
        f"Results: `{info['out']}` (results.csv: every run; summary.csv: this table)  ",
        f"Teacher `{Path(str(r['teacher']['init'])).name}`"
        + (f" fine-tuned {r['teacher']['epochs']} epochs" if r["teacher"].get("epochs") else "")
        + f": mAP50-95 {_f(teacher['mAP50-95'])}, mAP50 {_f(teacher['mAP50'])} on the same val split.  ",
    ]
    if init and init["mAP50-95"] == init["mAP50-95"]:  # NaN when the init has other classes (no reference)
        lines.append(f"Student init `{Path(str(r['student'])).name}` before training: mAP50-95 {_f(init['mAP50-95'])}, "
                     f"mAP50 {_f(init['mAP50'])}.  ")
    lines += [
        f"Mean ± sample std over seeds (no std with one seed). Deltas and gap closed use **{head}**, paired by seed "
        f"over the seeds both entries have: mean ± std of the per-seed differences (k/n: ahead on k of n seeds; p: "
        f"two-sided paired t-test, from 2 seeds; a gain with p above 0.05 is not resolved); "
        f"gap closed = Δ vs none / (teacher − none). s/it: median training iteration (∥N: timed with N jobs side by "
        f"side); peak: process RSS.",
        "",
        "| entry | seeds | final mAP50-95 | final mAP50 | best mAP50-95 | best mAP50 | Δ vs none | Δ vs ultralytics "
        "| gap closed | s/it | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['entry']} | {row['seeds']} | {_f(row['final_mAP50-95'], row['final_mAP50-95_std'])} | "
            f"{_f(row['final_mAP50'], row['final_mAP50_std'])} | {_f(row['best_mAP50-95'], row['best_mAP50-95_std'])} | "
            f"{_f(row['best_mAP50'], row['best_mAP50_std'])} | {_delta(row, 'none')} | {_delta(row, 'ultralytics')} | "
            f"{_f(row['gap_closed'])} | {row['s_per_it']:.2f}{_par(row)} | "
            f"{row['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """Bars of final mAP50-95 and mAP50 per entry (error bars: std over seeds), teacher as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2 + 1.1 * len(rows), 3.6))
    x = range(len(rows))
    for off, m, c in ((-0.2, "final_mAP50-95", "C0"), (0.2, "final_mAP50", "C1")):
        err = [0 if math.isnan(r[m + "_std"]) else r[m + "_std"] for r in rows]
        ax.bar([i + off for i in x], [r[m] for r in rows], 0.4, yerr=err, color=c, label=m.replace("final_", ""))
    ax.axhline(info["teacher"]["mAP50-95"], ls="--", c="C0", lw=1, label="teacher mAP50-95")
    ax.axhline(info["teacher"]["mAP50"], ls=":", c="C1", lw=1, label="teacher mAP50")
    ax.set_xticks(list(x), [r["entry"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("final-epoch mAP (val)")
    r = info["recipe"]
    ax.set_title(f"{r['name']} v{r['version']} ({info['hash']})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def epoch_curves(runs: list[dict[str, Any]], column: str = "metrics/mAP50-95(B)") -> dict[str, dict[str, list[float]]]:
    """Per entry: the validation curve of every seed (from each run's Ultralytics results.csv), keyed by seed."""
    from yolokd.bench.worker import read_epochs

    out: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        f = Path(r.get("run_dir", "")) / "results.csv"
        if f.is_file():
            out.setdefault(r["entry"], {})[str(r["seed"])] = [row[column] for row in read_epochs(f)]
    return out


def epoch_deltas(runs: list[dict[str, Any]], metric: str, base: str = "none") -> dict[str, list[dict[str, Any]]]:
    """Per entry and epoch: the validation delta to ``base``, paired by seed like the final-epoch deltas.

    A final-epoch gain alone cannot tell a method that ends better from one that only got there sooner on a schedule
    that stops early; the paired curve of deltas shows whether a gain grows, holds or fades as the student converges.

    Args:
        runs: Per-run results with ``run_dir`` (their Ultralytics results.csv holds the curves).
        metric: ``mAP50-95`` or ``mAP50``.
        base: The reference entry.

    Returns:
        ``{entry: [{"epoch", "delta", "delta_std", "n_seeds", "wins"}, ...]}`` over the seeds both entries have and the
        epochs all of those runs reached; entries without a curve, or without a seed in common with ``base``, are left
        out (so is ``base``).
    """
    curves = epoch_curves(runs, f"metrics/{metric}(B)")
    ref = curves.get(base, {})
    out: dict[str, list[dict[str, Any]]] = {}
    for entry, by_seed in curves.items():
        shared = [s for s in by_seed if s in ref and entry != base]
        if not shared:
            continue
        n = min(min(len(by_seed[s]), len(ref[s])) for s in shared)
        rows = []
        for e in range(n):
            diffs = [by_seed[s][e] - ref[s][e] for s in shared]
            mean, std, wins = paired(diffs)
            rows.append({"epoch": e + 1, "delta": mean, "delta_std": std, "n_seeds": len(diffs), "wins": wins})
        out[entry] = rows
    return out


def write_epoch_deltas_csv(path: Path, deltas: dict[str, list[dict[str, Any]]]) -> None:
    """The paired per-epoch deltas, one row per entry and epoch."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["entry", "epoch", "delta", "delta_std", "n_seeds", "wins"])
        w.writeheader()
        for entry, rows in deltas.items():
            w.writerows({"entry": entry, **r} for r in rows)


def epoch_deltas_markdown(deltas: dict[str, list[dict[str, Any]]], metric: str, base: str = "none") -> str:
    """A short table of the paired deltas at a quarter, half, three quarters and the end of training, and their mean
    over all epochs (the area between the curves: robust to one noisy epoch, unlike a maximum)."""
    if not deltas:
        return ""
    n = max(len(r) for r in deltas.values())
    marks = sorted({max(1, round(n * q)) for q in (0.25, 0.5, 0.75, 1.0)})
    lines = [f"Paired Δ {metric} vs {base} by epoch (mean over the seeds both have; all epochs in epoch_deltas.csv): "
             "a gain that fades towards the end is partly faster convergence.", "",
             "| entry | seeds | " + " | ".join(f"epoch {m}" for m in marks) + " | mean over epochs |",
             "|---|---|" + "---|" * (len(marks) + 1)]
    for entry, rows in deltas.items():
        at = {r["epoch"]: r for r in rows}
        cells = [_f(at[m]["delta"], sign=True) if m in at else "-" for m in marks]
        lines.append(f"| {entry} | {rows[0]['n_seeds']} | " + " | ".join(cells)
                     + f" | {_f(statistics.fmean(r['delta'] for r in rows), sign=True)} |")
    return "\n".join(lines) + "\n"


#: Columns of per_class.csv: one row per run and class, from the final validation of the run's best.pt.
PER_CLASS_COLUMNS = ["entry", "seed", "class", "images", "instances", "P", "R", "mAP50", "mAP50-95"]


#: One row of the validation table Ultralytics prints: name, images, instances, P, R, mAP50, mAP50-95. The values are
#: printed with %.3g, so one below 1e-4 comes in exponent form (9.41e-05).
_NUM = r"(\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
_PRINTED_ROW = re.compile(rf"^\s*(\S+)\s+(\d+)\s+(\d+)\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s*$")


def printed_per_class(log: str) -> list[dict[str, Any]]:
    """The last validation table printed in a run's log (the final validation of best.pt): ``all``, then each class.

    For runs made before results recorded ``per_class`` (3 decimals, as printed).
    """
    lines = [ln.split("\r")[-1] for ln in log.splitlines()]  # progress bars rewrite a line with carriage returns
    starts = [i for i, ln in enumerate(lines) if (m := _PRINTED_ROW.match(ln)) and m.group(1) == "all"]
    rows: list[dict[str, Any]] = []
    for ln in lines[starts[-1]:] if starts else []:
        m = _PRINTED_ROW.match(ln)
        if not m:
            break
        name, *vals = m.groups()
        rows.append(dict(zip(PER_CLASS_COLUMNS[2:], [name, int(vals[0]), int(vals[1]), *map(float, vals[2:])])))
    return rows


def per_class_rows(runs: list[dict[str, Any]], skipped: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every run's per-class rows: recorded in its result (``per_class``), else read from the table in its log.

    ``skipped`` is told the runs that have neither (older runs restored from ``docs/bench``, which keeps no logs).
    """
    out = []
    for r in runs:
        table = r.get("per_class")
        log = Path(r.get("run_dir", "")) / "log.txt"
        if not table and log.is_file():
            table = printed_per_class(log.read_text(errors="replace"))
        if not table and skipped:
            skipped(f"{r['entry']}-s{r['seed']}")
        out += [{"entry": r["entry"], "seed": r["seed"], **c} for c in table or []]
    return out


def write_per_class_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-class rows of every run."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PER_CLASS_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def per_class_deltas(rows: list[dict[str, Any]], metric: str,
                     base: str = "none") -> dict[str, dict[str, tuple[float, int, str]]]:
    """Per entry and class: the delta to ``base`` paired by seed -> ``{entry: {class: (mean, seeds, "k/n")}}``.

    Only seeds both entries have count, as for the headline deltas; ``base`` itself is left out.
    """
    val = {(r["entry"], r["seed"], r["class"]): r[metric] for r in rows}
    out: dict[str, dict[str, tuple[float, int, str]]] = {}
    for entry in dict.fromkeys(r["entry"] for r in rows):
        if entry == base:
            continue
        for cls in dict.fromkeys(r["class"] for r in rows if r["entry"] == entry):
            diffs = [val[k] - val[(base, k[1], cls)] for k in val
                     if k[0] == entry and k[2] == cls and (base, k[1], cls) in val]
            if diffs:
                mean, _, wins = paired(diffs)
                out.setdefault(entry, {})[cls] = (mean, len(diffs), wins)
    return out


def per_class_markdown(deltas: dict[str, dict[str, tuple[float, int, str]]], metric: str, base: str = "none") -> str:
    """The paired per-class deltas as a Markdown table (classes as columns, in first-seen order)."""
    if not deltas:
        return ""
    classes = list(dict.fromkeys(c for by_cls in deltas.values() for c in by_cls))
    lines = [f"Paired Δ {metric} vs {base} per class (final validation of best.pt; seeds, k/n ahead; every run's rows "
             "in per_class.csv):", "", "| entry | seeds | " + " | ".join(classes) + " |",
             "|---|---|" + "---|" * len(classes)]
    for entry, by_cls in deltas.items():
        cells = [f"{by_cls[c][0]:+.3f} ({by_cls[c][2]})" if c in by_cls else "-" for c in classes]
        lines.append(f"| {entry} | {max(v[1] for v in by_cls.values())} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plateau(curve: list[float]) -> float:
    """Change of a curve over its last quarter of epochs (last value minus the value a quarter from the end).

    The protocols' convergence criterion: a plain student has plateaued when this is smaller than the seed spread.
    """
    q = max(1, len(curve) // 4)
    return curve[-1] - curve[-1 - q] if len(curve) > q else NAN


def plot_curves(path: Path, runs: list[dict[str, Any]], info: dict[str, Any], teacher_dir: Path | None = None) -> None:
    """Validation mAP50-95 per epoch of every entry (mean over seeds, band: min-max) and of the teacher's fine-tune.

    The teacher's final validation is the dashed line; its fine-tuning curve (when it was fine-tuned) the dotted one.
    """
    curves = epoch_curves(runs)
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (entry, by_seed) in enumerate(curves.items()):
        n = min(len(c) for c in by_seed.values())
        a = np.array([c[:n] for c in by_seed.values()])
        x = np.arange(1, n + 1)
        ax.plot(x, a.mean(0), c=f"C{i % 10}", lw=1.3, label=f"{entry} ({len(by_seed)} seed{'s' * (len(by_seed) > 1)})")
        if len(a) > 1:
            ax.fill_between(x, a.min(0), a.max(0), color=f"C{i % 10}", alpha=0.15, lw=0)
    ax.axhline(info["teacher"]["mAP50-95"], ls="--", c="k", lw=1, label="teacher (final)")
    t = epoch_curves([{"entry": "teacher", "seed": 0, "run_dir": str(teacher_dir)}]) if teacher_dir else {}
    if t:
        c = t["teacher"]["0"]
        ax.plot(range(1, len(c) + 1), c, ls=":", c="k", lw=1.2, label="teacher fine-tune")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP50-95")
    r = info["recipe"]
    ax.set_title(f"{r['name']} v{r['version']} ({info['hash']}): learning curves", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
