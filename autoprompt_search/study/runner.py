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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprompt_search.config import ExperimentConfig
from autoprompt_search.dataclass_io import to_dict
from autoprompt_search.errors import ConfigError
from autoprompt_search.experiment_options import ExperimentOptions
from autoprompt_search.option_fields import api_signature
from autoprompt_search.storage.staging import replacing_directory
from autoprompt_search.study.cluster import (
    RaySettings,
    check_before_connecting,
    check_resources,
    connect,
    ray_settings_from,
    shutdown,
)
from autoprompt_search.study.journal import RESUMED_STUDY
from autoprompt_search.study.options import StudyOptions, resume_conflicts, study_options, study_path
from autoprompt_search.study.preflight import (
    CheckedStudy,
    check_study,
    check_tune_state,
    check_writable,
    prepare_study_dir,
)
from autoprompt_search.study.ranking import best_row
from autoprompt_search.study.trial import devices_per_trial, trial_dirname

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
    from autoprompt_search.study.records import read_trials

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
    settings = ray_settings_from(options)  # popped first: the rest describe the study and experiment
    study = study_options(space, name=name, results_dir=results_dir, **options)
    settings = ray_settings or settings
    return run_study(study, results_dir, overwrite, settings, on_connect, callbacks)


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


def trainable(options: StudyOptions, study_dir: Path) -> Any:
    from autoprompt_search.study.trainable import trainable_for

    return trainable_for(options, study_dir, fused=options.fuse > 1)


def tune_trials(options: StudyOptions) -> int:
    """Tune trials in the study: one per trial, or one per fused group of `fuse` trials."""
    return math.ceil(options.num_samples / options.fuse)


def make_scheduler(options: StudyOptions, checked: CheckedStudy) -> Any:
    """ASHA (single objective): under a budget its brackets are in steps, the first rung at about
    N/8 (step_budget.py), rungs x reduction_factor; otherwise in evaluations from grace_period.
    FIFO for several objectives, fused groups (ASHA per member in Optuna) and --scheduler fifo."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from autoprompt_search.study.step_budget import bracket_rungs

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

    from autoprompt_search.study.progress import ProgressBar
    from autoprompt_search.study.records import TrialRecorder
    from autoprompt_search.study.searcher import build_searcher  # Tune's Optuna integration: slow to import

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
    from autoprompt_search.study.cluster import remove_leaked_placement_groups
    from autoprompt_search.study.finalists import run_finalists

    grid = tuner.fit()
    remove_leaked_placement_groups()  # every trial has ended: what Ray Train left behind goes
    if not search_ended(grid, options, study_dir) or not run_finalists(options, study_dir):
        return False
    (study_dir / FINISHED_FILE).write_text(json.dumps({"finished_at": time.time()}) + "\n")
    return True


def search_ended(grid: Any, options: StudyOptions, study_dir: Path) -> bool:
    """Whether the search ran to its end: all its trials, or under a budget every trial started
    ended and what is left of the budget holds no full-length trial (else Ctrl-C cut it short)."""
    from autoprompt_search.study.finalists import all_ended
    from autoprompt_search.study.records import read_trials

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
