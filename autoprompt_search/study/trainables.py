"""The Tune trainables of a study's phases (search and finalists): the trial function, one
configuration or a fused group per Tune trial, with what every trial needs from the study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fused_trial import run_group
from .options import OPTUNA_FILE, StudyOptions
from .trial import TRIAL_RESOURCES, run_trial

TRAIN_DIR = "train"  # Ray Train runs, one per trial id, holding the best checkpoint


def trial_payload(options: StudyOptions, study_dir: Path) -> dict[str, Any]:
    """What every trial needs from the study (passed once through the object store)."""
    return {
        "experiment": options.experiment,
        "cpus_per_worker": options.cpus_per_worker,
        "gpus_per_worker": options.gpus_per_worker,
        "workers_per_trial": options.workers_per_trial,
        "max_failures": options.max_failures,
        "train_storage": str(study_dir / TRAIN_DIR),
        "study_dir": str(study_dir),
        "study": options.name,
        "optuna_storage": str(study_dir / OPTUNA_FILE),
        "objectives": options.objectives,
        "prune": options.scheduler == "asha" and not options.multi_objective,  # fused: per-member ASHA in Optuna
        "grace_period": options.grace_period,
        "reduction_factor": options.reduction_factor,
    }


def trainable_for(options: StudyOptions, study_dir: Path, fused: bool) -> Any:
    """The Tune trainable: one configuration per trial, or a fused group (`members`) per trial."""
    from ray import tune

    function = run_group if fused else run_trial
    return tune.with_resources(tune.with_parameters(function, study=trial_payload(options, study_dir)), TRIAL_RESOURCES)


def trial_dirname(trial: Any) -> str:
    return trial.trial_id


def devices_per_trial(options: StudyOptions) -> float:
    per_worker = options.gpus_per_worker or options.cpus_per_worker
    return per_worker * options.workers_per_trial
