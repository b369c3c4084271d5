"""The study's searcher for Ray Tune: Optuna over the checked space (its sampler, its journal, the
parameter and step budgets), seeded with enqueued, portfolio and warm-start configurations, or the
group searcher of a fused study; and `ResumableOptunaSearch`, Tune's OptunaSearch made safe to
resume and to move.

Imported when a study starts: Ray Tune's Optuna integration takes a second and a half to import.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from autoprompt_search.study.budget import MAX_DRAWS, ParamBudget
from autoprompt_search.study.journal import OPTUNA_FILE, journal_storage, open_study, study_journal
from autoprompt_search.study.options import StudyOptions
from autoprompt_search.study.preflight import CheckedStudy
from autoprompt_search.study.space import sampled_of
from autoprompt_search.study.step_budget import StepBudgetLimiter


def make_sampler(options: StudyOptions) -> Any:
    """The study's Optuna sampler (`auto`: TPE for one objective, NSGA-II for several)."""
    import optuna

    kind = options.sampler
    if kind == "auto":
        kind = "nsga2" if options.multi_objective else "tpe"
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=options.search_seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=options.search_seed)
    with warnings.catch_warnings():  # `group` is marked experimental; it is what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group: each method has its own parameters, so TPE models them on the trials that sampled them.
        return optuna.samplers.TPESampler(
            seed=options.search_seed, n_startup_trials=options.tpe_startup_trials, multivariate=True, group=True
        )


def build_searcher(options: StudyOptions, checked: CheckedStudy, study_dir: Path) -> Any:
    """Tune's search algorithm for the study: Optuna over the checked space (its sampler, journal
    and budget), or the group searcher of a fused study, under the concurrency limit."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objectives = options.parsed_objectives
    sampler = make_sampler(options)
    # Created here first so that optuna-dashboard names the objectives instead of "Objective 0".
    directions = ["maximize" if o.mode == "max" else "minimize" for o in objectives]
    study = open_study(str(study_dir / OPTUNA_FILE), options.name, directions=directions)
    with warnings.catch_warnings():  # set_metric_names is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in objectives])
    seed_study(study, options, checked)
    if options.fuse > 1:
        from autoprompt_search.study.group_search import GroupSearcher

        group = GroupSearcher(
            checked.sampler,
            sampler,
            str(study_dir / OPTUNA_FILE),
            options.name,
            ["maximize" if o.mode == "max" else "minimize" for o in objectives],
            [o.metric for o in objectives],
            options.num_samples,
            options.fuse,
            objectives[0].metric,
            objectives[0].mode,
            checked.budget,
        )
        return ConcurrencyLimiter(group, max_concurrent=options.max_concurrent)
    searcher: Any = ResumableOptunaSearch(
        space=checked.sampler,
        metric=[o.metric for o in objectives] if options.multi_objective else objectives[0].metric,
        mode=[o.mode for o in objectives] if options.multi_objective else objectives[0].mode,
        sampler=sampler,
        study_name=options.name,
        journal=str(study_dir / OPTUNA_FILE),
        budget=checked.budget,
    )
    budget_steps = options.budget_steps
    if budget_steps is not None:
        searcher = StepBudgetLimiter(searcher, budget_steps, options.steps_per_run)
    return ConcurrencyLimiter(searcher, max_concurrent=options.max_concurrent)


def seed_study(study: Any, options: StudyOptions, checked: CheckedStudy) -> None:
    """Before the search, in the study's Optuna `study`: the `--enqueue`d configurations queued
    first, then the portfolio's (configurations learnt on other tasks), and the `--warm-start`
    study's completed trials added as history the sampler learns from (not run again)."""
    import optuna

    for config in options.enqueue:
        study.enqueue_trial(checked.sampler.params_of(config))
    for config in checked.portfolio:
        study.enqueue_trial(checked.sampler.params_of(config, "portfolio"), user_attrs={"portfolio": True})
    source = Path(options.warm_start).name if options.warm_start else ""
    for trial in checked.warm_trials:
        study.add_trial(
            optuna.trial.create_trial(
                params=trial.params, distributions=trial.distributions, values=trial.values,
                user_attrs={**trial.user_attrs, "warm_start_from": f"{source}#{trial.number}"},
            )
        )  # fmt: skip


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that tolerates a result for a trial Optuna already holds as finished, fails
    trials with no finite objective, and prunes trials the scheduler stopped early.

    After a driver crash, Tune's saved state (every few seconds) may be older than the Optuna
    journal: a trial that finished in between is replayed (its recorded result, no training),
    and OptunaSearch would report an intermediate value to a finished Optuna trial and abort
    the study. With a parameter `budget`, a draw over it is PRUNED and drawn again (budget.py).
    """

    def __init__(self, *args: Any, journal: str, budget: ParamBudget | None = None, **kwargs: Any) -> None:
        super().__init__(*args, storage=journal_storage(Path(journal)), **kwargs)
        self.budget = budget
        self.journal = journal  # the Optuna journal's path (pickles reopen it)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        from optuna.trial import TrialState

        if trial_id in self._ot_trials:  # a restored trial asks again: its draw was admitted before
            return super().suggest(trial_id)
        for _ in range(MAX_DRAWS):
            config = super().suggest(trial_id)
            trial = self._ot_trials.get(trial_id)
            if trial is None or not isinstance(config, dict):
                return config
            trial.set_user_attr("method", config["method"]["name"])
            if self.budget is None or self.budget.admits(trial, sampled_of(config)):
                # What optuna-dashboard shows beside the parameters: which row of trials.parquet this is.
                trial.set_user_attr("tune_trial_id", trial_id)
                return config
            self._ot_study.tell(trial, state=TrialState.PRUNED)  # never trained: over the budget
            del self._ot_trials[trial_id]
        raise self.budget.exhausted(MAX_DRAWS)  # type: ignore[union-attr]

    # Pickled (Tune's searcher checkpoint, its copies of the searcher) without the storage objects,
    # which hold the journal's absolute path: they are reopened on `study_journal`, so a moved or
    # copied study resumes on its own journal.
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_storage", "_ot_study", "_ot_trials")}
        state["_ot_trial_ids"] = {tid: trial._trial_id for tid, trial in (self._ot_trials or {}).items()}
        state["_had_study"] = self._ot_study is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reopen(study_journal(self.journal))

    def _reopen(self, journal: Path) -> None:
        import optuna

        ids = self.__dict__.pop("_ot_trial_ids", None) or {}
        had_study = self.__dict__.pop("_had_study", True)
        self.journal = str(journal)
        if not journal.is_file():  # the study moved: restore() reopens it where it is now
            self._storage, self._ot_study, self._ot_trials = None, None, {}
            self._ot_trial_ids, self._had_study = ids, had_study
            return
        self._storage = journal_storage(journal)
        if not had_study:  # copied before Tune set it up: set_search_properties creates it
            self._ot_study, self._ot_trials = None, {}
            return
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler)
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, ot_id) for tid, ot_id in ids.items()}

    def save(self, checkpoint_path: str) -> None:
        import pickle

        Path(checkpoint_path).write_bytes(pickle.dumps(self.__getstate__()))

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))
        self._reopen(study_journal(self.journal))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        with contextlib.suppress(UpdateFinishedTrialError):
            trial = self._ot_trials.get(trial_id)
            if trial is not None and "trainable_params" in result and "trainable_params" not in trial.user_attrs:
                trial.set_user_attr("trainable_params", int(result["trainable_params"]))
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        # A trial with no finite objective (every evaluation collapsed: -inf while it ran, NaN at
        # its end) failed; told as COMPLETE, Optuna's sampler would learn from it.
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics] if result else []
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            result, error = None, True
        elif result and not result.get("trained_to_end") and len(metrics) == 1:
            # Stopped by ASHA at a fraction of its budget: PRUNED with its last reported value, as
            # fused studies tell it (group_search.py). Told as COMPLETE, TPE would rank a score at
            # 200 steps among trials that trained all their steps. Tune hands the result that
            # stopped it to this call, not to on_trial_result, so it is reported here first: TPE
            # ranks pruned trials by it. (No result and no error is what OptunaSearch tells as
            # PRUNED; Optuna prunes single-objective studies only.)
            trial = self._ot_trials.get(trial_id)
            value, step = result.get(metrics[0]), result.get("training_iteration")
            if trial is not None and isinstance(value, float) and step is not None:
                with contextlib.suppress(UpdateFinishedTrialError):
                    trial.report(value, int(step))
            result = None
        super().on_trial_complete(trial_id, result, error)
