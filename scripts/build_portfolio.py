"""Build `search_spaces/portfolio.json` (see autoprompt_search/study/portfolio.py) from studies.

Each study's finalist configurations (median dev score over their fresh seeds, a failed seed the
worst) become entries of its task, best first; configurations found by several studies of a task
count once, at their best median. Tasks alternate in the file (each task's best, then each task's
second, ...). Only public development tasks may be given: a task kept back for evaluation must
never feed the portfolio.

Usage: python scripts/build_portfolio.py results/quality/*_study* --top 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

from autoprompt_search.backbones import num_layers_of
from autoprompt_search.study.options import StudyOptions
from autoprompt_search.study.portfolio import portfolio_path
from autoprompt_search.study.ranking import finalist_groups
from autoprompt_search.study.records import read_trials

PUBLIC_TASKS = ("sst2", "trec")  # development tasks; RTE and the GLUE pair tasks are kept back


def study_entries(study: Path) -> list[dict[str, Any]]:
    options = StudyOptions.load(study)
    rows = read_trials(study)
    entries = []
    for group in finalist_groups(rows, options.parsed_objectives):
        if group["dev_score"] is None:
            continue
        sampled = json.loads(next(r for r in rows if r["trial_id"] == group["finalist_of"])["config"])
        sampled["train"] = {k: v for k, v in sampled.get("train", {}).items() if k == "lr"}  # the study's recipe
        entries.append({
            "task": options.experiment["data"]["task"], "num_layers": num_layers_of(options.experiment["model"]),
            "dev_median": round(float(group["dev_score"]), 4), "source": str(study), "config": sampled,
        })  # fmt: skip
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=3, help="configurations per task")
    parser.add_argument("--out", type=Path, default=portfolio_path())
    args = parser.parse_args()
    by_task: dict[str, list[dict[str, Any]]] = {}
    for study in args.studies:
        for entry in study_entries(study):
            if entry["task"] not in PUBLIC_TASKS:
                raise SystemExit(f"{study}: task {entry['task']!r} is not a public development task {PUBLIC_TASKS}")
            by_task.setdefault(entry["task"], []).append(entry)
    ranked = {}
    for task, entries in sorted(by_task.items()):
        best: dict[str, dict[str, Any]] = {}
        for e in sorted(entries, key=lambda e: -e["dev_median"]):
            best.setdefault(json.dumps(e["config"], sort_keys=True), e)
        ranked[task] = list(best.values())[: args.top]
    ordered = [e for tier in itertools.zip_longest(*ranked.values()) for e in tier if e is not None]
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    document = {"built_by": "scripts/build_portfolio.py", "code": code, "entries": ordered}
    args.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(ordered)} entries from {', '.join(f'{t} {len(e)}' for t, e in ranked.items())}")


if __name__ == "__main__":
    main()
