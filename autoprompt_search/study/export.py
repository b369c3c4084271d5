"""Choose trials from `trials.parquet` (top k, or the Pareto front) and export them as runs.

Each exported run is a directory that `autoprompt predict` serves (prompt.safetensors +
config.json from the trial's best checkpoint) plus `config.yaml`, which `autoprompt train
--config` retrains from scratch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import CONFIG, WEIGHTS
from ..errors import ConfigError
from ..staging import staged_directory
from .options import Objective, StudyOptions
from .runner import study_rows

EXPORTABLE = ("TERMINATED", "STOPPED")


def objective_value(row: dict[str, Any], metric: str) -> float | None:
    if row.get(metric) is not None:
        return float(row[metric])
    history = json.loads(row.get("history") or "[]")
    value = history[-1].get(metric) if history else None
    return None if value is None else float(value)


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


def export_study(
    study_dir: str | Path, output: str | Path | None = None, top: int = 1, pareto: bool = False, overwrite: bool = False
) -> list[Path]:
    """Export chosen trials into `output` (default: <study>/export); returns the run directories."""
    study_dir = Path(study_dir)
    if top < 1:
        raise ConfigError(f"export: --top must be >= 1, got {top}")
    options = StudyOptions.load(study_dir)
    rows = [r for r in study_rows(study_dir) if r["status"] in EXPORTABLE and r["checkpoint"]]
    if not rows:
        raise ConfigError(f"export: no finished trial with a checkpoint in {str(study_dir)!r}; run or resume the study")
    objectives = options.parsed_objectives
    chosen = pareto_front(rows, objectives) if pareto else rank_top(rows, objectives[0], top)
    out = Path(output) if output else study_dir / "export"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"export: {str(out)!r} already holds files; pass --overwrite or choose another --output")
    missing = [r["trial_id"] for r in chosen if not (Path(r["checkpoint"]) / WEIGHTS).is_file()]
    if missing:
        raise ConfigError(f"export: the checkpoint of trial {missing[0]} is gone; was the study directory moved?")
    names = []
    with staged_directory(out) as staging:
        for rank, row in enumerate(chosen, start=1):
            name = f"{rank:02d}-{row['trial_id']}"
            write_run(row, options, staging / name)
            names.append(name)
        summary = [
            {"rank": i + 1, "dir": n, **_summary(r, objectives)}
            for i, (n, r) in enumerate(zip(names, chosen, strict=True))
        ]
        (staging / "exported.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return [out / n for n in names]


def _summary(row: dict[str, Any], objectives: list[Objective]) -> dict[str, Any]:
    return {
        "trial_id": row["trial_id"],
        "status": row["status"],
        **{o.metric: objective_value(row, o.metric) for o in objectives},
        "trainable_params": row["trainable_params"],
    }


def write_run(row: dict[str, Any], options: StudyOptions, directory: Path) -> None:
    """A run directory from a trial: its checkpoint (weights + config.json) and config.yaml."""
    directory.mkdir(parents=True)
    checkpoint = Path(row["checkpoint"])
    shutil.copy2(checkpoint / WEIGHTS, directory / WEIGHTS)
    record = json.loads((checkpoint / CONFIG).read_text(encoding="utf-8"))
    record["config"]["train"]["device"] = "auto"  # the trial's device is not the user's
    record["study"] = {"name": options.name, "trial_id": row["trial_id"], "status": row["status"]}
    (directory / CONFIG).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    header = (
        f"# Exported from study {options.name}, trial {row['trial_id']} ({row['status']}, dev_score "
        f"{row['dev_score']}).\n# Retrain: autoprompt train --config config.yaml; serve: autoprompt predict {directory.name}\n"
    )
    (directory / "config.yaml").write_text(header + yaml.safe_dump(record["config"], sort_keys=False), encoding="utf-8")
