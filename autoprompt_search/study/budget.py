"""A study's trainable-parameter budget (`--max-trainable 0.5%` or a count).

Every configuration the sampler draws is counted on the driver (its method built on the meta
device, no weights) before it trains. One over the budget never becomes a trial: its Optuna trial
is told PRUNED with the excess as a constraint, and the searcher draws again. TPE ranks such a
trial below every trained one, so it learns where the budget lies instead of drawing blindly
until something fits; NSGA-II breeds from completed trials only, so it just draws again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from autoprompt_search.backbones import BackboneInfo
from autoprompt_search.errors import ConfigError
from autoprompt_search.study.options import StudyOptions, parse_budget
from autoprompt_search.study.space import experiment_for

CONSTRAINT = "trainable_params"  # Optuna constraint key: count - limit (feasible when <= 0)
MAX_DRAWS = 200  # draws per trial before the search gives up on the budget
CHECK_DRAWS = 200  # random draws that must find one configuration within the budget before Ray starts


@dataclass(frozen=True)
class ParamBudget:
    limit: int  # the most trainable parameters a trial may have
    base: dict[str, Any]  # the study's base experiment, which a draw is applied over
    info: BackboneInfo
    num_classes: int

    def count(self, sampled: dict[str, Any]) -> int:
        from autoprompt_search.training.workspace import count_trainable

        return count_trainable(experiment_for(self.base, sampled), self.info, self.num_classes)

    def admits(self, trial: Any, sampled: dict[str, Any]) -> bool:
        """Record the draw's count on its Optuna trial (attribute and constraint); True when it fits."""
        count = self.count(sampled)
        trial.set_user_attr("trainable_params", count)
        trial.set_constraint(CONSTRAINT, float(count - self.limit))
        return count <= self.limit

    def exhausted(self, draws: int) -> ConfigError:
        return ConfigError(
            f"study.max_trainable: {draws} draws in a row exceeded {self.limit:,} trainable parameters; "
            "raise --max-trainable or narrow the space"
        )


def refused_draws(trials: list[Any]) -> int:
    """How many of a study's Optuna trials are draws refused for the budget (never trained)."""
    return sum(1 for t in trials if t.state.name == "PRUNED" and t.constraints.get(CONSTRAINT, 0) > 0)


def param_budget(options: StudyOptions, num_classes: int) -> ParamBudget | None:
    """The study's budget resolved against its model, or None when it has none."""
    from autoprompt_search.backbones import backbone_info

    parsed = parse_budget(options.max_trainable)
    if parsed is None:
        return None
    value, percent = parsed
    base = options.base_experiment()
    info = backbone_info(base.model)
    limit = math.floor(value / 100 * info.num_params) if percent else int(value)
    return ParamBudget(limit, base.to_dict(), info, num_classes)


def check_budget(budget: ParamBudget, sampler: Any, enqueued: list[dict[str, Any]], seed: int) -> None:
    """Before Ray starts: every `--enqueue`d configuration fits, and random draws of the space find
    one that does (a budget below everything the space can draw would otherwise spin the searcher)."""
    import optuna

    for i, config in enumerate(enqueued):
        count = budget.count(config)
        if count > budget.limit:
            raise ConfigError(
                f"--enqueue #{i + 1}: {count:,} trainable parameters exceed --max-trainable ({budget.limit:,}); "
                "shorten its prompt or drop it"
            )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the search does: no "study created" line
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    smallest = None
    for _ in range(CHECK_DRAWS):
        count = budget.count(sampler(study.ask()))
        if count <= budget.limit:
            return
        smallest = count if smallest is None else min(smallest, count)
    raise ConfigError(
        f"study.max_trainable: none of {CHECK_DRAWS} random draws of the space fits {budget.limit:,} trainable "
        f"parameters (the smallest had {smallest:,}); raise --max-trainable or narrow the space"
    )
