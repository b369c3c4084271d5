"""The report's HTML page: the headline (the best configuration and its medians), the figures, the
table of every run."""

from __future__ import annotations

import html
import json
import math
import statistics
from typing import Any

import yaml

from autoprompt_search.study.options import Objective, StudyOptions
from autoprompt_search.study.ranking import SELECTABLE, objective_value, searched_rows
from autoprompt_search.training.metrics import COLLAPSED


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_page(data: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    options: StudyOptions = data["options"]
    rows = data["rows"]
    objective = data["objectives"][0]
    counts: dict[str, int] = {}
    for r in searched_rows(rows):
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Study {html.escape(options.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{cursor:pointer;background:#f3f3f3}img{max-width:100%}figure{margin:1.5em 0}"
        ".best{background:#eef6ee;border:1px solid #9c9;padding:.6em 1em}</style></head><body>",
        f"<h1>Study {html.escape(options.name)}</h1>",
        _headline(data),
        f"<p>Objectives: {html.escape(', '.join(options.objectives))}. Searched trials: "
        + html.escape(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet")
        + ". The page shows what the study had written when it was made.</p>",
    ]
    if data["budget_note"]:
        parts.append(f"<p>{html.escape(data['budget_note'])}</p>")
    spread = data["finalists"]
    if spread:
        lines = [
            [t, len(v), _fmt(statistics.median([x if x is not None else -math.inf for x in v])),
             ", ".join(_fmt(x) for x in v)]
            for t, v in spread.items()
        ]  # fmt: skip
        parts.append("<h2>Finalists (fresh seeds)</h2>" + _table(["trial", "seeds", "median", "per seed"], lines))
    for name, caption in figures:
        alt = html.escape(caption)
        parts.append(f"<figure><img src='{name}' alt='{alt}'><figcaption>{alt}</figcaption></figure>")
    if not data["importances"]:
        parts.append(f"<p>Parameter importances: {html.escape(data['importance_note'])}.</p>")
    ended = searched_rows(rows) + [r for r in rows if r.get("finalist_of")]
    trouble = [r for r in ended if r["status"] not in (*SELECTABLE, "RUNNING")]
    stopped = [r for r in searched_rows(rows) if r["status"] == "STOPPED"]

    def reason(r: dict[str, Any]) -> str:
        return r["error"] or (COLLAPSED if r["status"] == "COLLAPSED" else "")

    failed = [[r["trial_id"], r["status"], r["method"], reason(r)] for r in trouble]
    parts.append("<h2>Failed and collapsed runs</h2>")
    parts.append(_table(["trial", "status", "method", "reason"], failed) if failed else "<p>None.</p>")
    early = [[r["trial_id"], r["method"], r["last_step"], _fmt(objective_value(r, objective.metric))] for r in stopped]
    parts.append("<h2>Stopped early (ASHA)</h2>")
    if data["stopped_note"]:
        parts.append(f"<p>{html.escape(data['stopped_note'])}.</p>")
    parts.append(_table(["trial", "method", "steps", objective.metric], early) if early else "<p>None.</p>")
    parts.append("<h2>Every run (click a heading to sort)</h2>" + _trials_table(data))
    parts.append(SORTABLE + "</body></html>\n")
    return "\n".join(parts)


def _headline(data: dict[str, Any]) -> str:
    """The study's answer: its best configuration (the finalists' median once they ran, else the
    best searched trial's single run), its range over seeds, its test score, its whole configuration."""
    best: dict[str, Any] | None = data["best"]
    objective: Objective = data["objectives"][0]
    if best is None:
        return "<p class='best'>No trial has a usable score yet.</p>"
    metric = objective.metric
    value = _fmt(objective_value(best, metric))
    if best.get("finalist_of"):
        spread = f"[{_fmt(best.get(f'{metric}_min'))}-{_fmt(best.get(f'{metric}_max'))}]"
        score = (
            f"median {metric} {value} {spread} over {best['scored']} of {best['seeds']} fresh seeds; "
            f"test median {_fmt(best.get('test_median'))}"
        )
        source = best["finalist_of"]
    else:
        score = f"{metric} {value} from one run (no finalists: not checked over seeds); test not scored"
        source = best["trial_id"]
    config = next(r for r in data["rows"] if r["trial_id"] == source)["config"]
    share = _share(best.get("trainable_params"), data["model_params"])
    return (
        f"<div class='best'><b>Best configuration</b> (trial {html.escape(source)}): {html.escape(score)}; "
        f"{html.escape(share)} trainable.<pre>{html.escape(yaml.safe_dump(json.loads(config), sort_keys=False))}"
        "</pre></div>"
    )


def _share(params: int | None, model_params: int | None) -> str:
    if not params:
        return "-"
    if not model_params:
        return f"{params:,}"
    return f"{params:,} ({100 * params / model_params:.2f}% of the model)"


def _trials_table(data: dict[str, Any]) -> str:
    """Every run: its configuration, status, scores, trainable share and compute."""
    metric = data["objectives"][0].metric
    body = []
    for r in sorted(data["rows"], key=lambda r: r["number"]):
        sampled = json.loads(r["config"])
        config = "; ".join(
            f"{section}: " + ", ".join(f"{k}={v}" for k, v in sampled[section].items())
            for section in ("method", "train", "head")
            if sampled.get(section)
        )
        body.append([
            r["number"], r["trial_id"], r.get("finalist_of") or "", r["seed"] if r["seed"] is not None else "",
            r["status"], _fmt(objective_value(r, metric)), _fmt(r.get("test_score")),
            _share(r.get("trainable_params"), data["model_params"]), r.get("last_step") or 0,
            f"{r['worker_seconds']:.0f}" if r.get("worker_seconds") else "-", config,
        ])  # fmt: skip
    header = ["#", "trial", "finalist of", "seed", "status", metric, "test", "trainable", "steps", "worker s",
              "configuration"]  # fmt: skip
    return _table(header, body).replace("<table>", "<table class='sortable'>", 1)


# Sorts a table.sortable by the clicked column (numbers numerically): no library, no network.
SORTABLE = """<script>
document.querySelectorAll('table.sortable th').forEach((th, i) => th.addEventListener('click', () => {
  const table = th.closest('table'), rows = [...table.rows].slice(1), up = th.dataset.up !== '1';
  const key = r => { const t = r.cells[i].textContent, n = parseFloat(t.replace(/,/g, ''));
    return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (up ? 1 : -1); });
  th.dataset.up = up ? '1' : '0'; rows.forEach(r => table.tBodies[0].appendChild(r));
}));
</script>"""
