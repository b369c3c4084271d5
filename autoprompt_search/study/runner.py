"""Run a search study: `search` and `resume` (the Python API and the CLI call these), Ray Tune
over the study's Optuna searcher (+ ASHA), each trial a Ray Train run, then the finalists.

    from autoprompt_search import resume, search

    result = search("all", task="trec", steps=150, num_samples=6, finalists=2, seeds=2)
    result = resume(result.study_dir)   # after an interruption: finished trials are kept
    result.table            # pandas DataFrame of trials.parquet (finalist runs included)
    result.best_config      # {'method': {...}, 'train': {...}} of the study's best

Keyword arguments are the study's knobs (`StudyOptions`' fields: num_samples, finalists, ...)
and the base experiment's (`TrainOptions`' fields: model, task, steps, ...).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from ..config import ExperimentConfig
from ..dataclass_io import to_dict
from ..errors import ConfigError
from ..experiment_options import ExperimentOptions
from ..option_fields import api_signature, declared
from ..search_space import sampled_of
from ..staging import replacing_directory
from .budget import MAX_DRAWS, ParamBudget
from .cluster import RaySettings, check_before_connecting, check_resources, connect, shutdown
from .finalists import all_ended, run_finalists
from .options import (
    OPTUNA_FILE,
    RESUMED_STUDY,
    StudyOptions,
    journal_storage,
    open_study,
    resume_conflicts,
    study_journal,
    study_options,
    study_path,
)
from .preflight import CheckedStudy, check_study, check_tune_state, check_writable, prepare_study_dir
from .progress import ProgressBar
from .ranking import best_row
from .records import TrialRecorder, read_trials
from .step_budget import StepBudgetLimiter, bracket_rungs
from .trainable import trainable_for
from .trial import devices_per_trial, trial_dirname

TUNE_DIR = "tune"  # Tune experiment: trial dirs with result.json, progress.csv, TensorBoard events
# Written once the search and its finalists have ended: a resume of the study then has nothing to
# run and need not start Ray. An interrupted study has none.
FINISHED_FILE = "finished.json"


@dataclass
class SearchResult:
    """A finished (or interrupted) study: where it is, its rows, and its best configuration."""

    study_dir: Path
    rows: list[dict[str, Any]]  # trials.parquet (finalist runs included)
    best: dict[str, Any] | None  # the best finalist (median over seeds) or trial row, see study.ranking
    best_config: dict[str, Any] | None  # the best's sampled {'method': ..., 'train': ...}
    wall_seconds: float
    interrupted: bool = False  # stopped by Ctrl-C before the end: `resume(study_dir)` goes on
    finished_before: bool = False  # a resume of a study that had already finished: nothing ran

    @property
    def table(self) -> Any:
        """trials.parquet as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)


def search_result(
    options: StudyOptions, study_dir: Path, wall_seconds: float, interrupted: bool, finished_before: bool
) -> SearchResult:
    """The study's rows as they stand, with its best row and that row's sampled configuration."""
    rows = read_trials(study_dir)
    best = best_row(rows, options.parsed_objectives)
    config = None
    if best is not None:
        source = best.get("finalist_of") or best["trial_id"]
        config = json.loads(next(r for r in rows if r["trial_id"] == source)["config"])
    return SearchResult(study_dir, rows, best, config, wall_seconds, interrupted, finished_before)


def search(
    space: str = "all",
    *,
    name: str = "default",
    results_dir: str | Path = "results",
    overwrite: bool = False,
    callbacks: list[Any] | None = None,
    ray_settings: RaySettings | None = None,
    on_connect: Any = None,
    **options: Any,
) -> SearchResult:
    """Run a study on Ray (a local one unless `address`) and return its result. `options`: the
    study's (num_samples, finalists, seeds, objectives, search_seed: the sampler's seed, ...), Ray's
    (address, num_cpus, ...) and the base experiment's (model, task, steps, seed: the training seed,
    ...), each declared once (StudyOptions, RaySettings, ExperimentOptions; `help(search)` lists
    them). `ray_settings` replaces Ray's; `on_connect(cluster, study_dir)` runs once Ray is up;
    `callbacks`: more Ray Tune callbacks for the search."""
    ray_options = {k: options.pop(k) for k in RAY_FIELDS if k in options}
    study = study_options(space, name=name, results_dir=results_dir, **options)
    settings = ray_settings or RaySettings(**ray_options)
    return run_study(study, results_dir, overwrite, settings, on_connect, callbacks)


RAY_FIELDS = tuple(f.name for f, _ in declared(RaySettings, "search"))
search.__signature__ = api_signature(  # type: ignore[attr-defined]
    search, [(StudyOptions, "search"), (RaySettings, "search"), (ExperimentOptions, "search")]
)


def resume(
    study: str | Path,
    *,
    results_dir: str | Path = "results",
    address: str | None = None,
    num_cpus: int | None = None,
    ray_settings: RaySettings | None = None,
    on_connect: Any = None,
    given: dict[str, Any] | None = None,
) -> SearchResult:
    """Continue an interrupted study (a name under `results_dir`, or its directory) with its stored
    options: finished trials are kept, the rest run, then its finalists. `given`: options the caller
    set (name -> value); one that differs from the stored study is a ConfigError."""
    settings = ray_settings or RaySettings(address=address, num_cpus=num_cpus)
    return resume_study(str(study), results_dir, settings, on_connect, given)


def evaluations_per_trial(options: StudyOptions, base: ExperimentConfig) -> int:
    steps = options.space.get("train", {}).get("steps", base.train.steps)
    if isinstance(steps, dict):
        return 100  # steps is searched: let ASHA's rungs run to the longest trial
    cfg = ExperimentConfig.from_dict({**base.to_dict(), "train": {**to_dict(base.train), "steps": steps}})
    return math.ceil(cfg.train.steps / cfg.train.eval_interval)


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
        from .group_search import GroupSearcher

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


def trainable(options: StudyOptions, study_dir: Path) -> Any:
    return trainable_for(options, study_dir, fused=options.fuse > 1)


def tune_trials(options: StudyOptions) -> int:
    """Tune trials in the study: one per trial, or one per fused group of `fuse` trials."""
    return math.ceil(options.num_samples / options.fuse)


def make_scheduler(options: StudyOptions, checked: CheckedStudy) -> Any:
    """ASHA (single objective): under a budget its brackets are in steps, the first rung at about
    N/8 (step_budget.py), rungs x reduction_factor; otherwise in evaluations from grace_period.
    FIFO for several objectives, fused groups (ASHA per member in Optuna) and --scheduler fifo."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if options.multi_objective or options.scheduler != "asha":
        return FIFOScheduler()
    if options.budget:
        steps = options.steps_per_run
        return ASHAScheduler(
            time_attr="step",
            max_t=steps,
            grace_period=bracket_rungs(steps, checked.base.train.eval_interval),
            reduction_factor=options.reduction_factor,
        )
    if options.fuse > 1:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=evaluations_per_trial(options, checked.base),
        grace_period=options.grace_period,
        reduction_factor=options.reduction_factor,
    )


def build_tuner(
    options: StudyOptions, study_dir: Path, checked: CheckedStudy, callbacks: list[Any] | None = None
) -> Any:
    from ray import tune

    objectives = options.parsed_objectives
    single = not options.multi_objective
    scheduler = make_scheduler(options, checked)
    callbacks = [
        TrialRecorder(str(study_dir), devices_per_trial(options)),
        ProgressBar(
            options.planned_trials if options.budget else tune_trials(options), objectives[0].metric, objectives[0].mode
        ),
        *(callbacks or []),
    ]
    return tune.Tuner(
        trainable(options, study_dir),
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(options, checked, study_dir),
            scheduler=scheduler,
            num_samples=tune_trials(options),
            metric=objectives[0].metric if single else None,
            mode=objectives[0].mode if single else None,
            trial_dirname_creator=trial_dirname,
            reuse_actors=options.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(study_dir),
            callbacks=callbacks,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),  # e.g. its node died
        ),
    )


def run_study(
    options: StudyOptions,
    results_dir: str | Path = "results",
    overwrite: bool = False,
    ray_settings: RaySettings | None = None,
    on_connect: Any = None,
    callbacks: list[Any] | None = None,
) -> SearchResult:
    """Validate everything, start or join Ray, and run the study to the end. `callbacks`: more
    Ray Tune callbacks for the search (the study's recorder and progress bar always run)."""
    study_dir = prepare_study_dir(results_dir, options.name, overwrite)
    checked = check_study(options)
    check_writable(study_dir)
    for line in options.notices:
        print(line, file=sys.stderr)

    def fit() -> bool:
        # An --overwrite'n study is moved aside only now, every check passed and Ray up, and removed
        # when this study ends (finished or interrupted); if it fails, the old one is put back.
        with replacing_directory(study_dir) if overwrite else contextlib.nullcontext():
            study_dir.mkdir(parents=True, exist_ok=True)
            options.save(study_dir)
            return search_then_finalists(options, study_dir, build_tuner(options, study_dir, checked, callbacks))

    return _on_ray(options, study_dir, fit, ray_settings, on_connect)


def resume_study(
    name: str,
    results_dir: str | Path = "results",
    ray_settings: RaySettings | None = None,
    on_connect: Any = None,
    given: dict[str, Any] | None = None,
) -> SearchResult:
    """Continue an interrupted study: finished trials are kept, unfinished ones rerun, the sampler's
    history reloads. `given`: search flags passed with the resume (flag -> value); one that
    differs from the stored study is a ConfigError, since a resumed study keeps its options."""
    from ray import tune

    study_dir = study_path(name, results_dir).resolve()
    options = StudyOptions.load(study_dir)
    conflicts = resume_conflicts(options, given or {})
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise ConfigError(
            f"--resume {name}: {conflicts[0]}{more}; a resumed study keeps its options: drop the flag, "
            "or start a new study under another --name"
        )
    if (study_dir / FINISHED_FILE).is_file():
        return search_result(options, study_dir, 0.0, interrupted=False, finished_before=True)
    if not tune.Tuner.can_restore(str(study_dir / TUNE_DIR)):
        raise ConfigError(f"study: {str(study_dir)!r} has no Tune state to resume; start it again with --overwrite")
    check_tune_state(study_dir / TUNE_DIR)
    check_study(options)
    check_writable(study_dir)

    def fit() -> bool:
        moved = RESUMED_STUDY.set(study_dir)  # where the study is now
        try:
            tuner = tune.Tuner.restore(
                str(study_dir / TUNE_DIR), trainable(options, study_dir), resume_unfinished=True, restart_errored=False
            )
            return search_then_finalists(options, study_dir, tuner)
        finally:
            RESUMED_STUDY.reset(moved)

    return _on_ray(options, study_dir, fit, ray_settings, on_connect)


def search_then_finalists(options: StudyOptions, study_dir: Path, tuner: Any) -> bool:
    """Run the search, then its finalists, then mark the study finished; False where an
    interruption (Ctrl-C: Tune stops its trials, saves its state and returns) cut a phase short,
    so the finalists are never chosen from a partial search."""
    if not search_ended(tuner.fit(), options, study_dir) or not run_finalists(options, study_dir):
        return False
    (study_dir / FINISHED_FILE).write_text(json.dumps({"finished_at": time.time()}) + "\n")
    return True


def search_ended(grid: Any, options: StudyOptions, study_dir: Path) -> bool:
    """Whether the search ran to its end: all its trials, or under a budget every trial started
    ended and what is left of the budget holds no full-length trial (else Ctrl-C cut it short)."""
    budget = options.budget_steps
    if budget is None:
        return all_ended(grid, tune_trials(options))
    if grid.num_terminated + grid.num_errors != len(grid):
        return False
    spent = sum(int(r["last_step"] or 0) for r in read_trials(study_dir) if not r["finalist_of"])
    return spent + options.steps_per_run > budget or len(grid) >= tune_trials(options)


def _on_ray(
    options: StudyOptions,
    study_dir: Path,
    fit: Any,
    ray_settings: RaySettings | None,
    on_connect: Any,
) -> SearchResult:
    """Start or join Ray, refuse resources a trial can never get, run `fit`, and stop what we started."""
    check_before_connecting(options, ray_settings)
    cluster = connect(ray_settings)
    try:
        check_resources(options, cluster)
        if on_connect is not None:
            on_connect(cluster, study_dir)
        started = time.perf_counter()
        finished = fit()
        return search_result(
            options, study_dir, time.perf_counter() - started, interrupted=not finished, finished_before=False
        )
    finally:
        shutdown(cluster)
