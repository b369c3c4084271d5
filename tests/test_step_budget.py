"""--budget: a search given training steps, not a trial count (no Ray here; the study on a local Ray
is in test_study.py)."""

from __future__ import annotations

import pytest
from ray.tune.search import Searcher

from autoprompt_search.errors import ConfigError
from autoprompt_search.study.step_budget import StepBudgetLimiter, bracket_rungs, parse_step_budget


class Counter(Searcher):
    def __init__(self) -> None:
        super().__init__(metric="dev_score", mode="max")
        self.told: list[str] = []

    def suggest(self, trial_id: str) -> dict:
        return {"trial": trial_id}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.told.append(trial_id)


def test_budgets_parse_in_runs_or_steps_and_bad_ones_say_the_fix() -> None:
    assert parse_step_budget("4runs", 1000) == 4000 and parse_step_budget("20000steps", 1000) == 20000
    assert parse_step_budget("1.5 runs", 1000) == 1500 and parse_step_budget("", 1000) is None
    with pytest.raises(ConfigError, match="give runs of the base experiment"):
        parse_step_budget("4 hours", 1000)
    with pytest.raises(ConfigError, match="less than one run of 1000"):
        parse_step_budget("500steps", 1000)
    assert bracket_rungs(1000, 200) == 200 and bracket_rungs(1000, 50) == 125


def test_trials_start_while_a_full_run_fits_and_stopped_trials_give_steps_back() -> None:
    inner = Counter()
    limiter = StepBudgetLimiter(inner, budget_steps=300, steps_per_run=100)
    assert limiter.suggest("a") and limiter.suggest("b") and limiter.suggest("c")
    assert limiter.suggest("d") is None  # 3 x 100 committed: wait, the running ones may stop early
    limiter.on_trial_result("a", {"step": 25})
    limiter.on_trial_complete("a", {"step": 25})  # stopped by ASHA at 25: 75 steps back
    assert limiter.suggest("d") is None  # 25 + 2 x 100 + 100 > 300
    limiter.on_trial_complete("b", {"step": 50})
    assert limiter.suggest("d")  # 25 + 50 + 100 + 100 <= 300
    for trial, step in (("c", 100), ("d", 100)):
        limiter.on_trial_complete(trial, {"step": step})
    assert limiter.spent == 275 and limiter.suggest("e") == Searcher.FINISHED  # 275 + 100 > 300, none running
    assert inner.told == ["a", "b", "c", "d"]


def test_under_a_budget_asha_brackets_start_at_an_eighth_of_a_run(tiny_model_dir: str, tiny_sst_dir: str) -> None:
    from conftest import tiny_experiment
    from test_study import options

    from autoprompt_search.study.preflight import check_study
    from autoprompt_search.study.runner import make_scheduler

    base = tiny_experiment(tiny_model_dir, tiny_sst_dir, steps=80)
    base["train"]["eval_every"] = 5
    opts = options(tiny_model_dir, tiny_sst_dir, experiment=base, budget="4runs", num_samples=1000, scheduler="asha")
    assert opts.budget_steps == 320 and opts.planned_trials == 12 and opts.tpe_startup_trials == 3
    scheduler = make_scheduler(opts, check_study(opts))
    assert (scheduler._time_attr, scheduler._max_t, scheduler._brackets[0]._rungs[-1][0]) == ("step", 80, 10)
