"""`autoprompt report`: one HTML page with PNGs beside it, from what a study has written so far.

The numbers behind each figure come from functions of the table's rows (`history`,
`layer_effects`, `method_scores`, `finalist_spread`) so tests can check them against the parquet;
parameter importances come from Optuna itself (PED-ANOVA over the study's own journal).
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprompt_search.errors import ConfigError
from autoprompt_search.storage.staging import staged_directory
from autoprompt_search.study.budget import refused_draws
from autoprompt_search.study.journal import OPTUNA_FILE, open_study
from autoprompt_search.study.options import Objective, StudyOptions
from autoprompt_search.study.ranking import (
    SELECTABLE,
    best_row,
    objective_value,
    pareto_front,
    searched_rows,
    stopped_note,
)
from autoprompt_search.study.records import study_rows
from autoprompt_search.study.report_html import render_page

REPORT_DIR = "report"
PAGE = "index.html"
RELIABLE_IMPORTANCES = 20  # completed trials below which importances are mostly noise


@dataclass
class HistoryPoint:
    number: int  # order in which the trial started
    trial_id: str
    value: float  # the trial's objective value
    best: float  # best value of the trials so far (this one included)
    best_trial: str  # the trial that holds it
    compute_seconds: float  # worker seconds spent by this trial and all before it


def scored(rows: list[dict[str, Any]], objective: Objective) -> list[dict[str, Any]]:
    """Searched trials that ended with a usable objective value (never collapsed or failed ones)."""
    return [
        r for r in searched_rows(rows) if r["status"] in SELECTABLE and objective_value(r, objective.metric) is not None
    ]


def history(rows: list[dict[str, Any]], objective: Objective) -> list[HistoryPoint]:
    """Best so far over the search's trials in start order; compute counts every trial's worker
    time (failed and collapsed ones too: they cost it)."""
    better = max if objective.mode == "max" else min
    points: list[HistoryPoint] = []
    spent, best, best_trial = 0.0, None, ""
    for row in sorted(searched_rows(rows), key=lambda r: r["number"]):
        spent += row["worker_seconds"] or 0.0
        value = objective_value(row, objective.metric) if row["status"] in SELECTABLE else None
        if value is None:
            continue
        if best is None or better(best, value) != best:
            best, best_trial = value, row["trial_id"]
        points.append(HistoryPoint(row["number"], row["trial_id"], value, best, best_trial, spent))
    return points


def prompted_layers(row: dict[str, Any]) -> list[int] | None:
    """The layers a trial puts prompts at (its layer set); None for methods without one: probe, dp,
    and LPT, whose one insertion layer is where a generated prompt enters, not a set of prompted layers."""
    method = json.loads(row["config"])["method"]
    return list(method["layers"]) if "layers" in method else None


def layer_effects(rows: list[dict[str, Any]], objective: Objective, num_layers: int) -> list[dict[str, Any]]:
    """Per layer: the mean objective of scored trials that prompt it and of those that do not
    (trials with a layer choice only). A marginal effect, not a controlled one."""
    with_layers = [(r, prompted_layers(r)) for r in scored(rows, objective)]
    with_layers = [(r, layers) for r, layers in with_layers if layers is not None]
    out = []
    for layer in range(num_layers):
        on = [objective_value(r, objective.metric) for r, layers in with_layers if layer in layers]
        off = [objective_value(r, objective.metric) for r, layers in with_layers if layer not in layers]
        out.append(
            {
                "layer": layer,
                "with": statistics.fmean(on) if on else None,  # type: ignore[arg-type]
                "n_with": len(on),
                "without": statistics.fmean(off) if off else None,  # type: ignore[arg-type]
                "n_without": len(off),
            }
        )
    return out


def method_scores(rows: list[dict[str, Any]], objective: Objective) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in scored(rows, objective):
        out.setdefault(r["method"], []).append(objective_value(r, objective.metric))  # type: ignore[arg-type]
    return out


def finalist_spread(rows: list[dict[str, Any]], objective: Objective) -> dict[str, list[float | None]]:
    """Searched trial id -> its finalist seeds' objective values (None: that seed failed or collapsed)."""
    out: dict[str, list[float | None]] = {}
    for r in rows:
        if r.get("finalist_of"):
            value = objective_value(r, objective.metric) if r["status"] in SELECTABLE else None
            out.setdefault(r["finalist_of"], []).append(value)
    return out


def importances(study_dir: Path, options: StudyOptions) -> tuple[dict[str, float], str]:
    """Optuna's PED-ANOVA importances of the parameters every finished trial has, and a note on
    what was used (or why there are none)."""
    import optuna

    journal = study_dir / OPTUNA_FILE
    if not journal.is_file():
        return {}, "no Optuna journal yet"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stored = open_study(str(journal), options.name)
    # Trials told from a --warm-start study are another study's results: not this one's importances.
    done = [
        t
        for t in stored.trials
        if t.state == optuna.trial.TrialState.COMPLETE and "warm_start_from" not in t.user_attrs
    ]
    if len(done) < 3:
        return {}, f"{len(done)} completed trial(s): importances need at least 3"
    study = optuna.create_study(directions=stored.directions)  # in memory: this study's own trials
    study.add_trials(done)
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    try:
        with warnings.catch_warnings():  # "some regimes have less than 2 trials": small studies are
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    except (RuntimeError, ValueError) as exc:  # e.g. no parameter common to every trial
        return {}, f"Optuna could not compute importances ({exc})"
    note = (
        f"PED-ANOVA (optuna.importance) over the {len(done)} completed Optuna trials (finalists' medians "
        "included; warm-start trials and trials ASHA stopped early are not)"
    )
    if len(done) < RELIABLE_IMPORTANCES:
        note += f"; NOT RELIABLE: fewer than {RELIABLE_IMPORTANCES} trials, read them as a rough hint at most"
    return dict(values), note


def budget_note(study_dir: Path, options: StudyOptions) -> str:
    """The study's parameter budget and how many draws it refused; '' for a study without one."""
    import optuna

    if not options.max_trainable:
        return ""
    journal = study_dir / OPTUNA_FILE
    refused = 0
    if journal.is_file():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        refused = refused_draws(open_study(str(journal), options.name).trials)
    return (
        f"Parameter budget --max-trainable {options.max_trainable}: {refused} draw(s) over it were refused "
        "before training (PRUNED in Optuna, no row here)."
    )


def _plots(data: dict[str, Any], out: Path, objective: Objective) -> list[tuple[str, str]]:
    """Write the PNGs; (file name, caption) of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: list[tuple[str, str]] = []
    metric = objective.metric

    def save(fig: Any, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        figures.append((name, caption))

    points: list[HistoryPoint] = data["history"]
    if points:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        a.scatter([p.number for p in points], [p.value for p in points], s=14, alpha=0.6, label="trial")
        a.step([p.number for p in points], [p.best for p in points], where="post", color="C3", label="best so far")
        a.set(xlabel="trial (start order)", ylabel=metric, title="optimisation history")
        a.legend(fontsize=8)
        b.step([p.compute_seconds / 60 for p in points], [p.best for p in points], where="post", color="C3")
        b.set(xlabel="worker minutes spent (all trials)", ylabel=f"best {metric}", title="best over compute")
        save(fig, "history.png", "Best so far over trials and over compute (worker time of every trial).")
    if data["importances"]:
        names = list(data["importances"])[::-1]
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
        ax.barh(names, [data["importances"][n] for n in names])
        ax.set(xlabel="importance", title="parameter importances")
        save(fig, "importances.png", data["importance_note"])
    effects = [e for e in data["layers"] if e["n_with"] or e["n_without"]]
    if any(e["n_with"] for e in effects):
        fig, ax = plt.subplots(figsize=(7, 3.4))
        xs = [e["layer"] for e in effects]
        ax.plot(xs, [e["with"] if e["with"] is not None else math.nan for e in effects], "o-", label="prompted")
        ax.plot(xs, [e["without"] if e["without"] is not None else math.nan for e in effects], "s--", label="not")
        ax.set(xlabel="layer", ylabel=f"mean {metric}", title="per-layer effect (trials with a layer choice)")
        ax.legend(fontsize=8)
        save(fig, "layer_effect.png", "Mean objective of trials that prompt each layer vs those that do not.")
        grid = data["layer_grid"]
        fig, ax = plt.subplots(figsize=(7, 0.22 * len(grid["trials"]) + 1.5))
        image = ax.imshow(grid["cells"], aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label=metric)
        ax.set(xlabel="layer", ylabel="trial (best first)", title=f"prompted layers, coloured by {metric}")
        ax.set_yticks(range(len(grid["trials"])), grid["trials"], fontsize=6)
        save(fig, "layer_heatmap.png", "Each row a trial (best first); a cell is coloured where it prompts that layer.")
    if data["methods"]:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        names = sorted(data["methods"])
        for i, name in enumerate(names):
            ys = data["methods"][name]
            ax.scatter([i] * len(ys), ys, alpha=0.6)
        ax.set_xticks(range(len(names)), names)
        ax.set(ylabel=metric, title="score by method")
        save(fig, "methods.png", "Every scored trial's objective, by method.")
    if data["pareto"]:
        o1, o2 = data["objectives"][:2]
        fig, ax = plt.subplots(figsize=(6, 4))
        allpts = data["pareto_all"]
        ax.scatter([p[0] for p in allpts], [p[1] for p in allpts], s=12, alpha=0.4, label="trials")
        front = data["pareto"]
        ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="C3", label="Pareto front")
        ax.set(xlabel=o1.metric, ylabel=o2.metric, title="Pareto front")
        ax.legend(fontsize=8)
        save(fig, "pareto.png", "The non-dominated trials over the first two objectives.")
    if data["finalists"]:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for i, values in enumerate(data["finalists"].values()):
            ok = [v for v in values if v is not None]
            ax.scatter([i] * len(ok), ok, alpha=0.7)
            if ok:
                ax.hlines(statistics.median(ok), i - 0.25, i + 0.25, color="C3")
        ax.set_xticks(range(len(data["finalists"])), list(data["finalists"]), fontsize=7)
        ax.set(ylabel=metric, title="finalists over seeds (line: median)")
        save(fig, "finalists.png", "Each finalist configuration's fresh seeds; the study's best is the best median.")
    return figures


def _layer_grid(rows: list[dict[str, Any]], objective: Objective, num_layers: int) -> dict[str, Any]:
    ranked = sorted(
        (r for r in scored(rows, objective) if prompted_layers(r) is not None),
        key=lambda r: objective_value(r, objective.metric),  # type: ignore[arg-type, return-value]
        reverse=objective.mode == "max",
    )
    cells = [
        [objective_value(r, objective.metric) if i in prompted_layers(r) else math.nan for i in range(num_layers)]  # type: ignore[operator]
        for r in ranked
    ]
    return {"trials": [r["trial_id"] for r in ranked], "cells": cells}


def report_data(study_dir: Path) -> dict[str, Any]:
    from autoprompt_search.backbones import backbone_info

    options = StudyOptions.load(study_dir)
    rows = study_rows(study_dir)
    objectives = options.parsed_objectives
    objective = objectives[0]
    info = backbone_info(options.experiment.get("model", "minilm-l6"))  # no weights loaded
    num_layers = info.num_layers
    values, note = importances(study_dir, options)
    data: dict[str, Any] = {
        "options": options,
        "rows": rows,
        "objectives": objectives,
        "history": history(rows, objective),
        "layers": layer_effects(rows, objective, num_layers),
        "layer_grid": _layer_grid(rows, objective, num_layers),
        "methods": method_scores(rows, objective),
        "finalists": finalist_spread(rows, objective),
        "importances": values,
        "importance_note": note,
        "best": best_row(rows, objectives),
        "model_params": info.num_params,
        "budget_note": budget_note(study_dir, options),
        "stopped_note": stopped_note(rows, options),
        "pareto": [],
        "pareto_all": [],
    }
    if len(objectives) > 1:
        candidates = scored(rows, objective)
        pair = objectives[:2]
        data["pareto_all"] = [[objective_value(r, o.metric) for o in pair] for r in candidates]
        data["pareto"] = [[objective_value(r, o.metric) for o in pair] for r in pareto_front(candidates, objectives)]
    return data


def write_report(study_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write `<output>/index.html` (default `<study>/report/`) and its PNGs; returns the page."""
    study_dir = Path(study_dir)
    out = Path(output) if output else study_dir / REPORT_DIR
    if study_dir.resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"report: --output {str(out)!r} holds the study itself; choose another --output")
    if out.is_dir() and any(out.iterdir()) and not (out / PAGE).is_file():
        raise ConfigError(f"report: {str(out)!r} holds files that are not a report; choose another --output")
    data = report_data(study_dir)
    # Written beside `out` and swapped in whole: a failed report leaves the previous one as it was.
    try:
        with staged_directory(out) as staging:
            figures = _plots(data, staging, data["objectives"][0])
            (staging / PAGE).write_text(render_page(data, figures), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"report: cannot write {str(out)!r} ({exc.strerror}); choose another --output") from exc
    return out / PAGE
