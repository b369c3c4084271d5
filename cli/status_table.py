"""`autoprompt status`'s tables: every trial of a study, its finalists' medians, its best."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_status(study_dir: str | Path) -> None:
    from autoprompt_search.study.options import StudyOptions
    from autoprompt_search.study.ranking import stopped_note, summarize_study
    from autoprompt_search.study.records import optuna_numbers, study_rows

    options = StudyOptions.load(study_dir)
    rows = study_rows(study_dir)
    summary = summarize_study(rows, options.parsed_objectives)
    finalist_text = f", {summary['finalist_runs']} finalist runs" if summary["finalist_runs"] else ""
    budget_text = f", at most {options.max_trainable} trainable" if options.max_trainable else ""
    if options.budget:
        spent = sum(int(r["last_step"] or 0) for r in rows if not r["finalist_of"])
        budget_text += f", {spent:,} of {options.budget_steps:,} search steps ({options.budget})"
    table = Table(
        title=f"study {options.name}: {summary['trials']} trials{finalist_text}{budget_text} {summary['counts']}"
    )
    numbers = optuna_numbers(study_dir, options.name)
    for column in (
        "#",
        "trial",
        "optuna #",
        "status",
        "method",
        "seed",
        "dev_score",
        "test",
        "params",
        "evals",
        "collapsed",
        "wall s",
        "error",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["number"]),
            r["trial_id"],
            str(numbers.get(r["trial_id"], "-")),
            r["status"],
            r["method"] or "-",
            "-" if r.get("seed") is None else str(r["seed"]),
            _number(r["dev_score"]),
            _number(r.get("test_score")),
            str(r["trainable_params"] or "-"),
            str(r["evaluations"] or 0),
            str(r.get("collapsed_evals") or 0),
            _number(r["wall_seconds"], "{:.0f}"),
            (r["error"] or "")[:60],
        )
    console = Console() if sys.stdout.isatty() else Console(width=180)
    console.print(table)
    note = stopped_note(rows, options)
    if note:
        console.print(note)
    metric = summary["objective"].split(":")[0]
    if summary["finalists"]:
        console.print(finalists_table(summary, metric))
    best = summary["best"]
    if best is not None and best.get("finalist_of"):
        source = next(r for r in rows if r["trial_id"] == best["finalist_of"])
        console.print(
            f"best {summary['objective']}: median {_number(best[metric])} over {best['scored']}/{best['seeds']} seeds "
            f"(range {_range(best[metric + '_min'], best[metric + '_max'])}), the configuration of trial "
            f"{best['finalist_of']}: {source['config']}"
        )
    elif best is not None:
        console.print(f"best {summary['objective']}: trial {best['trial_id']} {best['config']}")


def _number(value: float | None, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def _range(low: float | None, high: float | None) -> str:
    return "-" if low is None else f"{low:.4f}-{high:.4f}"


def finalists_table(summary: dict[str, Any], metric: str) -> Table:
    """Each finalist configuration: its median over seeds, range and test median."""
    finals = Table(title="finalists: median over seeds (range); a failed or collapsed seed counts as the worst")
    for column in ("of trial", "method", "seeds", f"{metric} median", "range", "test median", "range"):
        finals.add_column(column)
    for g in summary["finalists"]:
        finals.add_row(
            g["finalist_of"],
            g["method"] or "-",
            f"{g['scored']}/{g['seeds']}",
            _number(g[metric]),
            _range(g[metric + "_min"], g[metric + "_max"]),
            _number(g["test_median"]),
            _range(g["test_min"], g["test_max"]),
        )
    return finals
