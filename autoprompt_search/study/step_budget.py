"""A search given a compute budget in training steps (`--budget 4runs`, `--budget 20000steps`)
instead of a trial count, the unit a user compares methods in: four runs of P-tuning v2 at four
learning rates cost what a study of budget `4runs` costs.

Every step a trial trains counts, those of trials ASHA stopped included. A trial starts only while
its full length fits in what the budget has left after the ended trials' steps and the running
trials' full lengths; the search ends when nothing fits and nothing runs. With ASHA, the brackets
start at about N/8 steps (`bracket_rungs`), so a budget of B runs tries several times B
configurations; the trials ASHA stops give their unspent steps back.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ray.tune.search import Searcher

from autoprompt_search.errors import ConfigError

BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(runs?|steps?)\s*$")
BUDGET_TRIAL_CAP = 1000  # trials Tune may start under a budget: the budget ends the search first
SMALLEST_RUNG = 8  # ASHA's first rung under a budget: N / 8 steps


def parse_step_budget(text: str, steps_per_run: int) -> int | None:
    """`4runs` -> 4 x steps_per_run, `20000steps` -> 20000; None when unset."""
    if not str(text).strip():
        return None
    match = BUDGET.match(str(text))
    steps = 0
    if match:
        value, unit = float(match.group(1)), match.group(2)
        steps = math.floor(value * steps_per_run) if unit.startswith("run") else math.floor(value)
    if steps < 1:
        raise ConfigError(
            f"study.budget: {text!r} is not a step budget; give runs of the base experiment (e.g. 4runs) "
            "or training steps (e.g. 20000steps)"
        )
    if steps < steps_per_run:
        raise ConfigError(
            f"study.budget: {text!r} is {steps} steps, less than one run of {steps_per_run}; "
            "give at least 1run or lower --steps"
        )
    return steps


def bracket_rungs(steps_per_run: int, eval_interval: int) -> int:
    """ASHA's grace period in steps under a budget: about N/8, and no earlier than the first
    evaluation (a trial can only be stopped where it reports)."""
    return max(eval_interval, math.ceil(steps_per_run / SMALLEST_RUNG))


class StepBudgetLimiter(Searcher):
    """Wraps a searcher: suggests while a full-length trial fits in the unspent budget, waits while
    running trials may still give steps back, and finishes the search when none can."""

    def __init__(self, searcher: Searcher, budget_steps: int, steps_per_run: int) -> None:
        self.searcher = searcher
        self.budget_steps, self.steps_per_run = budget_steps, steps_per_run
        self.trained: dict[str, int] = {}  # trial id -> steps trained so far (its last report)
        self.running: set[str] = set()
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    @property
    def spent(self) -> int:
        """Steps trained by every trial so far (ended and running)."""
        return sum(self.trained.values())

    def committed(self) -> int:
        """Ended trials' steps plus the running trials' full lengths."""
        ended = sum(s for t, s in self.trained.items() if t not in self.running)
        return ended + self.steps_per_run * len(self.running)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.committed() + self.steps_per_run > self.budget_steps:
            return None if self.running else Searcher.FINISHED
        suggestion = self.searcher.suggest(trial_id)
        if isinstance(suggestion, dict):
            self.running.add(trial_id)
            self.trained.setdefault(trial_id, 0)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._count(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._count(trial_id, result)
        self.running.discard(trial_id)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def _count(self, trial_id: str, result: dict | None) -> None:
        if result and isinstance(result.get("step"), (int, float)):
            self.trained[trial_id] = max(self.trained.get(trial_id, 0), int(result["step"]))

    # Tune saves a wrapper's state with get_state and the wrapped searcher's on its own.
    def get_state(self) -> dict[str, Any]:
        return {"trained": dict(self.trained)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.trained = {k: int(v) for k, v in state["trained"].items()}
        self.running = set()  # a resumed study's unfinished trials restart without asking again
