"""The Tune trainable of a study: one configuration per Tune trial (`trial.run_trial`), or a
fused group of configurations per Tune trial (`fused_trial.run_group`: fused studies, finalists)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprompt_search.study.fused_trial import run_group
from autoprompt_search.study.options import StudyOptions
from autoprompt_search.study.trial import TRIAL_RESOURCES, TrialPayload, run_trial


def trainable_for(options: StudyOptions, study_dir: Path, fused: bool) -> Any:
    """The Tune trainable: one configuration per trial, or a fused group (`members`) per trial."""
    from ray import tune

    function = run_group if fused else run_trial
    return tune.with_resources(
        tune.with_parameters(function, study=TrialPayload.of(options, study_dir)), TRIAL_RESOURCES
    )
