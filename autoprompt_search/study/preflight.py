"""What a study checks before Ray starts, so a bad input fails in one line and nothing runs:
the space against the model, the `--enqueue`d and `--warm-start` trials, the data and its tokens
(cached for the workers), the parameter budget, and a writable results directory with room."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprompt_search.config import ExperimentConfig
from autoprompt_search.errors import ConfigError
from autoprompt_search.study.budget import ParamBudget, check_budget, param_budget
from autoprompt_search.study.journal import OPTUNA_FILE, open_study
from autoprompt_search.study.options import STUDY_FILE, StudyOptions
from autoprompt_search.study.portfolio import portfolio_for
from autoprompt_search.study.space import SearchSpace, SpaceSampler


@dataclass(frozen=True)
class CheckedStudy:
    base: ExperimentConfig
    sampler: SpaceSampler  # the space over this model's layers
    budget: ParamBudget | None  # --max-trainable resolved against the model
    warm_trials: list[Any]  # the --warm-start study's completed Optuna trials (none without one)
    portfolio: list[dict[str, Any]]  # configurations learnt on other tasks, enqueued after --enqueue's


def check_study(options: StudyOptions) -> CheckedStudy:
    """Everything that can be checked before Ray starts: space, model depth, data, tokens (cached),
    the parameter budget."""
    from autoprompt_search.backbones import num_layers_of
    from autoprompt_search.data import load_task_data, tokenize
    from autoprompt_search.training.workspace import load_tokenizer

    space = SearchSpace.from_dict(options.space, options.space_file or "<study>")
    base = options.base_experiment()
    num_layers = num_layers_of(base.model)
    sampler = space.sampler(num_layers)  # layer indices beyond the model fail here
    for i, config in enumerate(options.enqueue):  # a configuration the space cannot draw fails here
        sampler.params_of(config, f"--enqueue #{i + 1}")
    warm_trials = warm_start_trials(options) if options.warm_start else []
    tokenizer = load_tokenizer(base.model)
    data = load_task_data(base.data)  # unknown task, missing files or columns fail here
    for name, examples in data.splits.items():
        if name != "test":  # warm the token cache the workers read
            tokenize(tokenizer, examples, base.data.max_length, False)
    budget = param_budget(options, len(data.task.labels))
    if budget is not None:
        check_budget(budget, sampler, options.enqueue, options.search_seed)
    portfolio = portfolio_for(data.task.name, sampler) if options.portfolio else []
    if budget is not None:  # a portfolio entry over the parameter budget is not tried
        portfolio = [c for c in portfolio if budget.count(c) <= budget.limit]
    return CheckedStudy(base, sampler, budget, warm_trials, portfolio)


def warm_start_trials(options: StudyOptions) -> list[Any]:
    """The completed Optuna trials of the `--warm-start` study (checked against this one's objectives)."""
    from optuna.trial import TrialState

    source = Path(options.warm_start)
    source_options = StudyOptions.load(source)
    if not (source / OPTUNA_FILE).is_file():
        raise ConfigError(f"--warm-start: {str(source)!r} has no {OPTUNA_FILE}; give a study directory that has run")
    if list(source_options.objectives) != list(options.objectives):
        raise ConfigError(
            f"--warm-start: {source_options.name} optimised {', '.join(source_options.objectives)}, this study "
            f"{', '.join(options.objectives)}; warm-start from a study with the same objectives"
        )
    study = open_study(str(source / OPTUNA_FILE), source_options.name)
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


MIN_FREE_ENV = "AUTOPROMPT_MIN_FREE_GB"  # free disk a study needs to start (default 0.5 GB)


def check_writable(study_dir: Path) -> None:
    """Fail before any trial starts when the study directory cannot be created and written, or the
    disk is (nearly) full: checkpoints and the results table are written all along the study."""
    existing = study_dir
    while not existing.exists():
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{str(existing)!r} is a file, not a directory"
    else:
        try:
            with tempfile.TemporaryFile(dir=existing) as probe:
                probe.write(b"x" * 4096)
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem:
        raise ConfigError(f"results: cannot write {str(study_dir)!r} ({problem}); choose a writable --results-dir")
    free_gb = shutil.disk_usage(existing).free / 1e9
    need_gb = float(os.environ.get(MIN_FREE_ENV, "0.5"))
    if free_gb < need_gb:
        raise ConfigError(
            f"results: only {free_gb:.2f} GB free under {str(existing)!r} (a study needs {need_gb:g} GB); "
            "free some space or choose another --results-dir"
        )


def prepare_study_dir(results_dir: str | Path, name: str, overwrite: bool) -> Path:
    """The new study's directory. An existing study there is refused unless `overwrite`; even then it
    stays until the new study has started (runner.run_study), so a bad input never loses it."""
    study_dir = (Path(results_dir) / name).resolve()
    if (study_dir / STUDY_FILE).exists() and not overwrite:
        raise ConfigError(
            f"study: {str(study_dir)!r} already exists; continue it with --resume {name}, or pass --overwrite"
        )
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(f"study: {str(study_dir)!r} is a file, not a directory; choose another --name")
    return study_dir


def check_tune_state(tune_dir: Path) -> None:
    """The Tune state a resume restores can be read: from a corrupt one Tune would start the
    search afresh beside the finished trials."""
    states = sorted(tune_dir.glob("experiment_state-*.json"))  # named by time: the last is Tune's
    if not states:
        return
    try:
        json.loads(states[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"study: {states[-1]} is not valid JSON; the Tune state is corrupt: start the study again with "
            "--overwrite or under another --name"
        ) from exc
