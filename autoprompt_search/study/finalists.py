"""Finalists: after the search, its top configurations retrained over fresh seeds at the full budget.

One seed's best dev score picks noise on small dev sets (MRPC 408, RTE 277 examples), and ASHA
judged most trials on a fraction of their budget. So the study's top `finalists` distinct
configurations are each trained again with `seeds` new seeds (the base seed + 1, + 2, ...: the
search's own seed, on which the configuration was selected, is not reused) for all their steps.
The runs are members of fused Tune trials (`fused_trial.py`), `fuse` at a time, seeds of one
configuration side by side so they share one backbone pass; each is a row of `trials.parquet`
with `finalist_of` and `seed`, and where the data has a (labelled) test split its best state is
scored there, never used to select. Optuna is not told: the search is over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .options import StudyOptions
from .progress import ProgressBar
from .ranking import choose_finalists
from .records import TrialRecorder, read_trials

FINALISTS_TUNE_DIR = "tune-finalists"  # the finalists' Tune experiment (the search's is TUNE_DIR)


def finalist_seeds(base_seed: int, seeds: int) -> list[int]:
    return [base_seed + 1 + i for i in range(seeds)]


def finalist_runs(options: StudyOptions, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finalists' runs as fused-group members, configuration-major (its seeds side by side)."""
    base_seed = int(options.base_experiment().train.seed)
    runs = []
    for row in choose_finalists(rows, options.parsed_objectives, options.finalists):
        sampled = json.loads(row["config"])
        for seed in finalist_seeds(base_seed, options.seeds):
            train = {**sampled.get("train", {}), "seed": seed}
            runs.append({**sampled, "train": train, "finalist_of": row["trial_id"]})
    return runs


def run_finalists(options: StudyOptions, study_dir: Path) -> None:
    """Train the finalists (or continue them after an interruption) on the connected Ray."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from .runner import devices_per_trial, trainable_for, trial_dirname

    if options.finalists == 0:
        return
    experiment = study_dir / FINALISTS_TUNE_DIR
    objective = options.parsed_objectives[0]
    if tune.Tuner.can_restore(str(experiment)):
        # The finalists were chosen when this phase first started; a resume keeps them.
        tune.Tuner.restore(
            str(experiment),
            trainable_for(options, study_dir, fused=True),
            resume_unfinished=True,
            restart_errored=False,
        ).fit()
        return
    runs = finalist_runs(options, read_trials(study_dir))
    if not runs:
        return  # no trial of the search ended with a score: nothing to retrain
    size = max(1, options.fuse)
    groups = [runs[i : i + size] for i in range(0, len(runs), size)]
    tune.Tuner(
        trainable_for(options, study_dir, fused=True),
        param_space={"members": tune.grid_search(groups)},
        tune_config=tune.TuneConfig(
            scheduler=FIFOScheduler(),  # every seed trains to the end
            max_concurrent_trials=options.max_concurrent,
            trial_dirname_creator=trial_dirname,
            reuse_actors=options.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=FINALISTS_TUNE_DIR,
            storage_path=str(study_dir),
            callbacks=[
                TrialRecorder(str(study_dir), devices_per_trial(options)),
                ProgressBar(len(groups), objective.metric, objective.mode),
            ],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
        ),
    ).fit()
