"""A portfolio: configurations that did well on other tasks, tried first by every study.

`scripts/build_portfolio.py` writes `search_spaces/portfolio.json` from committed studies on the
public tasks (SST-2, TREC): each task's finalist configurations, best median first. A study on task
T enqueues the entries learnt on tasks other than T (leave-one-task-out: never one learnt on the
task it is scored on), those its space can draw, at most `MAX_ENQUEUED`, before the sampler's own
proposals. Layer indices are scaled from the source model's depth to the study's model.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from autoprompt_search.errors import ConfigError
from autoprompt_search.study.space import SpaceSampler

PORTFOLIO_FILE = "portfolio.json"
MAX_ENQUEUED = 3


def portfolio_path() -> Path:
    return Path(str(files("search_spaces"))) / PORTFOLIO_FILE


def read_portfolio(path: Path | None = None) -> list[dict[str, Any]]:
    """The entries: {'task', 'num_layers', 'dev_median', 'source', 'config': {method, train, head}}."""
    path = path or portfolio_path()
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8"))["entries"])


def scaled_layers(method: dict[str, Any], source_layers: int, num_layers: int) -> dict[str, Any]:
    """The method's layer indices moved from a `source_layers`-deep model to a `num_layers`-deep one."""
    if source_layers == num_layers:
        return dict(method)

    def scale(i: int) -> int:
        return min(num_layers - 1, int(i * num_layers / source_layers))

    out = dict(method)
    if "layers" in out:
        out["layers"] = sorted({scale(int(i)) for i in out["layers"]})
    if "layer" in out:
        out["layer"] = max(1, scale(int(out["layer"])))  # an LPT generator enters after block 0
    return out


def portfolio_for(
    task: str, sampler: SpaceSampler, entries: list[dict[str, Any]] | None = None, limit: int = MAX_ENQUEUED
) -> list[dict[str, Any]]:
    """The configurations a study on `task` tries first: learnt on other tasks, drawable by its space."""
    chosen: list[dict[str, Any]] = []
    for entry in read_portfolio() if entries is None else entries:
        if entry["task"] == task or len(chosen) >= limit:
            continue  # leave-one-task-out
        config = dict(entry["config"])
        config["method"] = scaled_layers(config["method"], int(entry["num_layers"]), sampler.num_layers)
        try:
            sampler.params_of(config, "portfolio")
        except ConfigError:
            continue  # the space cannot draw it (another method set, a fixed option, a range)
        if config not in chosen:
            chosen.append(config)
    return chosen
