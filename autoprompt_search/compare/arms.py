"""What `autoprompt compare` runs: its options and the approaches ("arms") it compares.

Selection budget, matched across the searching approaches, is counted in training passes (one
forward + backward over a training batch): the discrete Optuna search gets `search_trials`
trials of `train.steps` steps; SPT-DARTS gets the same number of passes for its gate search
(each search step is two passes, an architecture and a weight step). Dynamic prompting and the
fixed baselines select nothing before training. Every arm's final configuration is then trained
`len(seeds)` times and scored once on the held-out split.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprompt_search.config import absolute_paths
from autoprompt_search.errors import ConfigError, require
from autoprompt_search.option_fields import option

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
OPTIONS_FILE = "compare.json"
COMPARE = ("compare",)


@dataclass
class CompareOptions:
    """A comparison's options; each one a user sets is declared once here (`option`)."""

    name: str = option("compare", "the comparison's name: its results go to RESULTS_DIR/NAME", "Compare",
                       commands=COMPARE)  # fmt: skip
    experiment: dict[str, Any] = field(default_factory=dict)  # base: model, data, head, train recipe
    space: dict[str, Any] = field(default_factory=dict)  # the discrete search's space
    space_file: str = ""
    search_trials: int = option(4, "discrete-search trials; also sets SPT-DARTS' matched budget", "Compare",
                                commands=COMPARE)  # fmt: skip
    max_concurrent: int = option(2, "discrete-search trials at once", "Compare", commands=COMPARE)
    scheduler: str = option("asha", "the discrete search's scheduler: asha | fifo", "Compare", commands=COMPARE)
    seeds: tuple[int, ...] = option(
        (1, 2, 3), "seeds 1..N of every arm's final runs (>= 3 for medians), as search's --seeds; default 3",
        "Compare", commands=COMPARE, cli_type=int,
    )  # fmt: skip
    spt: dict[str, Any] = option(help="KEY=VALUE for the SPT gate search, repeatable", panel="Compare",
                                 names=("--spt-option",), commands=COMPARE, factory=dict, cli_type=list[str])  # fmt: skip
    dp: dict[str, Any] = option(help="KEY=VALUE for dynamic prompting, repeatable", panel="Compare",
                                names=("--dp-option",), commands=COMPARE, factory=dict, cli_type=list[str])  # fmt: skip
    search_seed: int = option(0, "the discrete search's sampler seed", "Compare", commands=COMPARE)
    arms: tuple[str, ...] = option(
        (), "run only these arms (repeatable): probe, prompt-tuning, deep-all, lpt-half, dp, spt-darts, "
        "discrete-search", "Compare", names=("--arm",), commands=COMPARE, cli_type=list[str],
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.experiment = absolute_paths(self.experiment)
        require(bool(NAME.match(self.name)), f"--name: {self.name!r} must be letters, digits, '.', '_' or '-'")
        require(self.search_trials >= 1, f"--search-trials: must be >= 1, got {self.search_trials}")
        require(self.max_concurrent >= 1, f"--max-concurrent: must be >= 1, got {self.max_concurrent}")
        self.seeds = tuple(int(s) for s in self.seeds)
        require(len(self.seeds) >= 1, "--seeds: give at least one seed (3 or more for medians worth reporting)")
        require(len(set(self.seeds)) == len(self.seeds), f"--seeds: duplicate seed in {list(self.seeds)}")
        self.arms = tuple(self.arms)
        unknown = [a for a in self.arms if a not in ARMS]
        require(not unknown, f"--arm: {unknown[0] if unknown else ''!r} unknown; use any of {', '.join(ARMS)}")

    def save(self, directory: Path) -> None:
        from autoprompt_search.dataclass_io import to_dict

        (directory / OPTIONS_FILE).write_text(json.dumps(to_dict(self), indent=2) + "\n", encoding="utf-8")

    @property
    def selected_arms(self) -> tuple[str, ...]:
        return self.arms or tuple(ARMS)


@dataclass
class Arm:
    """One approach: how its final configuration is found, and the recipe it trains with."""

    name: str
    approach: str  # baseline | discrete search | spt-darts | dynamic prompting
    method: dict[str, Any]  # final method config (for search arms: filled in after selection)
    train: dict[str, Any] = field(default_factory=dict)  # recipe overrides (lr, weight decay)
    head: dict[str, Any] = field(default_factory=dict)  # head overrides a search chose (pooling)
    selection_passes: int = 0  # training passes spent choosing the configuration
    selection_seconds: float = 0.0
    note: str = ""


# Learning rates follow the papers and our own fixed-method table (results/engine).
ARMS = ("probe", "prompt-tuning", "deep-all", "lpt-half", "dp", "spt-darts", "discrete-search")


def baseline_arms(num_layers: int) -> dict[str, Arm]:
    return {
        "probe": Arm("probe", "baseline", {"name": "probe"}, {"lr": 1e-1}),
        "prompt-tuning": Arm("prompt-tuning", "baseline", {"name": "deep", "layers": [0], "length": 20}, {"lr": 3e-2}),
        "deep-all": Arm(
            "deep-all", "baseline", {"name": "deep", "layers": list(range(num_layers)), "length": 20}, {"lr": 1e-2}
        ),
        "lpt-half": Arm(
            "lpt-half",
            "baseline",
            {"name": "late", "layer": num_layers // 2, "length": 5, "generator": "npg", "bottleneck": 128},
            {"lr": 3e-3, "weight_decay": 0.1},
        ),
    }


def check_overrides(kind: str, overrides: dict[str, Any]) -> Any:
    """The validated method config of --spt/--dp options (the method's own validation names the field)."""
    from autoprompt_search.methods import method_config

    if kind == "spt" and "search" in overrides:
        raise ConfigError("--spt search: compare always searches the gates; drop it")
    return method_config(kind, overrides)
