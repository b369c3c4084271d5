"""Ranking a study's rows: objective values, top k, the Pareto front, and finalists' medians.

A finalist row (a top configuration retrained with a fresh seed after the search) names its
searched trial in `finalist_of`. Once finalists exist, a configuration is ranked by the median
over its seeds, not by one seed's luckiest dev score.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from autoprompt_search.study.options import Objective, StudyOptions

SELECTABLE = ("TERMINATED", "STOPPED")  # statuses whose best checkpoint may be chosen


def objective_value(row: dict[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    if value is None:
        history = json.loads(row.get("history") or "[]")
        value = history[-1].get(metric) if history else None
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def rank_top(rows: list[dict[str, Any]], objective: Objective, k: int) -> list[dict[str, Any]]:
    scored = [r for r in rows if objective_value(r, objective.metric) is not None]
    sign = -1.0 if objective.mode == "max" else 1.0
    return sorted(scored, key=lambda r: (sign * objective_value(r, objective.metric), r["number"]))[:k]  # type: ignore[operator]


def pareto_front(rows: list[dict[str, Any]], objectives: list[Objective]) -> list[dict[str, Any]]:
    """Rows no other row beats on every objective (ties kept), ordered by the first objective."""

    def vector(r: dict[str, Any]) -> list[float]:  # larger is better on every axis
        return [(1 if o.mode == "max" else -1) * objective_value(r, o.metric) for o in objectives]  # type: ignore[operator]

    scored = [r for r in rows if all(objective_value(r, o.metric) is not None for o in objectives)]
    vectors = {r["trial_id"]: vector(r) for r in scored}

    def dominated(a: list[float]) -> bool:
        return any(all(x >= y for x, y in zip(b, a, strict=True)) and b != a for b in vectors.values())

    front = [r for r in scored if not dominated(vectors[r["trial_id"]])]
    return sorted(front, key=lambda r: [-x for x in vectors[r["trial_id"]]])


def searched_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The search's own trials (not finalist reruns)."""
    return [r for r in rows if not r.get("finalist_of")]


def choose_finalists(rows: list[dict[str, Any]], objectives: list[Objective], k: int) -> list[dict[str, Any]]:
    """The search's top `k` distinct configurations: by the objective, or along the Pareto front
    (ordered by the first objective) for several objectives. Collapsed and failed trials never."""
    candidates = [r for r in searched_rows(rows) if r["status"] in SELECTABLE]
    ranked = (
        pareto_front(candidates, objectives)
        if len(objectives) > 1
        else rank_top(candidates, objectives[0], k=len(candidates))
    )
    chosen: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in ranked:
        if row["config"] not in seen:
            seen.add(row["config"])
            chosen.append(row)
    return chosen[:k]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def finalist_groups(rows: list[dict[str, Any]], objectives: list[Objective]) -> list[dict[str, Any]]:
    """One row per finalist configuration, in the order the finalists were chosen.

    Each is a copy of its best seed run (whose checkpoint export copies) with every objective
    replaced by the median over the seeds; a seed that collapsed or failed counts as the worst
    value, so a configuration that trains reliably beats one that wins only on a lucky seed.
    Also: `seeds` (runs), `ended` (runs that ended), `scored` (runs with a score),
    `checkpoint_dev_score` (the best seed's own dev score), `<metric>_min`,
    `<metric>_max` over the scored runs, and `test_median` (the test split, never used to select).
    """
    first = objectives[0]
    by_source: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["number"]):
        if row.get("finalist_of"):
            by_source.setdefault(row["finalist_of"], []).append(row)
    groups = []
    for source, runs in by_source.items():
        ended = [r for r in runs if r["status"] not in ("RUNNING", None)]
        scored = [r for r in ended if r["status"] in SELECTABLE and objective_value(r, first.metric) is not None]
        group: dict[str, Any] = {}
        if scored:
            group.update(rank_top(scored, first, 1)[0])
        else:
            group.update(runs[0], checkpoint=None)
        group.update(finalist_of=source, seeds=len(runs), ended=len(ended), scored=len(scored))
        group["checkpoint_dev_score"] = group.get("dev_score")  # the exported seed's own best
        for o in objectives:
            worst = -math.inf if o.mode == "max" else math.inf
            values = []
            for r in ended:  # a failed or collapsed seed is the worst outcome
                value = objective_value(r, o.metric) if r in scored else None
                values.append(worst if value is None else value)
            finite = [v for v in values if v is not None and math.isfinite(v)]
            median = _median(values) if values else math.nan
            group[o.metric] = median if math.isfinite(median) else None
            group[f"{o.metric}_min"] = min(finite) if finite else None
            group[f"{o.metric}_max"] = max(finite) if finite else None
        tests = [r["test_score"] for r in scored if r.get("test_score") is not None]
        group["test_median"] = _median(tests) if tests else None
        group["test_min"] = min(tests) if tests else None
        group["test_max"] = max(tests) if tests else None
        groups.append(group)
    return groups


def best_row(rows: list[dict[str, Any]], objectives: list[Objective]) -> dict[str, Any] | None:
    """The study's best: the finalist configuration with the best median once finalists have
    ended, else the search's best trial so far (never an ERROR or COLLAPSED one)."""
    groups = [g for g in finalist_groups(rows, objectives) if g["ended"]]
    if groups:
        top = rank_top(groups, objectives[0], 1)
        if top:
            return top[0]
    live = [r for r in searched_rows(rows) if r["status"] not in ("ERROR", "COLLAPSED")]
    top = rank_top(live, objectives[0], 1)
    return top[0] if top else None


def summarize_study(rows: list[dict[str, Any]], objectives: list[Objective]) -> dict[str, Any]:
    """Counts per status, the finalists (median and range over seeds) and the study's best: the
    finalist with the best median once finalists ended, else the best trial of the search."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {
        "trials": len(searched_rows(rows)),
        "finalist_runs": len(rows) - len(searched_rows(rows)),
        "counts": counts,
        "finalists": finalist_groups(rows, objectives),
        "best": best_row(rows, objectives),
        "objective": str(objectives[0]),
    }


def stopped_note(rows: list[dict[str, Any]], options: StudyOptions) -> str:
    """Why the search's STOPPED trials ended early ('' when none did). Only ASHA stops trials (FIFO
    runs every trial to its last step): at a rung, a trial whose objective is below the top
    1/reduction_factor of the trials that reached that rung ends there."""
    stopped = [r for r in searched_rows(rows) if r["status"] == "STOPPED"]
    if not stopped:
        return ""
    objective = options.parsed_objectives[0]
    return (
        f"STOPPED: {len(stopped)} trial(s) ended early by ASHA: at a rung (every {options.reduction_factor}x "
        f"more evaluations, the first after {options.grace_period}) their {objective.metric} was below the "
        f"top 1/{options.reduction_factor} of the trials that reached it; each keeps its best checkpoint and score"
    )
