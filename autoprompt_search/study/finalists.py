"""Finalists: after the search, its top configurations retrained over fresh seeds at the full budget.

One seed's best dev score picks noise on small dev sets (MRPC 408, RTE 277 examples), and ASHA
judged most trials on a fraction of their budget. So the study's top `finalists` distinct
configurations are each trained again with `seeds` new seeds (the base seed + 1, + 2, ...: the
search's own seed, on which the configuration was selected, is not reused) for all their steps.
The runs are members of fused Tune trials (`fused_trial.py`), up to `fuse` runs that can share a
batch per trial (`fused_groups`: one configuration's seeds always can), so a trial is one backbone
pass; each is a row of `trials.parquet`
with `finalist_of` and `seed`, and where the data has a (labelled) test split its best state is
scored there, never used to select. Afterwards each configuration's medians are told to the
study's Optuna as one more completed trial with its parameters (`tell_optuna`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from autoprompt_search.study.cluster import remove_leaked_placement_groups
from autoprompt_search.study.journal import OPTUNA_FILE, open_study
from autoprompt_search.study.options import StudyOptions
from autoprompt_search.study.progress import FinalistProgress, ProgressBar
from autoprompt_search.study.ranking import choose_finalists, finalist_groups
from autoprompt_search.study.records import TrialRecorder, read_trials
from autoprompt_search.study.space import experiment_for
from autoprompt_search.study.trainable import trainable_for
from autoprompt_search.study.trial import devices_per_trial, trial_dirname

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


def fused_groups(options: StudyOptions, runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The runs in Train jobs of at most `fuse` members that train as one fused group.

    Chunking the list by position would put configurations that cannot share a batch (another
    head or first prompted layer, far apart lengths) into one job, which the worker then trains
    one after another. `fused.partition` groups them as the worker will (without the texts'
    length, so its length tolerance is the stricter one: a group here stays one group there)."""
    if options.fuse == 1:
        return [[run] for run in runs]
    from autoprompt_search.backbones import backbone_info
    from autoprompt_search.training.fused import partition

    cfgs = [experiment_for(options.experiment, run) for run in runs]
    info = backbone_info(cfgs[0].model)
    return [[runs[i] for i in group] for group in partition(cfgs, info, options.fuse)]


def run_finalists(options: StudyOptions, study_dir: Path) -> bool:
    """Train the finalists (or continue them after an interruption) on the connected Ray; True
    when every finalist run ended (or there is none to train), False when Ctrl-C cut it short."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    if options.finalists == 0:
        return True
    # The searched rows no longer change once the search ended, so a resume finds the same runs.
    groups = fused_groups(options, finalist_runs(options, read_trials(study_dir)))
    if not groups:
        return True  # no trial of the search ended with a score: nothing to retrain
    experiment = study_dir / FINALISTS_TUNE_DIR
    objective = options.parsed_objectives[0]
    runs = sum(len(g) for g in groups)
    print(
        f"finalists: {runs} runs ({options.finalists} best configurations x {options.seeds} fresh seeds at most) "
        f"in {len(groups)} Train job(s), {options.max_concurrent} at a time",
        file=sys.stderr,
        flush=True,
    )
    if tune.Tuner.can_restore(str(experiment)):
        # The finalists were chosen when this phase first started; a resume keeps them.
        grid = tune.Tuner.restore(
            str(experiment),
            trainable_for(options, study_dir, fused=True),
            resume_unfinished=True,
            restart_errored=False,
        ).fit()
        remove_leaked_placement_groups()
        tell_optuna(options, study_dir)
        return all_ended(grid, len(groups))
    grid = tune.Tuner(
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
                FinalistProgress(runs),
            ],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
        ),
    ).fit()
    remove_leaked_placement_groups()  # every finalist run has ended
    tell_optuna(options, study_dir)
    return all_ended(grid, len(groups))


def all_ended(grid: Any, expected: int) -> bool:
    """Whether Tune ran all `expected` trials to an end (finished, stopped early or failed). Tune
    returns from Ctrl-C with its state saved; it creates trials lazily, so an interrupted
    experiment can hold fewer than `expected`."""
    return len(grid) >= expected and grid.num_terminated + grid.num_errors == len(grid)


def tell_optuna(options: StudyOptions, study_dir: Path) -> list[int]:
    """Tell the study's Optuna its finalists: per configuration whose seeds all ended, a completed
    trial with the searched trial's parameters and the medians over the seeds as its values
    (user attributes `finalist_of`, `seeds`), so the sampler, optuna-dashboard and a later
    `--warm-start` see the median rather than one seed's score. Once per configuration (a resume
    does not add it again); returns the new trials' numbers."""
    import optuna

    study = open_study(str(study_dir / OPTUNA_FILE), options.name)
    trials = study.get_trials(deepcopy=False)
    told = {t.user_attrs.get("finalist_of") for t in trials}
    by_row = {t.user_attrs.get("tune_trial_id"): t for t in trials if t.user_attrs.get("tune_trial_id")}
    added = []
    for group in finalist_groups(read_trials(study_dir), options.parsed_objectives):
        source = by_row.get(group["finalist_of"])
        values = [group[o.metric] for o in options.parsed_objectives]
        if source is None or group["finalist_of"] in told or group["ended"] < group["seeds"] or None in values:
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=source.params,
                distributions=source.distributions,
                values=values,
                user_attrs={"finalist_of": group["finalist_of"], "seeds": group["seeds"]},
            )
        )
        added.append(len(trials) + len(added))
    return added
