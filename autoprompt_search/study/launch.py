"""From command-line values to a StudyOptions, and a study's status summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..runs import TrainOptions, experiment_from_options
from ..search_space import SearchSpace, SearchSpaceError, fix_steps, sampled_of, space_path
from .options import Objective, StudyOptions
from .ranking import best_row, finalist_groups, searched_rows


def resolve_space(spec: str) -> tuple[dict[str, Any], str]:
    """A search-space file path, or the name of a shipped one (all, layers, lpt); returns (mapping, path)."""
    path = space_path(spec)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SearchSpaceError(str(path), [f"not valid YAML ({str(exc).splitlines()[0]})"]) from exc
    SearchSpace.from_dict(data, str(path))  # every problem at once, before anything starts
    return data, str(path)


def make_options(space: str, base: TrainOptions, **study: Any) -> StudyOptions:
    """The study: a space, the base experiment (flags over --config over the embedded default), knobs."""
    mapping, path = resolve_space(space)
    experiment = experiment_from_options(base)
    if experiment.train.epochs or "epochs" in (mapping.get("train") or {}):
        # ASHA's rungs and a trial's "trained to the end" are counted in steps.
        raise ConfigError("train.epochs: a study budgets trials in steps; use --steps (or train.steps)")
    fixed = (mapping.get("train") or {}).get("steps")
    if base.steps is not None and fixed is not None:  # an explicit --steps beats the space's fixed value
        mapping = fix_steps(
            mapping,
            base.steps,
            f"--steps {base.steps}: {path} searches train.steps; drop --steps or fix it in the space",
        )
    return StudyOptions(space=mapping, space_file=path, experiment=experiment.to_dict(), **study)


def read_enqueued(paths: list[str]) -> list[dict[str, Any]]:
    """`--enqueue` files: an exported config.yaml (a whole experiment) or a hand-written
    {'method': {...}, 'train': {...}}; returns their method and train sections."""
    configs = []
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"--enqueue {path}: cannot read it ({exc.strerror}); give an exported config.yaml"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"--enqueue {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("method"), dict):
            raise ConfigError(f"--enqueue {path}: no 'method' section; give an exported config.yaml or method/train")
        configs.append(sampled_of(data))
    return configs


def summarize(rows: list[dict[str, Any]], objectives: list[Objective]) -> dict[str, Any]:
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
